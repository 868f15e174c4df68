"""Comparing models on one image: predictions side by side, aligned across label lists."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from .data.imageio import LoadedImage
from .explain.ood import OODResult, check_image
from .labels import canonical
from .predictor import Prediction, Predictor


@dataclass
class Comparison:
    image: LoadedImage
    image_name: str
    image_hash: str
    predictions: dict[str, Prediction]          # model display name -> prediction
    model_paths: dict[str, str] = field(default_factory=dict)
    truth: list[str] | None = None              # ground-truth labels when known
    ood: OODResult | None = None                # "does this look like a frontal chest radiograph?"

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
        """One row per label; per model its probability, threshold and decision."""
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
                i = pred.labels.index(own)
                row[f"{name} p"] = float(pred.probs[i])
                if pred.prob_std is not None:
                    row[f"{name} ± sd"] = float(pred.prob_std[i])
                row[f"{name} positive"] = bool(pred.positive[i])
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


def compare(image: LoadedImage, predictors: dict[str, Predictor], image_name: str = "upload",
            truth: list[str] | None = None, raw: bytes | None = None, mc_samples: int = 0) -> Comparison:
    """Every model's prediction (all labels' heatmaps, optional Monte-Carlo dropout spread) and the
    out-of-distribution check of the image."""
    preds = {name: p.predict(image, heatmaps=True, mc_samples=mc_samples) for name, p in predictors.items()}
    return Comparison(image, image_name, image_hash(raw if raw is not None else image.pixels), preds,
                      {name: str(p.path) for name, p in predictors.items()}, truth, check_image(image, raw=raw))
