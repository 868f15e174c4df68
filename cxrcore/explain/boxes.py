"""Box geometry: boxes cut from a heatmap (threshold, connected components, minimum area, top-k by score),
their overlap (IoU, IoBB), clipping, union area, a heatmap's peak point. Coordinates are fractions of the
image; :mod:`cxrcore.eval.localize` scores heatmaps against ground truth with these."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Box:
    """x, y, w, h as fractions of the image width / height; score = peak heat inside."""

    x: float
    y: float
    w: float
    h: float
    score: float

    def to_dict(self) -> dict:
        return asdict(self)

    def pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        return (round(self.x * width), round(self.y * height),
                round((self.x + self.w) * width), round((self.y + self.h) * height))


def boxes_from_heatmap(heat: np.ndarray, threshold: float = 0.5, method: str = "fraction",
                       min_area: float = 0.005, top_k: int = 3) -> list[Box]:
    """Connected regions of ``heat`` (2-D, any scale) above a threshold, as boxes.

    ``method='fraction'``: cells above ``threshold`` x max; ``'otsu'``: Otsu's threshold.
    Regions smaller than ``min_area`` (fraction of the image) are dropped.
    """
    heat = np.asarray(heat, dtype=np.float32)
    peak = float(heat.max()) if heat.size else 0.0
    if peak <= 0:
        return []
    if method == "otsu":
        from skimage.filters import threshold_otsu

        cut = threshold_otsu(heat) if np.ptp(heat) > 0 else peak
    else:
        cut = threshold * peak
    mask = heat >= cut
    regions, n = ndimage.label(mask)
    h, w = heat.shape
    out = []
    for k, sl in enumerate(ndimage.find_objects(regions), start=1):
        if sl is None:
            continue
        area = (regions[sl] == k).sum() / (h * w)
        if area < min_area:
            continue
        score = float(heat[sl][regions[sl] == k].max())
        ys, xs = sl
        out.append(Box(xs.start / w, ys.start / h, (xs.stop - xs.start) / w, (ys.stop - ys.start) / h, score))
    out.sort(key=lambda b: -b.score)
    return out[:top_k]


def clip_box(b: Box) -> Box:
    """The part of ``b`` inside the image [0, 1] x [0, 1]."""
    x0, y0 = min(max(b.x, 0.0), 1.0), min(max(b.y, 0.0), 1.0)
    x1, y1 = min(max(b.x + b.w, 0.0), 1.0), min(max(b.y + b.h, 0.0), 1.0)
    return Box(x0, y0, x1 - x0, y1 - y0, b.score)


def intersection(a: Box, b: Box) -> float:
    """Area of the overlap of two boxes (0 when they are apart)."""
    ix = max(0.0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0.0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    return ix * iy


def iobb(gt: Box, detected: Box) -> float:
    """Intersection over the area of the detected box (Wang et al. 2017); 0 for an empty box."""
    area = detected.w * detected.h
    return intersection(gt, detected) / area if area > 0 else 0.0


def peak_point(heatmap: np.ndarray) -> tuple[float, float] | None:
    """Centre of the heatmap's hottest cell as (x, y) fractions of the image; None for an empty map."""
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.size == 0 or not np.isfinite(heat).any() or float(np.nanmax(heat)) <= 0:
        return None
    r, c = np.unravel_index(int(np.nanargmax(heat)), heat.shape)
    return float((c + 0.5) / heat.shape[1]), float((r + 0.5) / heat.shape[0])


def inside(point: tuple[float, float] | None, b: Box) -> bool:
    """Whether ``point`` (x, y) lies in ``b``, edges included; False for no point."""
    if point is None:
        return False
    x, y = point
    return bool(b.x <= x <= b.x + b.w and b.y <= y <= b.y + b.h)


def union_area(boxes: list[Box]) -> float:
    """Area of the union of axis-aligned boxes (fractions of the image), by coordinate compression."""
    boxes = [b for b in boxes if b.w > 0 and b.h > 0]
    if len(boxes) <= 1:
        return float(boxes[0].w * boxes[0].h) if boxes else 0.0
    xs = sorted({v for b in boxes for v in (b.x, b.x + b.w)})
    ys = sorted({v for b in boxes for v in (b.y, b.y + b.h)})
    total = 0.0
    for x0, x1 in zip(xs, xs[1:]):
        for y0, y1 in zip(ys, ys[1:]):
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            if any(b.x <= cx <= b.x + b.w and b.y <= cy <= b.y + b.h for b in boxes):
                total += (x1 - x0) * (y1 - y0)
    return float(total)


def iou(a: Box, b: Box) -> float:
    """Intersection over union; 0 for two empty boxes."""
    inter = intersection(a, b)
    union = a.w * a.h + b.w * b.h - inter
    return inter / union if union > 0 else 0.0
