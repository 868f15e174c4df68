"""Evaluation: patient bootstrap, DeLong, calibration, and `cxr eval` end to end.

Statistics are checked against independent computations written here (sklearn on materialised
resamples, the O(n^2) definition of DeLong's structural components, an image-level bootstrap);
the CLI runs on the real NIH sample and on part of the app's phantom CheXpert data.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from conftest import NIH_SAMPLE, cxr_here
from cxrcore.eval import bootstrap as bs
from cxrcore.eval.calibration import (apply_temperature, binary_nll, brier_score, expected_calibration_error,
                                      fit_temperature, fit_temperatures, reliability_bins)
from cxrcore.eval.delong import delong_ci, delong_covariance, delong_test, per_label_delong_ci
from cxrcore.eval.metrics import per_label_auroc, per_label_auprc


def _synthetic(seed: int = 0, n: int = 400, ties: bool = True):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(float)
    shared = rng.normal(size=n)
    a = 0.6 * y + shared + 0.7 * rng.normal(size=n)
    b = 0.9 * y + shared + 0.7 * rng.normal(size=n)
    if ties:
        a, b = np.round(a, 1), np.round(b, 1)
    return y, a, b


# --------------------------------------------------------------------------- bootstrap

def test_weighted_kernels_equal_sklearn_on_materialised_resamples():
    rng = np.random.default_rng(3)
    y, s, _ = _synthetic(3, 250)
    W = rng.integers(0, 4, size=(6, len(y))).astype(float)
    auc, ap = bs.weighted_auroc(y, s, W), bs.weighted_auprc(y, s, W)
    for b in range(len(W)):
        rows = np.repeat(np.arange(len(y)), W[b].astype(int))   # the resampled data set itself
        assert auc[b] == pytest.approx(roc_auc_score(y[rows], s[rows]), abs=1e-12)
        assert ap[b] == pytest.approx(average_precision_score(y[rows], s[rows]), abs=1e-12)
    # a replicate without positives is undefined, not 0
    W0 = np.where(y == 1, 0.0, 1.0)[None]
    assert np.isnan(bs.weighted_auroc(y, s, W0)[0]) and np.isnan(bs.weighted_auprc(y, s, W0)[0])


def test_fast_path_equals_generic_path_with_nan_targets():
    rng = np.random.default_rng(1)
    n = 200
    y, a, b = _synthetic(1, n)
    T = np.stack([y, (rng.random(n) < 0.05).astype(float)], 1)
    T[:30, 1] = np.nan                                     # not labelled
    S = np.stack([a, b], 1)
    pid = rng.integers(0, 80, n)
    for fast, slow in (("auroc", lambda t, s: per_label_auroc(t, s)), ("auprc", lambda t, s: per_label_auprc(t, s))):
        r1 = bs.patient_bootstrap(T, S, pid, fast, n_boot=60, seed=5)
        r2 = bs.patient_bootstrap(T, S, pid, slow, n_boot=60, seed=5)      # materialised rows, sklearn per replicate
        np.testing.assert_allclose(r1.replicates, r2.replicates, atol=1e-12)
        np.testing.assert_allclose(r1.estimate, r2.estimate, atol=1e-12)
        np.testing.assert_array_equal(r1.n_valid, r2.n_valid)
    # metrics.py's own functions are recognised and take the fast path
    r3 = bs.patient_bootstrap(T, S, pid, per_label_auroc, n_boot=60, seed=5)
    np.testing.assert_allclose(r3.replicates, bs.patient_bootstrap(T, S, pid, "auroc", n_boot=60, seed=5).replicates)


def test_replicates_are_made_of_whole_patients():
    rng = np.random.default_rng(2)
    n = 150
    pid = np.array([f"p{k}" for k in rng.integers(0, 40, n)])
    n_patients = len(set(pid))
    for W in bs.bootstrap_weights(pid, n_boot=50, seed=0):
        for row in W:
            for p in set(pid):
                assert len(set(row[pid == p])) == 1        # all images of a patient drawn equally often
            first = [np.flatnonzero(pid == p)[0] for p in sorted(set(pid))]
            assert row[first].sum() == n_patients           # P patients drawn with replacement

    seen = []

    def record(t, s):
        seen.append(s[:, 0].astype(int))
        return np.array([0.5])

    bs.patient_bootstrap(np.zeros((n, 1)), np.arange(n, dtype=float)[:, None], pid, record, n_boot=20, seed=1)
    for rows in seen[1:]:                                   # seen[0] is the point estimate on all rows
        counts = np.bincount(rows, minlength=n)
        for p in set(pid):
            assert len(set(counts[pid == p])) == 1


def test_patient_bootstrap_on_duplicated_images():
    """60 patients, each image duplicated 5 times: resampling patients gives exactly the bootstrap of
    the de-duplicated data; resampling images pretends there are 300 independent cases."""
    y, s, _ = _synthetic(4, 60, ties=False)
    dup = np.repeat(np.arange(60), 5)
    r_patient = bs.patient_bootstrap(y[dup], s[dup], dup, "auroc", n_boot=1000, seed=0)
    r_once = bs.patient_bootstrap(y, s, np.arange(60), "auroc", n_boot=1000, seed=0)
    r_image = bs.patient_bootstrap(y[dup], s[dup], None, "auroc", n_boot=1000, seed=0)
    np.testing.assert_allclose(r_patient.replicates, r_once.replicates, atol=1e-12)
    width = lambda r: float(r.high[0] - r.low[0])  # noqa: E731
    assert width(r_patient) > 1.8 * width(r_image)          # ~ sqrt(5) in theory
    for r in (r_patient, r_image):
        assert r.low[0] <= r.estimate[0] <= r.high[0]
        assert r.estimate[0] == pytest.approx(roc_auc_score(y, s))
        assert r.n_valid[0] == 1000


def test_bootstrap_determinism_and_invalid_replicates():
    rng = np.random.default_rng(7)
    n = 120
    y = np.zeros(n)
    y[:3] = 1                                               # one patient holds all 3 positives
    pid = np.r_[[0, 0, 0], rng.integers(1, 60, n - 3)]
    s = rng.random(n) + y
    r1 = bs.patient_bootstrap(y, s, pid, "auroc", n_boot=500, seed=11)
    r2 = bs.patient_bootstrap(y, s, pid, "auroc", n_boot=500, seed=11)
    r3 = bs.patient_bootstrap(y, s, pid, "auroc", n_boot=500, seed=12)
    np.testing.assert_array_equal(r1.replicates, r2.replicates)
    assert not np.array_equal(r1.replicates, r3.replicates, equal_nan=True)
    # P(patient 0 is drawn) = 1 - (1 - 1/P)^P ~ 0.63: the others are skipped, and counted
    P = len(set(pid))
    expected = 500 * (1 - (1 - 1 / P) ** P)
    assert abs(r1.n_valid[0] - expected) < 5 * np.sqrt(500 * 0.25)
    assert np.isnan(r1.replicates[:, 0]).sum() == 500 - r1.n_valid[0]


def test_paired_delta():
    y, a, b = _synthetic(0, 300)
    same = bs.paired_bootstrap_delta(y, a, a, None, n_boot=200)
    assert same.delta[0] == 0 and same.low[0] == 0 and same.high[0] == 0 and same.p[0] == 1
    d = bs.paired_bootstrap_delta(y, a, b, None, n_boot=500, seed=1)
    assert d.delta[0] == pytest.approx(roc_auc_score(y, b) - roc_auc_score(y, a))
    assert d.low[0] <= d.delta[0] <= d.high[0]
    # paired: the CI of the difference is narrower than independent CIs would imply
    ra = bs.patient_bootstrap(y, a, None, n_boot=500, seed=1)
    rb = bs.patient_bootstrap(y, b, None, n_boot=500, seed=1)
    assert d.se[0] < 0.8 * np.hypot(ra.se[0], rb.se[0])


# --------------------------------------------------------------------------- DeLong

def _naive_delong(y, scores):
    """DeLong (1988) from the definition: psi(X_i, Y_j) for every positive/negative pair, O(m n)."""
    aucs, v10, v01 = [], [], []
    for s in scores:
        x, z = s[y == 1], s[y == 0]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        aucs.append(psi.mean())
        v10.append(psi.mean(1))      # per positive
        v01.append(psi.mean(0))      # per negative
    m, n = len(v10[0]), len(v01[0])
    return np.array(aucs), np.cov(np.array(v10)) / m + np.cov(np.array(v01)) / n


def test_delong_covariance_equals_naive_structural_components():
    for seed, ties in ((0, True), (1, False), (2, True)):
        y, a, b = _synthetic(seed, 300, ties)
        aucs, cov = delong_covariance(y, np.vstack([a, b]))
        naive_aucs, naive_cov = _naive_delong(y, [a, b])
        np.testing.assert_allclose(aucs, naive_aucs, atol=1e-12)
        np.testing.assert_allclose(cov, naive_cov, rtol=1e-9, atol=1e-15)
        assert aucs[0] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
        assert aucs[1] == pytest.approx(roc_auc_score(y, b), abs=1e-12)


def test_delong_single_model_and_per_label():
    y, a, b = _synthetic(5, 300)
    auc, lo, hi, var = delong_ci(y, a)
    assert auc == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert lo < auc < hi and hi - lo == pytest.approx(2 * 1.959964 * np.sqrt(var), rel=1e-5)
    T = np.stack([y, y], 1)
    T[:50, 1] = np.nan
    S = np.stack([a, b], 1)
    ci = per_label_delong_ci(T, S)
    np.testing.assert_allclose(ci[:, 0], per_label_auroc(T, S), atol=1e-12)
    r = delong_test(T, S, S[:, ::-1], ["x", "y"])
    np.testing.assert_allclose(r.auc_a, per_label_auroc(T, S), atol=1e-12)
    # a label without positives is NaN, not an error
    T2 = np.c_[y, np.zeros_like(y)]
    r2 = delong_test(T2, S, S)
    assert np.isnan(r2.p[1]) and r2.p[0] == 1.0


def test_delong_agrees_with_paired_bootstrap():
    """Independent images: DeLong's z and p should match the paired bootstrap's (loosely)."""
    for seed in (0, 3):
        y, a, b = _synthetic(seed, 400, ties=False)
        dl = delong_test(y, a, b)
        boot = bs.paired_bootstrap_delta(y, a, b, None, n_boot=2000, seed=seed)
        sd = np.sqrt(dl.cov[0, 0, 0] + dl.cov[0, 1, 1] - 2 * dl.cov[0, 0, 1])
        assert boot.se[0] == pytest.approx(sd, rel=0.15)
        assert boot.delta[0] / boot.se[0] == pytest.approx(dl.z[0], rel=0.15)
        assert abs(np.log10(boot.p[0]) - np.log10(dl.p[0])) < 0.5
        assert dl.p[0] < 0.05 and boot.p[0] < 0.05


# --------------------------------------------------------------------------- calibration

def test_ece_of_calibrated_probabilities_is_near_zero():
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    y = (rng.random(p.size) < p).astype(float)
    assert expected_calibration_error(y, p) < 0.005
    bins = reliability_bins(y, p, 10)
    assert bins["count"].sum() == p.size
    np.testing.assert_allclose(bins["observed"], bins["mean_predicted"], atol=0.01)
    # the bootstrap kernel computes the same ECE and Brier with unit weights
    assert bs.weighted_ece(y, p, np.ones((1, p.size)))[0] == pytest.approx(expected_calibration_error(y, p))
    assert bs.weighted_brier(y, p, np.ones((1, p.size)))[0] == pytest.approx(brier_score(y, p))
    # and a mis-calibrated version is clearly worse
    assert expected_calibration_error(y, p ** 3) > 0.1


def test_temperature_scaling_fixes_overconfidence():
    rng = np.random.default_rng(1)

    def split(n):
        z = rng.normal(0, 1.5, n)
        y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
        return y, 3.0 * z                                   # logits three times too confident

    y_val, z_val = split(5000)
    y_test, z_test = split(5000)
    T = fit_temperature(y_val, z_val)
    assert 2.5 < T < 3.5
    before, after = apply_temperature(z_test, 1.0), apply_temperature(z_test, T)
    assert binary_nll(y_test, after) < binary_nll(y_test, before) - 0.05
    assert expected_calibration_error(y_test, after) < 0.5 * expected_calibration_error(y_test, before)
    # per label: NaN rows skipped; a label without positives keeps T = 1
    targets = np.c_[y_val, np.zeros_like(y_val)]
    targets[:100, 0] = np.nan
    temps = fit_temperatures(targets, np.c_[z_val, z_val])
    assert temps[0] == pytest.approx(T, rel=0.05) and temps[1] == 1.0


# --------------------------------------------------------------------------- cxr eval

def _no_external_scripts(html: str) -> None:
    """Opens offline: no script loaded from elsewhere; plotly.js itself is inlined in the head."""
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, re.I)
    head = html[:html.index("</head>")]
    assert "plotly.js v" in head and len(head) > 1_000_000


def test_cxr_eval_nih_sample_end_to_end(tmp_path, shipped, capsys, monkeypatch):
    """``cxr eval`` through its ``main`` (conftest.cxr_here; `cxr` as a process: tests/explain/test_llm_cli.py)."""
    out = tmp_path / "out"
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    code, stdout, err = cxr_here(capsys, "eval", "--checkpoint", shipped["baseline"], "--data", NIH_SAMPLE,
                                 "--split", "all", "--json", "--n-boot", "200", "--out", out)
    assert code == 0, err[-2000:]
    result = json.loads(stdout)
    assert result["n_images"] == 250 and result["n_patients"] == 172
    assert result["bootstrap"]["n_boot"] == 200 and result["bootstrap"]["unit"] == "patient"
    per = result["per_label"]
    evaluable = [x for x, m in per.items() if m["evaluable"]]
    assert len(evaluable) >= 10
    for x in evaluable:
        m = per[x]
        for key in ("auroc", "auprc", "sensitivity", "specificity", "npv", "f1", "ece", "brier"):
            ci = m[key]
            assert ci["low"] is not None and ci["high"] is not None, (x, key)
            assert ci["low"] - 1e-9 <= ci["value"] <= ci["high"] + 1e-9, (x, key, ci)
            assert 0 < ci["n_valid"] <= 200
        assert m["auroc_delong_ci"]["low"] <= m["auroc"]["value"] <= m["auroc_delong_ci"]["high"]
    # 250 images, a few positives per label: the intervals must say how little that is
    rare = [x for x in evaluable if per[x]["positives"] < 10]
    assert rare
    assert np.mean([per[x]["auroc"]["high"] - per[x]["auroc"]["low"] for x in rare]) > 0.1
    assert per["Fibrosis"]["auroc"]["value"] is None and "Fibrosis" in result["summary"]["labels_not_evaluated"]
    s = result["summary"]
    assert s["mean_auroc"]["low"] < s["mean_auroc"]["value"] < s["mean_auroc"]["high"]
    assert 0 <= s["hamming_loss"]["value"] <= 1 and 0 <= s["subset_accuracy"]["value"] <= 1
    # AUROC equals sklearn on the written predictions
    preds = pd.read_csv(out / "predictions.csv")
    assert len(preds) == 250 and preds["patient_id"].nunique() == 172
    assert per["Effusion"]["auroc"]["value"] == pytest.approx(
        roc_auc_score(preds["Effusion_target"], preds["Effusion_prob"]), abs=1e-4)
    assert json.loads((out / "metrics.json").read_text()) == result
    html = (out / "report.html").read_text()
    assert "Plotly.newPlot" in html and "Per label" in html and len(html) > 1_000_000   # plotly.js embedded
    _no_external_scripts(html)


def test_cxr_eval_compare_on_phantom_chexpert(app_env, shipped, tmp_path, capsys):
    from small_data import phantom_subset

    from cxrcore.cli import main
    from cxrcore.demo import app_data

    # 463 of the app's phantom CheXpert images (105 in the test split, 35 in val), not all 3,500
    data = phantom_subset(app_data()["chexpert"], tmp_path / "chexpert", 300)
    out = tmp_path / "cmp"
    rc = main(["eval", "--checkpoint", str(shipped["baseline"]), "--data", str(data), "--compare",
               str(shipped["finetuned"]), "--json", "--n-boot", "200", "--out", str(out)])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    c = result["comparison"]
    assert c["delta_definition"] == "compare_to - checkpoint"
    assert sorted(c["shared_labels"]) == sorted(["Atelectasis", "Cardiomegaly", "Effusion", "Pneumonia",
                                                 "Pneumothorax", "Consolidation", "Edema"])
    assert c["per_label"]["Effusion"]["label_compare"] == "Pleural Effusion"
    for x in c["evaluable_labels"]:
        m = c["per_label"][x]
        d = m["delta_auroc"]
        assert d["value"] == pytest.approx(m["auroc_compare"] - m["auroc_checkpoint"])
        assert d["low"] <= d["value"] <= d["high"]
        assert 0 <= m["delong"]["p"] <= 1
        assert m["delong"]["auc_a"] == pytest.approx(result["per_label"][x]["auroc"]["value"])
    assert len(c["evaluable_labels"]) >= 5
    assert len(c["wins"]) + len(c["losses"]) + len(c["ties"]) == len(c["evaluable_labels"])
    assert set(c["significant_wins"]) <= set(c["wins"])
    assert result["calibration"]["fitted"] is True            # test split: temperatures fitted on val
    html = (out / "report.html").read_text()
    assert "Comparison with" in html and "DeLong" in html
    _no_external_scripts(html)


def test_cxr_eval_errors_exit_2(tmp_path, shipped, capsys, monkeypatch):
    from cxrcore.cli import main

    monkeypatch.setenv("CXR_HOME", str(tmp_path))
    assert main(["eval", "--checkpoint", str(shipped["baseline"]), "--data", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(shipped["baseline"]), "--data", str(NIH_SAMPLE), "--n-boot", "0"]) == 2
    assert "n_boot" in capsys.readouterr().err
