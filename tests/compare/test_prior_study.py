"""A current film against the same patient's prior (issue 25): phantom pairs with known change, registration,
change calls, scoring against a folder of pairs, the CLI's contract, bad input."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from cxrcore.data.phantom.pairs import (LANDMARKS_FILE, PAIR_COLUMNS, PAIRS_FILE, change_of, generate_pairs,
                                        pair_labels, plan_pair, read_pairs)
from cxrcore.data.phantom.renderer import render_film
from cxrcore.errors import ConfigError
from cxrcore.labels import CHANGES
from cxrcore.prior.change import call
from cxrcore.prior.register import register
from conftest import cxr_here


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs") / "pairs"
    generate_pairs(out, 24, size=128, seed=11, workers=1)
    return out


def test_pairs_hold_their_truth_in_the_contracts_layout(pairs):
    table = pd.read_csv(pairs / PAIRS_FILE)
    assert list(table.columns) == PAIR_COLUMNS and PAIR_COLUMNS[:4] == ["prior", "current", "label", "change"]
    assert set(table["change"]) <= set(CHANGES)
    assert len(table) == 24 * len(pair_labels("nih"))
    # every change follows from the two strengths drawn, and the label table says present for either strength
    assert (table.apply(lambda r: change_of(r.prior_strength, r.current_strength), axis=1) == table["change"]).all()
    entry = pd.read_csv(pairs / "Data_Entry_2017.csv").set_index("Image Index")
    for r in table[table["change"] != "unchanged"].itertuples():
        before = entry.loc[r.prior.split("/")[-1], "Finding Labels"].split("|")
        after = entry.loc[r.current.split("/")[-1], "Finding Labels"].split("|")
        assert (r.label in before) == (r.prior_strength > 0) and (r.label in after) == (r.current_strength > 0)
    # the two films of a pair: one patient, follow-up 0 then 1, read as two studies of that patient
    from cxrcore.data.readers import read_dataset

    frame = read_dataset(pairs).frame
    per_patient = frame.groupby("patient_id")["study_id"].nunique()
    assert len(per_patient) == 24 and (per_patient == 2).all()
    # some pairs change nothing (for triage), most change something; new findings come and old ones go
    changed = table.groupby("pair")["change"].apply(lambda c: (c != "unchanged").any())
    assert 0 < (~changed).sum() < 24 and {"new", "resolved"} <= set(table["change"])
    # the truth is read back checked, and the plan is deterministic
    assert len(read_pairs(pairs)) == len(table)
    assert plan_pair(3, "nih", 11) == plan_pair(3, "nih", 11)


def test_a_finding_stays_where_it_was_and_follows_its_change(pairs):
    """A resolved finding's box is on the prior only, a new one's on the current only; a finding present on both
    films is drawn at the same place of the body (the pose differs)."""
    table = pd.read_csv(pairs / PAIRS_FILE)
    boxes = pd.read_csv(pairs / "BBox_List_2017.csv")
    names = {"Infiltration": "Infiltrate"}
    for r in table[table["change"].isin(["new", "resolved"])].itertuples():
        on = {f: set(boxes[boxes["Image Index"] == f.split("/")[-1]]["Finding Label"]) for f in (r.prior, r.current)}
        label = names.get(r.label, r.label)
        assert (label in on[r.prior]) == (r.change == "resolved")
        assert (label in on[r.current]) == (r.change == "new")
    # the same finding seed and patient, no pose change: the finding's box does not move between two films
    a = render_film({"Nodule": 1}, [1], "nih", 128, [2], finding_seed=[3])
    b = render_film({"Nodule": 1}, [9], "nih", 128, [2], finding_seed=[3])
    assert np.allclose([x[1:] for x in a[1]], [x[1:] for x in b[1]], atol=3)
    # reseeded (a device moved): drawn from the film's own stream
    c = render_film({"Support Devices": 1}, [1], "chexpert", 128, [2], finding_seed=[3])
    d = render_film({"Support Devices": 1}, [1], "chexpert", 128, [2], finding_seed=[3], reseed=["Support Devices"])
    assert c[1] != d[1]


def test_registration_recovers_a_known_pose_and_warns_on_another_chest():
    prior, _, lp = render_film({}, [5], "nih", 160, [6])
    current, _, lc = render_film({}, [5], "nih", 160, [6],
                                 pose={"rotate": 3.5, "shift_x": 0.04, "shift_y": -0.02, "zoom": 1.05})
    reg = register(prior.astype(np.float32), current.astype(np.float32))
    names = list(lp)
    p = np.array([lp[k] for k in names])
    c = np.array([lc[k] for k in names])
    before = np.linalg.norm(c - p, axis=1).mean()
    after = np.linalg.norm(reg.to_prior(c) - p, axis=1).mean()
    assert before > 6 and after < 1.5, (before, after)
    assert reg.ok and reg.ncc_after > reg.ncc_before and reg.ncc_after > 0.9
    assert abs(reg.params["rotation_deg"] - 3.5) < 1.0
    # not a chest film at all: a warning that says what is compared is unreliable
    noise = np.random.default_rng(0).random((160, 160)).astype(np.float32)
    bad = register(noise, current.astype(np.float32))
    assert not bad.ok and "unreliable" in bad.warning


@pytest.mark.parametrize("prior,current,expected", [
    (0.05, 0.90, "new"), (0.90, 0.05, "resolved"), (0.60, 0.95, "worse"), (0.95, 0.60, "better"),
    (0.50, 0.55, "unchanged"), (0.05, 0.30, "unchanged"),   # more likely but still not there on either film
    (0.30, 0.75, "new"),   # the decision threshold is 0.8 here: presence counts from 0.5 (presence())
])
def test_the_change_call(prior, current, expected):
    assert call(prior, current, threshold=0.8, change_threshold=0.1) == expected


@pytest.fixture(scope="module")
def new_effusion(shipped):
    """The baseline's reading of a patient's two films: nothing on the prior, an effusion on the current (moved)."""
    from cxrcore.data.imageio import LoadedImage
    from cxrcore.predictor import Predictor
    from cxrcore.prior.change import compare_prior

    prior, _, _ = render_film({}, [21], "nih", 192, [22], finding_seed=[23])
    current, _, _ = render_film({"Effusion": 1}, [24], "nih", 192, [22], finding_seed=[23],
                                pose={"rotate": -2.0, "shift_x": 0.02})
    films = [LoadedImage(a.astype(np.float32) / 255, "png", 8, a.shape) for a in (prior, current)]
    return compare_prior(*films, Predictor(shipped["baseline"]), "baseline", mc_samples=4), current


def test_compare_prior_calls_a_new_effusion(new_effusion):
    result, current = new_effusion
    d = result.to_dict()
    row = d["labels"]["Effusion"]
    assert row["call"] == "new" and row["delta"] > 0.3, row
    assert {"prior", "current", "delta", "call", "delta_sd", "interval", "confident"} <= set(row)
    assert d["registration"]["ok"] and d["registration"]["ncc_after"] > d["registration"]["ncc_before"]
    assert result.change_maps.shape[0] == len(result.labels) and result.subtraction.shape == current.shape
    # the change map of the new finding is warmer on the current film than it is cooler
    i = result.labels.index("Effusion")
    assert result.change_maps[i].max() > -result.change_maps[i].min()
    json.dumps(d)


def test_the_cli_contract(pairs, shipped, capsys, tmp_path):
    code, out, err = cxr_here(capsys, "phantom", "--out", tmp_path / "p", "--pairs", "--n", 3, "--seed", 4,
                              "--size", 96, "--workers", 1)
    assert code == 0, err
    assert set(pd.read_csv(tmp_path / "p" / PAIRS_FILE)["change"]) <= set(CHANGES)
    t = pd.read_csv(pairs / PAIRS_FILE)
    r = t[t["change"] != "unchanged"].iloc[0]
    code, out, err = cxr_here(capsys, "prior", pairs / r.prior, pairs / r.current, "--checkpoint",
                              shipped["baseline"], "--json", "--mc-samples", 0)
    assert code == 0, err
    d = json.loads(out)
    assert set(d) >= {"labels", "registration"}
    assert all({"prior", "current", "delta", "call"} <= set(v) and v["call"] in CHANGES for v in d["labels"].values())
    code, out, err = cxr_here(capsys, "eval-change", "--data", pairs, "--checkpoint", shipped["baseline"], "--json",
                              "--register", 2, "--n-boot", 50)
    assert code == 0, err
    d = json.loads(out)
    assert set(d["mean"]) >= {"accuracy", "change_auroc"}
    for v in d["labels"].values():
        assert {"n", "accuracy", "change_auroc"} <= set(v) and v["n"] == 24
    assert d["registration"]["landmark_error_px"]["after"]["mean"] < d["registration"]["landmark_error_px"]["before"]["mean"]
    assert 0 <= d["triage"]["no_change_triaged"] <= 1


def test_tuned_change_thresholds_are_saved_in_a_copy_and_used(pairs, shipped, tmp_path, monkeypatch):
    from cxrcore.checkpoint import read_card
    from cxrcore.eval.thresholds import save_change_thresholds
    from cxrcore.predictor import Predictor
    from cxrcore.prior.evaluate import evaluate, score_pairs, tune

    ships = tmp_path / "shipped"
    shutil.copytree(shipped["baseline"], ships / "baseline")
    monkeypatch.setenv("CXR_CHECKPOINTS", str(ships))
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    s = score_pairs(pairs, Predictor(ships / "baseline"))
    tuned = tune(s)
    assert tuned and all(0.05 <= v <= 0.8 for v in tuned.values())
    folder = save_change_thresholds(ships / "baseline", tuned, "test pairs", len(s.pairs))
    assert folder != ships / "baseline"            # a shipped model's own files are never changed
    assert read_card(ships / "baseline").metrics.get("change") == read_card(shipped["baseline"]).metrics.get("change")
    again = score_pairs(pairs, Predictor(folder))
    before = dict(zip(s.labels, s.change_thresholds))   # the shipped card's (tuned at the build), or the default
    assert again.tuned_card and dict(zip(again.labels, again.change_thresholds)) == pytest.approx(
        {x: tuned.get(x, before[x]) for x in again.labels})
    assert evaluate(again, n_boot=20)["mean"]["accuracy"] is not None


def test_bad_input_is_refused_with_what_to_do(pairs, tmp_path, shipped, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(pairs, bad)
    t = pd.read_csv(bad / PAIRS_FILE)
    t.loc[0, "change"] = "bigger"
    t.to_csv(bad / PAIRS_FILE, index=False)
    with pytest.raises(ConfigError, match="bigger.*new, resolved, worse, better, unchanged"):
        read_pairs(bad)
    t.drop(columns=["change"]).to_csv(bad / PAIRS_FILE, index=False)
    with pytest.raises(ConfigError, match="lacks the column"):
        read_pairs(bad)
    with pytest.raises(ConfigError, match="no pairs.csv"):
        read_pairs(tmp_path)
    with pytest.raises(ConfigError, match="out of range"):
        render_film({}, [1], "nih", 128, pose={"zoom": 4})
    (tmp_path / "notes.png").write_text("not an image")
    code, out, err = cxr_here(capsys, "prior", tmp_path / "notes.png", pairs / "images" / "00000001_001.png",
                              "--checkpoint", shipped["baseline"])
    assert code == 2 and "error:" in err and "Traceback" not in err
    code, out, err = cxr_here(capsys, "phantom", "--out", tmp_path / "x", "--pairs", "--label-noise", 0.1)
    assert code == 2 and "--label-noise" in err and not (tmp_path / "x").exists()
    assert (pairs / LANDMARKS_FILE).is_file()


def test_the_llm_reads_the_pair_with_the_same_checks(new_effusion):
    """The pair's facts and panel go to a local OpenAI-compatible server; its structured answer is validated against
    the schema and the facts (labels and calls as sent); a server without structured output gets the schema in the
    prompt; a wrong answer is refused with the reason; the key is never in what comes back."""
    from llm_stub import StubLLM, change_answer, sent_facts

    from cxrcore.explain.llm import LLMConfig
    from cxrcore.explain.review import review_events, with_heartbeat
    from cxrcore.explain.visual import png_bytes
    from cxrcore.prior.explain import (ChangeReview, change_facts, change_prompt, change_summary,
                                       validate_change_answer)
    from cxrcore.prior.pictures import change_panel

    result, current = new_effusion
    facts = change_facts(result)
    assert facts["label"] == "Effusion" and facts["changes"][0]["call"] == "new" and len(facts["changes"]) >= 3
    panel = png_bytes(change_panel(result.prior.image.pixels, current / 255, result, facts["label"]))
    for reject in (False, True):
        with StubLLM("sk-test-secret-123456", mode="review", reject_response_format=reject) as stub:
            config = LLMConfig(api_key="sk-test-secret-123456", base_url=stub.base_url, model="stub", timeout=30)
            events = list(with_heartbeat(lambda stop: review_events(panel, facts, change_prompt(facts), config, stop,
                                                                    ChangeReview, validate_change_answer)))
            outcome = events[-1].outcome
            assert outcome.valid, outcome.error
            assert outcome.mode == ("prompt" if reject else "structured")
            assert outcome.review.verdict == "WORSE"
            assert {j.label: j.model_call for j in outcome.review.changes}["Effusion"] == "new"
            assert sent_facts(stub.requests[-1]["body"]) == json.loads(json.dumps(facts))
            assert "sk-test-secret" not in json.dumps(outcome.to_dict())
    wrong = json.loads(change_answer(facts))
    wrong["changes"][0]["model_call"] = "resolved"
    bad = validate_change_answer(json.dumps(wrong), facts)
    assert not bad.valid and "call wrongly" in bad.error
    wrong["changes"][0].update(model_call="new", label="Hernia of the soul")
    assert "not among the labels sent" in validate_change_answer(json.dumps(wrong), facts).error
    backwards = json.loads(change_answer(facts))
    backwards["verdict"] = "IMPROVED"
    assert any("goes against" in n for n in validate_change_answer(json.dumps(backwards), facts).notes)
    assert "Effusion new" in change_summary(facts)
