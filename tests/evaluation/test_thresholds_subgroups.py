"""Target-sensitivity / -specificity thresholds, subgroup metrics, evaluate()'s subgroups section and
the Thresholds page's "Set all by target sensitivity"."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from conftest import REPO
from cxrcore.eval.metrics import confusion_at
from cxrcore.eval.subgroups import gap_table, subgroup_metrics, top_gaps
from cxrcore.eval.thresholds import (STRATEGIES, ThresholdSweep, snap, suggest_thresholds,
                                     target_sensitivity_thresholds, target_specificity_thresholds)


def _random(seed, n=300, L=6, ties=False):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, L)) < rng.uniform(0.05, 0.5, L)).astype(float)
    s = np.clip(0.5 * y + rng.normal(0.3, 0.25, (n, L)), 0, 1)
    if ties:
        s = np.round(s, 1)
    y[rng.random((n, L)) < 0.1] = np.nan  # unlabelled
    return y, s


def _rates(y, s, t):
    pred = s >= t
    sens = (pred & (y == 1)).sum() / (y == 1).sum()
    spec = (~pred & (y == 0)).sum() / (y == 0).sum()
    return sens, spec


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, False), (3, True)])
@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 1.0])
def test_target_thresholds_match_brute_force(seed, ties, target):
    y, s = _random(seed, ties=ties)
    t_sens = target_sensitivity_thresholds(y, s, target=target)
    t_spec = target_specificity_thresholds(y, s, target=target)
    for j in range(y.shape[1]):
        m = ~np.isnan(y[:, j])
        yy, ss = y[m, j], s[m, j]
        cands = np.unique(ss)
        rates = np.array([_rates(yy, ss, c) for c in cands])
        ok_sens = cands[rates[:, 0] >= target]
        ok_spec = cands[rates[:, 1] >= target]
        assert t_sens[j] == ok_sens.max()                      # the highest such threshold
        assert _rates(yy, ss, t_sens[j])[0] >= target          # achieves the target
        assert _rates(yy, ss, np.nextafter(t_sens[j], 2))[0] < target or t_sens[j] == cands.max()
        if ok_spec.size:
            assert t_spec[j] == ok_spec.min()                  # the lowest such threshold
            assert _rates(yy, ss, t_spec[j])[1] >= target
        else:  # reachable only above the top score; thresholds are capped at 1.0
            assert t_spec[j] == min(1.0, np.nextafter(cands.max(), 2))
            if cands.max() < 1.0:
                assert _rates(yy, ss, t_spec[j])[1] >= target


def test_strategies_registry_and_snapping():
    y, s = _random(5)
    assert {"max F1", "Youden's J", "target sensitivity", "target specificity"} <= set(STRATEGIES)
    a = suggest_thresholds("target sensitivity", y, s, 0.9)
    np.testing.assert_array_equal(a, target_sensitivity_thresholds(y, s, target=0.9))
    # snapping to the 0.01 slider grid keeps the guarantee
    c = confusion_at(y, s, snap(a, "target sensitivity"))
    assert (c["sensitivity"] >= 0.9).all()
    b = suggest_thresholds("target specificity", y, s, 0.85)
    c = confusion_at(y, s, snap(b, "target specificity"))
    assert (c["specificity"] >= 0.85).all()
    with pytest.raises(ValueError):
        suggest_thresholds("target sensitivity", y, s, None)
    with pytest.raises(ValueError):
        suggest_thresholds("nope", y, s)
    # no positives / no negatives: 0.5
    y2 = np.zeros((10, 1)); s2 = np.linspace(0, 1, 10)[:, None]
    assert target_sensitivity_thresholds(y2, s2)[0] == 0.5
    assert target_specificity_thresholds(1 - y2, s2)[0] == 0.5


def test_sweep_equals_confusion_at():
    y, s = _random(7, n=500, L=8, ties=True)
    sweep = ThresholdSweep(y, s.astype(np.float32))
    for thr in (np.full(8, 0.5), np.linspace(0, 1, 8), np.round(s[3], 1), np.zeros(8), np.ones(8)):
        a, b = sweep.at(thr), confusion_at(y, s.astype(np.float32), thr)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def _hand_frame():
    """8 patients x 2 images. Sex: p0-3 M, p4-7 F. Age: p0,p4 30 (<40); p1,p5 50; p2,p6 70; p3,p7 85.
    View: first image AP, second PA."""
    rows = []
    for p in range(8):
        for v in ("AP", "PA"):
            rows.append({"patient_id": f"p{p}", "sex": "M" if p < 4 else "F", "age": [30, 50, 70, 85][p % 4],
                         "view": v})
    return pd.DataFrame(rows)


def test_subgroup_metrics_hand_made():
    f = _hand_frame()
    n = len(f)
    # label A: men perfectly ranked, women inverted; label B: one positive only (below min_positives)
    yA = np.array([1, 0] * 8, float)
    sA = np.where(f["sex"] == "M", np.where(yA == 1, 0.9, 0.1), np.where(yA == 1, 0.2, 0.8))
    yB = np.zeros(n); yB[0] = 1
    sB = np.linspace(0, 1, n)
    targets, probs = np.c_[yA, yB], np.c_[sA, sB]
    df = subgroup_metrics(targets, probs, [0.5, 0.5], f, ["A", "B"], min_positives=3)
    idx = df.set_index(["kind", "group", "label"])
    assert set(df["kind"]) == {"all", "sex", "age band", "view"}
    assert list(df.loc[df["kind"] == "age band", "group"].unique()) == ["<40", "40–59", "60–79", "80+"]
    assert idx.loc[("sex", "M", "A"), "auroc"] == 1.0
    assert idx.loc[("sex", "F", "A"), "auroc"] == 0.0
    assert idx.loc[("sex", "M", "A"), "n_images"] == 8 and idx.loc[("sex", "M", "A"), "n_patients"] == 4
    assert idx.loc[("sex", "M", "A"), "sensitivity"] == 1.0 and idx.loc[("sex", "F", "A"), "sensitivity"] == 0.0
    assert idx.loc[("sex", "F", "A"), "specificity"] == 0.0
    overall = roc_auc_score(yA, sA)
    assert idx.loc[("all", "all", "A"), "auroc"] == pytest.approx(overall)
    assert idx.loc[("sex", "F", "A"), "auroc_gap"] == pytest.approx(0.0 - overall)
    assert idx.loc[("all", "all", "A"), "sensitivity"] == 0.5
    assert idx.loc[("sex", "M", "A"), "sensitivity_gap"] == pytest.approx(0.5)
    # views: AP images are all positives -> AUROC undefined (no negatives), sensitivity defined
    assert np.isnan(idx.loc[("view", "AP", "A"), "auroc"])
    assert np.isnan(idx.loc[("view", "AP", "A"), "specificity"])
    assert idx.loc[("view", "AP", "A"), "sensitivity"] == 0.5 and idx.loc[("view", "AP", "A"), "n_patients"] == 8
    # age band <40 = p0 (M) and p4 (F): 4 images, 2 positives < min_positives 3 -> NaN AUROC
    assert idx.loc[("age band", "<40", "A"), "n_images"] == 4
    assert np.isnan(idx.loc[("age band", "<40", "A"), "auroc"])
    # label B has 1 positive: AUROC NaN everywhere (min_positives), sensitivity still reported
    assert df.loc[df["label"] == "B", "auroc"].isna().all()
    assert idx.loc[("all", "all", "B"), "sensitivity"] == 0.0
    # min_positives=1: B's overall AUROC is defined (positive at the lowest score -> 0)
    df1 = subgroup_metrics(targets, probs, [0.5, 0.5], f, ["A", "B"], min_positives=1)
    assert df1.set_index(["kind", "group", "label"]).loc[("all", "all", "B"), "auroc"] == 0.0
    # gaps between the groups of one kind: A by sex, AUROC 1.0 (M) vs 0.0 (F). Every other kind has at
    # most one group of A with enough positives (>= 3) and negatives; B never has enough positives.
    assert overall == 0.75
    gaps = gap_table(subgroup_metrics(targets, probs, [0.5, 0.5], f, ["A", "B"], min_positives=3))
    assert gaps[["kind", "label", "gap", "lowest", "highest", "groups"]].values.tolist() == [
        ["sex", "A", 1.0, "F", "M", 2]]
    assert gap_table(df, "sensitivity")[["kind", "label", "gap"]].values.tolist()[0] == ["sex", "A", 1.0]
    assert top_gaps(gaps).tolist() == [True]
    # a source column adds a kind
    f2 = f.assign(source=["nih", "chexpert"] * 8)
    assert "source" in set(subgroup_metrics(targets, probs, 0.5, f2, ["A", "B"])["kind"])


def test_evaluate_has_subgroups(app_env, shipped):
    from cxrcore.data.readers import read_dataset
    from cxrcore.demo import app_data
    from cxrcore.eval.evaluate import evaluate

    index = read_dataset(app_data()["chexpert"])  # its first 500 images: 107 in the test split, both sexes, AP and PA
    res = evaluate(shipped["finetuned"], index.subset(np.arange(len(index)) < 500), "test", n_boot=50, calibrate=False)
    sub = res["subgroups"]
    json.dumps(sub, allow_nan=False)  # JSON-ready, NaN -> None
    kinds = {(r["kind"], r["group"]) for r in sub}
    assert ("sex", "M") in kinds and ("sex", "F") in kinds
    assert ("view", "AP") in kinds and any(k == "age band" for k, _ in kinds)
    allrows = [r for r in sub if r["kind"] == "all"]
    assert len(allrows) == len(res["labels"])
    for r in allrows:
        if r["auroc"] is not None:
            assert r["auroc"] == pytest.approx(res["per_label"][r["label"]]["auroc"]["value"])
    men = sum(r["n_images"] for r in sub if r["kind"] == "sex" and r["label"] == res["labels"][0])
    assert men == res["n_images"]


def _small_chexpert(home: Path, app_home: Path) -> str:
    """The first 300 rows of each table of the built-in CheXpert phantom as a dataset of the workspace ``home`` (35
    images in the val split the Thresholds page tunes on, not 350); returns its name in the page's Dataset list."""
    from small_data import phantom_subset

    name = "phantom-chexpert-first300"
    phantom_subset(next((app_home / "datasets").glob("phantom-chexpert-*")), home / "datasets" / name, 300)
    return name


