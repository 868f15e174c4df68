"""Streamlit AppTest runs of the Home, Compare, Thresholds and Explain pages on the shipped models."""
from __future__ import annotations

import json
import re

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
    # the library models come last, by name (nothing imported); their cards (the library's metadata: slow on a
    # fresh server) when the expander is opened
    assert [h.value for h in at.subheader] == ["Models", "Data", "Library models (pretrained, used as they are)"]
    assert len(at.dataframe) == 1 and "`xrv:densenet121-res224-all`" in at.markdown[-1].value
    assert "`clip:ViT-B-32/openai`" in at.markdown[-1].value
    at.session_state["home_library"] = True  # what opening the expander does (on_change="rerun")
    at.run()
    no_exception(at)
    library = at.dataframe[1].value
    assert any(m.startswith("xrv:densenet121-res224-all") for m in library["model"])
    assert library.set_index("model").loc["xrv:densenet121-res224-all (library)", "labels"] == 18


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


def test_compare_shows_each_models_thresholds_and_held_out_auroc_before_an_upload(app_env, shipped):
    """Before an image: per label, each model's threshold and the AUROC its card records on its own held-out
    split, and what that split was (synthetic phantoms here, said so)."""
    from cxrcore.checkpoint import read_card
    from ui.common import checkpoint_choices

    at = page("compare").run()
    no_exception(at)
    table = next(d.value for d in at.dataframe if "baseline held-out AUROC" in d.value.columns).set_index("label")
    chosen = {"baseline": at.selectbox(key="compare_base").value, "fine-tuned": at.selectbox(key="compare_tuned").value}
    for who, name in chosen.items():
        card = read_card(checkpoint_choices()[name])
        for label in card.labels:
            assert table.loc[label, f"{who} threshold"] == pytest.approx(card.thresholds[label], abs=5e-4)
            assert table.loc[label, f"{who} held-out AUROC"] == pytest.approx(card.metrics["test"]["auroc"][label],
                                                                             abs=5e-4)
    # a label only one model has is blank for the other
    assert table.loc["Hernia", "fine-tuned threshold"] != table.loc["Hernia", "fine-tuned threshold"]  # NaN
    captions = " ".join(c.value for c in at.caption)
    assert "AUROC on the test split of" in captions and "never real radiographs" in captions
    assert "compare_glance_chart" in {c.key for c in at.get("plotly_chart")}


def test_compare_scores_the_heatmaps_faithfulness_on_demand(app_env, shipped):
    at = page("compare").run()
    at.radio(key="compare_source").set_value("A held-out phantom test image (ground truth known)").run()
    at.selectbox(key="compare_label").set_value("Cardiomegaly").run()
    no_exception(at)
    # nothing is computed before the button: the first answer is not slowed
    assert not any("ROAD combined ↑" in d.value.columns for d in at.dataframe)
    assert "compare_faith_chart" not in {c.key for c in at.get("plotly_chart")}
    at.button(key="compare_faith_run").click().run()
    no_exception(at)
    table = next(d.value for d in at.dataframe if "ROAD combined ↑" in d.value.columns)
    assert list(table["model"]) == ["baseline", "fine-tuned"]
    assert table["ROAD combined ↑"].between(-1, 1).all() and table["deletion AUC ↓"].between(0, 1).all()
    assert "compare_faith_chart" in {c.key for c in at.get("plotly_chart")}  # the faithfulness curves
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
    # the written summary follows the ground truth set on the page, not only the data's (issue 20)
    radio = next(r for r in at.radio if r.label.startswith("Ground truth of"))
    for chosen in ("absent", "present") if radio.value == "present" else ("present", "absent"):
        radio.set_value(chosen).run()
        no_exception(at)
        radio = next(r for r in at.radio if r.label.startswith("Ground truth of"))
        shown = next(m.value for m in at.markdown if "Case type:" in m.value)
        case = re.search(r"\*\*Case type: (\w+)\*\*", shown).group(1)
        summary = next(m.value for m in at.markdown if "Summary for" in m.value).replace("\\", "")
        assert f" {chosen}; case type: {case} (by ground truth)" in summary, (chosen, summary)
    radio.set_value("unknown").run()
    summary = next(m.value for m in at.markdown if "Summary for" in m.value).replace("\\", "")
    assert " not known; case type: " in summary and "(by agreement)" in summary


