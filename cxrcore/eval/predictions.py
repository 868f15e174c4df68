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
from ..labels import gate_targets, match_labels
from ..predictor import Predictor, fuse_views


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
    if split in ("train", "val", "test") and data.get("crossfit"):
        from ..data.index import crossfit_split

        cf = data["crossfit"]
        assignment = crossfit_split(index.frame["patient_id"], int(cf["folds"]), int(cf["fold"]),
                                    int(data.get("split_seed", 0)), float(cfg.get("val_fraction", 0.1)))
        return np.flatnonzero(assignment == split)
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


def trained_on_laterals(predictor: Predictor) -> bool:
    """Whether the model's training kept lateral views (its card's ``frontal_only`` was off)."""
    cfg = (predictor.card.training or {}).get("config", {})
    return cfg.get("frontal_only") is False


def predict_split(predictor: Predictor, data: str | Path | DatasetIndex, split: str = "val", policy: str = "zeros",
                  progress=None, use_cache: bool = True, raw: bool = False, tta: str = "none",
                  laterals: bool | None = None, limits=None) -> SplitPredictions:
    """The model's probabilities and the targets (``policy``) on ``split`` of ``data``; model outputs are
    cached in the workspace. ``raw``: a two-stage model's outputs before its gate combination.
    ``laterals``: keep lateral views (None: when the model trained with them, as its card says).
    ``limits``: a visitor's ceilings (:func:`cxrcore.hosting.limits`): AccessError before any model runs
    for more images than ``CXR_MAX_EVAL_IMAGES`` or more test-time views than ``CXR_MAX_TTA_VIEWS``."""
    index = data if isinstance(data, DatasetIndex) else read_dataset(data)
    if laterals is None:
        laterals = trained_on_laterals(predictor)
    if not laterals:
        index = index.subset(index.frame["frontal"].fillna(True).astype(bool).to_numpy())
    rows = model_split_rows(predictor, index, split)
    if not len(rows):
        raise DataError(f"The {split} split of {index.name} is empty.")
    sub = index.subset(np.isin(np.arange(len(index)), rows))
    targets = sub.targets(predictor.labels, policy)
    ts = (predictor.card.model or {}).get("two_stage")
    if isinstance(ts, dict) and predictor.labels and predictor.labels[-1] == ts.get("gate_label"):
        # a two-stage model's gate has no column in any dataset: its target follows from the findings
        targets[:, -1] = gate_targets(targets[:, :-1], predictor.labels[:-1])
    from .tta import check_tta

    tta = check_tta(tta)
    if limits:
        from .tta import VIEWS

        limits.check("tta_views", VIEWS[tta], f"Test-time augmentation {tta} ({VIEWS[tta]} views per image)",
                     "Choose fewer views (flip: 2, none: 1).")
        limits.check("eval_images", len(sub), f"Images to predict (the {split} split of {index.name})",
                     "Choose a smaller dataset or split.")
    extra = "" if tta == "none" else f"|tta={tta}"
    key = hashlib.sha256(f"{predictor.card.weights_sha256}|{sub.fingerprint()}|{split}|{predictor.prep.to_dict()}{extra}"
                         .encode()).hexdigest()[:20]
    path = workspace.sub("predictions") / f"{key}.npz"
    # The cache holds raw sigmoid outputs; a two-stage model's gate is applied after, with the card's
    # current gate threshold (editing it on the Thresholds page needs no new model run).
    if use_cache and path.exists() and "raw" in np.load(path).files:
        raw_probs = np.load(path)["raw"]
    else:
        cache = build_cache(sub, predictor.prep, progress=None, workers=1 if len(sub) < 400 else 2)
        raw_probs = predictor.predict_squares(cache.array, progress=progress, raw=True, tta=tta)
        np.savez(path, raw=raw_probs)
    probs = raw_probs if raw else predictor.combine(raw_probs)
    return SplitPredictions(list(predictor.labels), list(sub.frame["image_id"]), targets, probs, split, index.name)


FUSIONS = ("none", "mean", "max")


def fuse_studies(preds: SplitPredictions, index: DatasetIndex, how: str = "mean") -> tuple[SplitPredictions, np.ndarray]:
    """Study-level predictions (seed 003): each study's images (frontal and lateral views) combined, their
    probabilities by ``mean`` or ``max``, their targets by the maximum over the images that are labelled
    (CheXpert labels studies: every image of a study carries the same row). Returns the fused predictions
    (``image_ids`` are study ids) and each study's patient id (for the patient bootstrap)."""
    if how not in FUSIONS or how == "none":
        raise DataError(f"Study fusion must be mean or max, not {how!r}.")
    f = index.frame.set_index(index.frame["image_id"].astype(str))
    study = f.loc[preds.image_ids, "study_id"].astype(str).to_numpy()
    patient = f.loc[preds.image_ids, "patient_id"].astype(str).to_numpy()
    order, first = np.unique(study, return_index=True)
    keys = list(order[np.argsort(first)])                      # studies in order of first appearance
    pos = {k: i for i, k in enumerate(keys)}
    g = np.array([pos[x] for x in study])
    n, L = len(keys), preds.probs.shape[1]
    probs = np.zeros((n, L), dtype=np.float64)
    targets = np.full((n, L), np.nan, dtype=np.float64)
    pids = np.empty(n, dtype=object)
    for i in range(n):
        rows = np.flatnonzero(g == i)
        probs[i] = fuse_views(list(preds.probs[rows]), how)
        t = preds.targets[rows]
        known = ~np.isnan(t)
        any_known = known.any(0)
        targets[i, any_known] = np.nanmax(np.where(known, t, -np.inf), axis=0)[any_known]
        pids[i] = patient[rows[0]]
    fused = SplitPredictions(preds.labels, keys, targets.astype(np.float32), probs.astype(np.float32),
                             preds.split, preds.dataset)
    return fused, pids


def align_to(preds: SplitPredictions, labels: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Targets and probabilities of ``preds`` restricted to the ``labels`` it shares (synonyms matched)."""
    mapping = match_labels(preds.labels, labels)  # target index -> source index
    shared = [labels[j] for j in sorted(mapping)]
    cols = [mapping[j] for j in sorted(mapping)]
    return preds.targets[:, cols], preds.probs[:, cols], shared
