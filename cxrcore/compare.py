"""The pipeline from an image to a result, for one model or several: the image read once, its
out-of-distribution check, each model's prediction (probabilities, every label's heatmap and boxes, optional
Monte-Carlo dropout spread and test-time augmentation), and the views of one study fused.

The Compare page, the REST service (:mod:`cxrcore.api`) and ``cxr predict`` all run images through
:func:`compare` (and :func:`study` for several views); :mod:`cxrcore.results` serialises what comes out.
"""
from __future__ import annotations

import hashlib
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from .data.imageio import LoadedImage, read_image
from .errors import CheckpointError
from .explain.ood import OODResult, check_image
from .labels import canonical
from .predictor import Prediction, Predictor, fuse_views


@dataclass
class Comparison:
    """One image through one model or several (keyed by the caller's names for them: roles on the Compare
    page, served names in the REST service)."""

    image: LoadedImage
    image_name: str
    image_hash: str
    predictions: dict[str, Prediction]          # model name -> prediction
    model_paths: dict[str, str] = field(default_factory=dict)
    truth: list[str] | None = None              # ground-truth labels when known
    ood: OODResult | None = None                # "does this look like a frontal chest radiograph?"
    model_names: dict[str, str] = field(default_factory=dict)   # model name -> its card's display name
    seconds: dict[str, float] = field(default_factory=dict)     # {"ood", "predict"}: each step's seconds

    def labels(self) -> list[str]:
        """Union of the models' labels in first-seen order, synonyms folded (first spelling wins)."""
        seen, out = set(), []
        for pred in self.predictions.values():
            for x in pred.labels:
                if canonical(x) not in seen:
                    seen.add(canonical(x))
                    out.append(x)
        return out

    def label_in(self, name: str, label: str) -> str | None:
        """The spelling of ``label`` in model ``name``'s list, or None."""
        for x in self.predictions[name].labels:
            if canonical(x) == canonical(label):
                return x
        return None

    def table(self) -> pd.DataFrame:
        """One row per label; per model its probability (± Monte-Carlo sd) and decision, from the per-label
        results every answer carries (:meth:`cxrcore.predictor.Prediction.per_label`)."""
        per_model = {name: pred.per_label() for name, pred in self.predictions.items()}
        rows = []
        for label in self.labels():
            row = {"label": label}
            if self.truth is not None:
                row["truth"] = canonical(label) in {canonical(t) for t in self.truth}
            for name, pred in self.predictions.items():
                own = self.label_in(name, label)
                if own is None:
                    row[f"{name} p"] = np.nan
                    row[f"{name} positive"] = None
                    continue
                d = per_model[name][own]
                row[f"{name} p"] = d["probability"]
                if "std" in d:
                    row[f"{name} ± sd"] = d["std"]
                row[f"{name} positive"] = d["positive"]
            rows.append(row)
        return pd.DataFrame(rows)

    def for_label(self, label: str) -> dict[str, Prediction]:
        """Predictions re-keyed so that each model's spelling of ``label`` is ``label``."""
        out = {}
        for name, pred in self.predictions.items():
            own = self.label_in(name, label)
            if own is None or own == label:
                out[name] = pred
                continue
            labels = [label if x == own else x for x in pred.labels]
            boxes = {label if k == own else k: v for k, v in pred.boxes.items()}
            out[name] = replace(pred, labels=labels, boxes=boxes)
        return out


def with_uncertainty(comparison: Comparison, predictors: dict[str, Predictor], mc_samples: int) -> Comparison:
    """``comparison`` with each model's Monte-Carlo dropout spread added (the probabilities and heatmaps
    stay the ones already computed): the slow part, done after the first answer is on screen."""
    preds = {name: predictors[name].with_uncertainty(pred, comparison.image, mc_samples)
             for name, pred in comparison.predictions.items()}
    return replace(comparison, predictions=preds)


def image_hash(data: bytes | np.ndarray) -> str:
    raw = data if isinstance(data, bytes) else np.ascontiguousarray(data).tobytes()
    return hashlib.sha256(raw).hexdigest()[:16]


def model_name(checkpoint: str | os.PathLike, predictor: Predictor) -> str:
    """What an answer calls a model given as ``checkpoint`` (a folder, or a library name such as
    ``xrv:densenet121-res224-all``): the folder's name, else the card's name."""
    return Path(checkpoint).resolve().name or predictor.name