def explain_a_sample(stub, monkeypatch) -> AppTest:
    """The Explain page on a held-out phantom sample, the LLM settings pointing at ``stub`` with its key."""
    monkeypatch.setenv("OPENAI_API_KEY", stub.key)
    monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
    at = page("explain").run()
    at.button(key="explain_sample").click().run()
    no_exception(at)
    return at


def test_explain_streams_from_a_local_server(app_env, shipped, monkeypatch):
    key = "sk-test-secret-123456"
    with StubLLM(key, mode="review") as stub:
        at = explain_a_sample(stub, monkeypatch)
        at.button(key="explain_go").click().run()
        no_exception(at)
        assert len(stub.requests) == 1
        shown = " ".join(m.value for m in at.markdown)
        assert "case for" in shown and "-badge[" in shown
        everything = " ".join(str(e.value) for e in at.main if hasattr(e, "value"))
        assert key not in everything


def compare_then_explain(stub, monkeypatch):
    """Compare a held-out phantom image (ground truth known), then open Explain on a label both models get
    wrong (a hard case). Returns the AppTest and the label."""
    from cxrcore.explain.review import classify_case, truth_for

    monkeypatch.setenv("OPENAI_API_KEY", stub.key)
    monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
    at = page("compare").run()
    at.toggle(key="compare_mc").set_value(False)
    at.radio(key="compare_source").set_value("A held-out phantom test image (ground truth known)").run()
    no_exception(at)
    for option in at.selectbox(key="compare_sample").options:
        at.selectbox(key="compare_sample").set_value(option).run()
        no_exception(at)
        comp = at.session_state["explain_handoff"].comparison  # ui.handoff.KEY
        hard = [x for x in comp.labels() if all(comp.label_in(n, x) for n in comp.predictions)
                and classify_case(comp.for_label(x), x, truth_for(comp.truth, x)).name == "hard"]
        if hard:
            break
    else:
        pytest.fail("no phantom test image has a label both shipped models get wrong")
    at.switch_page("views/explain.py").run()
    no_exception(at)
    at.selectbox(key="explain_label").set_value(hard[0]).run()
    no_exception(at)
    return at, hard[0], comp


def test_compare_then_explain_a_hard_case_gives_verdict_and_box_table(app_env, shipped, monkeypatch):
    with StubLLM("sk-test-secret-123456", mode="review") as stub:
        at, label, comp = compare_then_explain(stub, monkeypatch)
        assert any("Case type: hard" in m.value and "decided by the ground truth" in m.value for m in at.markdown)
        assert at.radio(key=f"explain_truth_{comp.image_hash}_{label}").value == (
            "present" if label in comp.truth else "absent")
        prompt = next(c.value for c in at.code if "Both models are wrong" in c.value)  # the prompt as sent
        assert 'baseline model "baseline (shipped demo)"' in prompt  # the models as picked on Compare
        assert any("Sent from the Compare page" in c.value for c in at.caption)
        before = set((app_env / "explanations").glob("*.json")) if (app_env / "explanations").exists() else set()
        at.button(key="explain_go").click().run()
        no_exception(at)
        assert len(stub.requests) == 1 and stub.requests[0]["body"]["messages"][0]["content"] == prompt
        shown = " ".join(m.value for m in at.markdown)
        assert "-badge[" in shown and "Verdict" in shown and "Hard case" in shown
        table = next(d.value for d in at.dataframe if "relevant" in d.value.columns)
        facts = json.loads(stub.requests[0]["body"]["messages"][1]["content"][0]["text"].split("\n", 1)[1])
        assert len(table) == sum(len(e["focus"]["boxes"]) for e in facts["models"].values()) > 0
        assert set(table["model"]) <= {"baseline", "fine-tuned"} and table["why"].str.len().gt(0).all()
        # saved with the comparison in the workspace, as JSON
        saved = set((app_env / "explanations").glob("*.json")) - before
        assert len(saved) == 1
        record = json.loads(saved.pop().read_text())
        assert record["label"] == label and record["case"]["case_type"] == "hard" and record["result"]["valid"]
        assert record["result"]["verdict"] in ("IMPROVED", "WORSE", "NO CHANGE")
        assert record["image"]["sha256_16"] == comp.image_hash and record["prompt"]["sent"] == prompt
        everything = " ".join(str(e.value) for e in at.main if hasattr(e, "value"))
        assert stub.key not in everything and stub.key not in json.dumps(record)
        # the result stays on a rerun (no second request)
        at.run()
        assert len(stub.requests) == 1 and any("-badge[" in m.value for m in at.markdown)


