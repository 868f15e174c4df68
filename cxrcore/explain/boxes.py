"""Boxes cut from a heatmap: threshold, connected components, minimum area, top-k by score."""
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


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0.0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = ix * iy
    union = a.w * a.h + b.w * b.h - inter
    return inter / union if union > 0 else 0.0
