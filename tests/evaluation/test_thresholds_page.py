"""Streamlit AppTest runs of the Thresholds page on the shipped models: sliders, metrics, save, and a two-stage
model's gate."""
from __future__ import annotations

import json

import pytest

from conftest import app_page as page, no_exception


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