def test_page_set_all_by_target_sensitivity(tmp_path, monkeypatch, app_home, shipped):
    from streamlit.testing.v1 import AppTest

    from conftest import fresh_workspace

    home = fresh_workspace(app_home, tmp_path / "home")   # a dataset of its own added: not in the shared workspace
    monkeypatch.setenv("CXR_HOME", str(home))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    at.switch_page("views/thresholds.py")
    at.session_state["thr_data"] = _small_chexpert(home, app_home)  # the page's first run tunes on it
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.selectbox(key="thr_strategy").set_value("target sensitivity").run()
    at.number_input(key="thr_target").set_value(0.9).run()
    at.button(key="thr_suggest").click().run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value
    assert len(table) >= 5
    assert (table["sensitivity"] >= 0.9).all(), table[["label", "threshold", "sensitivity"]]
    assert len(at.get("plotly_chart")) == 2  # ROC and PR
    assert any(b.proto.label.startswith("Download") for b in at.get("download_button"))
    # target specificity too
    at.selectbox(key="thr_strategy").set_value("target specificity").run()
    at.number_input(key="thr_target").set_value(0.8).run()
    at.button(key="thr_suggest").click().run()
    assert (at.dataframe[0].value["specificity"] >= 0.8).all()


def test_a_threshold_copy_of_an_earlier_build_is_not_offered(tmp_path, monkeypatch, shipped, app_home):
    """Your thresholds for a shipped model live in a workspace copy of it. When the shipped models are rebuilt, that
    copy holds the old weights: it is no longer offered in the model lists (the Thresholds page says why), and the
    next save moves it aside and copies the new build."""
    import shutil

    from streamlit.testing.v1 import AppTest

    from cxrcore.checkpoint import load_checkpoint, read_card, save_checkpoint, shipped_copy_state
    from cxrcore.eval.thresholds import save_thresholds
    from ui.common import MY_THRESHOLDS, checkpoint_choices

    ships = tmp_path / "shipped"
    for name, path in shipped.items():
        shutil.copytree(path, ships / name)
    monkeypatch.setenv("CXR_CHECKPOINTS", str(ships))
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "datasets").mkdir(parents=True)
    for d in (app_home / "datasets").iterdir():  # the page's built-in phantoms, generated once for the run
        (tmp_path / "home" / "datasets" / d.name).symlink_to(d)
    label = read_card(ships / "finetuned").labels[0]
    copy = save_thresholds(ships / "finetuned", {label: 0.42})
    assert shipped_copy_state("finetuned") == "current"
    assert checkpoint_choices(library=False)[f"finetuned{MY_THRESHOLDS}"] == str(copy)

    card, state = load_checkpoint(ships / "finetuned")   # a rebuild: other weights under the same name
    save_checkpoint(ships / "finetuned", {k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, card)
    assert shipped_copy_state("finetuned") == "older"
    assert f"finetuned{MY_THRESHOLDS}" not in checkpoint_choices(library=False)
    at = AppTest.from_file(str(REPO / "views" / "thresholds.py"), default_timeout=120)
    at.session_state["thr_data"] = _small_chexpert(tmp_path / "home", app_home)  # predicted there, not on 350 images
    at.run()
    assert any("made for an earlier build" in i.value for i in at.info), [i.value for i in at.info]
    assert "(your thresholds)" not in at.selectbox(key="thr_model").value

    again = save_thresholds(ships / "finetuned", {label: 0.37})
    assert again == copy and shipped_copy_state("finetuned") == "current"
    assert read_card(again).thresholds[label] == 0.37
    aside = list((tmp_path / "home" / "checkpoints").glob("finetuned.older-*"))
    assert len(aside) == 1 and read_card(aside[0]).thresholds[label] == 0.42   # the old copy kept, not offered
