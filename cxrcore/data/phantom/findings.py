"""Findings: each label's visible, localized sign and its ground-truth box.

:data:`FINDINGS` lists the findings the renderer knows (canonical keys); :func:`_strengths`
turns a ``{label: value}`` mapping into drawing strengths (1 positive, 0.5 uncertain).
:class:`FindingsMixin` holds one ``f_*`` renderer per sign: effusion (meniscus), pneumothorax
(collapsed lung with a pleural line), atelectasis (band with a raised hemidiaphragm),
consolidation / pneumonia (with air bronchograms) / generic opacity, edema (perihilar haze,
Kerley B lines), infiltration, fibrosis, pleural thickening, nodules, masses, lesions, hiatal
hernia and rib fracture. Support devices are drawn in ``devices.py``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ...errors import ConfigError
from ...labels import CHEXPERT14, NIH14, canonical
from .anatomy import _dome, _lung_lateral, _lung_top
from .canvas import _bbox, _draw_tree, _paste, _ramp, _smooth_noise, _SubCanvas, _union


# Findings the renderer knows, by canonical key (see cxrcore.labels.canonical).
FINDINGS = [
    "atelectasis", "cardiomegaly", "pleural effusion", "infiltration", "mass", "nodule",
    "pneumonia", "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis",
    "pleural thickening", "hernia", "enlarged cardiomediastinum", "lung opacity", "lung lesion",
    "fracture", "support devices", "pleural other", "no finding",
]
_FINDING_CODE = {k: 100 + j for j, k in enumerate(FINDINGS)}
# Findings that make the lung more opaque; "Lung Opacity" is drawn generically only without them.
_OPACITIES = ["atelectasis", "consolidation", "pneumonia", "edema", "infiltration", "lung lesion",
              "mass", "nodule", "fibrosis"]


def _strengths(labels: Mapping[str, float]) -> tuple[dict[str, float], dict[str, str]]:
    """Canonical finding -> drawing strength (1 positive, 0.5 uncertain), and -> given name."""
    strength, names = {}, {}
    for name, value in labels.items():
        key = canonical(name)
        if key not in _FINDING_CODE:
            raise ConfigError(
                f"The phantom renderer does not know the finding {name!r}. "
                f"Use an NIH or CheXpert label name ({', '.join(NIH14)}; {', '.join(CHEXPERT14)})."
            )
        if value is None:
            continue
        v = float(value)
        if math.isnan(v) or v == 0 or key == "no finding":
            continue
        strength[key] = 1.0 if v > 0 else 0.5
        names[key] = name
    return strength, names


class FindingsMixin:
    """The ``f_*`` finding renderers of :class:`~.renderer._Renderer`."""

    def f_effusion(self, key):
        g, st, r = self.g, self.s(key), self.frng[key]
        u = r.random()
        sides = [-1] if u < 0.35 else [1] if u < 0.7 else [-1, 1]
        for side in sides:
            win, m, a = self.lungs[side]
            V = self.cv.V[win]
            h = r.uniform(0.07, 0.16) * (0.5 + 0.5 * st)
            base = _dome(g, side, 0.4, self.raise_.get(side, 0.0))   # top of the dome
            top = base + 0.03 - h * (0.15 + 0.85 * np.clip(a, 0, 1) ** 2.5)  # meniscus, concave up
            fluid = np.clip((V - top) / 0.045, 0, 1) ** 0.7 * m
            self.A[win] *= 1 - 0.95 * st * fluid
            self.D[win] += 0.03 * st * fluid
            self.add_box(key, _bbox(fluid, win, 0.3))

    def f_pneumothorax(self, key):
        g, st, r, cv = self.g, self.s(key), self.frng[key], self.cv
        side = 1 if r.random() < 0.5 else -1
        win, m, a = self.lungs[side]
        V = cv.V[win]
        p = r.uniform(0.18, 0.32)
        vb = g["vd"] + 0.05
        frac = np.clip((vb - V) / (vb - g["apex"]), 0, 1)    # 1 at the apex, 0 at the base
        shrink = p * (0.35 + 0.65 * frac)
        ac = a / np.maximum(1 - shrink, 0.3)                 # lateral collapse
        vtop = _lung_top(g, ac) + p * 0.35 * (g["vd"] - g["apex"])       # apical collapse
        width = g["tw"] - g["mw"]
        e2 = 2.5 * cv.e
        coll = _ramp((_lung_lateral(g, V) - ac) * width, e2) * _ramp(V - vtop, e2)
        ptx = m * (1 - coll)
        line = 4 * coll * (1 - coll) * m * _ramp((_lung_lateral(g, V) - a) * width - 0.006, cv.e)
        self.A[win] += 0.18 * st * ptx
        self.A[win] *= 1 - 0.15 * st * coll * m
        self.D[win] += 0.16 * st * line
        self.ptx = (win, ptx * st)
        self.add_box(key, _bbox(ptx, win, 0.5))

    def f_atelectasis(self, key):
        g, st, r, cv = self.g, self.s(key), self.frng[key], self.cv
        side = self.atel_side
        win, m, a = self.lungs[side]
        u, v, _ = self.lung_point(r, side, "lower")
        L = r.uniform(0.12, 0.2)
        T = r.uniform(0.018, 0.032)
        ang = r.uniform(-0.35, 0.35) * side
        U, V = cv.U[win], cv.V[win]
        c, s = math.cos(ang), math.sin(ang)
        x, y = (U - u) * c + (V - v) * s, -(U - u) * s + (V - v) * c
        if r.random() < 0.5:   # plate-like band
            t = T * np.ones_like(x)
        else:                  # wedge, broad towards the lateral side
            t = T * (0.5 + 1.2 * np.clip(0.5 + side * x / L, 0, 1))
        band = _ramp(1 - np.abs(x) / (L / 2), 0.25) * _ramp(t - np.abs(y), 2 * cv.e) * m
        band = ndimage.gaussian_filter(band, 0.8 * self.S / 256, truncate=2.5)
        self.A[win] *= 1 - 0.85 * st * band
        self.D[win] += 0.05 * st * band
        # volume loss: the raised hemidiaphragm belongs to the sign
        raise_ = self.raise_[side]
        dn, up = _dome(g, side, a, 0.0), _dome(g, side, a, raise_)
        width = g["tw"] - g["mw"]
        lost = _ramp(V - up + cv.e, cv.e) * _ramp(dn - V, cv.e) * _ramp((1 - a) * width, cv.e) \
            * _ramp(a * width, cv.e)
        self.add_box(key, _union([_bbox(band, win, 0.3), _bbox(lost, win, 0.5)]))

    def _patch(self, key, zone=None, radius=(0.07, 0.11), density=0.8, cells=5):
        """Patchy, confluent opacity in one lobe: returns (window, field)."""
        st, r, cv = self.s(key), self.frng[key], self.cv
        u, v, side = self.lung_point(r, None, zone)
        ru, rv = r.uniform(*radius), r.uniform(*radius) * 1.1
        win = cv.window(u - ru * 1.4, v - rv * 1.4, u + ru * 1.4, v + rv * 1.4)
        lwin, m, _ = self.lungs[side]
        U, V = cv.U[win], cv.V[win]
        d = ((U - u) / ru) ** 2 + ((V - v) / rv) ** 2
        noise = _smooth_noise(r, U.shape, cells)
        field = np.clip((1.25 - d + 0.45 * noise) * 2.0, 0, 1)
        field = ndimage.gaussian_filter(field, 1.2 * self.S / 256, truncate=2.5)
        lm = np.zeros(U.shape, np.float32)
        _paste(lm, win, m, lwin)
        field *= lm
        self.A[win] *= 1 - density * st * field
        self.D[win] += 0.04 * st * field
        return win, field, (u, v, ru, rv)

    def f_consolidation(self, key):
        win, field, _ = self._patch(key, None, (0.07, 0.11), 0.85)
        self.add_box(key, _bbox(field, win, 0.3))

    def f_pneumonia(self, key):
        st, r, cv = self.s(key), self.frng[key], self.cv
        win, field, (u, v, ru, rv) = self._patch(key, ("mid", "lower", None)[int(r.integers(3))], (0.07, 0.12), 0.8, 7)
        # air bronchograms: dark branching lines inside the opacity
        h, w = field.shape
        layer = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(layer)
        sub = _SubCanvas(cv, win)
        side = 1 if u > 0.5 else -1
        starts = np.stack([u - side * ru * r.uniform(0.3, 0.7, 3), v + rv * r.uniform(-0.5, 0.5, 3)], axis=1)
        ang = (0.0 if side > 0 else math.pi) + r.uniform(-0.6, 0.6, 3)
        _draw_tree(draw, sub, r, starts, ang, np.full(3, ru * 0.6), 0.007, 2, 255, self.S)
        br = np.asarray(layer, dtype=np.float32) * (1 / 255)
        self.D[win] -= 0.09 * st * br * field
        self.add_box(key, _bbox(field, win, 0.3))

    def f_opacity(self, key):
        if any(self.s(k) for k in _OPACITIES):
            return  # the specific findings are the Lung Opacity signs; boxes copied in render()
        win, field, _ = self._patch(key, None, (0.07, 0.12), 0.65, 4)
        self.add_box(key, _bbox(field, win, 0.3))

    def f_edema(self, key):
        g, st, r, cv = self.g, self.s(key), self.frng[key], self.cv
        for side in (-1, 1):
            lwin, m, a = self.lungs[side]
            U, V = cv.U[lwin], cv.V[lwin]
            hx, hv = 0.5 + side * (g["mw"] + 0.05), g["apex"] + 0.3
            d = ((U - hx) / r.uniform(0.12, 0.15)) ** 2 + ((V - hv) / r.uniform(0.14, 0.18)) ** 2
            haze = np.clip(1.3 * np.exp(-d) * (0.85 + 0.25 * _smooth_noise(r, U.shape, 6)), 0, 1) * m
            self.A[lwin] *= 1 - 0.7 * st * haze
            # Kerley B lines: short horizontal lines at the lateral lung bases
            h, w = U.shape
            layer = Image.new("L", (w, h), 0)
            draw = ImageDraw.Draw(layer)
            sub = _SubCanvas(cv, lwin)
            ks = []
            for _ in range(r.integers(4, 8)):
                vv = r.uniform(g["vd"] - 0.14, g["vd"] - 0.02)
                uu = 0.5 + side * (g["tw"] - r.uniform(0.005, 0.02))
                ln = r.uniform(0.02, 0.035)
                x0, y0 = sub.to_px(uu, vv)
                x1, y1 = sub.to_px(uu - side * ln, vv + r.uniform(-0.003, 0.003))
                draw.line([(float(x0), float(y0)), (float(x1), float(y1))], fill=255,
                          width=max(1, round(self.S / 256)))
                ks.append((uu, vv))
            kl = np.asarray(layer, dtype=np.float32) * (1 / 255) * m
            self.D[lwin] += 0.12 * st * kl
            self.add_box(key, _union([_bbox(haze, lwin, 0.3), _bbox(kl, lwin, 0.3)]))

    def f_infiltration(self, key):
        st, r, cv = self.s(key), self.frng[key], self.cv
        for _ in range(1 if r.random() < 0.6 else 2):
            u, v, side = self.lung_point(r)
            ru, rv = r.uniform(0.07, 0.11), r.uniform(0.09, 0.14)
            win = cv.window(u - ru * 1.3, v - rv * 1.3, u + ru * 1.3, v + rv * 1.3)
            lwin, m, _ = self.lungs[side]
            U, V = cv.U[win], cv.V[win]
            d = ((U - u) / ru) ** 2 + ((V - v) / rv) ** 2
            k = self.S / 256
            n = r.standard_normal(U.shape).astype(np.float32)
            streak = ndimage.gaussian_filter(n, (3.0 * k, 1.1 * k), truncate=2.5)
            streak /= streak.std() + 1e-6
            field = _ramp(1 - d, 0.8) * np.clip(0.5 + 0.25 * streak, 0, 1)
            lm = np.zeros(U.shape, np.float32)
            _paste(lm, win, m, lwin)
            field *= lm
            self.A[win] *= 1 - 0.7 * st * field
            self.add_box(key, _bbox(field, win, 0.2))

    def f_fibrosis(self, key):
        g, st, r, cv = self.g, self.s(key), self.frng[key], self.cv
        k = self.S / 256
        for side in (-1, 1):
            lwin, m, a = self.lungs[side]
            V = cv.V[lwin]
            zone = _ramp(V - (g["apex"] + 0.55 * (g["vd"] - g["apex"])), 0.08) * _ramp(a - 0.25, 0.3) * m
            n = r.standard_normal(V.shape).astype(np.float32)
            b = ndimage.gaussian_filter(n, 1.3 * k, truncate=2.5)
            b /= b.std() + 1e-6
            net = np.exp(-(b / 0.35) ** 2)
            self.A[lwin] *= 1 - 0.25 * st * zone
            self.D[lwin] += 0.13 * st * net * zone
            self.add_box(key, _bbox(zone, lwin, 0.4))

    def f_pleural(self, key):
        g, st, r, cv = self.g, self.s(key), self.frng[key], self.cv
        side = 1 if r.random() < 0.5 else -1
        lwin, m, a = self.lungs[side]
        V = cv.V[lwin]
        v0 = r.uniform(g["apex"] + 0.08, g["vd"] - 0.25)
        v1 = v0 + r.uniform(0.12, 0.25)
        th = r.uniform(0.018, 0.032) * (0.75 + 0.25 * np.sin(np.clip((V - v0) / (v1 - v0), 0, 1) * math.pi))
        width = g["tw"] - g["mw"]
        lat = _lung_lateral(g, V)
        band = _ramp(th - (lat - a) * width, 1.5 * self.cv.e) * _ramp(V - v0, 0.02) * _ramp(v1 - V, 0.02) * m
        self.A[lwin] *= 1 - 0.95 * st * band
        self.D[lwin] += 0.05 * st * band
        self.add_box(key, _bbox(band, lwin, 0.3))

    def _blob(self, key, u, v, rad, amp, lobulated):
        r, cv = self.frng[key], self.cv
        win = cv.window(u - rad * 1.5, v - rad * 1.5, u + rad * 1.5, v + rad * 1.5)
        dx, dy = cv.U[win] - u, cv.V[win] - v
        d = np.sqrt(dx * dx + dy * dy)
        if lobulated:
            th = np.arctan2(dy, dx)
            rr = rad * (1 + 0.12 * np.sin(3 * th + r.uniform(0, 6.3)) + 0.07 * np.sin(5 * th + r.uniform(0, 6.3)))
        else:
            rr = rad
        body = np.clip(1 - (d / rr) ** 2, 0, 1) ** 0.35
        body = body * _ramp(rr - d, 1.5 * cv.e)
        self.D[win] += amp * body
        return _bbox(body, win, 0.2)

    def f_nodule(self, key):
        st, r = self.s(key), self.frng[key]
        k = r.choice([1, 2, 3], p=[0.6, 0.3, 0.1])
        for _ in range(k):
            u, v, _ = self.lung_point(r)
            rad = r.uniform(0.011, 0.02)
            self.add_box(key, self._blob(key, u, v, rad, 0.3 * st, False))

    def f_mass(self, key):
        st, r = self.s(key), self.frng[key]
        u, v, _ = self.lung_point(r)
        rad = r.uniform(0.042, 0.07)
        self.add_box(key, self._blob(key, u, v, rad, 0.32 * st, True))

    def f_lesion(self, key):
        if self.frng[key].random() < 0.5:
            self.f_nodule(key)
        else:
            self.f_mass(key)

    def f_hernia(self, key):
        g, st, r, cv = self.g, self.s(key), self.frng[key], self.cv
        u, v = 0.5 + r.uniform(0.0, 0.04), g["hy"] + r.uniform(-0.01, 0.03)
        rad = r.uniform(0.045, 0.065)
        win = cv.window(u - rad * 1.3, v - rad * 1.3, u + rad * 1.3, v + rad * 1.3)
        U, V = cv.U[win], cv.V[win]
        d = np.sqrt((U - u) ** 2 + (V - v) ** 2)
        inside = _ramp(rad - d, 1.5 * cv.e)
        rim = inside * _ramp(d - rad + 0.008, 1.5 * cv.e)
        air = inside * _ramp(v + 0.2 * rad - V, 1.5 * cv.e)  # air above an air-fluid level
        self.D[win] += st * (0.12 * rim - 0.2 * air * (1 - rim) + 0.05 * inside)
        self.add_box(key, _bbox(inside, win, 0.3))

    def f_fracture(self, key, ribs, win, phi):
        """Rib discontinuity with a step; modifies the rib layer (window ``win``)."""
        g, st, r, cv = self.g, self.s(key), self.frng[key], self.cv
        side = 1 if r.random() < 0.5 else -1
        rib_k = int(r.integers(2, 7))
        uf = 0.5 + side * g["tw"] * r.uniform(0.6, 0.85)
        # the rib centre line at uf: search phi along the column
        xs, _ = cv.to_px(uf, 0.5)
        col = int(np.clip(round(float(xs)) - win[1].start, 0, ribs.shape[1] - 1))
        rows = np.flatnonzero(np.abs(phi[:, col] - (rib_k + 0.5)) < 0.5)
        if rows.size == 0:
            return ribs
        yc = int(rows.mean())
        S = self.S
        hw = max(3, int(0.045 * S))
        step = max(1, int(round(0.4 * g["rib_sp"] * S * st)))
        y0, y1 = max(0, yc - hw), min(ribs.shape[0], yc + hw)
        x0, x1 = max(0, col - hw), min(ribs.shape[1], col + hw)
        src = ribs
        ribs = ribs.copy()
        # the lateral fragment is displaced downwards by `step` pixels
        lat = slice(col, x1) if side > 0 else slice(x0, col)
        ys0 = max(0, y0 - step)
        moved = src[ys0:y1 - step, lat]
        ribs[y1 - moved.shape[0]:y1, lat] = moved * st + ribs[y1 - moved.shape[0]:y1, lat] * (1 - st)
        gap = max(1, int(round(0.006 * S)))
        ribs[y0:y1, max(0, col - gap):col + gap] *= 1 - 0.9 * st    # the fracture line
        yy, xx = np.mgrid[y0:y1, x0:x1]
        call = np.exp(-(((yy - yc - step / 2) / (0.4 * hw)) ** 2 + ((xx - col) / (0.3 * hw)) ** 2))
        ribs[y0:y1, x0:x1] += 0.2 * st * call.astype(np.float32)   # callus / overlapping fragments
        self.add_box(key, (float(win[1].start + x0), float(win[0].start + y0), float(x1 - x0), float(y1 - y0)))
        return ribs
