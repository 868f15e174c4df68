"""Calibration: reliability bins, expected calibration error, Brier score, temperature scaling.

All per-label functions take ``targets`` (N, L) with NaN = not labelled and skip those rows.
Temperature scaling divides each label's logit by its own temperature T > 0, fitted on a
validation split by minimising the binary negative log-likelihood over log T (bounded);
T > 1 softens over-confident outputs, T < 1 sharpens under-confident ones. It changes no
ranking, so AUROC and AUPRC stay the same; thresholds chosen on raw probabilities must be
chosen again after scaling.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from ..inference import EPS, apply_temperature, logits_from_probs  # noqa: F401 - applied at inference too
LOG_T_BOUNDS = (np.log(0.05), np.log(20.0))


def bin_index(p: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """Equal-width bin of each probability; bin k holds [k/n, (k+1)/n), the last one includes 1."""
    return np.clip((np.asarray(p, dtype=np.float64) * n_bins).astype(int), 0, n_bins - 1)


def reliability_bins(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Per bin: edges (n_bins + 1), count, mean predicted probability, observed positive rate
    (NaN for empty bins)."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    b = bin_index(p, n_bins)
    count = np.bincount(b, minlength=n_bins).astype(np.int64)
    sum_p = np.bincount(b, weights=p, minlength=n_bins)
    sum_y = np.bincount(b, weights=y, minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_pred = np.where(count > 0, sum_p / count, np.nan)
        observed = np.where(count > 0, sum_y / count, np.nan)
    return {"edges": np.linspace(0, 1, n_bins + 1), "count": count, "mean_predicted": mean_pred, "observed": observed}


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """sum_k n_k / n * |observed_k - mean predicted_k| over equal-width bins."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if not y.size:
        return float("nan")
    b = bin_index(p, n_bins)
    gap = np.bincount(b, weights=y - p, minlength=n_bins)
    return float(np.abs(gap).sum() / y.size)


def brier_score(y: np.ndarray, p: np.ndarray) -> float:
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    return float(np.mean((p - y) ** 2)) if y.size else float("nan")


def binary_nll(y: np.ndarray, p: np.ndarray) -> float:
    """Mean negative log-likelihood (log loss) of probabilities ``p`` for 0/1 targets ``y``."""
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))) if y.size else float("nan")


def _columns(targets: np.ndarray, probs: np.ndarray):
    for j in range(targets.shape[1]):
        m = ~np.isnan(targets[:, j])
        yield j, targets[m, j], probs[m, j]


def per_label_ece(targets: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> np.ndarray:
    out = np.full(targets.shape[1], np.nan)
    for j, y, p in _columns(targets, probs):
        if y.size:
            out[j] = expected_calibration_error(y, p, n_bins)
    return out


def per_label_brier(targets: np.ndarray, probs: np.ndarray) -> np.ndarray:
    out = np.full(targets.shape[1], np.nan)
    for j, y, p in _columns(targets, probs):
        if y.size:
            out[j] = brier_score(y, p)
    return out


def per_label_reliability(targets: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> list[dict[str, np.ndarray]]:
    return [reliability_bins(y, p, n_bins) for _, y, p in _columns(targets, probs)]


# --------------------------------------------------------------------------- temperature scaling

def _nll_logits(y: np.ndarray, z: np.ndarray) -> float:
    # -[y log s(z) + (1-y) log(1-s(z))] = softplus(z) - y z, computed stably
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(y: np.ndarray, logits: np.ndarray, bounds: tuple[float, float] = LOG_T_BOUNDS) -> float:
    """Temperature T minimising the NLL of ``sigmoid(logits / T)``; 1.0 without both classes."""
    y, z = np.asarray(y, dtype=np.float64), np.asarray(logits, dtype=np.float64)
    if not y.size or y.min() == y.max():
        return 1.0
    res = minimize_scalar(lambda log_t: _nll_logits(y, z / np.exp(log_t)), bounds=bounds, method="bounded",
                          options={"xatol": 1e-5})
    return float(np.exp(res.x))


def fit_temperatures(targets: np.ndarray, logits: np.ndarray, bounds: tuple[float, float] = LOG_T_BOUNDS) -> np.ndarray:
    """Per-label temperatures (L,) fitted on validation logits; 1.0 for labels lacking a class."""
    out = np.ones(targets.shape[1])
    for j, y, z in _columns(targets, logits):
        out[j] = fit_temperature(y, z, bounds)
    return out


def calibrate_probs(probs: np.ndarray, temperatures) -> np.ndarray:
    """Temperature-scaled probabilities from probabilities (e.g. the prediction cache)."""
    return apply_temperature(logits_from_probs(probs), temperatures)
