"""Film effects: turn the density map into the 8-bit film of one domain.

:class:`FilmMixin` adds the exposure and, for the CheXpert (portable AP-like) look, a brightness
gradient, an L/R marker, a low-contrast film curve, noise and blur; the NIH (PA-like) look is a
sharper, higher-contrast curve with light noise. :func:`_film` is the film characteristic curve;
the final boxes are clipped to the image here.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from .canvas import _clip_box


class FilmMixin:
    """The film stage of :class:`~.renderer._Renderer`."""

    def finish(self):
        S, D = self.S, self.D
        rng = np.random.default_rng(self.key + [11])
        k = S / 256
        D += self.exposure
        if self.domain == "chexpert":
            # brightness gradient across the film, L/R marker, low contrast, noise, blur
            ang = rng.uniform(0, 2 * math.pi)
            p = (np.arange(S, dtype=np.float32) + 0.5) / S - 0.5
            grad = math.cos(ang) * p[None, :] + math.sin(ang) * p[:, None]
            D += rng.uniform(0.12, 0.22) * grad + 0.04
            self.draw_marker(D, rng)
            img = 0.16 + 0.72 * _film(D, 1.6)
            img += rng.standard_normal((S, S), dtype=np.float32) * 0.055
            img = ndimage.gaussian_filter(img, 1.1 * k, truncate=2.5)
            img += rng.standard_normal((S, S), dtype=np.float32) * 0.012
        else:
            img = 1.02 * _film(D, 2.4) - 0.01
            img += rng.standard_normal((S, S), dtype=np.float32) * 0.012
            img = ndimage.gaussian_filter(img, 0.55 * k, truncate=2.5)
        out = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
        boxes = [(lab, *_clip_box(b, S)) for lab, *b in self.boxes]
        return out, [b for b in boxes if b[3] >= 1 and b[4] >= 1]

    def draw_marker(self, D, rng):
        S = self.S
        k = S / 256
        w, h = int(16 * k), int(18 * k)
        x0 = int(rng.uniform(0.04, 0.1) * S) if rng.random() < 0.5 else int(rng.uniform(0.84, 0.9) * S)
        y0 = int(rng.uniform(0.03, 0.08) * S)
        layer = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(layer)
        draw.rectangle([0, 0, w - 1, h - 1], fill=255)
        font = _font(int(14 * k))
        draw.text((w * 0.2, h * 0.05), "L" if rng.random() < 0.5 else "R", fill=40, font=font)
        D[y0:y0 + h, x0:x0 + w] = np.maximum(D[y0:y0 + h, x0:x0 + w],
                                             np.asarray(layer, dtype=np.float32)[:S - y0, :S - x0] / 255 * 1.05)


def _film(D, k):
    """Film characteristic curve: dense (bright) areas are compressed like on a real film."""
    return (1.0 - np.exp(-k * np.clip(D, 0.0, 1.3))) * (1.0 / (1.0 - math.exp(-k)))


_FONTS: dict[int, object] = {}


def _font(px: int):
    if px not in _FONTS:
        try:
            _FONTS[px] = ImageFont.load_default(size=max(6, px))
        except Exception:  # pragma: no cover - Pillow without FreeType
            _FONTS[px] = ImageFont.load_default()
    return _FONTS[px]
