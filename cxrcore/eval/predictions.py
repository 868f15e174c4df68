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


SPLIT_CHOICES = ("test", "val", "train", "all", "official_test")


def split_rows(index: DatasetIndex, split: str, seed: int = 0, val: float = 0.1, test: float = 0.2) -> np.ndarray:
    """Rows of a hash split (``train`` / ``val`` / ``test``), every row (``all``), or the dataset's
    official test list (``official_test``: NIH test_list.txt, CheXpert valid.csv)."""
    if split == "all":
        return np.arange(len(index))
    if split == "official_test":
        from ..data.readers import official_test_mask

        return np.flatnonzero(official_test_mask(index))
    if split not in ("train", "val", "test"):
        raise DataError(f"Unknown split {split!r}; use {', '.join(SPLIT_CHOICES)}.")
    assignment = patient_split(index.frame["patient_id"], seed, val, test)
    return np.flatnonzero(assignment == split)


def model_split_rows(predictor: Predictor, index: DatasetIndex, split: str) -> np.ndarray:
    """Rows of ``index`` in the model's own ``split``: the split its training used.

    Hash and official splits are recomputed from the card (seed and fractions); a stratified split
    depends on the whole training set, so it is read from the run's splits.csv (matched by image id).
    ``official_test`` is the dataset's official test list whatever split the model trained with.
    """
    data = predictor.card.data
    cfg = (predictor.card.training or {}).get("config", {})
    if split in ("train", "val", "test") and data.get("split_method") == "official":
        from ..data.splits import official_patient_split

        assignment = official_patient_split(index.frame, int(data.get("split_seed", 0)),
                                            float(cfg.get("val_fraction", 0.1)))
        return np.flatnonzero(assignment == split)
    if split in ("train", "val", "test") and data.get("split_method", "hash") == "stratified":
        import pandas as pd

        rel = data.get("splits_file", "../splits.csv")
        here = Path(predictor.path)
        found = next((p for p in (here / rel, here / "checkpoint" / rel) if p.resolve().is_file()), None)
        if found is None:
            raise DataError(f"This model was trained with a stratified split, stored in {rel} next to its checkpoint, "
                            "which is missing. Evaluate with --split all, or restore the run folder.")
        table = pd.read_csv(found.resolve(), dtype=str)
        ids = set(table.loc[table["split"] == split, "image_id"])
        return np.flatnonzero(index.frame["image_id"].astype(str).isin(ids).to_numpy())
    return split_rows(index, split, int(data.get("split_seed", 0)), float(cfg.get("val_fraction", 0.1)),
                      float(cfg.get("test_fraction", 0.2)))


def predict_split(predictor: Predictor, data: str | Path | DatasetIndex, split: str = "val", policy: str = "zeros",
                  progress=None, use_cache: bool = True, raw: bool = False) -> SplitPredictions:
    """The model's probabilities and the targets (``policy``) on ``split`` of ``data``; model outputs are
    cached in the workspace. ``raw``: a two-stage model's outputs before its gate combination."""
    index = data if isinstance(data, DatasetIndex) else read_dataset(data)
    index = index.subset(index.frame["frontal"].fillna(True).astype(bool).to_numpy())
    rows = model_split_rows(predictor, index, split)
    if not len(rows):
        raise DataError(f"The {split} split of {index.name} is empty.")
    sub = index.subset(np.isin(np.arange(len(index)), rows))
    targets = sub.targets(predictor.labels, policy)
    key = hashlib.sha256(f"{predictor.card.weights_sha256}|{sub.fingerprint()}|{split}|{predictor.prep.to_dict()}".encode()).hexdigest()[:20]
    path = workspace.sub("predictions") / f"{key}.npz"
    # The cache holds raw sigmoid outputs; a two-stage model's gate is applied after, with the card's
    # current gate threshold (editing it on the Thresholds page needs no new model run).
    if use_cache and path.exists() and "raw" in np.load(path).files:
        raw_probs = np.load(path)["raw"]
    else:
        cache = build_cache(sub, predictor.prep, progress=None, workers=1 if len(sub) < 400 else 2)
        raw_probs = predictor.predict_squares(cache.array, progress=progress, raw=True)
        np.savez(path, raw=raw_probs)
    probs = raw_probs if raw else predictor.combine(raw_probs)
    return SplitPredictions(list(predictor.labels), list(sub.frame["image_id"]), targets, probs, split, index.name)


def align_to(preds: SplitPredictions, labels: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Targets and probabilities of ``preds`` restricted to the ``labels`` it shares (synonyms matched)."""
    mapping = match_labels(preds.labels, labels)  # target index -> source index
    shared = [labels[j] for j in sorted(mapping)]
    cols = [mapping[j] for j in sorted(mapping)]
    return preds.targets[:, cols], preds.probs[:, cols], shared
