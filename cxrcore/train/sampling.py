"""The order of training rows in each epoch, drawn from one seeded ``torch.Generator``.

Everything random in an epoch comes from that generator, so saving its state at the end of an
epoch is enough to resume exactly.

- ``shuffle``: a permutation of the training rows.
- ``weighted``: torch's ``WeightedRandomSampler`` (with replacement) where an image's weight is
  the largest inverse prevalence of its positive labels (images with no finding weigh by the
  "no finding" rate), so rare findings are seen as often as common ones.
- ``oversample_min``: before either, rows of rare label combinations (e.g. "Edema|Effusion") are
  repeated until each combination has at least this many rows in the epoch.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

from ..errors import ConfigError
from .config import SAMPLER_CHOICES as SAMPLERS  # declared with the option


def combination_codes(targets: np.ndarray) -> np.ndarray:
    """One string per row naming its positive labels by index ('' = no finding)."""
    pos = np.nan_to_num(targets, nan=0.0) == 1
    return np.array(["|".join(map(str, np.flatnonzero(r))) for r in pos], dtype=object)


def oversample_rows(rows: np.ndarray, targets: np.ndarray, minimum: int, gen: torch.Generator) -> np.ndarray:
    """``rows`` plus repeats of rows whose label combination has fewer than ``minimum`` rows."""
    if minimum <= 0 or len(rows) == 0:
        return rows
    codes = combination_codes(targets[rows])
    extra = []
    for code in sorted(set(codes)):
        members = rows[codes == code]
        need = minimum - len(members)
        if need > 0:
            pick = torch.randint(len(members), (need,), generator=gen).numpy()
            extra.append(members[pick])
    return np.concatenate([rows] + extra) if extra else rows


def epoch_size(rows: np.ndarray, targets: np.ndarray, minimum: int = 0) -> int:
    """How many rows an epoch has: ``rows`` plus the repeats ``oversample_rows`` adds (no random draw)."""
    if minimum <= 0 or len(rows) == 0:
        return len(rows)
    _, counts = np.unique(combination_codes(targets[np.asarray(rows)]), return_counts=True)
    return int(len(rows) + np.maximum(0, minimum - counts).sum())


def sample_weights(targets: np.ndarray) -> np.ndarray:
    """Per-row weight: the largest 1/prevalence among its positive labels (no finding: 1/its rate)."""
    pos = np.nan_to_num(targets, nan=0.0) == 1
    n = max(1, len(targets))
    prevalence = np.maximum(pos.sum(axis=0), 1) / n
    none = ~pos.any(axis=1)
    none_rate = max(1, int(none.sum())) / n
    inv = np.where(pos, 1.0 / prevalence[None, :], 0.0).max(axis=1)
    return np.where(none, 1.0 / none_rate, inv)


def epoch_order(rows: np.ndarray, targets: np.ndarray, sampler: str, gen: torch.Generator,
                oversample_min: int = 0) -> np.ndarray:
    """The training rows for one epoch, in order."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, not {sampler!r}.")
    pool = oversample_rows(np.asarray(rows), targets, oversample_min, gen)
    if sampler == "weighted":
        w = sample_weights(targets[pool])
        picks = list(WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double), num_samples=len(pool),
                                           replacement=True, generator=gen))
        return pool[np.asarray(picks, dtype=np.int64)]
    return pool[torch.randperm(len(pool), generator=gen).numpy()]
