"""One serialisation of what :mod:`cxrcore.compare`'s pipeline gives: the JSON of ``cxr predict --json``, of
the REST service's answers (:mod:`cxrcore.api`) and the per-label values the pages show.

:func:`prediction_json` is one image through one model: :meth:`cxrcore.predictor.Prediction.to_dict`'s keys
(``probabilities``, ``thresholds``, ``boxes``, ``cam_grid``, ...) and the REST keys (``predictions`` per label,
``image``, ``ood``, ``warnings`` with the out-of-distribution warning, ``uncertainty``, ...) in one dict.
:func:`seed003_json` is seed 003's answer shape; :func:`study_json` the views of one study fused. Nothing
here reveals DICOM metadata unless asked (``dicom_notes``, the operator's own command line), an image's
bytes, or a key.
"""
from __future__ import annotations

import base64
from typing import Literal

import numpy as np

from .compare import Comparison, Study
from .predictor import Prediction

DICOM_NOTE_PREFIXES = ("DICOM transfer syntax", "modality ", "photometric interpretation")
ASYMMETRY_REASON = "not left-right symmetric"  # explain.ood's reason that a lateral view trips by design
NOT_CHEST = "not_chest_xray"
Heatmaps = Literal["values", "png"] | None


def png_b64(arr: np.ndarray) -> str:
    """An image array as base64 PNG text."""
    from .explain.visual import png_bytes

    return base64.b64encode(png_bytes(arr)).decode("ascii")


def heatmaps_png(pred: Prediction) -> dict[str, str]:
    """Every label's heatmap as a base64 grayscale PNG."""
    return {x: png_b64(np.rint(np.clip(pred.heatmaps[i], 0, 1) * 255).astype(np.uint8))
            for i, x in enumerate(pred.labels)}


def is_lateral(view: str | None) -> bool:
    return (view or "").strip().lower().startswith("lat")


def ood_text(reasons: list[str]) -> str:
    """The out-of-distribution warning for ``reasons`` ("" when there are none)."""
    return ("This image may not be a frontal chest radiograph: " + "; ".join(reasons)
            + ". Predictions on it are unreliable.") if reasons else ""


def ood_warning(comparison: Comparison, view: str | None = None) -> str:
    """The out-of-distribution warning of the image; a lateral view is asymmetric by nature, so that reason
    alone does not make it suspect."""
    reasons = comparison.ood.reasons if comparison.ood is not None else []
    return ood_text([r for r in reasons if not (is_lateral(view) and r.startswith(ASYMMETRY_REASON))])


def warnings(comparison: Comparison, model: str, view: str | None = None) -> tuple[list[str], list[str]]:
    """How (not) to read ``model``'s outputs on this image: its notices (a model trained on phantoms shown a
    real film, ...) then the out-of-distribution warning; (texts, codes)."""
    pred = comparison.predictions[model]
    text = ood_warning(comparison, view)
    return ([w.text for w in pred.warnings] + ([text] if text else []),
            [w.code for w in pred.warnings] + ([NOT_CHEST] if text else []))


