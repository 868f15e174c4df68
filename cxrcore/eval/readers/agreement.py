"""Agreement between readers (and with a model), and each reader's operating point.

A reader's *call* on a case is positive when the rating is at or above the reader's cut-off. The default
cut-off depends on the rating scale the file uses (:func:`default_cutoff`): 3 on a 1-5 scale (3 = "possibly
positive" and above), 0.5 for probabilities in [0, 1], 50 on a 0-100 scale; any other scale needs an explicit
cut-off (one number for everyone, or one per reader).

- Cohen's kappa for each pair of readers on their calls, and a quadratic-weighted kappa on the raw ratings when
  they are ordinal (integers with at most 10 levels). Computed here in vectorised numpy (for the bootstrap); the
  tests check them against ``sklearn.metrics.cohen_kappa_score`` (this package imports only numpy, scipy and
  pandas).
- Fleiss' kappa (Fleiss 1971, Psychol Bull 76:378-382) for the whole panel on the calls.
- Each reader's kappa with the model's calls (model score >= a threshold the caller gives).
- Confidence intervals of every kappa: a nonparametric case bootstrap (cases resampled with replacement,
  percentile interval, ``n_boot`` replicates, fixed ``seed``: deterministic). Replicates where kappa is undefined
  (a resample in which both raters call every case the same) are left out and counted.
- Sensitivity and specificity of each reader at the cut-off, with Wilson score intervals; each reader's AUROC
  with DeLong's interval (:func:`cxrcore.eval.delong.delong_ci`).
"""
from __future__ import annotations

from itertools import combinations

import numpy as np
from scipy import stats

from ..delong import delong_ci

N_BOOT = 2000
SEED = 0
MAX_ORDINAL_LEVELS = 10


def default_cutoff(values: np.ndarray) -> tuple[float | None, str]:
    """(cut-off, rule) for ratings ``values`` of a whole study: a call is positive at rating >= cut-off."""
    v = np.asarray(values, dtype=float)
    integer = np.all(v == np.round(v))
    if integer and v.min() >= 1 and v.max() <= 5:
        return 3.0, "1-5 scale: positive call at rating >= 3"
    if v.min() >= 0 and v.max() <= 1:
        return 0.5, "scores in [0, 1]: positive call at score >= 0.5"
    if integer and v.min() >= 0 and v.max() <= 100:
        return 50.0, "0-100 scale: positive call at rating >= 50"
    return None, ("no default cut-off for ratings from {:g} to {:g}: give one (a number, or one per reader) for "
                  "kappa, sensitivity and specificity".format(v.min(), v.max()))


def kappa_binary(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cohen's kappa of binary calls along the last axis (works on stacks of resamples); NaN where undefined."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    po = (a == b).mean(axis=-1)
    pa, pb = a.mean(axis=-1), b.mean(axis=-1)
    pe = pa * pb + (1 - pa) * (1 - pb)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pe < 1 - 1e-12, (po - pe) / (1 - pe), np.nan)


def kappa_weighted(a: np.ndarray, b: np.ndarray, levels: int) -> np.ndarray:
    """Quadratic-weighted kappa of ratings coded 0..levels-1 along the last axis (stacks allowed); NaN where
    undefined."""
    a, b = np.asarray(a, dtype=int), np.asarray(b, dtype=int)
    lead = a.shape[:-1]
    n = a.shape[-1]
    flat = (a * levels + b).reshape(-1, n)
    offsets = np.arange(flat.shape[0])[:, None] * levels * levels
    counts = np.bincount((flat + offsets).ravel(), minlength=flat.shape[0] * levels * levels)
    obs = counts.reshape(flat.shape[0], levels, levels) / n
    exp = obs.sum(axis=2)[:, :, None] * obs.sum(axis=1)[:, None, :]
    i = np.arange(levels)
    w = (i[:, None] - i[None, :]) ** 2 / max((levels - 1) ** 2, 1)
    num = (w * obs).sum(axis=(1, 2))
    den = (w * exp).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        k = np.where(den > 1e-12, 1 - num / den, np.nan)
    return k.reshape(lead)


