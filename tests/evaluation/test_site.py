"""Site profiles (issue 23 §1, cxrcore/eval/site.py, `cxr site fit`, `--site S`): a model recalibrated for a new
hospital on a small labelled sample. On data with a known miscalibration the fitted temperature's bootstrap interval
holds the truth and the intervals narrow as the sample grows; a label the sample cannot fit keeps the card's
threshold; on the phantom of the other domain the profile is saved in the workspace's copy (the shipped model
untouched) and `predict`, `eval` and `score` with `--site` use its thresholds and say so."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import FORMATS, cxr_here


def _miscalibrated(n: int, true_t: float, seed: int, prevalence: float = 0.3):
    """Targets drawn from calibrated probabilities sigmoid(z); the model says sigmoid(true_t * z): over-confident
    by the factor ``true_t`` (the temperature that undoes it)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(np.log(prevalence / (1 - prevalence)), 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    return y, 1 / (1 + np.exp(-true_t * z))


def test_the_temperature_interval_holds_the_truth_and_narrows_with_the_sample():
    from cxrcore.eval.site import fit_site

    y1, p1 = _miscalibrated(1600, 2.0, seed=1)
    y2, p2 = _miscalibrated(1600, 0.7, seed=2)
    constant = np.zeros(1600)                 # a label with no positive case at this site
    targets, probs = np.stack([y1, y2, constant], 1), np.stack([p1, p2, p1], 1)
    patients = np.repeat(np.arange(800), 2)   # two films per patient: the bootstrap draws patients
    profile = fit_site("north", ["A", "B", "C"], targets, probs, {"A": 0.5, "B": 0.4, "C": 0.6},
                       patient_ids=patients, fitted_on="synthetic", n_boot=100, curve_boot=30)
    a, b, c = profile.labels["A"], profile.labels["B"], profile.labels["C"]
    assert a["fitted"] and a["temperature_ci"][0] <= 2.0 <= a["temperature_ci"][1]
    assert b["fitted"] and b["temperature_ci"][0] <= 0.7 <= b["temperature_ci"][1]
    assert a["threshold_ci"][0] <= a["threshold"] <= a["threshold_ci"][1]
    assert a["after"]["ece"] < a["before"]["ece"] and b["after"]["ece"] < b["before"]["ece"]
    assert not c["fitted"] and c["threshold"] is None and c["card_threshold"] == 0.6
    assert profile.thresholds().keys() == {"A", "B"} and profile.n == 1600
    widths = [row["temperature_ci_width"] for row in profile.curve]
    assert [row["n"] for row in profile.curve] == [50, 100, 200, 400, 800, 1600]
    assert widths[-1] < widths[0] / 2          # 32 times the cases: a much narrower interval
    json.dumps(profile.to_dict())              # what the card stores is JSON


def test_a_sample_too_small_or_a_rule_without_its_target_is_refused():
    from cxrcore.errors import DataError
    from cxrcore.eval.site import fit_site

    y, p = _miscalibrated(19, 1.0, seed=3)
    with pytest.raises(DataError, match="at least 20 labelled cases"):
        fit_site("s", ["A"], y[:, None], p[:, None], {})
    y, p = _miscalibrated(100, 1.0, seed=3)
    with pytest.raises(DataError, match="needs a target"):
        fit_site("s", ["A"], y[:, None], p[:, None], {}, strategy="target sensitivity")


def test_a_card_used_at_a_site_has_the_profiles_thresholds_and_temperatures(shipped):
    from cxrcore.checkpoint import read_card
    from cxrcore.errors import CheckpointError

    card = read_card(shipped["finetuned"])
    label = card.labels[0]
    card.sites = {"north": {"fitted_on": "north sample", "n": 300, "labels": {
        label: {"fitted": True, "threshold": 0.123, "temperature": 1.7},
        card.labels[1]: {"fitted": False, "threshold": None, "temperature": None}}}}
    at = card.with_site("north")
    assert at.thresholds[label] == 0.123 and at.thresholds[card.labels[1]] == card.thresholds[card.labels[1]]
    assert at.temperature_list()[0] == 1.7 and at.temperature_list()[1] == 1.0
    assert at.metrics["site"] == {"name": "north", "fitted_on": "north sample", "n": 300, "labels": [label]}
    assert at.sha256() != card.sha256() and card.thresholds[label] != 0.123   # a view: the card itself unchanged
    assert card.with_site(None) is card and card.with_site("") is card
    with pytest.raises(CheckpointError, match="no site profile 'south'; its profiles: north"):
        card.with_site("south")


def test_cxr_site_fit_on_the_other_domain_and_site_on_predict_eval_score(shipped, tmp_path, monkeypatch, capsys):
    from cxrcore.checkpoint import read_card
    from cxrcore.data.phantom import generate

    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    sample = tmp_path / "north"
    generate(sample, n=300, domain="nih", seed=11)   # the other domain: the model saw CheXpert phantoms
    shipped_card = read_card(shipped["finetuned"]).sha256()
    code, out, err = cxr_here(capsys, "site", "fit", "--checkpoint", shipped["finetuned"], "--data", sample,
                              "--name", "north", "--n-boot", "50", "--json")
    assert code == 0, err
    fitted = json.loads(out)
    copy = tmp_path / "home" / "checkpoints" / "finetuned"
    assert fitted["card"] == str(copy / "card.json") and fitted["n"] == 300
    assert read_card(shipped["finetuned"]).sha256() == shipped_card      # the shipped model untouched
    site = read_card(copy).sites["north"]
    used = {x: v for x, v in site["labels"].items() if v["fitted"]}
    assert "Pleural Effusion" in used and not site["labels"]["Lung Opacity"]["fitted"]   # NIH has no such label
    code, out, _ = cxr_here(capsys, "site", "list", "--checkpoint", copy)
    assert code == 0 and out.startswith("north: fitted on north (all, 300 images), max F1")

    code, out, err = cxr_here(capsys, "predict", FORMATS / "00000001_000.png", "--checkpoint", copy, "--site", "north",
                              "--json")
    assert code == 0, err
    answer = json.loads(out)
    assert answer["site"]["name"] == "north" and sorted(answer["site"]["labels"]) == sorted(used)
    for x, v in used.items():
        assert answer["thresholds"][x] == pytest.approx(v["threshold"], abs=1e-6)
        assert answer["predictions"][x]["positive"] == (answer["probabilities"][x] >= v["threshold"])
    code, _, err = cxr_here(capsys, "predict", FORMATS / "00000001_000.png", "--checkpoint", shipped["finetuned"],
                            "--site", "north")
    assert code == 2 and f"use --checkpoint {copy}" in err

    code, out, err = cxr_here(capsys, "eval", "--checkpoint", copy, "--data", sample, "--split", "test", "--site",
                              "north", "--n-boot", "20", "--json", "--out", tmp_path / "eval")
    assert code == 0, err
    result = json.loads(out)
    assert result["site"]["name"] == "north"
    assert result["per_label"]["Pleural Effusion"]["threshold"] == pytest.approx(used["Pleural Effusion"]["threshold"])

    images = tmp_path / "films"
    images.mkdir()
    for p in sorted((sample / "images").glob("*.png"))[:20]:
        shutil.copy(p, images / p.name)
    code, out, err = cxr_here(capsys, "score", images, "--checkpoint", copy, "--site", "north", "--out",
                              tmp_path / "s.parquet", "--json", "--runtime", "torch")
    assert code == 0, err
    table = pd.read_parquet(tmp_path / "s.parquet")
    assert (table["site"] == "north").all()
    t = used["Pleural Effusion"]["threshold"]
    assert (table["Pleural Effusion call"] == (table["Pleural Effusion"] >= t)).all()


def test_the_rest_service_answers_as_used_at_a_site_and_the_served_model_stays_as_it_was(shipped, tmp_path):
    """POST /predict's `site` (cxrcore/api): the answer's thresholds and calls are the profile's and its `site`
    names it; another request without a site gets the card's own (the served predictor is shared by every request:
    a site is a view of it, never a change); an unknown site is a 404 naming the profiles there are."""
    import base64

    from cxrcore.api.service import ApiError, Service
    from cxrcore.checkpoint import read_card
    from cxrcore.eval.thresholds import save_site

    model = tmp_path / "model"
    shutil.copytree(shipped["finetuned"], model)
    card = read_card(model)
    label = "Pleural Effusion"
    save_site(model, "north", {"fitted_on": "north sample", "n": 300, "labels": {
        label: {"fitted": True, "threshold": 0.0123, "temperature": 2.0}}})
    service = Service([model])
    image = base64.b64encode((FORMATS / "00000001_000.png").read_bytes()).decode()
    at_site = service.predict({"image": image, "site": "north"})
    plain = service.predict({"image": image})
    assert at_site["site"]["name"] == "north" and plain["site"] is None
    assert at_site["thresholds"][label] == pytest.approx(0.0123) and plain["thresholds"][label] == card.thresholds[label]
    assert at_site["predictions"][label]["positive"] and at_site["probabilities"] == plain["probabilities"]
    assert at_site["calibrated_probabilities"][label] != pytest.approx(plain.get("calibrated_probabilities", {}).get(
        label, at_site["probabilities"][label]))
    assert service.health()["sites"] == {service.default: ["north"]}
    with pytest.raises(ApiError) as caught:
        service.predict({"image": image, "site": "south"})
    assert caught.value.status == 404 and "its profiles: north" in caught.value.message


def test_compare_shows_a_models_calls_at_a_site(app_home, shipped, tmp_path, monkeypatch):
    """The Compare page (AppTest): a model whose card holds a site profile gets a "Site profile" picker; chosen, its
    thresholds are the profile's, the page says which profile it uses, and the other model stays as it was."""
    from conftest import app_page, fresh_workspace, no_exception
    from cxrcore.checkpoint import read_card
    from cxrcore.eval.thresholds import save_site

    home = fresh_workspace(app_home, tmp_path / "home")
    monkeypatch.setenv("CXR_HOME", str(home))
    label = "Pleural Effusion"
    where = save_site(shipped["finetuned"], "north", {"fitted_on": "north sample", "n": 300, "labels": {
        label: {"fitted": True, "threshold": 0.0123, "temperature": 2.0}}})
    assert where == home / "checkpoints" / "finetuned"   # the workspace's copy: the shipped model untouched
    at = app_page("compare").run()
    no_exception(at)
    at.radio(key="compare_source").set_value("A held-out phantom test image (ground truth known)").run()
    no_exception(at)
    before = at.dataframe[0].value.set_index("label")
    assert "compare_base_site" not in at.session_state                  # the baseline has no profile: no picker
    at.selectbox(key="compare_tuned_site").set_value("north").run()
    no_exception(at)
    table = at.dataframe[0].value.set_index("label")
    own = read_card(shipped["finetuned"]).thresholds[label]
    row = "Effusion"   # the table's rows take the baseline's (NIH) spelling of a finding both models have
    p = table.loc[row, "fine-tuned p"]
    assert p == pytest.approx(before.loc[row, "fine-tuned p"])                # the same model, the same output
    assert bool(table.loc[row, "fine-tuned positive"]) == (p >= 0.0123)        # the site's threshold
    assert bool(before.loc[row, "fine-tuned positive"]) == (p >= own)          # the card's
    others = [x for x in table.index if x != row]
    assert (table.loc[others, "fine-tuned positive"].fillna(-1)
            == before.loc[others, "fine-tuned positive"].fillna(-1)).all()
    assert (table["baseline positive"].fillna(-1) == before["baseline positive"].fillna(-1)).all()
    assert any("used at site **north**" in i.value for i in at.info), [i.value for i in at.info]


def test_thresholds_page_at_a_site_starts_at_its_thresholds_and_saves_into_the_profile(app_home, shipped, tmp_path,
                                                                                        monkeypatch):
    """The Thresholds page (AppTest) with a site profile chosen: its sliders start at the profile's thresholds (a
    label the profile did not fit at the card's), the table's calls follow them, and Save writes the moved
    thresholds into the profile, marked as set by hand, the fitted value kept beside; the card's own thresholds
    and the shipped model are unchanged, and the model used at the site calls at the saved threshold."""
    from conftest import app_page, fresh_workspace, no_exception
    from cxrcore.checkpoint import read_card
    from cxrcore.eval.thresholds import save_site

    home = fresh_workspace(app_home, tmp_path / "home")
    monkeypatch.setenv("CXR_HOME", str(home))
    shipped_card = read_card(shipped["baseline"])
    save_site(shipped["baseline"], "north", {"fitted_on": "north sample", "n": 300, "labels": {
        "Effusion": {"fitted": True, "threshold": 0.21, "temperature": 1.5},
        "Atelectasis": {"fitted": False, "n": 0}}})
    copy = home / "checkpoints" / "baseline"
    at = app_page("thresholds")
    at.session_state["thr_model"] = next(k for k in _choices() if k.startswith("baseline"))
    at.run()
    no_exception(at)
    at.selectbox(key="thr_site").set_value("north").run()
    no_exception(at)
    sliders = {s.label: s for s in at.slider}
    assert sliders["Effusion"].value == pytest.approx(0.21)
    assert sliders["Atelectasis"].value == pytest.approx(shipped_card.thresholds["Atelectasis"], abs=0.01)
    assert at.button(key="thr_save").label == "Save thresholds to site profile north"
    sliders["Effusion"].set_value(0.3).run()
    table = at.dataframe[0].value.set_index("label")
    assert table.loc["Effusion", "threshold"] == pytest.approx(0.3)
    at.button(key="thr_save").click().run()
    no_exception(at)
    assert any("site profile north" in s.value for s in at.success), [s.value for s in at.success]
    card = read_card(copy)
    saved = card.sites["north"]["labels"]["Effusion"]
    assert saved["threshold"] == pytest.approx(0.3) and saved["fitted_threshold"] == pytest.approx(0.21)
    assert saved["edited"]["by"] == "hand" and saved["temperature"] == 1.5
    assert "Cardiomegaly" not in card.sites["north"]["labels"]                # a slider left alone records nothing
    assert card.thresholds == shipped_card.thresholds                         # the model's own: unchanged
    assert read_card(shipped["baseline"]).sha256() == shipped_card.sha256()  # the shipped model: untouched
    assert card.with_site("north").thresholds["Effusion"] == pytest.approx(0.3)

    # the Evaluation page at the site: the operating metrics at the site's thresholds, and it says so
    ev = app_page("evaluation")
    ev.session_state["eval_model"] = at.selectbox(key="thr_model").value
    ev.run()
    ev.selectbox(key="eval_site").set_value("north")
    ev.selectbox(key="eval_compare").set_value("(no comparison)")
    ev.selectbox(key="eval_data").set_value(next(o for o in ev.selectbox(key="eval_data").options if "nih" in o))
    ev.selectbox(key="eval_split").set_value("val")
    ev.number_input(key="eval_nboot").set_value(20)
    ev.button(key="eval_run").click().run()
    no_exception(ev)
    assert any("evaluated as used at site **north**" in i.value for i in ev.info), [i.value for i in ev.info]
    per_label = next(d.value for d in ev.dataframe if "threshold" in d.value.columns).set_index("label")
    assert per_label.loc["Effusion", "threshold"] == pytest.approx(0.3)
    assert per_label.loc["Cardiomegaly", "threshold"] == pytest.approx(shipped_card.thresholds["Cardiomegaly"],
                                                                      abs=5e-4)   # the table shows 3 decimals


def _choices():
    from ui.common import checkpoint_choices   # the names the pages' pickers show

    return checkpoint_choices()



def test_a_profiles_table_and_thresholds_set_by_hand():
    """What the Thresholds page shows of a fitted profile (profile_table) and what its Save writes
    (with_thresholds): a moved threshold is marked as set by hand with its fitted value kept, an unmoved one stays
    fitted, a label the profile did not fit gets a site threshold; the card at the site uses them."""
    from cxrcore.eval.site import fit_site, profile_table, with_thresholds
    from cxrcore.models.card import Card

    y, p = _miscalibrated(400, 2.0, seed=3)
    profile = fit_site("north", ["A", "B"], np.stack([y, np.full(400, np.nan)], 1), np.stack([p, p], 1),
                       {"A": 0.5, "B": 0.5}, n_boot=20).to_dict()
    rows = {r["label"]: r for r in profile_table(profile)}
    assert re.fullmatch(r"\d\.\d\d \[\d\.\d\d, \d\.\d\d\]", rows["A"]["temperature"])
    assert re.fullmatch(r"0\.\d{3} → 0\.\d{3}", rows["A"]["ECE before → after"])
    assert rows["B"]["temperature"] == "not fitted" and "no label in the sample" in rows["B"]["threshold"]
    fitted = profile["labels"]["A"]["threshold"]
    same = with_thresholds(profile, {"A": fitted}, "page")
    assert "edited" not in same["labels"]["A"]
    moved = with_thresholds(profile, {"A": 0.9, "B": 0.7}, "Thresholds page, val split of D")
    assert moved["labels"]["A"]["fitted_threshold"] == fitted and moved["labels"]["A"]["edited"]["by"] == "hand"
    assert profile["labels"]["A"]["threshold"] == fitted                       # the stored one is a copy
    assert "0.700 (set by hand)" == {r["label"]: r for r in profile_table(moved)}["B"]["threshold"]
    card = Card(labels=["A", "B"], model={}, preprocess={}, thresholds={"A": 0.5, "B": 0.5}, sites={"north": moved})
    at = card.with_site("north")
    assert at.thresholds == {"A": 0.9, "B": 0.7} and card.thresholds == {"A": 0.5, "B": 0.5}
    assert at.metrics["calibration"]["temperatures"] == {"A": profile["labels"]["A"]["temperature"]}


def test_cxr_site_fit_on_a_reader_studys_truth(app_home, shipped, tmp_path, monkeypatch, capsys):
    """`cxr site fit --reader-study STUDY`: the study's cases predicted, its findings' truth matched to the model's
    labels; the model's other labels, without truth there, are not fitted; giving both --data and --reader-study
    (or neither) is refused."""
    from conftest import fresh_workspace
    from cxrcore.readerstudy.design import StudyDesign
    from cxrcore.readerstudy.setup import cases_from_dataset
    from cxrcore.readerstudy.store import StudyStore

    home = fresh_workspace(app_home, tmp_path / "home")
    monkeypatch.setenv("CXR_HOME", str(home))
    data = next((home / "datasets").glob("phantom-nih-*"))
    cases, source = cases_from_dataset(data, ["Effusion"], split="test", sampling="stratified", n=15, seed=3)
    study = StudyStore().create(StudyDesign("ward films", ("Effusion",), design="unaided"), cases, owner="organiser",
                                source=source)
    code, out, err = cxr_here(capsys, "site", "fit", "--checkpoint", shipped["baseline"], "--reader-study", study.id,
                              "--name", "ward", "--n-boot", "20", "--json")
    assert code == 0, err
    profile = json.loads(out)
    assert profile["n"] == len(cases) == 30 and profile["fitted_on"].startswith("reader study ward films (30 cases")
    assert profile["labels"]["Effusion"]["fitted"] and profile["labels"]["Effusion"]["positives"] == 15
    assert not profile["labels"]["Cardiomegaly"]["fitted"] and profile["labels"]["Cardiomegaly"]["n"] == 0
    code, _, err = cxr_here(capsys, "site", "fit", "--checkpoint", shipped["baseline"], "--reader-study", study.id,
                            "--data", data, "--name", "ward")
    assert code == 2 and "one of the two" in err
