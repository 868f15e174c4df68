"""Streamlit AppTest runs of the Home, Compare, Thresholds and Explain pages on the shipped models."""
from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from conftest import REPO
from llm_stub import StubLLM

TIMEOUT = 300


def page(name: str) -> AppTest:
    """The real app (app.py with its st.navigation), opened on one page."""
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    if name != "home":
        at.switch_page(f"views/{name}.py")
    return at


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def test_home_lists_models_and_data(app_env, shipped):
    at = page("home").run()
    no_exception(at)
    table = at.dataframe[0].value
    assert {"baseline (shipped demo)", "finetuned (shipped demo)"} <= set(table["model"])
    assert table.set_index("model").loc["finetuned (shipped demo)", "labels"] == 14
    assert any("phantom" in str(j.value) for j in at.json)


def test_compare_on_a_held_out_phantom_image(app_env, shipped):
    at = page("compare").run()
    no_exception(at)
    assert any("Upload an image" in i.value for i in at.info)
    at.radio(key="compare_source").set_value("A held-out phantom test image (ground truth known)").run()
    no_exception(at)
    table = at.dataframe[0].value
    assert {"baseline p", "fine-tuned p", "baseline ± sd", "fine-tuned ± sd"} <= set(table.columns)
    assert (table["fine-tuned ± sd"].dropna() > 0).any()  # Monte-Carlo dropout spread, on by default
    assert not at.warning  # a phantom chest passes the out-of-distribution check
    # labels of both lists, synonyms folded: Effusion and Pleural Effusion are one row
    labels = list(table["label"])
    assert "Support Devices" in labels and "Hernia" in labels
    assert not ({"Effusion", "Pleural Effusion"} <= set(labels))
    assert table["fine-tuned p"].notna().sum() == 14 and table["baseline p"].notna().sum() == 14
    # switching the heatmap label re-renders overlays from the cached predictions
    at.selectbox(key="compare_label").set_value("Cardiomegaly").run()
    no_exception(at)
    captions = " ".join(c.value for c in at.caption)
    assert "Ground truth" in captions and "feature cells" in captions
    # another pytorch-grad-cam method for the chosen label, computed on demand
    at.selectbox(key="compare_method").set_value("GradCAMPlusPlus").run()
    no_exception(at)
    assert "GradCAMPlusPlus" in " ".join(c.value for c in at.caption)
    assert len(at.get("image")) == 3  # input + two overlays


def test_compare_scores_the_heatmaps_faithfulness_on_demand(app_env, shipped):
    at = page("compare").run()
    at.radio(key="compare_source").set_value("A held-out phantom test image (ground truth known)").run()
    at.selectbox(key="compare_label").set_value("Cardiomegaly").run()
    no_exception(at)
    # nothing is computed before the button: the first answer is not slowed
    assert not any("ROAD combined ↑" in d.value.columns for d in at.dataframe)
    assert not at.get("plotly_chart") or len(at.get("plotly_chart")) == 1   # the probability bars only
    at.button(key="compare_faith_run").click().run()
    no_exception(at)
    table = next(d.value for d in at.dataframe if "ROAD combined ↑" in d.value.columns)
    assert list(table["model"]) == ["baseline", "fine-tuned"]
    assert table["ROAD combined ↑"].between(-1, 1).all() and table["deletion AUC ↓"].between(0, 1).all()
    assert len(at.get("plotly_chart")) == 2                               # bars + the faithfulness curves
    assert "higher = more faithful" in " ".join(c.value for c in at.caption)
    # another method: the scores are for it, again only on demand
    at.selectbox(key="compare_method").set_value("HiResCAM").run()
    no_exception(at)
    assert not any("ROAD combined ↑" in d.value.columns for d in at.dataframe)


