"""Per-label metrics over predictions with NaN targets meaning "not labelled"."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def _per_label(metric, targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``metric(y, s)`` per column over labelled rows; NaN where a label lacks positives or negatives."""
    out = np.full(targets.shape[1], np.nan)
    for j in range(targets.shape[1]):
        m = ~np.isnan(targets[:, j])
        y = targets[m, j]
        if y.size and 0 < y.sum() < y.size:
            out[j] = metric(y, scores[m, j])
    return out


def per_label_auroc(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return _per_label(roc_auc_score, targets, scores)


def per_label_auprc(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return _per_label(average_precision_score, targets, scores)


def mean_ignoring_nan(values) -> float:
    v = np.asarray(list(values), dtype=float)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


def confusion_at(targets: np.ndarray, scores: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Confusion counts and rates per label at per-label thresholds (vectorised; NaN targets skipped)."""
    labelled = ~np.isnan(targets)
    pos = (targets == 1) & labelled
    neg = (targets == 0) & labelled
    pred = scores >= thresholds[None, :]
    tp = (pred & pos).sum(0)
    fp = (pred & neg).sum(0)
    fn = (~pred & pos).sum(0)
    tn = (~pred & neg).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        sens = tp / (tp + fn)
        spec = tn / (tn + fp)
        ppv = tp / (tp + fp)
        npv = tn / (tn + fn)
        f1 = 2 * tp / (2 * tp + fp + fn)
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "sensitivity": sens, "specificity": spec,
            "ppv": ppv, "npv": npv, "f1": f1}


def best_f1_thresholds(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-label threshold that maximises F1 on labelled rows (0.5 where a label has no positives)."""
    out = np.full(targets.shape[1], 0.5)
    for j in range(targets.shape[1]):
        m = ~np.isnan(targets[:, j])
        y, s = targets[m, j], scores[m, j]
        if y.sum() == 0:
            continue
        order = np.argsort(-s)
        y_sorted, s_sorted = y[order], s[order]
        tp = np.cumsum(y_sorted)
        k = np.arange(1, len(y_sorted) + 1)
        f1 = 2 * tp / (k + y.sum())
        # only cut between distinct scores
        valid = np.r_[s_sorted[1:] != s_sorted[:-1], True]
        best = np.argmax(np.where(valid, f1, -1))
        out[j] = float(s_sorted[best])
    return out
