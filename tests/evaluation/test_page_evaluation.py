"""Streamlit AppTest runs of the Evaluation page (through app.py) on the shipped models and real data."""
from __future__ import annotations

import numpy as np
from streamlit.testing.v1 import AppTest

from conftest import NIH_SAMPLE, app_page, no_exception
from cxrcore.mdtext import md_text

TIMEOUT = 300


def page() -> AppTest:
    return app_page("evaluation", TIMEOUT)


def table_with(at: AppTest, column: str):
    """The first table with ``column`` (dataframe keys are not exposed to AppTest here)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def pick(at: AppTest, key: str, startswith: str) -> None:
    box = at.selectbox(key=key)
    box.set_value(next(o for o in box.options if o.startswith(startswith)))


def test_evaluation_with_comparison_and_case_browser(app_env, shipped):
    at = page().run()
    no_exception(at)
    assert any("Evaluate" in i.value for i in at.info)
    pick(at, "eval_model", "baseline (shipped demo)")
    pick(at, "eval_compare", "finetuned (shipped demo)")
    pick(at, "eval_data", "phantom chexpert")
    at.selectbox(key="eval_split").set_value("test")
    at.number_input(key="eval_nboot").set_value(50)
    at.button(key="eval_run").click().run()
    no_exception(at)
    assert not at.error, [e.value for e in at.error]

    table = table_with(at, "AUPRC low")
    assert len(table) == 14
    for m in ("AUROC", "AUPRC"):
        ok = table[[m, f"{m} low", f"{m} high"]].dropna()
        assert len(ok) >= 5
        assert (ok[f"{m} low"] <= ok[m] + 1e-9).all() and (ok[m] <= ok[f"{m} high"] + 1e-9).all()

    cmp = table_with(at, "ΔAUROC")
    assert len(cmp) == 7
    assert {"ΔAUROC", "Δ low", "Δ high", "DeLong p"} <= set(cmp.columns)
    assert cmp["ΔAUROC"].notna().all() and cmp["DeLong p"].between(0, 1).all()

    # buckets: every test case with a known value for the label lands in exactly one
    label = at.selectbox(key="eval_case_label").value
    counts = {m.label: int(m.value) for m in at.metric if m.label in ("easy", "average", "hard")}
    assert set(counts) == {"easy", "average", "hard"}
    n_known = int(table.set_index("label").loc[label, "n"])
    assert sum(counts.values()) == n_known > 0

    # browse a bucket with cases: input + both overlays
    bucket = next(b for b in ("hard", "average", "easy") if counts[b])
    at.radio(key="eval_bucket").set_value(bucket).run()
    no_exception(at)
    case = at.selectbox(key="eval_case")
    case.select_index(len(case.options) - 1).run()
    no_exception(at)
    assert len(at.get("image")) == 3

    keys = {b.key for b in at.get("download_button")}
    assert {"eval_dl_csv", "eval_dl_json", "eval_dl_html"} <= keys

    # the case goes to Explain with its image, both models (Model as the baseline) and its ground truth
    at.button(key="eval_send_explain").click().run()
    no_exception(at)
    assert any(t.value == "Explain a comparison" for t in at.title)
    assert any("Sent from the Evaluation case browser" in c.value and "baseline: baseline (shipped demo)" in c.value
               and "fine-tuned: finetuned (shipped demo)" in c.value for c in at.caption)
    assert at.selectbox(key="explain_label").value == label
    comp = at.session_state["explain_handoff"].comparison  # ui.handoff.KEY
    assert list(comp.predictions) == ["baseline", "fine-tuned"]
    assert str(shipped["baseline"]) == comp.model_paths["baseline"]
    truth = next(r for r in at.radio if r.label == f"Ground truth of {md_text(label)}")  # a label: escaped
    assert truth.value == ("present" if label in comp.truth else "absent")
    assert any(f"Case type: {bucket}" in m.value and "decided by the ground truth" in m.value for m in at.markdown)

    # the bucket goes to a reader study: the Reader study page opens on its cases with their ground truth
    at.switch_page("views/evaluation.py").run()
    no_exception(at)
    at.selectbox(key="eval_case_label").set_value(label).run()   # widgets left with a page start anew
    at.radio(key="eval_bucket").set_value(bucket).run()
    n_bucket = counts[bucket]
    at.button(key="eval_to_study").click().run()
    no_exception(at)
    assert any(t.value == "Reader study" for t in at.title)
    assert at.radio(key="rs_source").value == "the Evaluation case browser"
    assert at.multiselect(key="rs_findings").value == [label]
    captions = [c.value.replace("\\", "") for c in at.caption]   # the origin is shown escaped (md_text)
    assert any(f"{n_bucket} cases from the Evaluation case browser: {bucket} cases for {label}" in c
               for c in captions), captions
    at.switch_page("views/reader_study.py").run()   # AppTest's next runs: this page (its st.switch_page went there)
    assert at.radio(key="rs_source").value == "the Evaluation case browser"
    at.text_input(key="rs_name").input("from the case browser")
    at.radio(key="rs_design").set_value("unaided")
    at.run()
    at.button(key="rs_create").click().run()
    no_exception(at)
    assert any(f"set up with {n_bucket} cases" in m.value for m in at.success)
    from cxrcore.readerstudy.store import StudyStore

    store = StudyStore()
    study = next(x for x in store.studies() if x.name == "from the case browser")
    stored = store.cases(study.id)
    assert len(stored) == n_bucket and all(set(c.truth) == {label} for c in stored)
    assert study.source["kind"] == "evaluation case browser"


def test_missing_folder_is_an_error_not_a_crash(app_env, shipped):
    at = page().run()
    at.selectbox(key="eval_data").set_value("A folder path…").run()
    at.text_input(key="eval_folder").set_value("/no/such/folder/anywhere").run()
    at.button(key="eval_run").click().run()
    no_exception(at)
    assert any("does not exist" in e.value for e in at.error), [e.value for e in at.error]
    # the page keeps working: a valid evaluation after the error
    pick(at, "eval_data", "phantom chexpert")
    at.selectbox(key="eval_compare").set_value("(no comparison)")
    at.number_input(key="eval_nboot").set_value(20)
    at.button(key="eval_run").click().run()
    no_exception(at)
    assert len(table_with(at, "AUPRC low")) == 14


def evaluate_baseline_on_nih_sample(n_boot: int) -> AppTest:
    """The page after evaluating the shipped baseline alone on every image of the real NIH sample."""
    at = page().run()
    pick(at, "eval_model", "baseline (shipped demo)")
    at.selectbox(key="eval_compare").set_value("(no comparison)")
    at.selectbox(key="eval_data").set_value("A folder path…").run()
    at.text_input(key="eval_folder").set_value(str(NIH_SAMPLE))
    at.selectbox(key="eval_split").set_value("all")
    at.number_input(key="eval_nboot").set_value(n_boot)
    at.button(key="eval_run").click().run()
    return at


def test_real_nih_sample_gives_wide_intervals(app_env, shipped):
    at = evaluate_baseline_on_nih_sample(50)
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    table = table_with(at, "AUPRC low")
    assert len(table) == 14
    ok = table[["AUROC", "AUROC low", "AUROC high"]].dropna()
    assert len(ok) >= 5
    assert float(np.mean(ok["AUROC high"] - ok["AUROC low"])) > 0.1
    # no second model: the case browser shows one model (two buckets)
    assert {m.label for m in at.metric} >= {"easy", "hard"}


def test_subgroup_gaps_from_the_real_evaluation(app_env, shipped, tmp_path):
    """The Subgroups panel renders run_evaluation's own records: the AUROC gap per label across the
    groups of one kind (sex, age band, view), largest first; only the largest gaps are highlighted,
    on the page and in the HTML report."""
    from cxrcore.eval.evaluate import run_evaluation
    from cxrcore.eval.report import html_report
    from cxrcore.eval.subgroups import gap_table, top_gaps

    result, data = run_evaluation(str(shipped["baseline"]), NIH_SAMPLE, "all", 20)
    kinds = {r["kind"] for r in result["subgroups"]}
    assert {"sex", "age band", "view"} <= kinds
    expected = gap_table(result["subgroups"])
    assert len(expected) >= 5 and expected["gap"].is_monotonic_decreasing
    flagged = top_gaps(expected)
    assert 0 < flagged.sum() <= 3 < len(expected)  # the largest gaps only, not every row
    # the gap is the spread between the groups of one kind, for one label
    first = expected.iloc[0]
    groups = [r for r in result["subgroups"] if r["kind"] == first["kind"] and r["label"] == first["label"]
              and r["enough_positives"] and r["auroc"] is not None]
    assert np.isclose(first["gap"], max(g["auroc"] for g in groups) - min(g["auroc"] for g in groups))

    at = evaluate_baseline_on_nih_sample(20)
    no_exception(at)
    shown = table_with(at, "lowest AUROC")
    assert shown[["kind", "label"]].values.tolist() == expected[["kind", "label"]].values.tolist()
    assert np.allclose(shown["gap"], expected["gap"])
    caption = " ".join(c.value for c in at.caption)
    assert f"Highlighted: the {int(flagged.sum())} largest gap(s)" in caption

    report = html_report(result, data)
    assert "<h2>Subgroups</h2>" in report and report.count("<tr class='flag'>") == int(flagged.sum())


def test_localization_on_the_real_nih_boxes(app_env, shipped):
    """The 24 real radiologist boxes of the NIH sample: the page scores them like `cxr localize`."""
    at = evaluate_baseline_on_nih_sample(20)
    at.number_input(key="eval_loc_faith_n").set_value(0)   # faithfulness: its own test below
    at.button(key="eval_loc_run").click().run()
    no_exception(at)
    table = table_with(at, "pointing")
    rows = table.set_index("label")
    assert rows.loc["all boxes", "boxes"] == 24  # 23 Pneumonia + 1 Infiltrate (= Infiltration)
    assert rows.loc["Pneumonia", "boxes"] == 23
    assert rows[["IoU ≥ 0.1", "IoBB ≥ 0.25", "pointing", "chance"]].apply(lambda c: c.between(0, 1)).all().all()


def test_localization_methods_side_by_side_with_gated_hit_rate_and_faithfulness(app_env, shipped):
    """Two CAM methods per label, cheXlocalize's gated hit rate at a cut-off of 1 (every pair gated out) and
    ROAD / deletion / insertion on the first image of each label, on the first 16 images with boxes (the page's
    "Images with boxes" limit). They are all Pneumonia: one label, so two faithfulness scores of about 4 s of CPU
    each instead of four. Every box on the page: the test above; two labels' faithfulness side by side: `cxr
    localize` in test_faithfulness (the same localize call)."""
    at = evaluate_baseline_on_nih_sample(20)
    at.multiselect(key="eval_loc_methods").set_value(["GradCAM", "HiResCAM"])
    at.selectbox(key="eval_loc_gate_kind").set_value("one probability").run()
    at.number_input(key="eval_loc_gate").set_value(1.0)
    at.number_input(key="eval_loc_faith_n").set_value(1)
    at.number_input(key="eval_loc_max").set_value(16)
    at.button(key="eval_loc_run").click().run()
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    assert any(c.value == "GradCAM: 16 images (the first 16 with boxes)" for c in at.caption), \
        [c.value for c in at.caption]
    side = table_with(at, "ROAD combined ↑")
    assert set(side["method"]) == {"GradCAM", "HiResCAM"}
    rows = side.set_index(["label", "method"])
    assert set(rows.index) == {(x, m) for x in ("Pneumonia", "all boxes") for m in ("GradCAM", "HiResCAM")}
    assert rows.loc[("all boxes", "HiResCAM"), "boxes"] == 16
    assert (side["gated hit rate"] == 0).all() and (side["pairs gated out"] == side["pairs"]).all()
    assert side["hit rate"].between(0, 1).all() and side["faithfulness n"].ge(1).all()
    assert side["ROAD combined ↑"].between(-1, 1).all() and side["insertion AUC ↑"].between(0, 1).all()
    captions = " ".join(c.value for c in at.caption)
    assert "p = 1" in captions and "higher = more faithful" in captions


def test_saved_temperatures_give_calibrated_probabilities(app_env, shipped, tmp_path, capsys):
    """`cxr eval --save-calibration` (through its main in this process) stores val-fitted temperatures;
    predictions then carry calibrated probs."""
    import json

    from cxrcore.demo import app_data
    from cxrcore.predictor import Predictor
    from conftest import FORMATS, cxr_here

    code, _, err = cxr_here(capsys, "eval", "--checkpoint", shipped["finetuned"], "--data", app_data()["chexpert"],
                            "--split", "test", "--n-boot", "20", "--out", tmp_path / "ev", "--save-calibration", "--json")
    assert code == 0, err
    saved = app_env / "checkpoints" / "finetuned"
    temps = json.loads((saved / "card.json").read_text())["metrics"]["calibration"]["temperatures"]
    assert len(temps) == 14 and all(t > 0 for t in temps.values())
    assert "temperatures" not in json.dumps(json.loads((shipped["finetuned"] / "card.json").read_text()))
    pred = Predictor(saved).predict(FORMATS / "00000001_000.png", heatmaps=False)
    assert pred.calibrated is not None and pred.calibrated.shape == pred.probs.shape
    j = [pred.labels.index(x) for x, t in temps.items() if abs(t - 1) > 0.05]
    assert j and not np.allclose(pred.calibrated[j], pred.probs[j])
    assert "calibrated_probabilities" in pred.to_dict()
