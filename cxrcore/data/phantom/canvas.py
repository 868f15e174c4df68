"""Geometry helpers: the pixel grid in the patient's body frame, soft edges, boxes and line trees.

:class:`_Canvas` maps the upright body frame (u left to right, v top to bottom, both in
[0, 1]) onto the rotated, shifted and zoomed image and cuts pixel windows around body-frame
boxes; :class:`_SubCanvas` does the same relative to one window. The functions give soft steps
(``_ramp``), low-frequency noise, the pixel box of a mask and unions / clipping of boxes, copy
between overlapping windows, and draw branching trees (vessels, bronchi) with PIL. Shared by
the anatomy, findings, devices and film parts of the renderer.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image


Box = tuple[str, float, float, float, float]  # label, x, y, w, h in pixels of the rendered image


def _ramp(d, e):
    """Soft step: 0 for d << 0, 1 for d >> 0, linear over width e."""
    return np.clip(d * (1.0 / e) + 0.5, 0.0, 1.0)


class _Canvas:
    """Pixel grid of the image and its coordinates in the patient's (body) frame.

    Body frame: u runs left to right and v top to bottom over the image, in [0, 1], for an
    upright, centred patient; the image shows it rotated by ``angle``, scaled by ``zoom`` and
    shifted by ``shift`` (all in normalised image units).
    """

    def __init__(self, size: int, angle: float, shift: tuple[float, float], zoom: float):
        self.S = size
        self.c, self.s = math.cos(angle), math.sin(angle)
        self.shift = shift
        self.zoom = zoom
        p = (np.arange(size, dtype=np.float32) + 0.5) / size
        x = p[None, :] - 0.5 - shift[0]
        y = p[:, None] - 0.5 - shift[1]
        inv = 1.0 / zoom
        self.U = (0.5 + inv * (self.c * x + self.s * y)).astype(np.float32)
        self.V = (0.5 + inv * (-self.s * x + self.c * y)).astype(np.float32)
        self.e = 1.2 / size  # edge softness, about one pixel

    def to_px(self, u, v):
        """Body-frame point(s) -> pixel coordinates (x, y)."""
        du, dv = np.asarray(u) - 0.5, np.asarray(v) - 0.5
        x = 0.5 + self.shift[0] + self.zoom * (self.c * du - self.s * dv)
        y = 0.5 + self.shift[1] + self.zoom * (self.s * du + self.c * dv)
        return x * self.S - 0.5, y * self.S - 0.5

    def window(self, u0, v0, u1, v1, pad: int = 2):
        """Slices of the pixel grid covering the body-frame box [u0, u1] x [v0, v1]."""
        xs, ys = self.to_px(np.array([u0, u1, u0, u1]), np.array([v0, v0, v1, v1]))
        x0 = max(0, int(math.floor(xs.min())) - pad)
        x1 = min(self.S, int(math.ceil(xs.max())) + pad + 1)
        y0 = max(0, int(math.floor(ys.min())) - pad)
        y1 = min(self.S, int(math.ceil(ys.max())) + pad + 1)
        if x1 <= x0:  # entirely outside the image: a one-pixel window at the nearest edge
            x0 = min(max(x0, 0), self.S - 1)
            x1 = x0 + 1
        if y1 <= y0:
            y0 = min(max(y0, 0), self.S - 1)
            y1 = y0 + 1
        return (slice(y0, y1), slice(x0, x1))


class _SubCanvas:
    """A canvas whose pixel coordinates are relative to window ``win`` of ``cv``."""

    def __init__(self, cv: _Canvas, win):
        self.cv, self.y0, self.x0 = cv, win[0].start, win[1].start

    def to_px(self, u, v):
        x, y = self.cv.to_px(u, v)
        return x - self.x0, y - self.y0


def _bbox(mask, win, thr: float = 0.3):
    """Pixel box (x, y, w, h) of ``mask > thr`` where ``mask`` covers window ``win``; None if empty."""
    if mask is None or win is None:
        return None
    m = mask > thr
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    y0, x0 = win[0].start, win[1].start
    return (float(x0 + cols[0]), float(y0 + rows[0]),
            float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1))


def _union(boxes):
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    x0 = min(b[0] for b in boxes)
    y0 = min(b[1] for b in boxes)
    x1 = max(b[0] + b[2] for b in boxes)
    y1 = max(b[1] + b[3] for b in boxes)
    return (x0, y0, x1 - x0, y1 - y0)


def _clip_box(b, S):
    x, y, w, h = b
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(S), x + w), min(float(S), y + h)
    return (x0, y0, max(0.0, x1 - x0), max(0.0, y1 - y0))


def _paste(dst, dwin, src, swin):
    """Copy the overlap of ``src`` (on window swin) into ``dst`` (on window dwin)."""
    y0 = max(dwin[0].start, swin[0].start)
    y1 = min(dwin[0].stop, swin[0].stop)
    x0 = max(dwin[1].start, swin[1].start)
    x1 = min(dwin[1].stop, swin[1].stop)
    if y1 <= y0 or x1 <= x0:
        return
    dst[y0 - dwin[0].start:y1 - dwin[0].start, x0 - dwin[1].start:x1 - dwin[1].start] = \
        src[y0 - swin[0].start:y1 - swin[0].start, x0 - swin[1].start:x1 - swin[1].start]


def _smooth_noise(rng, shape, cells: int):
    """Low-frequency noise, roughly unit variance, with about ``cells`` blobs across."""
    h, w = shape
    g = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    im = Image.fromarray(g).resize((w, h), Image.BICUBIC, box=(1, 1, cells + 2, cells + 2))
    return np.asarray(im, dtype=np.float32)


def _draw_tree(draw, cv, rng, starts, angles, lengths, width, depth, value, scale_px):
    """Branching lines (vessels, bronchi) drawn into a PIL layer; body-frame geometry.

    ``starts`` (N, 2), ``angles`` (N,), ``lengths`` (N,): one tree per row; every segment forks
    into two shorter, thinner, fainter ones, ``depth`` times. Vectorised per level.
    """
    p = np.asarray(starts, dtype=np.float64).reshape(-1, 2)
    ang = np.asarray(angles, dtype=np.float64).ravel()
    ln = np.asarray(lengths, dtype=np.float64).ravel()
    wd, val = np.full(len(p), width), np.full(len(p), float(value))
    segs = []
    for d in range(depth + 1):
        end = p + ln[:, None] * np.stack([np.cos(ang), np.sin(ang)], axis=1)
        segs.append((p, end, wd, val))
        if d == depth:
            break
        n = len(p)
        da = rng.uniform(0.2, 0.5, (n, 2)) * np.array([-1.0, 1.0])
        p = np.repeat(end, 2, axis=0)
        ang = (ang[:, None] + da).ravel()
        ln = np.repeat(ln, 2) * rng.uniform(0.65, 0.85, 2 * n)
        wd, val = np.repeat(wd * 0.72, 2), np.repeat(val * 0.88, 2)
    p0 = np.concatenate([s[0] for s in segs])
    p1 = np.concatenate([s[1] for s in segs])
    x0, y0 = cv.to_px(p0[:, 0], p0[:, 1])
    x1, y1 = cv.to_px(p1[:, 0], p1[:, 1])
    widths = np.maximum(1, np.rint(np.concatenate([s[2] for s in segs]) * scale_px)).astype(int).tolist()
    fills = np.concatenate([s[3] for s in segs]).astype(int).tolist()
    for xa, ya, xb, yb, w, f in zip(x0.tolist(), y0.tolist(), x1.tolist(), y1.tolist(), widths, fills):
        draw.line([(xa, ya), (xb, yb)], fill=f, width=w)
