"""Training losses for multi-label chest X-ray classification.

All losses take logits (B, L) and targets (B, L) with NaN where a label is unknown (U-Ignore,
or a label the dataset does not have) and average over the known entries only.

- ``bce``: binary cross-entropy with logits, optionally with ``pos_weight`` per label
  (negatives / positives in the training split: the usual answer to rare findings).
- ``focal``: torchvision's sigmoid focal loss (Lin et al. 2017), which down-weights easy examples.
- ``hierarchy_penalty``: the penalty form of hierarchical BCE on a parent/child tree (CheXpert:
  Lung Opacity -> Edema, Consolidation, ...): the mean of ``relu(p_child - p_parent)``, so a child
  predicted above its parent costs loss.
- Two-stage training (``two_stage_targets``): a gate label "Any finding" trained on every image,
  and the disease labels trained on abnormal images only.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from ..errors import ConfigError
from ..labels import CHEXPERT_HIERARCHY, GATE_LABEL, canonical, gate_targets  # noqa: F401 - the gate's target: a label fact
from .config import LOSS_CHOICES as LOSSES  # declared with the option


REDUCTIONS = ("mean", "sum")


def _masked_reduce(values: torch.Tensor, mask: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    if not mask.any():
        return values.sum() * 0.0
    return values[mask].sum() if reduction == "sum" else values[mask].mean()


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None,
               reduction: str = "mean") -> torch.Tensor:
    """BCE with logits over the known (non-NaN) targets: their mean, or their sum."""
    mask = ~torch.isnan(targets)
    if not mask.any():
        return logits.sum() * 0.0
    safe = torch.where(mask, targets, torch.zeros_like(targets))
    pw = None if pos_weight is None else pos_weight.to(logits.dtype)
    raw = F.binary_cross_entropy_with_logits(logits, safe, pos_weight=pw, reduction="none")
    return _masked_reduce(raw, mask, reduction)


def masked_focal(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0, alpha: float = -1.0,
                 reduction: str = "mean") -> torch.Tensor:
    mask = ~torch.isnan(targets)
    safe = torch.where(mask, targets, torch.zeros_like(targets))
    raw = sigmoid_focal_loss(logits.float(), safe.float(), alpha=alpha, gamma=gamma, reduction="none")
    return _masked_reduce(raw, mask, reduction)


def pos_weight_from(targets: np.ndarray, clip: float = 100.0) -> np.ndarray:
    """negatives / positives per label over known entries, clipped to [1/clip, clip]; 1 where a label has none."""
    known = ~np.isnan(targets)
    pos = np.nansum(targets == 1, axis=0).astype(float)
    neg = (known & (targets == 0)).sum(axis=0).astype(float)
    w = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    return np.clip(w, 1.0 / clip, clip).astype(np.float32)


def hierarchy_pairs(labels: list[str], tree: dict[str, list[str]] | None = None) -> list[tuple[int, int]]:
    """(parent index, child index) pairs of ``tree`` (default: CheXpert's) among ``labels``, matched by synonym."""
    tree = CHEXPERT_HIERARCHY if tree is None else tree
    pos = {canonical(x): i for i, x in enumerate(labels)}
    pairs = []
    for parent, children in tree.items():
        p = pos.get(canonical(parent))
        if p is None:
            continue
        for child in children:
            c = pos.get(canonical(child))
            if c is not None:
                pairs.append((p, c))
    return pairs


def hierarchy_penalty(logits: torch.Tensor, pairs: list[tuple[int, int]]) -> torch.Tensor:
    """Mean of relu(p_child - p_parent) over pairs and batch (0 when there are no pairs)."""
    if not pairs:
        return logits.sum() * 0.0
    p = torch.sigmoid(logits.float())
    parents = torch.tensor([a for a, _ in pairs], device=logits.device)
    children = torch.tensor([b for _, b in pairs], device=logits.device)
    return F.relu(p[:, children] - p[:, parents]).mean()


def two_stage_targets(targets: np.ndarray, labels: list[str] | None = None) -> np.ndarray:
    """Disease targets masked to abnormal images, plus a last "Any finding" gate column.

    Gate: 1 when any finding is positive, 0 when the image is labelled "No Finding" or every finding is
    known and negative, NaN otherwise (only unknowns and no positive: the image cannot be called normal).
    "No Finding" (when ``labels`` has it) is never a finding: it does not open the gate, and its own
    column is trained on every image (it is the gate's complement, not a disease of abnormal images).
    """
    targets = np.asarray(targets, dtype=np.float32)
    gate = gate_targets(targets, labels)
    finding = np.array([canonical(x) != "no finding" for x in (labels or [])] or [True] * targets.shape[1])
    disease = np.where((gate == 1)[:, None], targets, np.nan).astype(np.float32)
    disease[:, ~finding] = targets[:, ~finding]
    return np.concatenate([disease, gate[:, None]], axis=1)


class Criterion:
    """The configured loss: ``criterion(logits, targets) -> scalar``; ``parts`` of the last call for logging."""

    def __init__(self, loss: str = "bce", labels: list[str] | None = None, pos_weight: np.ndarray | None = None,
                 focal_gamma: float = 2.0, hierarchy: str = "none", hierarchy_weight: float = 1.0,
                 reduction: str = "mean"):
        if loss not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, not {loss!r}.")
        if reduction not in REDUCTIONS:
            raise ConfigError(f"loss reduction must be one of {', '.join(REDUCTIONS)}, not {reduction!r}.")
        self.reduction = reduction
        if loss == "focal" and pos_weight is not None:
            raise ConfigError("pos_weight is for the bce loss; focal loss weights hard examples itself. Choose one.")
        self.loss = loss
        self.gamma = focal_gamma
        self.pos_weight = None if pos_weight is None else torch.as_tensor(pos_weight)
        self.pairs = hierarchy_pairs(labels or []) if hierarchy == "penalty" else []
        self.weight = float(hierarchy_weight)
        self.parts: dict[str, float] = {}

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.loss == "focal":
            base = masked_focal(logits, targets, self.gamma, reduction=self.reduction)
        else:
            pw = None if self.pos_weight is None else self.pos_weight.to(logits.device)
            base = masked_bce(logits.float(), targets, pw, reduction=self.reduction)
        if not self.pairs:
            self.parts = {"base": float(base.detach())}
            return base
        pen = hierarchy_penalty(logits, self.pairs)
        self.parts = {"base": float(base.detach()), "hierarchy": float(pen.detach())}
        return base + self.weight * pen
