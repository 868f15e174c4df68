"""Patient-level (cluster) bootstrap confidence intervals for per-label metrics.

Images of one patient are not independent: follow-up films of the same chest look alike and
share labels. Resampling *images* treats them as independent and gives intervals that are too
narrow. Here every replicate draws *patients* with replacement and takes all images of each
drawn patient (as many times as the patient was drawn).

A replicate is represented by a weight per image: how many times its patient was drawn. A metric
of the resampled data set equals the weighted metric of the original rows (duplicated rows are
tied scores), so the fast kernels below (AUROC, AUPRC, Brier, ECE, confusion rates) sort the
scores once per label and evaluate every replicate of a chunk with a few array operations.
Any other metric with the :mod:`cxrcore.eval.metrics` signature ``f(targets, scores) -> (L,)``
works too: its replicates are materialised as row-index lists built from precomputed per-patient
row ranges and the function is called once per replicate (slower, same draws).

Labels that lack a positive or a negative in a replicate are skipped for that replicate (NaN);
``n_valid`` says how many replicates each label's interval rests on. Intervals are percentile
intervals over the valid replicates.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from . import metrics as _metrics

# A weighted kernel: (y (n,), s (n,), W (B, n)) -> (B,) metric per replicate, NaN where undefined.
Kernel = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

_CHUNK_CELLS = 2_000_000  # replicates x rows per chunk: bounds memory for large test sets


# --------------------------------------------------------------------------- weighted kernels

def _groups(s: np.ndarray, descending: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Sort order of ``s`` and the start of each run of tied scores in that order."""
    order = np.argsort(-s if descending else s, kind="mergesort")
    ss = s[order]
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
    return order, starts


def weighted_auroc(y: np.ndarray, s: np.ndarray, W: np.ndarray) -> np.ndarray:
    """AUROC per replicate (ties count 1/2): sum over positives of the negative weight below them."""
    order, starts = _groups(s)
    pos = (y[order] == 1).astype(np.float64)
    Ws = W[:, order]
    wp = np.add.reduceat(Ws * pos, starts, axis=1)          # positive weight per tie group
    wn = np.add.reduceat(Ws * (1 - pos), starts, axis=1)    # negative weight per tie group
    below = np.cumsum(wn, axis=1) - wn
    P, N = wp.sum(1), wn.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (wp * (below + 0.5 * wn)).sum(1) / (P * N)
    return np.where((P > 0) & (N > 0), auc, np.nan)


def weighted_auprc(y: np.ndarray, s: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Average precision per replicate, as sklearn's ``average_precision_score`` defines it."""
    order, starts = _groups(s, descending=True)
    pos = (y[order] == 1).astype(np.float64)
    Ws = W[:, order]
    wp = np.add.reduceat(Ws * pos, starts, axis=1)
    wn = np.add.reduceat(Ws * (1 - pos), starts, axis=1)
    tp, fp = np.cumsum(wp, axis=1), np.cumsum(wn, axis=1)
    P, N = wp.sum(1), wn.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        ap = (wp * precision).sum(1) / P
    return np.where((P > 0) & (N > 0), ap, np.nan)


def weighted_brier(y: np.ndarray, s: np.ndarray, W: np.ndarray) -> np.ndarray:
    n = W.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, W @ (s - y) ** 2 / n, np.nan)


def weighted_ece(y: np.ndarray, s: np.ndarray, W: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """Expected calibration error with ``n_bins`` equal-width bins: sum_k |sum y - sum p| / n."""
    from .calibration import bin_index

    b = bin_index(s, n_bins)
    onehot = np.zeros((len(s), n_bins))
    onehot[np.arange(len(s)), b] = 1.0
    gap = (W @ (onehot * (y - s)[:, None]))                 # (B, bins): sum of (y - p) per bin
    n = W.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, np.abs(gap).sum(1) / n, np.nan)


