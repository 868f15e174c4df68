"""Per-label decision thresholds: pick them on a validation split, store them in the checkpoint card."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from .. import workspace
from ..checkpoint import read_card, shipped_copy_state, write_card
from ..errors import CheckpointError
from .metrics import best_f1_thresholds


def youden_thresholds(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per label, the threshold maximising sensitivity + specificity - 1 (0.5 where undefined)."""
    from sklearn.metrics import roc_curve

    out = np.full(targets.shape[1], 0.5)
    for j in range(targets.shape[1]):
        m = ~np.isnan(targets[:, j])
        y = targets[m, j]
        if y.size and 0 < y.sum() < y.size:
            fpr, tpr, thr = roc_curve(y, scores[m, j])
            k = int(np.argmax(tpr - fpr))
            out[j] = float(min(1.0, thr[k]))
    return out


def _candidates(y: np.ndarray, s: np.ndarray):
    """Unique scores (ascending) and, at each as threshold (``score >= t`` is positive), TP and TN."""
    u, inv = np.unique(s, return_inverse=True)
    pos_at = np.bincount(inv, weights=(y == 1), minlength=len(u))
    neg_at = np.bincount(inv, weights=(y == 0), minlength=len(u))
    tp = np.cumsum(pos_at[::-1])[::-1]          # positives with score >= u[i]
    tn = np.cumsum(neg_at) - neg_at             # negatives with score < u[i]
    return u, tp, tn


def _check_target(target) -> float:
    if target is None or not 0.0 <= float(target) <= 1.0:
        raise ValueError(f"target must lie in [0, 1] (got {target!r}).")
    return float(target)


def target_sensitivity_thresholds(targets: np.ndarray, scores: np.ndarray, target: float = 0.9) -> np.ndarray:
    """Per label, the highest threshold (among the label's unique labelled scores) whose sensitivity
    (``score >= t`` called positive) is >= ``target``; 0.5 where the label has no positives.

    The lowest score always qualifies (sensitivity 1), so a threshold exists whenever there are positives.
    """
    target = _check_target(target)
    out = np.full(targets.shape[1], 0.5)
    for j in range(targets.shape[1]):
        m = ~np.isnan(targets[:, j])
        y, s = targets[m, j], scores[m, j].astype(np.float64)
        P = (y == 1).sum()
        if P == 0:
            continue
        u, tp, _ = _candidates(y, s)
        ok = np.flatnonzero(tp / P >= target)   # sensitivity is non-increasing in t: ok is a prefix
        out[j] = float(u[ok[-1]])
    return out


def target_specificity_thresholds(targets: np.ndarray, scores: np.ndarray, target: float = 0.9) -> np.ndarray:
    """Per label, the lowest threshold (among the label's unique labelled scores) whose specificity
    (``score < t`` called negative) is >= ``target``; 0.5 where the label has no negatives.

    If no score qualifies (e.g. target 1 and a negative holds the top score) the threshold is the
    next float above the top score (specificity 1), capped at 1.0 (thresholds live in [0, 1]; a
    negative scored exactly 1.0 then keeps specificity below 1).
    """
    target = _check_target(target)
    out = np.full(targets.shape[1], 0.5)
    for j in range(targets.shape[1]):
        m = ~np.isnan(targets[:, j])
        y, s = targets[m, j], scores[m, j].astype(np.float64)
        N = (y == 0).sum()
        if N == 0:
            continue
        u, _, tn = _candidates(y, s)
        ok = np.flatnonzero(tn / N >= target)   # specificity is non-decreasing in t: ok is a suffix
        out[j] = float(u[ok[0]]) if ok.size else float(min(1.0, np.nextafter(u[-1], np.inf)))
    return out


# name -> f(targets, scores[, target=]) -> per-label thresholds. Strategies in TARGETED take ``target=``.
STRATEGIES = {"max F1": best_f1_thresholds, "Youden's J": youden_thresholds,
              "target sensitivity": target_sensitivity_thresholds,
              "target specificity": target_specificity_thresholds}
TARGETED = ("target sensitivity", "target specificity")
MANUAL = "manual"


def suggest_thresholds(strategy: str, targets: np.ndarray, scores: np.ndarray, target: float | None = None) -> np.ndarray:
    """Per-label thresholds by ``strategy`` (a key of :data:`STRATEGIES`); ``target`` for the targeted ones."""
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown threshold strategy {strategy!r}; use one of {list(STRATEGIES)}.")
    if strategy in TARGETED:
        return STRATEGIES[strategy](targets, scores, target=_check_target(target))
    return STRATEGIES[strategy](targets, scores)


def snap(thresholds: np.ndarray, strategy: str, step: float = 0.01) -> np.ndarray:
    """Thresholds on a slider grid of ``step`` without losing what the strategy guarantees:
    target sensitivity rounds down (lower threshold: sensitivity can only rise), target
    specificity rounds up; the others round to the nearest step. Clipped to [0, 1]."""
    t = np.asarray(thresholds, dtype=np.float64)
    k = t / step
    if strategy == "target sensitivity":
        k = np.floor(k + 1e-9)
        g = k * step
        g = np.where(g > t, (k - 1) * step, g)   # float error must never push it above t
    elif strategy == "target specificity":
        k = np.ceil(k - 1e-9)
        g = k * step
        g = np.where(g < t, (k + 1) * step, g)
    else:
        g = np.round(k) * step
    return np.clip(np.round(g, 10), 0.0, 1.0)


