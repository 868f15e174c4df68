"""DeLong's test for correlated ROC curves, in the O(n log n) form of Sun & Xu (2014).

DeLong, DeLong & Clarke-Pearson (1988) estimate the covariance of the AUROCs of several scores
on the same cases from structural components: for each positive, the share of negatives it
outranks (ties 1/2), and for each negative, the share of positives that outrank it. Sun & Xu
("Fast implementation of DeLong's algorithm for comparing the areas under correlated receiver
operating characteristic curves", IEEE SPL 2014) obtain all components from three midrankings:
of the positives, of the negatives and of both together.

Cases are assumed independent. With several images per patient the variance is too small; the
patient bootstrap in :mod:`cxrcore.eval.bootstrap` does not make that assumption.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata


def structural_components(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUROCs (K,) and structural components V10 (K, m) over positives, V01 (K, n) over negatives.

    ``scores`` is (K, N) for K models (or (N,) for one), ``y`` (N,) 0/1 with both classes present.
    """
    y = np.asarray(y)
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    pos, neg = s[:, y == 1], s[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    if m == 0 or n == 0:
        raise ValueError("DeLong needs at least one positive and one negative case")
    tx = rankdata(pos, axis=1)                     # midranks among positives
    ty = rankdata(neg, axis=1)                     # midranks among negatives
    tz = rankdata(np.hstack([pos, neg]), axis=1)   # midranks among all
    aucs = (tz[:, :m].sum(1) - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:, :m] - tx) / n                     # per positive: share of negatives below (+ ties/2)
    v01 = 1.0 - (tz[:, m:] - ty) / m               # per negative: share of positives above (+ ties/2)
    return aucs, v10, v01


def delong_covariance(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs (K,) and their DeLong covariance matrix (K, K)."""
    aucs, v10, v01 = structural_components(y, scores)
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(aucs), len(aucs)))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(aucs), len(aucs)))
    return aucs, s10 / m + s01 / n


@dataclass
class DeLongResult:
    labels: list[str]
    auc_a: np.ndarray        # (L,)
    auc_b: np.ndarray
    cov: np.ndarray          # (L, 2, 2): var a, cov ab / cov ab, var b
    z: np.ndarray            # (b - a) / sd
    p: np.ndarray            # two-sided
    n_pos: np.ndarray
    n_neg: np.ndarray

    def label(self, j: int) -> dict:
        f = lambda x: None if np.isnan(x) else float(x)  # noqa: E731
        return {"auc_a": f(self.auc_a[j]), "auc_b": f(self.auc_b[j]), "var_a": f(self.cov[j, 0, 0]),
                "var_b": f(self.cov[j, 1, 1]), "cov_ab": f(self.cov[j, 0, 1]), "z": f(self.z[j]), "p": f(self.p[j])}


def delong_test_1d(y: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(aucs (2,), cov (2, 2), z, two-sided p) for H0: AUROC(a) = AUROC(b) on the same cases."""
    aucs, cov = delong_covariance(y, np.vstack([scores_a, scores_b]))
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    delta = aucs[1] - aucs[0]
    if var <= 1e-15:   # identical or perfectly separated rankings: no variance to test against
        return aucs, cov, float("nan"), 1.0 if abs(delta) < 1e-12 else float("nan")
    z = delta / np.sqrt(var)
    return aucs, cov, float(z), float(2 * norm.sf(abs(z)))


def delong_test(targets: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray,
                labels: list[str] | None = None) -> DeLongResult:
    """Per-label DeLong test of b against a over labelled rows (NaN targets skipped); labels
    without both classes get NaN."""
    targets = np.asarray(targets, dtype=np.float64)
    if targets.ndim == 1:
        targets, scores_a, scores_b = targets[:, None], np.asarray(scores_a)[:, None], np.asarray(scores_b)[:, None]
    L = targets.shape[1]
    auc_a, auc_b, z, p = (np.full(L, np.nan) for _ in range(4))
    cov = np.full((L, 2, 2), np.nan)
    n_pos, n_neg = np.zeros(L, int), np.zeros(L, int)
    for j in range(L):
        m = ~np.isnan(targets[:, j])
        y = targets[m, j]
        n_pos[j], n_neg[j] = int((y == 1).sum()), int((y == 0).sum())
        if n_pos[j] and n_neg[j]:
            aucs, cov[j], z[j], p[j] = delong_test_1d(y, scores_a[m, j], scores_b[m, j])
            auc_a[j], auc_b[j] = aucs
    return DeLongResult(list(labels or [str(j) for j in range(L)]), auc_a, auc_b, cov, z, p, n_pos, n_neg)


def delong_ci(y: np.ndarray, scores: np.ndarray, alpha: float = 0.05) -> tuple[float, float, float, float]:
    """(AUROC, low, high, variance): Wald interval AUROC ± z_(1-alpha/2) * DeLong SD, clipped to [0, 1]."""
    aucs, cov = delong_covariance(y, scores)
    auc, var = float(aucs[0]), float(cov[0, 0])
    half = norm.ppf(1 - alpha / 2) * np.sqrt(max(var, 0.0))
    return auc, max(0.0, auc - half), min(1.0, auc + half), var


def per_label_delong_ci(targets: np.ndarray, scores: np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """(L, 3) of AUROC, low, high per label; NaN rows for labels without both classes."""
    out = np.full((targets.shape[1], 3), np.nan)
    for j in range(targets.shape[1]):
        m = ~np.isnan(targets[:, j])
        y = targets[m, j]
        if y.size and 0 < y.sum() < y.size:
            out[j] = delong_ci(y, scores[m, j], alpha)[:3]
    return out
