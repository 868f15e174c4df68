"""Localization scores of a checkpoint's heatmap boxes against ground-truth boxes.

Ground truth is the dataset index's ``boxes`` table (NIH ``BBox_List_2017.csv``, or the CheXpert
phantom's ``phantom_boxes.csv`` in the same format), coordinates as fractions of the image.
For every ground-truth box whose label the model has (synonyms matched, so ``Effusion`` scores a
model's ``Pleural Effusion``), the image is predicted once (``Predictor.predict``, cached per
image) and the top-k boxes the model cuts from that label's heatmap are compared with it:

- **IoU**: intersection over union, best of the predicted boxes;
- **IoBB**: intersection over the area of the *detected* (predicted) box, best of the predicted
  boxes (Wang et al. 2017, ChestX-ray8, section 5.2: "Intersection over the detected B-Box area
  ratio", similar to Area of Precision or Purity). It rewards a small predicted box lying inside
  the ground truth, even when it covers little of it;
- **accuracy at T**: the share of ground-truth boxes hit by at least one predicted box with
  IoU >= T (T(IoU) = 0.1, 0.25, 0.5) or with IoBB >= T (T(IoBB) = 0.1, 0.25, 0.5). Wang et al.
  count a localization as correct when the ratio passes the threshold; their Table 3 lists
  T(IoU) = 0.1 ... 0.7 and T(IoBB) = 0.1, 0.25, 0.5, 0.75, 0.9. A box with no predicted box of
  its label (an empty heatmap) scores 0;
- **pointing game** (Zhang et al. 2016, no tolerance margin): a hit when the heatmap's maximum
  falls inside one of the annotated instances of the label on that image ("a hit is counted if
  the pixel of maximum value lies on one of the annotated instances of the cued object
  category"): a heatmap has one maximum, so a label with several boxes on an image (bilateral
  edema, several devices, nodules) is hit or missed as a whole, and every one of its boxes gets
  that result. Its chance level, for a point dropped uniformly on the image, is the area
  fraction of the union of those boxes; ``chance`` reports the mean over the boxes.
  ``pointing_box`` is the stricter per-box variant (the maximum inside this very box), which no
  single maximum can win for every box of a multi-box label.

- **hit rate** (cheXlocalize, Saporta et al. 2022): the pointing game per (image, label) pair with a
  box, not per box (a pair with three boxes counts once);
- **gated hit rate** (cheXlocalize's probability cut-off): no map when the model's probability for the
  label is below a cut-off (cheXlocalize sets that map to zero; an all-zero map has no peak), so such a
  pair is a miss. Only pairs with a ground-truth box are scored, as in cheXlocalize (its hit/miss is NaN
  where the ground truth is empty), so gating can only lower the hit rate: it shows how much of the
  pointing game comes from maps the model would not show because it calls the label negative. The
  cut-off is the label's decision threshold from the checkpoint card by default, or one number for
  every label (``gate``); ``gated`` counts the pairs below it.

Several CAM methods can be scored side by side (``methods``): GradCAM is the map every prediction
carries; the other pytorch-grad-cam methods run per (image, label) pair. With ``faithfulness_n > 0``,
each method's maps of the first ``faithfulness_n`` images of every label (sorted by image id) are also
scored for faithfulness to the model (:mod:`cxrcore.explain.faithfulness`: ROAD MoRF / LeRF /
combined, deletion and insertion AUC), which costs about 60 forward passes and 18 sparse solves each.

Scores are reported per label (n = number of ground-truth boxes of that label), over all boxes
(micro) and as the mean over labels (macro).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..data.index import DatasetIndex
from ..errors import ConfigError, DataError
from ..explain.boxes import Box, clip_box, inside, iobb, iou, peak_point, union_area  # noqa: F401 - geometry
from ..labels import find_label

IOU_THRESHOLDS = (0.1, 0.25, 0.5)
IOBB_THRESHOLDS = (0.1, 0.25, 0.5)


# --------------------------------------------------------------------------- the pointing game

def pointing_hit(heatmap: np.ndarray, gt: Box) -> bool:
    """Pointing game: the heatmap's argmax lies inside ``gt`` (an all-zero map never hits)."""
    return inside(peak_point(heatmap), gt)