def prediction_json(comparison: Comparison, model: str, *, heatmaps: Heatmaps = None, overlays: bool = False,
                    view: str | None = None, dicom_notes: bool = False) -> dict:
    """One image through one model (``model``: its key in ``comparison.predictions``), JSON-able.
    ``heatmaps``: every label's heatmap as nested lists (``"values"``, ``cxr predict --heatmaps``) or as base64
    PNG (``"png"``, the REST service); ``overlays``: each heatmap over the image with its boxes, base64 PNG;
    ``view``: the view's kind (a lateral view is not flagged for being asymmetric); ``dicom_notes``: keep the
    reader's notes that name DICOM header values in ``notes`` (never in a REST answer)."""
    pred = comparison.predictions[model]
    out = pred.to_dict(heatmaps=heatmaps == "values")
    if not dicom_notes:
        out["notes"] = [n for n in out["notes"] if not n.startswith(DICOM_NOTE_PREFIXES)]
    texts, codes = warnings(comparison, model, view)
    text = ood_warning(comparison, view)
    image = comparison.image
    out.update({
        "model": model,
        "model_name": comparison.model_names.get(model, model),
        "predictions": pred.per_label(),
        "image": {"format": image.source_format, "shape": list(pred.image_shape),
                  "notes": [n for n in image.notes if not n.startswith(DICOM_NOTE_PREFIXES)]},
        "ood": comparison.ood.to_dict() if comparison.ood is not None else None,
        "warning": text or None,  # the out-of-distribution warning alone, kept for the REST API's first clients
        "warnings": texts,
        "warning_codes": codes,
    })
    if pred.mc:
        out["uncertainty"] = {"method": "Monte-Carlo dropout" + (" + test-time augmentation" if pred.mc["tta"] else ""),
                              **pred.mc}
    if heatmaps == "png":
        out["heatmaps"] = heatmaps_png(pred)
    if overlays:
        from .explain.visual import overlay

        out["overlays"] = {x: png_b64(overlay(image.pixels, pred.heatmaps[i], pred.boxes.get(x), x))
                           for i, x in enumerate(pred.labels)}
    if view is not None:
        out["view"] = view
    return out


def seed003_json(comparison: Comparison, model: str, heatmaps: bool, seconds: float) -> dict:
    """Seed 003's answer: ``success``, the Monte-Carlo ``prediction_mean`` and ``prediction_variance`` per label
    (``model``'s prediction must carry them), ``heatmap`` per label as base64 PNG (empty without ``heatmaps``),
    ``inference_duration`` (``seconds``), plus the thresholds and warnings."""
    pred = comparison.predictions[model]
    labels = pred.labels
    texts, codes = warnings(comparison, model)
    return {"success": True,
            "prediction_mean": {x: float(v) for x, v in zip(labels, pred.prob_mean)},
            "prediction_variance": {x: float(v) for x, v in zip(labels, pred.prob_var)},
            "heatmap": heatmaps_png(pred) if heatmaps else {},
            "inference_duration": round(seconds, 4),
            "model": model, "labels": list(labels),
            "thresholds": {x: float(t) for x, t in zip(labels, pred.thresholds)},
            "mc_samples": int(pred.mc["samples"]), "uncertainty_note": pred.mc["note"],
            "warnings": texts, "warning_codes": codes,
            "ood": comparison.ood.to_dict() if comparison.ood is not None else None}


def study_json(s: Study, model: str, *, heatmaps: Heatmaps = None, files: list[str] | None = None,
               dicom_notes: bool = False) -> dict:
    """The views of one study through ``model``: each view's :func:`prediction_json` (with its ``view``) and
    the study's per-label probability, threshold and decision (``study``), its positive labels, and each
    view's warnings said once for the study (a model's own notice once, a view's named after it).

    ``files``: ``cxr predict A B --fuse``'s shape, kept: ``study`` is the list of fused probabilities in label
    order (the per-label results are ``study_labels``) and each view's ``image`` is its file. ``dicom_notes``: as
    in :func:`prediction_json`."""
    views = [prediction_json(v, model, heatmaps=heatmaps, view=kind, dicom_notes=dicom_notes)
             for v, kind in zip(s.views, s.kinds)]
    for v, kind in zip(views, s.kinds):
        v["view"] = kind
    per_label = s.results(model)
    texts, codes = [], []
    for i, out in enumerate(views):
        tag = f"view {i + 1}" + (f" ({out['view']})" if out["view"] else "")
        for w, c in zip(out["warnings"], out["warning_codes"]):
            text = w if c == "phantom_model_real_image" else f"{tag}: {w}"  # about the model, not the view
            if text not in texts:
                texts.append(text)
                codes.append(c)
    first = s.views[0]
    out = {"model": model, "model_name": first.model_names.get(model, model), "fusion": s.fusion,
           "labels": list(first.predictions[model].labels), "study": per_label,
           "positive": [x for x, d in per_label.items() if d["positive"]], "views": views,
           "warnings": texts, "warning_codes": codes}
    if files is not None:
        out["study"] = [d["probability"] for d in per_label.values()]
        out["study_labels"] = per_label
        for v, f in zip(views, files):
            v["image"] = str(f)
    return out