def test_explain_reports_an_invalid_answer_and_shows_no_verdict(app_env, shipped, monkeypatch):
    with StubLLM("sk-test-secret-123456", mode="invalid") as stub:
        at, label, _ = compare_then_explain(stub, monkeypatch)
        at.button(key="explain_go").click().run()
        no_exception(at)
        assert any("did not follow the schema" in e.value and "No verdict is shown" in e.value for e in at.error)
        shown = " ".join(m.value for m in at.markdown)
        assert "-badge[" not in shown and "Verdict" not in shown
        assert not [d for d in at.dataframe if "relevant" in d.value.columns]
        assert any("MUCH BETTER" in c.value for c in at.code)  # the raw answer, under "unvalidated"
        assert any("unvalidated" in e.label for e in at.expander)


def test_explain_prompt_template_is_editable_and_resets(app_env, shipped, monkeypatch):
    with StubLLM("sk-test-secret-123456", mode="review", reject_response_format=True) as stub:
        at, label, _ = compare_then_explain(stub, monkeypatch)
        area(at, "Template").set_value("Review ${label}: ${case_instructions}").run()
        no_exception(at)
        assert any(c.value.startswith(f"Review {label}: Both models are wrong") for c in at.code)
        area(at, "Steps for a hard case").set_value("Say why both are wrong.").run()
        assert any(c.value == f"Review {label}: Say why both are wrong." for c in at.code)
        assert any("edited prompt template" in c.value for c in at.caption)
        at.button(key="explain_go").click().run()  # a server without structured output: the fallback
        no_exception(at)
        assert [("response_format" in r["body"]) for r in stub.requests] == [True, False]
        assert stub.requests[1]["body"]["messages"][0]["content"].startswith(f"Review {label}: Say why both are wrong.")
        assert any("-badge[" in m.value for m in at.markdown)
        assert any("did not accept structured output" in c.value for c in list(at.caption) + list(at.info))
        area(at, "Template").set_value("Review ${patient_name}").run()
        no_exception(at)
        assert any("${patient_name}" in e.value and "not a placeholder" in e.value for e in at.error)
        assert not [b for b in at.button if b.key == "explain_go"]
        at.button(key="explain_reset").click().run()
        no_exception(at)
        assert not at.error and any("Both models are wrong" in c.value and "Judge every box" in c.value for c in at.code)
        assert area(at, "Steps for a hard case").value.startswith("Both models are wrong")


def area(at: AppTest, label: str):
    return next(t for t in at.text_area if t.label == label)


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
                      image_size=48, max_images=200, workers=1, threads=1), home / "runs" / "twostage")
    at = page("thresholds")
    # The run is chosen before the page first runs: the default model's predictions of the split (the shipped
    # finetuned at 192 px, about half of this test's time) are not needed here (the default model's page is
    # test_thresholds_sliders_update_metrics_and_save's).
    at.session_state["thr_model"] = "run twostage"
    at.run()
    no_exception(at)
    assert at.selectbox(key="thr_model").value == "run twostage"
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