@dataclass
class BoxResult:
    """Scores of one ground-truth box."""

    image_id: str
    label: str                 # as the dataset names it
    model_label: str           # the model's label it was matched to
    gt: Box
    iou: float                 # best IoU over the predicted boxes (0 when there are none)
    iobb: float                # best IoBB over the predicted boxes
    pointing: bool
    n_pred: int                # predicted boxes of that label on the image
    area: float                # area fraction of the union of the label's boxes on the image (pointing chance)
    peak: tuple[float, float] | None = None
    pointing_box: bool | None = None   # the maximum inside this very box (None: same as pointing)
    method: str = "GradCAM"            # the CAM method of the heatmap
    prob: float | None = None          # the model's probability for the label on the image
    cutoff: float | None = None        # the gate's cut-off: below it the pair has no map (cheXlocalize)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["gt"] = {k: round(v, 5) for k, v in self.gt.to_dict().items() if k != "score"}
        d["peak"] = None if self.peak is None else [round(v, 4) for v in self.peak]
        return d


def score_box(gt: Box, predicted: list[Box], heatmap: np.ndarray | None) -> dict:
    """IoU, IoBB (best over ``predicted``), pointing game and chance for one ground-truth box."""
    gt = clip_box(gt)
    best_iou = max((iou(gt, p) for p in predicted), default=0.0)
    best_iobb = max((iobb(gt, p) for p in predicted), default=0.0)
    peak = peak_point(heatmap) if heatmap is not None else None
    return {"iou": float(best_iou), "iobb": float(best_iobb), "pointing": inside(peak, gt),
            "n_pred": len(predicted), "area": float(gt.w * gt.h), "peak": peak}


# --------------------------------------------------------------------------- summaries

def summarize(results: list[BoxResult]) -> dict:
    """Accuracies at the thresholds, pointing hit rate, chance, means; n = number of boxes."""
    n = len(results)
    if n == 0:
        return {"n": 0}
    ious = np.array([r.iou for r in results])
    iobbs = np.array([r.iobb for r in results])
    return {
        "n": n,
        "iou_acc": {str(t): float((ious >= t).mean()) for t in IOU_THRESHOLDS},
        "iobb_acc": {str(t): float((iobbs >= t).mean()) for t in IOBB_THRESHOLDS},
        "pointing": float(np.mean([r.pointing for r in results])),
        "pointing_box": float(np.mean([r.pointing if r.pointing_box is None else r.pointing_box for r in results])),
        "chance": float(np.mean([r.area for r in results])),
        "mean_iou": float(ious.mean()),
        "mean_iobb": float(iobbs.mean()),
        "no_prediction": int(sum(r.n_pred == 0 for r in results)),
        **pair_rates(results),
    }


def pair_rates(results: list[BoxResult]) -> dict:
    """cheXlocalize's hit rate per (image, label) pair, ungated and gated by the probability cut-off."""
    pairs: dict[tuple[str, str], BoxResult] = {}
    for r in results:
        pairs.setdefault((r.image_id, r.label), r)
    if not pairs:
        return {}
    rs = list(pairs.values())
    out = {"pairs": len(rs), "hit_rate": float(np.mean([r.pointing for r in rs]))}
    if all(r.prob is not None and r.cutoff is not None for r in rs):
        shown = [r.prob >= r.cutoff for r in rs]
        out["gated_hit_rate"] = float(np.mean([r.pointing and s for r, s in zip(rs, shown)]))
        out["gated"] = int(len(rs) - sum(shown))
    return out