def _confusion_kernel(rate: str) -> Kernel:
    """Kernels over binary decisions ``s`` (1 = called positive), e.g. ``probs >= threshold``."""

    def kernel(y: np.ndarray, s: np.ndarray, W: np.ndarray) -> np.ndarray:
        d = (s >= 0.5).astype(np.float64)
        p = (y == 1).astype(np.float64)
        tp, fp = W @ (d * p), W @ (d * (1 - p))
        fn, tn = W @ ((1 - d) * p), W @ ((1 - d) * (1 - p))
        num, den = {
            "sensitivity": (tp, tp + fn), "specificity": (tn, tn + fp), "ppv": (tp, tp + fp),
            "npv": (tn, tn + fn), "f1": (2 * tp, 2 * tp + fp + fn), "accuracy": (tp + tn, tp + tn + fp + fn),
        }[rate]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den > 0, num / den, np.nan)

    kernel.__name__ = f"weighted_{rate}"
    return kernel


KERNELS: dict[str, Kernel] = {
    "auroc": weighted_auroc,
    "auprc": weighted_auprc,
    "brier": weighted_brier,
    "ece": weighted_ece,
    **{r: _confusion_kernel(r) for r in ("sensitivity", "specificity", "ppv", "npv", "f1", "accuracy")},
}
# The per-label functions of metrics.py map to the equivalent fast kernels.
_EQUIVALENT = {_metrics.per_label_auroc: "auroc", _metrics.per_label_auprc: "auprc"}


# --------------------------------------------------------------------------- patient draws

@dataclass
class Clusters:
    """Patients as integer codes, with each patient's rows (precomputed once)."""
    codes: np.ndarray        # (n,) patient code of each row
    n_patients: int
    order: np.ndarray        # rows sorted by patient
    starts: np.ndarray       # (P,) start of each patient's rows in ``order``
    sizes: np.ndarray        # (P,) images per patient

    @classmethod
    def of(cls, patient_ids, n: int) -> "Clusters":
        if patient_ids is None:
            codes = np.arange(n)
        else:
            ids = np.asarray(patient_ids)
            if len(ids) != n:
                raise ValueError(f"{len(ids)} patient ids for {n} rows")
            _, codes = np.unique(ids.astype(str), return_inverse=True)
        codes = codes.reshape(-1)
        order = np.argsort(codes, kind="mergesort")
        sizes = np.bincount(codes)
        starts = np.r_[0, np.cumsum(sizes)[:-1]]
        return cls(codes, len(sizes), order, starts, sizes)

    def rows(self, drawn: np.ndarray) -> np.ndarray:
        """Row indices of one replicate: all rows of every drawn patient, repeats included."""
        lengths = self.sizes[drawn]
        offsets = np.cumsum(lengths) - lengths
        within = np.arange(lengths.sum()) - np.repeat(offsets, lengths)
        return self.order[np.repeat(self.starts[drawn], lengths) + within]


