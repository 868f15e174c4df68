"""Devices: the "Support Devices" finding, lines and tubes drawn over the chest.

:class:`DevicesMixin` draws, each picked at random (at least one), an endotracheal tube, a
nasogastric tube into the stomach, a right central venous line to the SVC and ECG electrodes
with wires leaving the field, each with its own box.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .canvas import _clip_box


class DevicesMixin:
    """The support-device renderer of :class:`~.renderer._Renderer`."""

    def f_devices(self, key):
        g, st, r, cv, S = self.g, self.s(key), self.frng[key], self.cv, self.S
        layer = Image.new("L", (S, S), 0)
        draw = ImageDraw.Draw(layer)
        k = S / 256
        boxes = []

        def line(points, width, fill):
            pts = [tuple(float(t) for t in cv.to_px(u, v)) for u, v in points]
            draw.line(pts, fill=fill, width=max(1, int(round(width * k))), joint="curve")
            xs = [p[0] for p in pts]
            ys = [p[1] for p in pts]
            pad = width * k
            boxes.append((min(xs) - pad, min(ys) - pad, max(xs) - min(xs) + 2 * pad, max(ys) - min(ys) + 2 * pad))

        picks = r.random(4) < np.array([0.55, 0.45, 0.45, 0.4])
        if not picks.any():
            picks[int(r.integers(4))] = True
        if picks[0]:  # endotracheal tube down the trachea, tip above the carina
            tip = g["apex"] + r.uniform(0.1, 0.16)
            pts = [(0.5 + 0.002 * j, -0.02 + (tip + 0.02) * j / 6) for j in range(7)]
            line(pts, 3.2, 150)
            line(pts, 1.0, 255)
        if picks[1]:  # nasogastric tube through the mediastinum into the stomach
            bx = 0.5 + 0.45 * g["tw"]
            pts = [(0.49, -0.02), (0.49, 0.3), (0.495, g["vd"] - 0.05), (0.52, g["vd"] + 0.06),
                   (bx, g["vd"] + g["dl"] + 0.1), (bx + 0.04, g["vd"] + 0.08)]
            line(pts, 2.0, 235)
        if picks[2]:  # right subclavian / jugular central line to the SVC
            pts = [(0.5 - g["tw"] - 0.02, g["apex"] + 0.02), (0.5 - 0.18, g["apex"] + 0.065),
                   (0.47, g["apex"] + 0.11), (0.475, g["apex"] + r.uniform(0.22, 0.28))]
            line(pts, 1.6, 245)
        if picks[3]:  # ECG leads: electrodes with wires leaving the field
            for _ in range(int(r.integers(3, 5))):
                u, v = 0.5 + r.uniform(-0.4, 0.4), r.uniform(0.15, 0.75)
                x, y = cv.to_px(u, v)
                rad = 0.017 * S
                draw.ellipse([x - rad, y - rad, x + rad, y + rad], outline=230, width=max(1, int(1.5 * k)))
                draw.ellipse([x - rad * 0.35, y - rad * 0.35, x + rad * 0.35, y + rad * 0.35], fill=255)
                boxes.append((float(x - rad - k), float(y - rad - k), float(2 * rad + 2 * k), float(2 * rad + 2 * k)))
                ex = 0.0 if u < 0.5 else 1.0
                pts = [(u, v), (u + (ex - u) * 0.5, v + r.uniform(-0.1, 0.1)), (ex + (ex - 0.5) * 0.1, v + r.uniform(-0.2, 0.2))]
                pp = [tuple(float(t) for t in cv.to_px(a, b)) for a, b in pts]
                draw.line(pp, fill=200, width=max(1, int(round(1.0 * k))), joint="curve")
        dev = np.asarray(layer, dtype=np.float32) * (1 / 255)
        self.D += 0.7 * st * dev
        for b in boxes:
            self.add_box(key, _clip_box(b, S))