def _macro(per_label: dict[str, dict]) -> dict:
    rows = [s for s in per_label.values() if s.get("n")]
    if not rows:
        return {"n_labels": 0}
    out = {"n_labels": len(rows)}
    for key in ("iou_acc", "iobb_acc"):
        out[key] = {t: float(np.mean([r[key][t] for r in rows])) for t in rows[0][key]}
    for key in ("pointing", "pointing_box", "chance", "mean_iou", "mean_iobb", "hit_rate", "gated_hit_rate"):
        vals = [r[key] for r in rows if key in r]
        if vals:
            out[key] = float(np.mean(vals))
    faith = [r["faithfulness"] for r in rows if r.get("faithfulness", {}).get("n")]
    if faith:
        out["faithfulness"] = {"n_labels": len(faith), **{k: float(np.mean([f[k] for f in faith])) for k in FAITH_KEYS}}
    return out


FAITH_KEYS = ("road_combined", "road_morf", "road_lerf", "deletion_auc", "insertion_auc")


@dataclass
class LocalizationReport:
    checkpoint: str
    dataset: str
    split: str
    top_k: int
    box_threshold: float
    results: list[BoxResult]
    skipped: dict[str, int] = field(default_factory=dict)   # GT label the model lacks -> boxes
    n_boxes_split: int = 0                                  # GT boxes on the split's images
    n_boxes_dataset: int = 0                                # GT boxes in the whole dataset
    n_images: int = 0                                       # images predicted
    seconds: float = 0.0
    methods: list[str] = field(default_factory=lambda: ["GradCAM"])
    gate: str = "threshold"                                 # "threshold" (each label's, from the card) or a number
    faithfulness: dict = field(default_factory=dict)        # method -> dataset label -> list[Faithfulness]
    faithfulness_n: int = 0                                 # images per label scored for faithfulness
    max_images: int | None = None                           # only the first that many images with boxes (None: all)

    @property
    def labels(self) -> list[str]:
        out: list[str] = []
        for r in self.results:
            if r.label not in out:
                out.append(r.label)
        return out

    def _of(self, method: str | None) -> list[BoxResult]:
        method = method or self.methods[0]
        return [r for r in self.results if r.method == method]

    def per_label(self, method: str | None = None) -> dict[str, dict]:
        """Scores per dataset label for one CAM method (the first of ``methods`` by default)."""
        method = method or self.methods[0]
        out = {}
        results = self._of(method)
        for label in self.labels:
            rs = [r for r in results if r.label == label]
            if not rs:
                continue
            out[label] = {"model_label": rs[0].model_label, **summarize(rs)}
            faith = self.faithfulness.get(method, {}).get(label)
            if faith is not None:
                from ..explain.faithfulness import summarize as faith_summary

                out[label]["faithfulness"] = faith_summary(faith)
        return out

    def overall(self, method: str | None = None) -> dict:
        out = summarize(self._of(method))
        method = method or self.methods[0]
        faith = [f for fs in self.faithfulness.get(method, {}).values() for f in fs]
        if faith:
            from ..explain.faithfulness import summarize as faith_summary

            out["faithfulness"] = faith_summary(faith)
        return out

    def gate_note(self) -> str:
        cut = "each label's decision threshold (the checkpoint card's)" if self.gate == "threshold" else f"p = {self.gate}"
        return (f"gated hit rate: no map (a miss) when the model's probability is below {cut}, as cheXlocalize "
                "zeroes the maps of negative predictions; pairs without a box are not scored")

    def methods_rows(self) -> list[dict]:
        """One row per (label, CAM method), side by side, then 'all boxes' per method: pointing (per box), hit
        rate and gated hit rate (per image-label pair), and the faithfulness means where they were computed."""
        rows = []
        per = {m: self.per_label(m) for m in self.methods}
        for label in self.labels + ["all boxes"]:
            for m in self.methods:
                s = self.overall(m) if label == "all boxes" else per[m].get(label)
                if not s or not s.get("n"):
                    continue
                row = {"label": label, "method": m, "boxes": s["n"], "pairs": s.get("pairs"),
                       "pointing": s["pointing"], "hit_rate": s.get("hit_rate"),
                       "gated_hit_rate": s.get("gated_hit_rate"), "gated": s.get("gated"),
                       "iou_acc_0.25": s["iou_acc"].get("0.25")}
                f = s.get("faithfulness")
                if f and f.get("n"):
                    row.update({"faith_n": f["n"], **{k: f[k] for k in FAITH_KEYS}})
                rows.append(row)
        return rows

    def methods_table(self) -> str:
        rows = self.methods_rows()
        cols = [("label", 22, "s"), ("method", 16, "s"), ("boxes", 6, "d"), ("pointing", 9, ".3f"),
                ("hit_rate", 9, ".3f"), ("gated_hit_rate", 15, ".3f"), ("gated", 6, "d")]
        if any("faith_n" in r for r in rows):
            cols += [("faith_n", 8, "d"), ("road_combined", 14, "+.3f"), ("road_morf", 10, "+.3f"),
                     ("road_lerf", 10, "+.3f"), ("deletion_auc", 13, ".3f"), ("insertion_auc", 14, ".3f")]
        lines = ["".join(f"{name:<{w}}" if fmt == "s" else f"{name:>{w}}" for name, w, fmt in cols)]
        for r in rows:
            cells = []
            for name, w, fmt in cols:
                v = r.get(name)
                sign, rest = ("+", fmt[1:]) if fmt.startswith("+") else ("", fmt)
                cells.append(f"{'-':>{w}}" if v is None else f"{str(v)[:w - 1]:<{w}}" if fmt == "s"
                             else format(v, f">{sign}{w}{rest}"))
            lines.append("".join(cells))
        return "\n".join(lines)

    def to_dict(self, boxes: bool = True) -> dict:
        per = self.per_label()
        d = {
            "checkpoint": self.checkpoint, "dataset": self.dataset, "split": self.split,
            "top_k": self.top_k, "box_threshold": self.box_threshold,
            "iou_thresholds": list(IOU_THRESHOLDS), "iobb_thresholds": list(IOBB_THRESHOLDS),
            "n_images": self.n_images, "n_boxes_dataset": self.n_boxes_dataset,
            "n_boxes_split": self.n_boxes_split, "n_boxes_scored": len(self.results),
            "skipped_labels": dict(self.skipped),
            "labels": per, "overall": self.overall(), "macro": _macro(per), "seconds": round(self.seconds, 2),
            "methods": self.methods, "gate": self.gate, "gate_note": self.gate_note(),
            "faithfulness_images_per_label": self.faithfulness_n, "max_images": self.max_images,
            "by_method": {m: {"labels": self.per_label(m), "overall": self.overall(m),
                              "macro": _macro(self.per_label(m))} for m in self.methods},
            "methods_rows": self.methods_rows(),
        }
        if self.faithfulness_n:
            from ..explain.faithfulness import HOW_TO_READ, ROAD_PERCENTILES, TARGET_NOTE

            d["faithfulness_note"] = {"how_to_read": HOW_TO_READ, "target": TARGET_NOTE,
                                      "road_percentiles": list(ROAD_PERCENTILES)}
        if boxes:
            d["boxes"] = [r.to_dict() for r in self.results]
        return d

    def table(self) -> str:
        """Rows = thresholds, columns = labels (as Wang et al. 2017, Table 3), plus all boxes and the label mean."""
        per = self.per_label()
        cols = [(label, per[label]) for label in self.labels] + [("all boxes", self.overall()),
                                                                  ("label mean", _macro(per))]
        widths = [max(len(c), 5) + 2 for c, _ in cols]
        lines = [f"{'':<14}" + "".join(f"{c:>{w}}" for (c, _), w in zip(cols, widths))]

        def row(name, get):
            cells = []
            for (_, s), w in zip(cols, widths):
                v = get(s) if s.get("n") or s.get("n_labels") else None
                cells.append(f"{'-':>{w}}" if v is None else f"{v:>{w}.3f}" if isinstance(v, float) else f"{v:>{w}}")
            lines.append(f"{name:<14}" + "".join(cells))

        for t in IOU_THRESHOLDS:
            row(f"T(IoU)={t}", lambda s, t=t: s["iou_acc"][str(t)])
        for t in IOBB_THRESHOLDS:
            row(f"T(IoBB)={t}", lambda s, t=t: s["iobb_acc"][str(t)])
        row("pointing game", lambda s: s["pointing"])
        row("chance (area)", lambda s: s["chance"])
        row("pointing (box)", lambda s: s.get("pointing_box"))
        row("hit rate/pair", lambda s: s.get("hit_rate"))
        row("gated hit rate", lambda s: s.get("gated_hit_rate"))
        row("mean IoU", lambda s: s["mean_iou"])
        row("n boxes", lambda s: s.get("n"))
        return "\n".join(lines)


