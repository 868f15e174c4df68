"""Prevalence at a site from its unlabelled images (issue 23 §2, cxrcore/eval/prevalence.py,
`cxr site estimate-prevalence`): on data with a known label shift (the same class-conditional scores, another
prior), from a calibrated and from an over-confident model, BBSE and EM land near the truth and their bootstrap
intervals hold it in most of 20 seeds; Bayes' adjustment; what cannot be estimated says so; the command's JSON
keys (a contract)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import cxr_here


def _shifted(n_ref: int, n_site: int, prior: float, new_prior: float, seed: int):
    """A calibrated model's scores: s ~ Beta(1, 2.3) (mean ~0.3), y ~ Bernoulli(s); the site's images drawn from
    the same p(s | y) with prevalence ``new_prior`` (importance resampling of a large pool)."""
    rng = np.random.default_rng(seed)
    pool = 200_000
    s = rng.beta(1.0, (1 - prior) / prior, pool)
    y = (rng.random(pool) < s).astype(float)
    ref = rng.choice(pool, n_ref, replace=False)
    w = np.where(y == 1, new_prior / y.mean(), (1 - new_prior) / (1 - y.mean()))
    site = rng.choice(pool, n_site, replace=False, p=w / w.sum())
    return y[ref], s[ref], s[site], y[site].mean()


@pytest.mark.parametrize("overconfidence", [1.0, 2.5])
def test_bbse_and_em_find_a_known_shift_and_their_intervals_hold_it(overconfidence):
    """``overconfidence`` 2.5: the model's logits are 2.5 times the calibrated ones (its probabilities far too sure);
    EM recalibrates on the reference first, so it still finds the shift."""
    from scipy.special import expit

    from cxrcore.eval.prevalence import estimate_prevalence
    from cxrcore.inference import logits_from_probs

    covered = {"bbse": 0, "em": 0}
    errors = {"bbse": [], "em": []}
    for seed in range(20):
        factor = 2.0 if seed % 2 else 0.5
        y_ref, p_ref, p_site, truth = _shifted(2000, 1000, 0.3, 0.3 * factor, seed)
        p_ref, p_site = (expit(overconfidence * logits_from_probs(p)) for p in (p_ref, p_site))
        est = estimate_prevalence(["A"], y_ref[:, None], p_ref[:, None], p_site[:, None], [0.5],
                                  n_boot=60, seed=seed).labels["A"]
        assert est["reference"] == pytest.approx(0.3, abs=0.04)
        for k in covered:
            errors[k].append(abs(est[k] - truth))
            covered[k] += est[f"{k}_ci"][0] <= truth <= est[f"{k}_ci"][1]
    assert np.mean(errors["em"]) < 0.04 and np.mean(errors["bbse"]) < 0.05   # near the truth, both shifts
    assert covered["em"] >= 16 and covered["bbse"] >= 16                     # ~95 % expected; 20 seeds


def test_bayes_adjustment_and_what_cannot_be_estimated():
    from cxrcore.eval.prevalence import adjust, adjust_probabilities, bbse, estimate_prevalence

    assert adjust(np.array([0.5]), 0.5, 0.5)[0] == pytest.approx(0.5)
    # odds 1:1 at prior 0.2 -> likelihood ratio 4; at prior 0.5 the odds become 4:1
    assert adjust(np.array([0.5]), 0.2, 0.5)[0] == pytest.approx(0.8)
    probs = np.array([[0.5, 0.3], [0.2, 0.9]])
    out = adjust_probabilities(probs, np.array([0.2, np.nan]), np.array([0.5, 0.4]))
    assert out[0, 0] == pytest.approx(0.8) and (out[:, 1] == probs[:, 1]).all()   # NaN reference: unchanged
    y = np.array([0, 1] * 20, float)
    assert np.isnan(bbse(y, np.full(40, 0.7), np.full(10, 0.7), 0.5))              # calls do not separate
    est = estimate_prevalence(["A", "B"], np.stack([y, np.zeros(40)], 1), np.full((40, 2), 0.4),
                              np.full((10, 2), 0.4), [0.5, 0.5], n_boot=10)
    assert est.labels["B"]["bbse"] is None and "no positive" in est.labels["B"]["note"]


def test_cxr_site_estimate_prevalence_prints_the_contracts_json(shipped, tmp_path, monkeypatch, capsys):
    from cxrcore.data.phantom import generate

    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    generate(tmp_path / "reference", n=200, domain="nih", seed=21)
    generate(tmp_path / "site", n=60, domain="nih", seed=22)
    code, out, err = cxr_here(capsys, "site", "estimate-prevalence", "--checkpoint", shipped["finetuned"], "--images",
                              tmp_path / "site" / "images", "--reference", tmp_path / "reference", "--split", "all",
                              "--n-boot", "20", "--json", "--adjusted-out", tmp_path / "adjusted.csv")
    assert code == 0, err
    answer = json.loads(out)
    effusion = answer["labels"]["Pleural Effusion"]
    assert {"bbse", "em", "bbse_ci", "em_ci", "reference"} <= set(effusion)
    assert 0 <= effusion["em"] <= 1 and effusion["em_ci"][0] <= effusion["em"] <= effusion["em_ci"][1]
    assert answer["n_images"] == 60 and answer["n_reference"] == 200
    # each image's probabilities adjusted to the EM estimate, labelled as such; EM's fixed point: they average to it
    import pandas as pd

    adjusted = pd.read_csv(tmp_path / "adjusted.csv")
    assert len(adjusted) == 60 and adjusted["adjusted_with"].str.contains("not the model's own output").all()
    assert adjusted["Pleural Effusion adjusted"].mean() == pytest.approx(effusion["em"], abs=2e-3)
    assert (adjusted["Pleural Effusion"] != adjusted["Pleural Effusion adjusted"]).any()
    code, _, err = cxr_here(capsys, "site", "estimate-prevalence", "--checkpoint", shipped["finetuned"], "--images",
                            tmp_path / "site" / "images")
    assert code == 2 and "--reference" in err     # the shipped card's training folder is not on this machine
