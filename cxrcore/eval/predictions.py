"""Predictions of a checkpoint over a dataset split, cached in the workspace.

The Thresholds page, the demo build and evaluation read these instead of running the model
again: the cache key is the checkpoint's weights hash, the dataset fingerprint and the split.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import workspace
from ..data.cache import build_cache
from ..data.index import DatasetIndex, patient_split
from ..data.readers import read_dataset
from ..errors import DataError
from ..labels import match_labels
from ..predictor import Predictor


@dataclass
class SplitPredictions:
    labels: list[str]          # the model's labels
    image_ids: list[str]
    targets: np.ndarray        # (N, L) under the model's labels, NaN = not labelled
    probs: np.ndarray          # (N, L)
    split: str
    dataset: str

    def evaluable(self) -> list[int]:
        """Indices of labels with at least one positive and one negative."""
        out = []
        for j in range(len(self.labels)):
            t = self.targets[:, j]
            t = t[~np.isnan(t)]
            if t.size and 0 < t.sum() < t.size:
                out.append(j)
        return out


def split_rows(index: DatasetIndex, split: str, seed: int = 0, val: float = 0.1, test: float = 0.2) -> np.ndarray:
    if split == "all":
        return np.arange(len(index))
    if split not in ("train", "val", "test"):
        raise DataError(f"Unknown split {split!r}; use train, val, test or all.")
    assignment = patient_split(index.frame["patient_id"], seed, val, test)
    return np.flatnonzero(assignment == split)


def predict_split(predictor: Predictor, data: str | Path | DatasetIndex, split: str = "val", policy: str = "zeros",
                  progress=None, use_cache: bool = True) -> SplitPredictions:
    index = data if isinstance(data, DatasetIndex) else read_dataset(data)
    index = index.subset(index.frame["frontal"].fillna(True).astype(bool).to_numpy())
    seed = int(predictor.card.data.get("split_seed", 0))
    rows = split_rows(index, split, seed)
    if not len(rows):
        raise DataError(f"The {split} split of {index.name} is empty.")
    sub = index.subset(np.isin(np.arange(len(index)), rows))
    targets = sub.targets(predictor.labels, policy)
    key = hashlib.sha256(f"{predictor.card.weights_sha256}|{sub.fingerprint()}|{split}|{predictor.prep.to_dict()}".encode()).hexdigest()[:20]
    path = workspace.sub("predictions") / f"{key}.npz"
    if use_cache and path.exists():
        probs = np.load(path)["probs"]
    else:
        cache = build_cache(sub, predictor.prep, progress=None, workers=1 if len(sub) < 400 else 2)
        probs = predictor.predict_squares(cache.array, progress=progress)
        np.savez(path, probs=probs)
    return SplitPredictions(list(predictor.labels), list(sub.frame["image_id"]), targets, probs, split, index.name)


def align_to(preds: SplitPredictions, labels: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Targets and probabilities of ``preds`` restricted to the ``labels`` it shares (synonyms matched)."""
    mapping = match_labels(preds.labels, labels)  # target index -> source index
    shared = [labels[j] for j in sorted(mapping)]
    cols = [mapping[j] for j in sorted(mapping)]
    return preds.targets[:, cols], preds.probs[:, cols], shared