# --------------------------------------------------------------------------- running

def parse_gate(gate) -> str:
    """``"threshold"`` (each label's decision threshold from the card) or a probability in [0, 1] as text."""
    if gate is None or str(gate).strip().lower() in ("", "threshold", "thresholds", "card"):
        return "threshold"
    try:
        v = float(gate)
    except (TypeError, ValueError):
        raise ConfigError(f"The gate cut-off is 'threshold' (each label's, from the checkpoint card) or a probability "
                          f"between 0 and 1, not {gate!r}.") from None
    if not 0 <= v <= 1:
        raise ConfigError(f"The gate cut-off is a probability between 0 and 1, not {v}.")
    return f"{v:g}"


def parse_methods(methods) -> list[str]:
    """CAM method names (a list, or comma-separated text; ``all`` = every method), checked, GradCAM first."""
    from ..explain.cam import CAM_METHODS

    if methods is None:
        return ["GradCAM"]
    names = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods) if str(m).strip()]
    if any(n.lower() == "all" for n in names):
        return list(CAM_METHODS)
    by_lower = {m.lower(): m for m in CAM_METHODS}
    bad = [n for n in names if n.lower() not in by_lower]
    if bad or not names:
        raise ConfigError(f"Unknown CAM method(s) {', '.join(bad) or '(none given)'}; use one or more of "
                          f"{', '.join(CAM_METHODS)}, comma-separated, or all.")
    out = list(dict.fromkeys(by_lower[n.lower()] for n in names))
    return sorted(out, key=lambda m: m != "GradCAM")


