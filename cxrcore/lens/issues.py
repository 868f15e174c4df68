"""Likely label errors in a dataset, found from a model's out-of-sample probabilities with cleanlab (issue 24 §3;
``cxr label-issues``).

**Out of sample.** A model's probability for an image it trained on says little about that image's label. The
images used are those the model did not train on: all of the dataset when the model never saw it; when its card
says it trained on this dataset (the same folder, name or fingerprint; for a phantom, the same generator domain and
seed, whose images are the same), only the images of its validation and test splits (the rest is reported as left
out). Cross-fitting over k folds (k trainings) is not built yet.

**The ranking** (Northcutt, Jiang & Chuang, JAIR 2021, through cleanlab as its multi-label module does it: one
binary problem per label): per label, ``cleanlab.filter.find_label_issues`` (prune by noise rate, from the
confident joint) flags the images whose given label disagrees with what the model's probabilities and the label's
noise rates imply, and ``cleanlab.rank.get_label_quality_scores`` (self-confidence) scores them; an issue's
``score`` is 1 − that quality (1: the model is sure the given label is wrong). Issues of every label, most likely
error first.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError


@dataclass
class LabelIssues:
    issues: list[dict]            # {"image", "label", "given", "score", "probability", "path"}, ranked
    images: int                   # images the probabilities are out of sample for
    left_out: int                 # the model's training images of this dataset, not used
    labels: list[str]             # the labels examined (those the dataset and the model share)
    note: str = ""

    def to_dict(self) -> dict:
        return {"issues": self.issues, "images": self.images, "left_out": self.left_out, "labels": self.labels,
                "note": self.note}


def rank_issues(targets: np.ndarray, probs: np.ndarray, labels: list[str], image_ids: list[str],
                paths: list[str] | None = None) -> list[dict]:
    """The issues (see the module's text) of ``targets`` (N, L: 1 / 0, NaN where unknown) against out-of-sample
    ``probs`` (N, L), most likely error first. A label without both classes among its known values is skipped."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    out = []
    for j, label in enumerate(labels):
        known = np.flatnonzero(np.isfinite(targets[:, j]) & (targets[:, j] >= 0))
        y = targets[known, j].astype(int)
        if len(known) < 10 or y.min() == y.max():
            continue
        p = np.clip(probs[known, j].astype(np.float64), 1e-6, 1 - 1e-6)
        pred = np.stack([1 - p, p], axis=1)
        # n_jobs=1: cleanlab's default forks a worker pool, which ends its workers with SIGTERM; in a job (whose
        # workers inherit the runner's stop handler) they would not end, and in the app a fork of a threaded server
        # is unsafe; one label at a time is fast (rows x 2 classes)
        flagged = find_label_issues(y, pred, filter_by="prune_by_noise_rate", n_jobs=1)
        quality = get_label_quality_scores(y, pred, method="self_confidence")
        for k in np.flatnonzero(flagged):
            i = int(known[k])
            out.append({"image": str(image_ids[i]), "label": label, "given": int(y[k]),
                        "score": round(float(1.0 - quality[k]), 6), "probability": round(float(p[k]), 6),
                        **({"path": str(paths[i])} if paths is not None else {})})
    out.sort(key=lambda r: -r["score"])
    return out


def seen_by(card, dataset) -> bool:
    """Whether ``card``'s model trained on ``dataset`` (see the module's text)."""
    data = card.data or {}
    if data.get("fingerprint") and data.get("fingerprint") == dataset.fingerprint():
        return True
    root = data.get("root")
    if root and Path(root).exists() and Path(root).resolve() == Path(dataset.root).resolve():
        return True
    if data.get("name") and data.get("name") == dataset.name:
        return True
    marker = Path(dataset.root) / "PHANTOM.json"
    if marker.is_file() and str(data.get("name", "")).startswith("phantom-"):
        try:
            ph = json.loads(marker.read_text())
        except (OSError, ValueError):
            return False
        return str(data["name"]).startswith(f"phantom-{ph.get('domain')}-seed{ph.get('seed')}-")
    return False


def find_issues(checkpoint, data, *, progress=None, limits=None) -> LabelIssues:
    """:func:`rank_issues` for the dataset folder ``data`` with ``checkpoint``'s out-of-sample probabilities (an
    uncertain label, CheXpert's -1, counts as unknown). ``limits``: a visitor's ceilings (the images predicted)."""
    from ..data.readers import read_dataset
    from ..eval.predictions import model_split_rows, predict_split
    from ..predictor import Predictor

    predictor = Predictor(checkpoint)
    dataset = read_dataset(data)
    dataset = dataset.subset(dataset.frame["path"].notna().to_numpy())
    note = ""
    left_out = 0
    if seen_by(predictor.card, dataset):
        train = model_split_rows(predictor, dataset, "train")
        keep = np.ones(len(dataset), dtype=bool)
        keep[train] = False
        left_out = int((~keep).sum())
        dataset = dataset.subset(keep)
        note = (f"{predictor.name} trained on this dataset: its {left_out} training images are left out (their "
                "probabilities are not out of sample); the rest are its validation and test images.")
    if len(dataset) < 10:
        raise DataError(f"Only {len(dataset)} images of {dataset.name} are out of sample for this model; too few "
                        "to look for label errors.")
    preds = predict_split(predictor, dataset, "all", policy="ignore", progress=progress, limits=limits)
    shared = dataset.shared_labels(list(predictor.labels))
    cols = [list(predictor.labels).index(x) for x in shared]
    paths = dataset.frame.set_index("image_id")["path"].reindex(preds.image_ids).astype(str).tolist()
    issues = rank_issues(preds.targets[:, cols], preds.probs[:, cols], shared, preds.image_ids, paths)
    return LabelIssues(issues, len(preds.image_ids), left_out, shared, note)
