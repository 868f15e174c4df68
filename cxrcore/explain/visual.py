"""Pictures for people: heatmap overlays with boxes, and the baseline / fine-tuned comparison panel."""
from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pytorch_grad_cam.utils.image import show_cam_on_image

from ..data.imageio import to_uint8
from .boxes import Box

PANEL_HEIGHT = 384


def _display(pixels: np.ndarray, height: int) -> np.ndarray:
    """Grayscale float [0, 1] -> uint8 RGB resized to ``height`` (aspect kept)."""
    h, w = pixels.shape
    width = max(1, round(w * height / h))
    img = Image.fromarray(to_uint8(pixels)).resize((width, height), Image.BILINEAR).convert("RGB")
    return np.asarray(img)


def film_rgb(pixels: np.ndarray, height: int = PANEL_HEIGHT) -> np.ndarray:
    """A film (grayscale float [0, 1]) as uint8 RGB at ``height`` px, aspect kept: how every panel shows one."""
    return _display(pixels, height)


def overlay(pixels: np.ndarray, heatmap: np.ndarray, boxes: list[Box] | None = None, label: str = "",
            height: int = PANEL_HEIGHT, alpha: float = 0.45, numbered: bool = False) -> np.ndarray:
    """The radiograph with ``heatmap`` (any resolution, same aspect) on top, and boxes drawn
    (``numbered``: each box's id B1, B2, … before its label, as the LLM explanation's facts name them)."""
    base = _display(pixels, height)
    mask = cv2.resize(np.asarray(heatmap, np.float32), (base.shape[1], base.shape[0]), interpolation=cv2.INTER_LINEAR)
    rgb = show_cam_on_image(base.astype(np.float32) / 255.0, np.clip(mask, 0, 1), use_rgb=True, image_weight=1 - alpha)
    if boxes:
        img = Image.fromarray(rgb)
        draw = ImageDraw.Draw(img)
        font = ImageFont.load_default()
        for k, b in enumerate(boxes):
            x0, y0, x1, y1 = b.pixels(img.width, img.height)
            draw.rectangle([x0, y0, x1, y1], outline=(0, 255, 0), width=2)
            text = f"{f'B{k + 1} ' if numbered else ''}{label} {b.score:.2f}".strip()
            draw.text((x0 + 3, max(0, y0 - 12)), text, fill=(0, 255, 0), font=font)
        rgb = np.asarray(img)
    return rgb


def captioned(img: np.ndarray, lines: list[str], width: int | None = None) -> np.ndarray:
    """``img`` (RGB) with ``lines`` of text on a dark band under it (``width``: the band's, default the image's)."""
    width = width or img.shape[1]
    line_h = 14
    pad = Image.new("RGB", (width, line_h * len(lines) + 8), (18, 18, 18))
    d = ImageDraw.Draw(pad)
    font = ImageFont.load_default()
    for i, s in enumerate(lines):
        d.text((6, 4 + i * line_h), s, fill=(235, 235, 235), font=font)
    top = Image.new("RGB", (width, img.shape[0]), (0, 0, 0))
    top.paste(Image.fromarray(img), (0, 0))
    out = Image.new("RGB", (width, top.height + pad.height))
    out.paste(top, (0, 0))
    out.paste(pad, (0, top.height))
    return np.asarray(out)


def comparison_panel(pixels: np.ndarray, predictions: dict, label: str, truth: list[str] | None = None,
                     height: int = PANEL_HEIGHT, top_k: int = 5) -> np.ndarray:
    """X-ray | each model's overlay for ``label`` with its top-k, side by side (RGB uint8).

    ``predictions`` maps a model's display name to its :class:`~cxrcore.predictor.Prediction`.
    A model without ``label`` shows the plain image and says so.
    """
    tiles = [captioned(_display(pixels, height), ["Input X-ray"] + (
        [f"Ground truth: {', '.join(truth) or 'No Finding'}"] if truth is not None else []) + [""] * top_k)]
    for name, pred in predictions.items():
        if label in pred.labels:
            i = pred.labels.index(label)
            tile = overlay(pixels, pred.heatmaps[i], pred.boxes.get(label), label, height, numbered=True)
            head = f"{name}: {label} {pred.probs[i]:.2f}"
        else:
            tile = _display(pixels, height)
            head = f"{name}: no '{label}' output"
        lines = [head] + [f"{'*' if p >= t else ' '} {x:<26} {p:.2f}" for (x, p), t in
                          zip(pred.top(top_k), [pred.thresholds[pred.labels.index(x)] for x, _ in pred.top(top_k)])]
        tiles.append(captioned(tile, lines))
    # warnings (e.g. a phantom-trained model on a real film) travel with the picture, on top of it
    return tiled(tiles, list(dict.fromkeys(w.short for p in predictions.values() for w in getattr(p, "warnings", []))))


def tiled(tiles: list[np.ndarray], warnings: list[str]) -> np.ndarray:
    """Captioned tiles side by side, 8 px apart, under a banner of the ``warnings`` (none: no banner). RGB uint8."""
    h = max(t.shape[0] for t in tiles)
    width = sum(t.shape[1] for t in tiles) + 8 * (len(tiles) - 1)
    banner = _warning_banner(warnings, width)
    canvas = Image.new("RGB", (width, h + banner.height), (0, 0, 0))
    canvas.paste(banner, (0, 0))
    x = 0
    for t in tiles:
        canvas.paste(Image.fromarray(t), (x, banner.height))
        x += t.shape[1] + 8
    return np.asarray(canvas)


def _warning_banner(lines: list[str], width: int) -> Image.Image:
    """White-on-red lines of warning text across the panel; zero height when there is none."""
    if not lines:
        return Image.new("RGB", (width, 0))
    line_h = 14
    banner = Image.new("RGB", (width, line_h * len(lines) + 8), (160, 20, 20))
    d = ImageDraw.Draw(banner)
    font = ImageFont.load_default()
    for i, s in enumerate(lines):
        d.text((6, 4 + i * line_h), f"WARNING: {s}", fill=(255, 255, 255), font=font)
    return banner


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def thumbnail(pixels: np.ndarray, boxes=(), label: str = "", height: int = 320) -> np.ndarray:
    """The radiograph at ``height`` px (aspect kept), RGB, with ``boxes`` ((x, y, w, h) fractions) in green."""
    img = Image.fromarray(_display(pixels, height))
    draw = ImageDraw.Draw(img)
    for x, y, bw, bh in boxes:
        x0, y0 = x * img.width, y * img.height
        draw.rectangle([x0, y0, x0 + bw * img.width, y0 + bh * img.height], outline=(0, 255, 0), width=2)
        draw.text((x0 + 3, max(0, y0 - 12)), label, fill=(0, 255, 0))
    return np.asarray(img)


def window_level(pixels: np.ndarray, center: float = 0.5, width: float = 1.0, invert: bool = False) -> np.ndarray:
    """A radiograph (float [0, 1]) shown through a display window: ``center`` and ``width`` as fractions of the full
    range (width 1, center 0.5: as stored), ``invert`` black for white. uint8, same shape."""
    width = max(float(width), 1e-3)
    lo = float(center) - width / 2
    out = (np.asarray(pixels, np.float32) - lo) / width
    if invert:
        out = 1.0 - out
    return to_uint8(out)