class ThresholdSweep:
    """Confusion counts at any per-label thresholds in O(L log N): per label, the sorted scores of
    its labelled positives and negatives are cached once; a threshold move is two ``searchsorted``.

    ``at(thresholds)`` returns the same dict as :func:`cxrcore.eval.metrics.confusion_at`.
    """

    def __init__(self, targets: np.ndarray, scores: np.ndarray):
        self.pos, self.neg = [], []
        for j in range(targets.shape[1]):
            t = targets[:, j]
            self.pos.append(np.sort(scores[t == 1, j].astype(np.float64)))
            self.neg.append(np.sort(scores[t == 0, j].astype(np.float64)))
        self.P = np.array([len(a) for a in self.pos])
        self.N = np.array([len(a) for a in self.neg])

    def at(self, thresholds: np.ndarray) -> dict[str, np.ndarray]:
        thr = np.asarray(thresholds, dtype=np.float64)
        fn = np.array([np.searchsorted(a, t, "left") for a, t in zip(self.pos, thr)], dtype=np.int64)
        tn = np.array([np.searchsorted(a, t, "left") for a, t in zip(self.neg, thr)], dtype=np.int64)
        tp, fp = self.P - fn, self.N - tn
        with np.errstate(divide="ignore", invalid="ignore"):
            return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp),
                    "ppv": tp / (tp + fp), "npv": tn / (tn + fn), "f1": 2 * tp / (2 * tp + fp + fn)}


def tunable_labels(targets: np.ndarray) -> list[int]:
    """Columns of ``targets`` with both positives and negatives (NaN = unknown): the labels a threshold can be tuned on."""
    return [j for j in range(targets.shape[1]) if np.nansum(targets[:, j]) > 0 and np.nansum(1 - targets[:, j]) > 0]


def label_curves(targets: np.ndarray, scores: np.ndarray) -> list[dict]:
    """Per column: ROC (fpr, tpr) and precision-recall curves over the known cases, and the prevalence."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    curves = []
    for j in range(targets.shape[1]):
        m = ~np.isnan(targets[:, j])
        fpr, tpr, _ = roc_curve(targets[m, j], scores[m, j])
        prec, rec, _ = precision_recall_curve(targets[m, j], scores[m, j])
        curves.append({"fpr": fpr, "tpr": tpr, "precision": prec, "recall": rec,
                       "prevalence": float(np.mean(targets[m, j] == 1))})
    return curves


def operating_table(labels: list[str], thresholds: np.ndarray, conf: dict, auroc: np.ndarray) -> pd.DataFrame:
    """The Thresholds page's table: one row per label."""
    return pd.DataFrame({
        "label": list(labels), "threshold": np.asarray(thresholds, dtype=np.float64), "AUROC": auroc,
        "sensitivity": conf["sensitivity"], "specificity": conf["specificity"], "PPV": conf["ppv"],
        "NPV": conf["npv"], "F1": conf["f1"], "TP": conf["tp"], "FP": conf["fp"], "FN": conf["fn"], "TN": conf["tn"],
    })


def _writable(checkpoint: str | Path):
    """(folder, card) to write to. Shipped checkpoints (next to the code) are never modified: they
    are copied into the workspace first, and the copy is what gets updated. A copy made from an earlier build of
    the shipped models is moved aside (``NAME.older-<sha>``, kept for reference) and a new copy made."""
    folder = Path(checkpoint).resolve()
    card = read_card(folder)
    shipped = workspace.shipped_checkpoints().resolve()
    if shipped in folder.parents or folder == shipped:
        target = workspace.sub("checkpoints") / folder.name
        if shipped_copy_state(folder.name) == "older":
            old = read_card(target).weights_sha256[:12] or "unknown"
            aside = target.with_name(f"{folder.name}.older-{old}")
            shutil.rmtree(aside, ignore_errors=True)
            target.rename(aside)
        if not (target / "card.json").exists():
            shutil.copytree(folder, target, dirs_exist_ok=True)
        folder = target
        card = read_card(folder)
    return folder, card


def save_thresholds(checkpoint: str | Path, thresholds: dict[str, float]) -> Path:
    """Write ``thresholds`` into the card; returns the folder written (a workspace copy for shipped models)."""
    card = read_card(checkpoint)
    unknown = set(thresholds) - set(card.labels)
    if unknown:
        raise CheckpointError(f"Thresholds for labels the model does not have: {sorted(unknown)}.")
    bad = {k: v for k, v in thresholds.items() if not 0.0 <= float(v) <= 1.0}
    if bad:
        raise CheckpointError(f"Thresholds must lie in [0, 1]: {bad}.")
    folder, card = _writable(checkpoint)
    card.thresholds.update({k: float(v) for k, v in thresholds.items()})
    write_card(folder, card)
    return folder


def save_temperatures(checkpoint: str | Path, temperatures: dict[str, float], fitted_on: str) -> Path:
    """Store per-label temperature-scaling factors in the card (used for calibrated probabilities)."""
    card = read_card(checkpoint)
    unknown = set(temperatures) - set(card.labels)
    if unknown:
        raise CheckpointError(f"Temperatures for labels the model does not have: {sorted(unknown)}.")
    bad = {k: v for k, v in temperatures.items() if not float(v) > 0}
    if bad:
        raise CheckpointError(f"Temperatures must be positive: {bad}.")
    folder, card = _writable(checkpoint)
    card.metrics.setdefault("calibration", {})
    card.metrics["calibration"] = {"temperatures": {k: float(v) for k, v in temperatures.items()},
                                   "fitted_on": fitted_on}
    write_card(folder, card)
    return folder
