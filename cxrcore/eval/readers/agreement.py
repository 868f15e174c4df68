"""Agreement between readers (and with a model), and each reader's operating point.

A reader's *call* on a case is positive when the rating is at or above the reader's cut-off. The default
cut-off depends on the rating scale the file uses (:func:`default_cutoff`): 3 on a 1-5 scale (3 = "possibly
positive" and above), 0.5 for probabilities in [0, 1], 50 on a 0-100 scale; any other scale needs an explicit
cut-off (one number for everyone, or one per reader).

- Cohen's kappa for each pair of readers on their calls, and a quadratic-weighted kappa on the ratings when they
  are ordinal (integers with at most 10 levels; weights on the rank of the rating among the study's levels).
  Computed here as weighted means over cases, so that thousands of bootstrap resamples cost a few matrix
  products; the tests check them against ``sklearn.metrics.cohen_kappa_score`` (this package imports only numpy,
  scipy and pandas).
- Fleiss' kappa (Fleiss 1971, Psychol Bull 76:378-382) for the whole panel on the calls.
- Each reader's kappa with the model's calls (model score >= a threshold the caller gives).
- Confidence intervals of every kappa: a nonparametric case bootstrap (cases resampled with replacement, drawn
  as multinomial case counts; percentile interval; ``n_boot`` replicates from a fixed ``seed``: deterministic; the
  same resamples for every modality and pair). Replicates where a kappa is undefined (a resample in which both
  raters make one call on every case) are left out and counted in a note.
- Sensitivity and specificity of each reader at the cut-off, with Wilson score intervals; each reader's AUROC
  with DeLong's interval (:func:`cxrcore.eval.delong.delong_ci`).
"""
from __future__ import annotations

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