def load_image(source: str | os.PathLike | bytes, name: str | None = None) -> tuple[LoadedImage, bytes]:
    """An image file (a path, or an upload's bytes) read once: the decoded image and the file's bytes (for
    :func:`compare`'s ``raw``). ImageError for a file that cannot be read."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return read_image(bytes(source), name), bytes(source)
    path = Path(source)
    try:
        data = path.read_bytes()
    except OSError:
        read_image(path, name)  # the reader's own message for a missing file, a folder, ...
        raise
    return read_image(data, name or path.name), data


def compare(image: LoadedImage, predictors: dict[str, Predictor], image_name: str = "upload",
            truth: list[str] | None = None, raw: bytes | None = None, mc_samples: int = 0, *,
            heatmaps: bool = True, mc_seed: int = 0, mc_tta: bool = False, tta: str = "none",
            locks: dict | None = None) -> Comparison:
    """The out-of-distribution check of the image and every model's prediction of it: probabilities, every
    label's heatmap and boxes (``heatmaps``), the Monte-Carlo dropout spread (``mc_samples`` passes seeded
    by ``mc_seed``, with test-time augmentation inside them when ``mc_tta``), test-time augmentation of the
    probabilities (``tta``). ``raw``: the file's bytes (the colour check and the hash use them). ``locks``:
    a lock per model name, held around that model's prediction (the REST service bounds compute with them)."""
    t0 = time.perf_counter()
    ood = check_image(image, raw=raw)
    t1 = time.perf_counter()
    preds = {}
    for name, p in predictors.items():
        with (locks or {}).get(name) or nullcontext():
            preds[name] = p.predict(image, heatmaps=heatmaps, mc_samples=mc_samples, mc_seed=mc_seed, mc_tta=mc_tta,
                                    tta=tta)
    t2 = time.perf_counter()
    return Comparison(image, image_name, image_hash(raw if raw is not None else image.pixels), preds,
                      {name: str(p.path) for name, p in predictors.items()}, truth, ood,
                      {name: p.name for name, p in predictors.items()}, {"ood": t1 - t0, "predict": t2 - t1})


# --------------------------------------------------------------------------- several views of one study

@dataclass
class Study:
    """The views of one study (frontal and lateral; seed 003), each a :class:`Comparison` of the same models,
    and each model's probabilities fused over them by ``fusion`` (mean or max)."""

    views: list[Comparison]
    fusion: str
    kinds: list[str | None]                      # each view's kind as given (frontal, lateral, ...) or None

    def fused(self, model: str) -> np.ndarray:
        """``model``'s study probabilities (L,), in its label order."""
        return fuse_views([v.predictions[model].probs for v in self.views], self.fusion)

    def results(self, model: str) -> dict[str, dict]:
        """Per label of ``model``: the study's probability, the first view's threshold, the decision."""
        fused, first = self.fused(model), self.views[0].predictions[model]
        return {x: {"probability": float(fused[i]), "threshold": float(first.thresholds[i]),
                    "positive": bool(fused[i] >= first.thresholds[i])} for i, x in enumerate(first.labels)}

    def table(self) -> list[dict]:
        """One row per label: per model its study probability and each view's, rounded for display (the
        Compare page's study table; columns named after the views' files)."""
        rows: dict[str, dict] = {}
        for model in self.views[0].predictions:
            fused = self.fused(model)
            for i, x in enumerate(self.views[0].predictions[model].labels):
                row = rows.setdefault(x, {"label": x})
                row[f"{model} study"] = round(float(fused[i]), 3)
                for v in self.views:
                    row[f"{model} {v.image_name[:18]}"] = round(float(v.predictions[model].probs[i]), 3)
        return list(rows.values())


def study(views: list[Comparison], fusion: str = "mean", kinds: list[str | None] | None = None) -> Study:
    """The views of one study with their probabilities fused; CheckpointError for no view, or a fusion other
    than mean or max."""
    if not views:
        raise CheckpointError("No view to fuse.")
    out = Study(list(views), fusion, list(kinds) if kinds is not None else [None] * len(views))
    out.fused(next(iter(views[0].predictions)))  # the fusion checked before anything is shown
    return out


# --------------------------------------------------------------------------- what a model's card says

@dataclass
class HeldOut:
    """What a model's card records of its held-out evaluation, as shown beside its outputs: how far each
    label's output can be trusted at all."""

    split: str | None                  # "test", else "val": the split whose AUROC the card records; None: none
    dataset: str                       # the dataset that split is of ("" when the card does not name it)
    n: int | None                      # images in that split, when recorded
    trained_on: str                    # the card's one-line summary of what the model saw ("" when not recorded)
    thresholds: dict[str, float]       # per label, the operating threshold
    auroc: dict[str, float | None]     # per label, the AUROC on ``split`` (None: not measured)


def held_out(card) -> HeldOut:
    """:class:`HeldOut` of a :class:`cxrcore.checkpoint.Card`: its test split's AUROC, else its validation
    split's."""
    metrics = card.metrics or {}
    split = next((k for k in ("test", "val") if metrics.get(k, {}).get("auroc")), None)
    auroc = metrics.get(split, {}).get("auroc", {}) if split else {}
    return HeldOut(split, (card.data or {}).get("name") or "", metrics.get(split, {}).get("n") if split else None,
                   (card.trained_on or {}).get("summary") or "",
                   {x: float(card.thresholds.get(x, 0.5)) for x in card.labels},
                   {x: None if auroc.get(x) is None else float(auroc[x]) for x in card.labels})


def glance_rows(models: dict[str, HeldOut]) -> list[dict]:
    """One row per label (first-seen order over the models): per model its threshold and held-out AUROC,
    rounded to 3 places (None where the card has none)."""
    rows: dict[str, dict] = {}
    for who, h in models.items():
        for x in h.thresholds:
            row = rows.setdefault(x, {"label": x})
            row[f"{who} threshold"] = round(h.thresholds[x], 3)
            row[f"{who} held-out AUROC"] = None if h.auroc[x] is None else round(h.auroc[x], 3)
    return list(rows.values())