def _draws(clusters: Clusters, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Chunks of patient draws (b, P): the same sequence for the same data, n_boot and seed."""
    rng = np.random.default_rng(seed)
    P = clusters.n_patients
    chunk = max(1, _CHUNK_CELLS // max(P, len(clusters.codes)))
    for b0 in range(0, n_boot, chunk):
        yield rng.integers(0, P, size=(min(chunk, n_boot - b0), P))


def _weights(clusters: Clusters, drawn: np.ndarray) -> np.ndarray:
    """Row weights (b, n): how many times each row's patient was drawn in each replicate."""
    b, P = drawn.shape
    counts = np.bincount((drawn + P * np.arange(b)[:, None]).ravel(), minlength=b * P).reshape(b, P)
    return counts[:, clusters.codes].astype(np.float64)


def bootstrap_weights(patient_ids, n_boot: int = 1000, seed: int = 0) -> Iterator[np.ndarray]:
    """Row-weight matrices of the patient bootstrap, chunk by chunk, for custom statistics."""
    clusters = Clusters.of(patient_ids, len(patient_ids))
    for drawn in _draws(clusters, n_boot, seed):
        yield _weights(clusters, drawn)


# --------------------------------------------------------------------------- results

@dataclass
class BootstrapResult:
    estimate: np.ndarray     # (L,) metric on the full data (NaN where undefined)
    low: np.ndarray          # (L,) percentile CI
    high: np.ndarray
    n_valid: np.ndarray      # (L,) replicates in which the label was defined
    replicates: np.ndarray = field(repr=False)  # (n_boot, L), NaN where skipped
    n_boot: int = 0
    alpha: float = 0.05
    n_patients: int = 0

    @property
    def se(self) -> np.ndarray:
        with np.errstate(invalid="ignore"), _quiet():
            return np.nanstd(self.replicates, axis=0, ddof=1)

    def label(self, j: int) -> dict:
        return {"value": _f(self.estimate[j]), "low": _f(self.low[j]), "high": _f(self.high[j]),
                "n_valid": int(self.n_valid[j])}


@dataclass
class DeltaResult:
    estimate_a: np.ndarray
    estimate_b: np.ndarray
    delta: np.ndarray        # (L,) b - a on the full data
    low: np.ndarray
    high: np.ndarray
    se: np.ndarray
    p: np.ndarray            # two-sided bootstrap p of delta = 0 (percentile inversion)
    n_valid: np.ndarray
    replicates: np.ndarray = field(repr=False)  # (n_boot, L) of b - a
    n_boot: int = 0
    alpha: float = 0.05

    def label(self, j: int) -> dict:
        return {"value": _f(self.delta[j]), "low": _f(self.low[j]), "high": _f(self.high[j]),
                "se": _f(self.se[j]), "p_bootstrap": _f(self.p[j]), "n_valid": int(self.n_valid[j])}


def _f(x) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def percentile_ci(replicates: np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low, high, n_valid) per column over the non-NaN replicates."""
    reps = np.asarray(replicates, dtype=np.float64)
    n_valid = (~np.isnan(reps)).sum(0)
    with _quiet():
        lo, hi = np.nanpercentile(reps, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    return np.where(n_valid > 0, lo, np.nan), np.where(n_valid > 0, hi, np.nan), n_valid


# --------------------------------------------------------------------------- bootstrap

def _as_2d(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a[:, None] if a.ndim == 1 else a


def _resolve(metric_fn) -> tuple[str, object]:
    if isinstance(metric_fn, str):
        if metric_fn not in KERNELS:
            raise ValueError(f"unknown metric {metric_fn!r}; use one of {sorted(KERNELS)} or a function")
        return "kernel", KERNELS[metric_fn]
    if metric_fn in _EQUIVALENT:
        return "kernel", KERNELS[_EQUIVALENT[metric_fn]]
    if getattr(metric_fn, "weighted", False):
        return "kernel", metric_fn
    return "generic", metric_fn


def _replicates(targets, scores, clusters: Clusters, metric_fn, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(point estimate (L,), replicates (n_boot, L))."""
    kind, fn = _resolve(metric_fn)
    n, L = targets.shape
    if kind == "generic":
        est = np.asarray(fn(targets, scores), dtype=np.float64)
        reps = [np.asarray(fn(targets[r], scores[r]), dtype=np.float64)
                for drawn in _draws(clusters, n_boot, seed) for r in map(clusters.rows, drawn)]
        return est, np.array(reps).reshape(n_boot, L)
    labelled = [np.flatnonzero(~np.isnan(targets[:, j])) for j in range(L)]
    est = np.full(L, np.nan)
    for j, m in enumerate(labelled):
        if m.size:
            est[j] = fn(targets[m, j], scores[m, j], np.ones((1, m.size)))[0]
    reps = np.full((n_boot, L), np.nan)
    b0 = 0
    for drawn in _draws(clusters, n_boot, seed):
        W = _weights(clusters, drawn)
        for j, m in enumerate(labelled):
            if m.size:
                reps[b0:b0 + len(drawn), j] = fn(targets[m, j], scores[m, j], W[:, m])
        b0 += len(drawn)
    return est, reps


def patient_bootstrap(targets, scores, patient_ids, metric_fn="auroc", n_boot: int = 1000, seed: int = 0,
                      alpha: float = 0.05) -> BootstrapResult:
    """Point estimate and percentile CI per label, resampling patients with replacement.

    ``targets`` (N, L) with NaN = not labelled, ``scores`` (N, L); ``patient_ids`` (N,) or None
    (each image its own cluster = the ordinary image bootstrap). ``metric_fn``: a name in
    :data:`KERNELS` (``auroc``, ``auprc``, ``brier``, ``ece``; ``sensitivity``, ``specificity``,
    ``ppv``, ``npv``, ``f1``, ``accuracy`` expect binary decisions as scores), ``per_label_auroc`` /
    ``per_label_auprc`` (mapped to the fast kernels), or any ``f(targets, scores) -> (L,)``.
    The same ``seed`` gives the same patient draws for every metric, so intervals of different
    metrics (and models) come from the same replicates.
    """
    targets, scores = _as_2d(targets), _as_2d(scores)
    if targets.shape != scores.shape:
        raise ValueError(f"targets {targets.shape} and scores {scores.shape} differ in shape")
    clusters = Clusters.of(patient_ids, len(targets))
    est, reps = _replicates(targets, scores, clusters, metric_fn, n_boot, seed)
    lo, hi, n_valid = percentile_ci(reps, alpha)
    return BootstrapResult(est, lo, hi, n_valid, reps, n_boot, alpha, clusters.n_patients)


def paired_bootstrap_delta(targets, scores_a, scores_b, patient_ids, metric_fn="auroc", n_boot: int = 1000,
                           seed: int = 0, alpha: float = 0.05) -> DeltaResult:
    """Per-label difference ``metric(b) - metric(a)`` with a paired patient-bootstrap CI.

    Both models are scored on the same replicates (same patients drawn), so the interval reflects
    the correlation between them. ``p`` is the two-sided bootstrap p-value of no difference:
    twice the smaller share of replicates on either side of 0.
    """
    targets, scores_a, scores_b = _as_2d(targets), _as_2d(scores_a), _as_2d(scores_b)
    if not targets.shape == scores_a.shape == scores_b.shape:
        raise ValueError(f"shapes differ: targets {targets.shape}, a {scores_a.shape}, b {scores_b.shape}")
    clusters = Clusters.of(patient_ids, len(targets))
    est_a, reps_a = _replicates(targets, scores_a, clusters, metric_fn, n_boot, seed)
    est_b, reps_b = _replicates(targets, scores_b, clusters, metric_fn, n_boot, seed)
    reps = reps_b - reps_a
    lo, hi, n_valid = percentile_ci(reps, alpha)
    with np.errstate(invalid="ignore", divide="ignore"), _quiet():
        below = np.nansum(reps <= 0, axis=0) / n_valid
        above = np.nansum(reps >= 0, axis=0) / n_valid
        p = np.minimum(1.0, 2 * np.minimum(below, above))
        p = np.maximum(p, 1.0 / n_valid)  # no p below the bootstrap's resolution
        se = np.nanstd(reps, axis=0, ddof=1)
    p = np.where(n_valid > 0, p, np.nan)
    return DeltaResult(est_a, est_b, est_b - est_a, lo, hi, se, p, n_valid, reps, n_boot, alpha)


def bootstrap_mean(values, patient_ids, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Mean of a per-image statistic (e.g. per-image Hamming loss) with a patient-bootstrap CI."""
    v = np.asarray(values, dtype=np.float64)
    reps = np.concatenate([W @ v / W.sum(1) for W in bootstrap_weights(patient_ids, n_boot, seed)])
    lo, hi, n_valid = percentile_ci(reps[:, None], alpha)
    return {"value": _f(v.mean()) if v.size else None, "low": _f(lo[0]), "high": _f(hi[0]), "n_valid": int(n_valid[0])}