def kappa_weighted(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Quadratic-weighted kappa of ordinal ratings coded as level numbers (0, 1, 2, ...) along the last axis
    (stacks allowed); NaN where undefined. With weights (i - j)^2 the observed disagreement is the mean of
    (a - b)^2 and the chance one E[a^2] + E[b^2] - 2 E[a] E[b]: kappa_w = 1 - observed / chance."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    observed = ((a - b) ** 2).mean(axis=-1)
    chance = (a ** 2).mean(axis=-1) + (b ** 2).mean(axis=-1) - 2 * a.mean(axis=-1) * b.mean(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(chance > 1e-12, 1 - observed / chance, np.nan)


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


CHUNK = 4_000_000   # bootstrap weights held at once (replicates x cases): bounds memory for large studies


def _resample_weights(K: int, n_boot: int, seed: int):
    """The case bootstrap as weights: row b counts how often each case is drawn in resample b (multinomial);
    yielded a block of rows at a time, the same blocks for the same seed."""
    rng = np.random.default_rng(seed)
    step = max(1, CHUNK // K)
    for start in range(0, n_boot, step):
        yield rng.multinomial(K, np.full(K, 1.0 / K), size=min(step, n_boot - start)).astype(float)


def _panel_stats(W: np.ndarray, calls: np.ndarray, coded: np.ndarray | None, model_calls: np.ndarray | None,
                 pairs: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """Kappas of resamples given as case weights ``W`` (n, K) (all ones: the study itself), for every reader
    pair (Cohen, and quadratic-weighted on ``coded`` levels), the panel (Fleiss) and each reader with the model.
    Everything is a weighted mean over cases, so all resamples cost a few matrix products."""
    K = W.shape[1]
    R = calls.shape[0]
    J = np.array([p[0] for p in pairs], dtype=int)
    L = np.array([p[1] for p in pairs], dtype=int)
    mean = lambda x: W @ x.T / K  # noqa: E731   x (m, K) -> (n, m) resampled means
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        pa = mean(calls)                                                # (n, R) share of positive calls
        if pairs:
            po = mean((calls[J] == calls[L]).astype(float))
            pe = pa[:, J] * pa[:, L] + (1 - pa[:, J]) * (1 - pa[:, L])
            out["cohen"] = np.where(pe < 1 - 1e-12, (po - pe) / (1 - pe), np.nan)
            if coded is not None:
                m1, m2 = mean(coded), mean(coded ** 2)
                observed = mean((coded[J] - coded[L]) ** 2)
                chance = m2[:, J] + m2[:, L] - 2 * m1[:, J] * m1[:, L]
                out["weighted"] = np.where(chance > 1e-12, 1 - observed / chance, np.nan)
        if R >= 2:
            pos = calls.sum(axis=0)
            p_i = (pos ** 2 + (R - pos) ** 2 - R) / (R * (R - 1))
            p_bar = mean(p_i[None, :])[:, 0]
            share = mean(pos[None, :])[:, 0] / R
            p_e = share ** 2 + (1 - share) ** 2
            out["fleiss"] = np.where(p_e < 1 - 1e-12, (p_bar - p_e) / (1 - p_e), np.nan)
        if model_calls is not None:
            pm = mean(model_calls[None, :])                             # (n, 1)
            po = mean((calls == model_calls[None, :]).astype(float))
            pe = pa * pm + (1 - pa) * (1 - pm)
            out["model"] = np.where(pe < 1 - 1e-12, (po - pe) / (1 - pe), np.nan)
    return out


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


def _interval(values: np.ndarray, alpha: float) -> tuple[list[float | None], int]:
    """Percentile interval of bootstrap values (undefined ones left out) and how many were undefined."""
    ok = np.isfinite(values)
    if ok.sum() < 2:
        return [None, None], int((~ok).sum())
    lo, hi = np.percentile(values[ok], [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return [float(lo), float(hi)], int((~ok).sum())


def agreement(ratings: np.ndarray, truth: np.ndarray, modalities: list[str], readers: list[str],
              cutoff=None, model: np.ndarray | None = None, model_name: str | None = None,
              model_threshold: float | None = None, alpha: float = 0.05, n_boot: int = N_BOOT,
              seed: int = SEED) -> tuple[dict, dict, list[str]]:
    """(kappa section, per-reader section, notes) for ratings (T, R, K). Reader pair keys are ``"R1 ~ R2"``."""
    T, R, K = ratings.shape
    notes: list[str] = []
    cut, rule = resolve_cutoffs(ratings, readers, cutoff)
    kappa = {"cutoff": cut, "cutoff_rule": rule,
             "ci_method": f"case bootstrap, {n_boot} replicates, seed {seed}, percentile interval",
             "pair_key": "'A ~ B' = readers A and B", "per_modality": {}}
    per_reader: dict = {}
    levels = np.unique(ratings)
    ordinal = bool(np.all(levels == np.round(levels))) and levels.size <= MAX_ORDINAL_LEVELS
    if ordinal:
        kappa["weights"] = ("quadratic, on the rank of the rating among the study's levels "
                            f"({', '.join(f'{v:g}' for v in levels)})")
    model_calls = None
    if model is not None:
        if model_threshold is None:
            notes.append(f"agreement of the readers with the model {model_name!r} needs a threshold for the "
                         "model's score (model threshold): not computed.")
        else:
            model_calls = (model >= model_threshold).astype(float)
    if cut is None:
        notes.append(f"kappa, sensitivity and specificity not computed: {rule}.")
    pairs = [(j, k) for j in range(R) for k in range(j + 1, R)]
    undefined = 0
    pos, neg = truth == 1, truth == 0
    for i, m in enumerate(modalities):
        entry: dict = {"cohen": {}, "fleiss": None, "model": {}}
        per_reader[m] = {}
        calls = None
        if cut is not None:
            calls = np.stack([(ratings[i, j] >= cut[r]).astype(float) for j, r in enumerate(readers)])
            coded = np.searchsorted(levels, ratings[i]).astype(float) if ordinal else None
            point = _panel_stats(np.ones((1, K)), calls, coded, model_calls, pairs)
            blocks = [_panel_stats(W, calls, coded, model_calls, pairs)
                      for W in _resample_weights(K, n_boot, seed)]
            boot = {key: np.concatenate([b[key] for b in blocks]) for key in point}

            def summary(key: str, col: int | None = None) -> dict:
                nonlocal undefined
                value = point[key][0] if col is None else point[key][0, col]
                values = boot[key] if col is None else boot[key][:, col]
                ci, bad = _interval(values, alpha)
                undefined += bad
                return {"kappa": _num(value), "ci": ci if np.isfinite(value) else [None, None]}

            for n, (j, k) in enumerate(pairs):
                pair = summary("cohen", n) | {"agreement": float((calls[j] == calls[k]).mean())}
                if ordinal:
                    w = summary("weighted", n)
                    pair.update({"weighted_kappa": w["kappa"], "weighted_ci": w["ci"]})
                entry["cohen"][f"{readers[j]} ~ {readers[k]}"] = pair
            if R >= 2:
                entry["fleiss"] = summary("fleiss") | {"n_readers": R}
            if model_calls is not None:
                for j, r in enumerate(readers):
                    entry["model"][r] = summary("model", j) | {"agreement": float((calls[j] == model_calls).mean())}
        kappa["per_modality"][m] = entry
        for j, r in enumerate(readers):
            auc, lo, hi, _ = delong_ci(truth, ratings[i, j], alpha)
            row = {"auroc": {"estimate": float(auc), "ci": [float(lo), float(hi)], "method": "DeLong"}}
            if calls is not None:
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
            tp, tn = int(model_calls[pos].sum()), int((1 - model_calls[neg]).sum())
            kappa["model"].update({
                "sensitivity": {"estimate": tp / pos.sum(), "ci": wilson(tp, int(pos.sum()), alpha)},
                "specificity": {"estimate": tn / neg.sum(), "ci": wilson(tn, int(neg.sum()), alpha)}})
    if undefined:
        notes.append(f"kappa bootstrap: {undefined} replicates where a kappa was undefined (every call the same) "
                     "were left out of its interval.")
    for m, entry in kappa["per_modality"].items():
        for key, pair in entry["cohen"].items():
            if pair["kappa"] is None:
                notes.append(f"kappa {key} in modality {m!r} is undefined: both readers make the same call on "
                             "every case.")
    return kappa, per_reader, notes