def test_thresholds_sliders_update_metrics_and_save(app_env, shipped):
    at = page("thresholds").run()
    no_exception(at)
    table = at.dataframe[0].value
    assert len(table) >= 5 and table["AUROC"].between(0, 1).all()
    label = table["label"].iloc[0]
    slider = next(s for s in at.slider if s.label == label)
    before = table.set_index("label").loc[label, ["TP", "FP"]].sum()
    slider.set_value(0.01).run()
    after_tab = at.dataframe[0].value.set_index("label")
    assert after_tab.loc[label, "threshold"] == pytest.approx(0.01)
    assert after_tab.loc[label, "TP"] + after_tab.loc[label, "FP"] >= before
    assert after_tab.loc[label, "sensitivity"] >= table.set_index("label").loc[label, "sensitivity"]
    # curves export as PNG or SVG from the chart toolbar, as chosen in the sidebar
    at.sidebar.radio(key="chart_format").set_value("svg").run()
    assert all('"format": "svg"' in c.proto.config for c in at.get("plotly_chart"))
    at.button(key="thr_save").click().run()
    no_exception(at)
    assert at.success, "no confirmation after saving"
    saved = app_env / "checkpoints" / "finetuned" / "card.json"
    assert json.loads(saved.read_text())["thresholds"][label] == pytest.approx(0.01)
    # the shipped card is untouched
    assert json.loads((shipped["finetuned"] / "card.json").read_text())["thresholds"][label] != pytest.approx(0.01)


def test_explain_without_a_key_gives_a_written_summary(app_env, shipped, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    at = page("explain").run()
    no_exception(at)
    at.button(key="explain_sample").click().run()
    no_exception(at)
    assert any("OPENAI_API_KEY" in w.value for w in at.warning)
    assert any("Summary for" in m.value for m in at.markdown)


def test_explain_streams_from_a_local_server(app_env, shipped, monkeypatch):
    key = "sk-test-secret-123456"
    with StubLLM(key) as stub:
        monkeypatch.setenv("OPENAI_API_KEY", key)
        monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
        at = page("explain").run()
        at.button(key="explain_sample").click().run()
        no_exception(at)
        at.button(key="explain_go").click().run()
        no_exception(at)
        assert len(stub.requests) == 1
        shown = " ".join(m.value for m in at.markdown)
        assert "lower right zone" in shown
        everything = " ".join(str(e.value) for e in at.main if hasattr(e, "value"))
        assert key not in everything


def test_thresholds_gate_of_a_two_stage_model_recombines_the_findings(app_home, shipped, tmp_path, monkeypatch):
    """One gate threshold, edited on the Thresholds page like any label's: moving it changes every finding's
    probabilities (hence their operating points); saving writes it as the gate label's threshold."""
    from cxrcore.train.trainer import TrainConfig, train

    home = tmp_path / "home"
    (home / "datasets").mkdir(parents=True)
    for d in (app_home / "datasets").iterdir():
        (home / "datasets" / d.name).symlink_to(d)
    monkeypatch.setenv("CXR_HOME", str(home))
    chex = next((home / "datasets").glob("phantom-chexpert-*"))
    train(TrainConfig(data=str(chex), labels="chexpert14", hierarchy="two_stage", epochs=1, batch_size=32,
                      image_size=48, max_images=400, workers=1, threads=1), home / "runs" / "twostage")
    at = page("thresholds")
    at.run()
    no_exception(at)
    at.selectbox(key="thr_model").set_value("run twostage").run()
    at.selectbox(key="thr_data").set_value(next(o for o in at.selectbox(key="thr_data").options
                                                 if "chexpert" in o)).run()
    no_exception(at)
    assert any("Two-stage model" in c.value for c in at.caption)
    gate = next(s for s in at.slider if s.label == "Any finding")
    gate.set_value(0.0).run()
    open_gate = at.dataframe[0].value.set_index("label")
    next(s for s in at.slider if s.label == "Any finding").set_value(1.0).run()
    closed = at.dataframe[0].value.set_index("label")
    findings = [x for x in closed.index if x not in ("Any finding", "No Finding")]
    # with the gate at 1 every finding is scaled down by the gate's probability: fewer or equal positive calls
    assert all(closed.loc[x, "TP"] + closed.loc[x, "FP"] <= open_gate.loc[x, "TP"] + open_gate.loc[x, "FP"]
               for x in findings)
    assert any(closed.loc[x, "TP"] + closed.loc[x, "FP"] < open_gate.loc[x, "TP"] + open_gate.loc[x, "FP"]
               for x in findings)
    at.button(key="thr_save").click().run()
    no_exception(at)
    card = json.loads((home / "runs" / "twostage" / "checkpoint" / "card.json").read_text())
    assert card["thresholds"]["Any finding"] == pytest.approx(1.0)
