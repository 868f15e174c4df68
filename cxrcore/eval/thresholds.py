"""Per-label decision thresholds: pick them on a validation split, store them in the checkpoint card."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from .. import workspace
from ..checkpoint import read_card, write_card
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


STRATEGIES = {"max F1": best_f1_thresholds, "Youden's J": youden_thresholds}


def save_thresholds(checkpoint: str | Path, thresholds: dict[str, float]) -> Path:
    """Write ``thresholds`` into the card. Shipped checkpoints (next to the code) are never modified:
    they are copied into the workspace first, and the copy is updated. Returns the folder written."""
    folder = Path(checkpoint).resolve()
    card = read_card(folder)
    unknown = set(thresholds) - set(card.labels)
    if unknown:
        raise CheckpointError(f"Thresholds for labels the model does not have: {sorted(unknown)}.")
    bad = {k: v for k, v in thresholds.items() if not 0.0 <= float(v) <= 1.0}
    if bad:
        raise CheckpointError(f"Thresholds must lie in [0, 1]: {bad}.")
    shipped = workspace.shipped_checkpoints().resolve()
    if shipped in folder.parents or folder == shipped:
        target = workspace.sub("checkpoints") / folder.name
        if not (target / "card.json").exists():
            shutil.copytree(folder, target, dirs_exist_ok=True)
        folder = target
        card = read_card(folder)
    card.thresholds.update({k: float(v) for k, v in thresholds.items()})
    write_card(folder, card)
    return folder
