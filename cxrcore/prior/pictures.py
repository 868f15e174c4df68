"""Pictures of a prior comparison: the registered pair, a checkerboard of it, the subtraction image and
a label's heatmap-change map, and the panel ``cxr prior --panel`` writes.

Change is shown on a diverging scale over the current film: red where the current film (or its heatmap) is
brighter / hotter than the registered prior, blue where it is darker / cooler.
"""
from __future__ import annotations

import cv2
import numpy as np

from ..explain.visual import PANEL_HEIGHT, captioned, film_rgb, tiled
from .change import PriorComparison


def _resize(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return cv2.resize(np.asarray(a, np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def signed_overlay(pixels: np.ndarray, change: np.ndarray, height: int = PANEL_HEIGHT, scale: float = 1.0,
                   alpha: float = 0.6) -> np.ndarray:
    """``change`` (signed, any resolution of the film's aspect) over the film: red up, blue down, full colour at
    ±``scale`` (a heatmap change runs -1..1). RGB uint8 at ``height``."""
    base = film_rgb(pixels, height).astype(np.float32) / 255.0
    c = _resize(change, base.shape[:2])
    s = max(float(scale), 1e-3)
    v = np.clip(c / s, -1, 1)
    a = alpha * np.abs(v)[..., None]
    colour = np.where(v[..., None] >= 0, np.array([1.0, 0.15, 0.1]), np.array([0.1, 0.35, 1.0]))
    return (255 * ((1 - a) * base + a * colour)).clip(0, 255).astype(np.uint8)


def subtraction_image(diff: np.ndarray, height: int = PANEL_HEIGHT) -> np.ndarray:
    """The subtraction (current minus registered prior) as grey: mid-grey no change, white brighter now, black
    darker now (contrast stretched to the 99th percentile of |diff|). RGB uint8 at ``height``."""
    s = max(float(np.percentile(np.abs(diff), 99)), 1e-3)
    return film_rgb(np.clip(0.5 + 0.5 * diff / s, 0, 1), height)


def checkerboard(result: PriorComparison, current: np.ndarray, tiles: int = 8, height: int = PANEL_HEIGHT) -> np.ndarray:
    """Squares of the current film and the registered prior in turn: edges that run on across squares show a good
    registration, steps show where it is off."""
    cur = film_rgb(current, height)
    pri = film_rgb(result.registration.warped, height)
    h, w = cur.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((yy * tiles // h + xx * tiles // w) % 2).astype(bool)
    out = cur.copy()
    out[mask] = pri[mask]
    return out


def change_panel(prior: np.ndarray, current: np.ndarray, result: PriorComparison, label: str,
                 height: int = PANEL_HEIGHT) -> np.ndarray:
    """Prior as taken | prior registered | current | subtraction | ``label``'s heatmap change, captioned."""
    i = result.labels.index(label)
    reg = result.registration
    row = result.rows()[i]
    tiles = [
        captioned(film_rgb(prior, height), ["Prior (as taken)", f"{label} {row['prior']:.2f}"]),
        captioned(film_rgb(reg.warped, height), ["Prior registered", f"NCC {reg.ncc_before:.2f} -> {reg.ncc_after:.2f}"]),
        captioned(film_rgb(current, height), ["Current", f"{label} {row['current']:.2f}"]),
        captioned(subtraction_image(result.subtraction, height), ["Subtraction", "current - registered prior"]),
        captioned(signed_overlay(current, result.change_maps[i], height) if result.change_maps.size
                 else film_rgb(current, height),
                 [f"{label}: {row['call']}", f"delta {row['delta']:+.2f} (tau {row['change_threshold']:.2f})"]),
    ]
    return tiled(tiles, ([reg.warning] if reg.warning else []) + list(dict.fromkeys(w.short for w in result.notices())))