def localize(predictor, index: DatasetIndex, split: str = "test", top_k: int = 3, box_threshold: float = 0.5,
             progress: Callable[[int, int], None] | None = None, seed: int | None = None,
             methods=None, gate="threshold", faithfulness_n: int = 0,
             max_images: int | None = None, limits=None) -> LocalizationReport:
    """Score ``predictor``'s heatmap boxes against ``index.boxes`` on ``split`` (train/val/test/all).

    The split is the patient-level split the checkpoint was trained with (seed from its card);
    ``all`` uses every image, which is right for data the model never saw. ``methods``: CAM methods scored
    side by side (default GradCAM, the map every prediction carries); ``gate``: the probability cut-off of the
    gated hit rate ("threshold" = each label's from the card, or a number); ``faithfulness_n``: images per label
    and method scored with ROAD and deletion / insertion (0: none); ``max_images``: score only the first that many
    images with boxes (sorted by id; None: all). ``progress(done, total)`` counts predictions,
    extra-method heatmaps and faithfulness scores together. ``limits``: a visitor's ceilings
    (:func:`cxrcore.hosting.limits`; None for the operator's own tools): AccessError before any image is
    read for more images than ``CXR_MAX_EVAL_IMAGES``, a slow CAM method (ScoreCAM) over more than
    ``CXR_MAX_SLOW_CAM_IMAGES`` or more than ``CXR_MAX_FAITHFULNESS_PER_LABEL`` images per label.
    """
    import time

    from ..data.imageio import read_image
    from .predictions import model_split_rows, split_rows

    t0 = time.perf_counter()
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1, not {top_k}.")
    if not 0 < box_threshold <= 1:
        raise ConfigError(f"box_threshold is a fraction of the heatmap's peak in (0, 1], not {box_threshold}.")
    if max_images is not None and max_images < 1:
        raise ConfigError(f"max_images must be at least 1 (or unset for every image), not {max_images}.")
    if faithfulness_n < 0:
        raise ConfigError(f"Images per label for faithfulness must be 0 (none) or more, not {faithfulness_n}.")
    methods = parse_methods(methods)
    gate = parse_gate(gate)
    _check_faithfulness_ceiling(limits, faithfulness_n)
    if index.boxes is None or not len(index.boxes):
        raise DataError(f"{index.name} has no ground-truth boxes (NIH: BBox_List_2017*.csv beside the label table; "
                        "CheXpert phantom: phantom_boxes.csv).")
    rows = model_split_rows(predictor, index, split) if seed is None else split_rows(index, split, seed)
    sub = index.subset(np.isin(np.arange(len(index)), rows))
    paths = dict(zip(sub.frame["image_id"].astype(str), sub.frame["path"]))
    gt = sub.boxes[sub.boxes["image_id"].astype(str).isin(paths)]
    gt = gt[np.array([isinstance(paths.get(str(i)), str) for i in gt["image_id"]], dtype=bool)]

    skipped: dict[str, int] = {}
    todo = []
    for row in gt.itertuples(index=False):
        j = find_label(str(row.label), predictor.labels)
        if j is None:
            skipped[str(row.label)] = skipped.get(str(row.label), 0) + 1
            continue
        todo.append((str(row.image_id), str(row.label), j, Box(float(row.x), float(row.y), float(row.w), float(row.h), 1.0)))

    images = sorted({t[0] for t in todo})
    if max_images is not None and len(images) > max_images:
        images = images[:max_images]
        keep = set(images)
        todo = [t for t in todo if t[0] in keep]
    if limits:
        from ..explain.cam import SLOW_CAM_METHODS

        limits.check("eval_images", len(images), f"Images with boxes to localize on the {split} split of {index.name}",
                     "Set the number of images with boxes (max_images) lower.")
        slow = [m for m in methods if m in SLOW_CAM_METHODS]
        if slow:
            limits.check("slow_cam_images", len(images), f"Images to map with {', '.join(slow)}",
                         f"Leave {', '.join(slow)} out, or set the number of images with boxes (max_images) lower.")
    pairs = sorted({(t[0], t[1], t[2]) for t in todo})          # (image, dataset label, model label index)
    extra = [m for m in methods if m != "GradCAM"]
    faith_pairs = {}
    if faithfulness_n:
        for image_id, label, j in pairs:
            faith_pairs.setdefault(label, [])
            if len(faith_pairs[label]) < faithfulness_n:
                faith_pairs[label].append((image_id, j))
    total = len(images) + len(extra) * len(pairs) + len(methods) * sum(len(v) for v in faith_pairs.values())
    done = 0

    def tick():
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    cache = {}
    maps: dict[tuple[str, str, int], tuple[np.ndarray, list[Box]]] = {}   # (method, image, label index)
    by_image: dict[str, list[int]] = {}
    for image_id, _, j in pairs:
        if j not in by_image.setdefault(image_id, []):
            by_image[image_id].append(j)
    for image_id in images:  # one prediction per image (every label's GradCAM comes with it)
        cache[image_id] = predictor.predict(paths[image_id], heatmaps=True, top_k_boxes=top_k,
                                            box_threshold=box_threshold)
        tick()
        image = read_image(paths[image_id]) if extra else None   # read again, not kept: NIH's images are 4 MB as floats
        for m in extra:
            js = by_image[image_id]
            for j, got in zip(js, predictor.heatmaps_for(image, [predictor.labels[j] for j in js], m, box_threshold,
                                                         top_k)):
                maps[(m, image_id, j)] = got
            for _ in range(sum(1 for p in pairs if p[0] == image_id)):
                tick()

    instances: dict[tuple[str, str], list[Box]] = {}   # the label's boxes on the image (pointing game)
    for image_id, label, _, box in todo:
        instances.setdefault((image_id, label), []).append(clip_box(box))
    cut = None if gate == "threshold" else float(gate)
    results = []
    for m in methods:
        for image_id, label, j, box in todo:
            pred = cache[image_id]
            model_label = pred.labels[j]
            if m == "GradCAM":
                heat, pboxes = pred.heatmaps[j], pred.boxes.get(model_label, [])
            else:
                heat, pboxes = maps[(m, image_id, j)]
            s = score_box(box, pboxes[:top_k], heat)
            inst = instances[(image_id, label)]
            s["pointing_box"] = s["pointing"]
            s["pointing"] = any(inside(s["peak"], b) for b in inst)
            s["area"] = union_area(inst)
            probs, thresholds = getattr(pred, "probs", None), getattr(pred, "thresholds", None)
            prob = None if probs is None else float(probs[j])
            cutoff = cut if cut is not None else None if thresholds is None else float(thresholds[j])
            results.append(BoxResult(image_id, label, model_label, clip_box(box), **s, method=m, prob=prob,
                                     cutoff=cutoff))

    faith: dict[str, dict[str, list]] = {}
    if faith_pairs:
        from ..explain.faithfulness import predictor_faithfulness

        for m in methods:
            for label, items in faith_pairs.items():
                for image_id, j in items:
                    f = predictor_faithfulness(predictor, read_image(paths[image_id]), predictor.labels[j], m, seed=0)
                    faith.setdefault(m, {}).setdefault(label, []).append(f)
                    tick()
    return LocalizationReport(
        checkpoint=str(getattr(predictor, "path", "")), dataset=index.name, split=split, top_k=top_k,
        box_threshold=box_threshold, results=results, skipped=skipped, n_boxes_split=len(gt),
        n_boxes_dataset=len(index.boxes), n_images=len(images), seconds=time.perf_counter() - t0,
        methods=methods, gate=gate, faithfulness=faith, faithfulness_n=int(faithfulness_n), max_images=max_images)


def _check_faithfulness_ceiling(limits, faithfulness_n: int) -> None:
    if limits:
        limits.check("faithfulness", faithfulness_n, "Faithfulness: images per label",
                     "Score fewer images per label for faithfulness.")


def localize_checkpoint(checkpoint: str | os.PathLike, data: str | os.PathLike, split: str = "test", top_k: int = 3,
                        box_threshold: float = 0.5, progress=None, methods=None, gate="threshold",
                        faithfulness_n: int = 0, max_images: int | None = None, limits=None) -> LocalizationReport:
    """:func:`localize` of a checkpoint folder on a dataset folder (``limits``: a visitor's ceilings, as there)."""
    from ..data.readers import read_dataset
    from ..predictor import Predictor

    methods, gate = parse_methods(methods), parse_gate(gate)   # bad options fail before the model loads
    _check_faithfulness_ceiling(limits, faithfulness_n)
    return localize(Predictor(checkpoint), read_dataset(Path(data)), split, top_k, box_threshold, progress,
                    methods=methods, gate=gate, faithfulness_n=faithfulness_n, max_images=max_images, limits=limits)