def fleiss_kappa(counts: np.ndarray) -> np.ndarray:
    """Fleiss' kappa of a (..., subjects, categories) table of how many raters put each subject in each
    category (the same number of raters for every subject); NaN where undefined."""
    counts = np.asarray(counts, dtype=float)
    n = counts.sum(axis=-1)                                  # raters per subject
    N = counts.shape[-2]
    p = counts.sum(axis=-2) / (N * n[..., :1])               # share of assignments per category
    P_i = ((counts ** 2).sum(axis=-1) - n) / (n * (n - 1))
    P_bar = P_i.mean(axis=-1)
    P_e = (p ** 2).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(P_e < 1 - 1e-12, (P_bar - P_e) / (1 - P_e), np.nan)


def wilson(successes: int, n: int, alpha: float = 0.05) -> list[float | None]:
    """Wilson score interval of a proportion."""
    if n == 0:
        return [None, None]
    z = stats.norm.ppf(1 - alpha / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]


def _boot(stat, idx: np.ndarray, alpha: float, *arrays) -> tuple[list[float | None], int]:
    """Percentile interval of ``stat`` over case resamples ``idx`` (B, K); (interval, undefined replicates)."""
    return _boot_values(stat(*(a[..., idx] for a in arrays)), alpha)


def _boot_values(values: np.ndarray, alpha: float) -> tuple[list[float | None], int]:
    ok = np.isfinite(values)
    if ok.sum() < 2:
        return [None, None], int((~ok).sum())
    lo, hi = np.percentile(values[ok], [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return [float(lo), float(hi)], int((~ok).sum())


def _num(x) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def resolve_cutoffs(ratings: np.ndarray, readers: list[str], cutoff=None) -> tuple[dict[str, float] | None, str]:
    """Per-reader cut-offs from ``cutoff`` (None: the scale's default; a number; or {reader: number})."""
    if cutoff is None:
        value, rule = default_cutoff(ratings)
        return (None if value is None else {r: value for r in readers}), rule
    if isinstance(cutoff, dict):
        missing = [r for r in readers if r not in cutoff]
        if missing:
            default, _ = default_cutoff(ratings)
            if default is None:
                return None, f"no cut-off given for readers {', '.join(missing)} and no default for this scale"
            return ({r: float(cutoff.get(r, default)) for r in readers},
                    f"given per reader; {default:g} (the scale's default) for {', '.join(missing)}")
        return {r: float(cutoff[r]) for r in readers}, "given per reader"
    return {r: float(cutoff) for r in readers}, f"given: positive call at rating >= {float(cutoff):g}"


def agreement(ratings: np.ndarray, truth: np.ndarray, modalities: list[str], readers: list[str],
              cutoff=None, model: np.ndarray | None = None, model_name: str | None = None,
              model_threshold: float | None = None, alpha: float = 0.05, n_boot: int = N_BOOT,
              seed: int = SEED) -> tuple[dict, dict, list[str]]:
    """(kappa section, per-reader section, notes) for ratings (T, R, K). Pair keys are ``"R1 ~ R2"``."""
    T, R, K = ratings.shape
    notes: list[str] = []
    cut, rule = resolve_cutoffs(ratings, readers, cutoff)
    idx = np.random.default_rng(seed).integers(0, K, size=(n_boot, K))
    kappa = {"cutoff": cut, "cutoff_rule": rule,
             "ci_method": f"case bootstrap, {n_boot} replicates, seed {seed}, percentile interval",
             "pair_key": "'A ~ B' = readers A and B", "per_modality": {}}
    per_reader: dict = {}
    ordinal = bool(np.all(ratings == np.round(ratings))) and np.unique(ratings).size <= MAX_ORDINAL_LEVELS
    levels = np.unique(ratings)
    coded = np.searchsorted(levels, ratings) if ordinal else None
    model_calls = None
    if model is not None:
        if model_threshold is None:
            notes.append(f"agreement of the readers with the model {model_name!r} needs a threshold for the "
                         "model's score (model threshold): not computed.")
        else:
            model_calls = (model >= model_threshold).astype(int)
    if cut is None:
        notes.append(f"kappa, sensitivity and specificity not computed: {rule}.")
    undefined = 0
    for i, m in enumerate(modalities):
        entry: dict = {"cohen": {}, "fleiss": None, "model": {}}
        per_reader[m] = {}
        calls = None
        if cut is not None:
            calls = np.stack([(ratings[i, j] >= cut[r]).astype(int) for j, r in enumerate(readers)])
            for j, k in combinations(range(R), 2):
                a, b = calls[j], calls[k]
                value = kappa_binary(a, b)
                ci, bad = _boot(kappa_binary, idx, alpha, a, b)
                undefined += bad
                pair = {"kappa": _num(value), "ci": ci if np.isfinite(value) else [None, None],
                        "agreement": float((a == b).mean())}
                if ordinal:
                    wk = kappa_weighted(coded[i, j], coded[i, k], levels.size)
                    wci, bad = _boot(lambda x, y: kappa_weighted(x, y, levels.size), idx, alpha,
                                     coded[i, j], coded[i, k])
                    undefined += bad
                    pair.update({"weighted_kappa": _num(wk), "weighted_ci": wci if np.isfinite(wk) else [None, None]})
                entry["cohen"][f"{readers[j]} ~ {readers[k]}"] = pair
            if R >= 2:
                pos = calls.sum(axis=0)                              # (K,) readers calling each case positive
                value = fleiss_kappa(np.stack([R - pos, pos], axis=-1))
                bpos = calls[:, idx].sum(axis=0)                     # (B, K)
                ci, bad = _boot_values(fleiss_kappa(np.stack([R - bpos, bpos], axis=-1)), alpha)
                undefined += bad
                entry["fleiss"] = {"kappa": _num(value), "ci": ci if np.isfinite(value) else [None, None],
                                   "n_readers": R}
            if model_calls is not None:
                for j, r in enumerate(readers):
                    value = kappa_binary(calls[j], model_calls)
                    ci, bad = _boot(kappa_binary, idx, alpha, calls[j], model_calls)
                    undefined += bad
                    entry["model"][r] = {"kappa": _num(value), "ci": ci if np.isfinite(value) else [None, None],
                                         "agreement": float((calls[j] == model_calls).mean())}
        kappa["per_modality"][m] = entry
        for j, r in enumerate(readers):
            auc, lo, hi, _ = delong_ci(truth, ratings[i, j], alpha)
            row = {"auroc": {"estimate": float(auc), "ci": [float(lo), float(hi)], "method": "DeLong"}}
            if calls is not None:
                pos, neg = truth == 1, truth == 0
                tp, tn = int(calls[j][pos].sum()), int((1 - calls[j][neg]).sum())
                row.update({"cutoff": cut[r],
                            "sensitivity": {"estimate": tp / pos.sum(), "ci": wilson(tp, int(pos.sum()), alpha),
                                            "n": int(pos.sum())},
                            "specificity": {"estimate": tn / neg.sum(), "ci": wilson(tn, int(neg.sum()), alpha),
                                            "n": int(neg.sum())}})
            per_reader[m][r] = row
    if model is not None:
        auc, lo, hi, _ = delong_ci(truth, model, alpha)
        kappa["model"] = {"name": model_name, "threshold": model_threshold,
                          "auroc": {"estimate": float(auc), "ci": [float(lo), float(hi)], "method": "DeLong"}}
        if model_calls is not None:
            pos, neg = truth == 1, truth == 0
            tp, tn = int(model_calls[pos].sum()), int((1 - model_calls[neg]).sum())
            kappa["model"].update({
                "sensitivity": {"estimate": tp / pos.sum(), "ci": wilson(tp, int(pos.sum()), alpha)},
                "specificity": {"estimate": tn / neg.sum(), "ci": wilson(tn, int(neg.sum()), alpha)}})
    if undefined:
        notes.append(f"kappa bootstrap: {undefined} replicates where kappa was undefined (every call the same) "
                     "were left out of the intervals.")
    for m, entry in kappa["per_modality"].items():
        for key, pair in entry["cohen"].items():
            if pair["kappa"] is None:
                notes.append(f"kappa {key} in modality {m!r} is undefined: both readers make the same call on "
                             "every case.")
    return kappa, per_reader, notes
