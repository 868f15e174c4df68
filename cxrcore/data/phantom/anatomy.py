"""Anatomy: the patient's body shape and the normal chest drawn on it.

:func:`_patient_params` fixes one patient's build (thorax width, lung apex, diaphragm, heart
size, rib spacing, densities), shared by all their images; the lung-field, lung-edge, heart
border and diaphragm-dome functions give the outlines in the body frame. :class:`AnatomyMixin`
draws the body and arms with the gastric bubble, the heart and upper mediastinum, the vessel
markings, the ribs, clavicles and spine, the trachea and hila, and finds points inside a lung
for findings to be placed at.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .canvas import _bbox, _Canvas, _draw_tree, _ramp, _smooth_noise


def _patient_params(pkey: list[int]) -> dict:
    """Body shape of one patient, shared by all their images."""
    r = np.random.default_rng(pkey + [7])
    tw = r.uniform(0.36, 0.41)            # half thoracic width (lateral lung edge from midline)
    return {
        "tw": tw,
        "bw": tw + r.uniform(0.045, 0.075),  # half body width
        "neck": r.uniform(0.12, 0.15),
        "shoulder": r.uniform(0.07, 0.11),   # v where the shoulders reach full width
        "apex": r.uniform(0.11, 0.15),       # lung apex
        "ka": r.uniform(0.2, 0.26),          # apex rounding height
        "vd": r.uniform(0.66, 0.72),         # right hemidiaphragm dome top
        "dl": r.uniform(0.01, 0.035),        # left dome lower by this
        "kd": r.uniform(0.08, 0.11),         # depth of the costophrenic recess below the dome
        "mw": r.uniform(0.05, 0.065),        # half width of the mediastinum at the hila
        "ctr": r.uniform(0.39, 0.45),        # normal cardiothoracic ratio
        "ht": r.uniform(0.26, 0.3),          # heart top below the apex
        "hsplit": r.uniform(0.28, 0.34),     # share of the heart width right of the midline (image left)
        "rib_sp": r.uniform(0.055, 0.065),   # rib spacing
        "rib_v0": r.uniform(-0.01, 0.02),
        "rib_curve": r.uniform(0.2, 0.3),
        "tissue": r.uniform(0.47, 0.52),     # soft-tissue density
        "air": r.uniform(0.5, 0.56),         # lung darkness
        "tex_seed": int(r.integers(2**31)),
        "vessel_seed": int(r.integers(2**31)),
        "bubble": r.uniform(0.5, 1.0),       # gastric bubble size
    }


def _lung_fields(cv: _Canvas, win, side: int, g: dict, dome_raise: float = 0.0):
    """Lung mask (soft, 0..1), lateral coordinate a (0 medial .. 1 lateral) on window ``win``."""
    U, V = cv.U[win], cv.V[win]
    mw, tw = g["mw"], g["tw"]
    r = side * (U - 0.5)
    width = tw - mw
    a = (r - mw) / width
    top = _lung_top(g, a)
    dome = _dome(g, side, a, dome_raise)
    lat = _lung_lateral(g, V)
    e = cv.e
    m = (_ramp(V - top, e) * _ramp(dome - V, e) * _ramp((lat - a) * width, e) * _ramp(a * width, e))
    return m, a


def _lung_top(g, a):
    return g["apex"] + g["ka"] * (1.0 - np.sqrt(np.clip(1.0 - ((a - 0.42) / 0.6) ** 2, 0.0, 1.0)))


def _lung_lateral(g, v):
    """Lateral lung edge (in units of a) at height v: the rib cage narrows towards the apex."""
    t = np.clip((g["vd"] - 0.04 - v) / (g["vd"] - 0.04 - g["apex"]), 0.0, 1.0)
    return 1.0 - 0.06 * t ** 2


def _heart_extent(g, v):
    """Heart borders at height v: distance right of the midline (image left) and left of it."""
    t = np.clip((v - g["vt"]) / (g["vb"] - g["vt"]), 0.0, 1.0)
    w2 = 2.0 * g["hw"]
    rm, lm = w2 * g["hsplit"], w2 * (1.0 - g["hsplit"])
    base = 0.8 * g["mw"]
    right = base + (rm - base) * np.sin(0.5 * np.pi * np.clip((t - 0.05) / 0.6, 0.0, 1.0))
    rise = np.sin(0.5 * np.pi * np.clip(t / 0.72, 0.0, 1.0)) ** 1.4
    apex = np.sqrt(np.clip(1.0 - (np.clip(t - 0.72, 0.0, None) / 0.45) ** 2, 0.0, 1.0))
    left = base + (lm - base) * rise * apex
    return right, left


def _dome(g, side, a, raise_=0.0):
    vd = g["vd"] + (g["dl"] if side > 0 else 0.0) - raise_
    return vd + g["kd"] * ((a - 0.4) / 0.6) ** 2


class AnatomyMixin:
    """Normal anatomy and lung placement helpers of :class:`~.renderer._Renderer`."""

    def inside_lung(self, u, v, side, margin=0.02):
        g = self.g
        r = side * (u - 0.5)
        a = (r - g["mw"]) / (g["tw"] - g["mw"])
        if not 0.05 < a < 0.95:
            return False
        top = float(_lung_top(g, a))
        if a > float(_lung_lateral(g, v)) - 0.05:
            return False
        if v < top + margin or v > _dome(g, side, a, self.raise_.get(side, 0.0)) - margin:
            return False
        # not behind the heart
        if g["vt"] - 0.02 < v < g["vb"]:
            right, left = _heart_extent(g, np.float32(v))
            if -float(right) - 0.03 < u - 0.5 < float(left) + 0.03:
                return False
        return True

    def lung_point(self, rng, side=None, zone=None):
        """A body-frame point well inside a lung (zone: 'upper', 'mid', 'lower' or None)."""
        g = self.g
        for _ in range(60):
            sd = side if side is not None else (1 if rng.random() < 0.5 else -1)
            a = rng.uniform(0.15, 0.85)
            lo, hi = g["apex"] + 0.05, g["vd"] + 0.02
            if zone == "upper":
                hi = lo + (hi - lo) * 0.38
            elif zone == "mid":
                lo, hi = lo + (hi - lo) * 0.33, lo + (hi - lo) * 0.7
            elif zone == "lower":
                lo = lo + (hi - lo) * 0.6
            v = rng.uniform(lo, hi)
            u = 0.5 + sd * (g["mw"] + a * (g["tw"] - g["mw"]))
            if self.inside_lung(u, v, sd, 0.025):
                return u, v, sd
        sd = side if side is not None else 1
        return 0.5 + sd * (g["mw"] + 0.6 * (g["tw"] - g["mw"])), g["apex"] + 0.2, sd

    # ---------------------------------------------------------------- anatomy
    def draw_body(self):
        g, cv, D = self.g, self.cv, self.D
        U, V = cv.U, cv.V
        adx = np.abs(U - 0.5)
        t = np.clip((V - 0.02) / g["shoulder"], 0, 1)
        t = t * t * (3 - 2 * t)
        bw = g["neck"] + (g["bw"] - g["neck"]) * t
        body = _ramp(bw - adx, 3 * cv.e)
        self.body = body
        round_ = np.clip(1 - (adx / (g["bw"] + 0.02)) ** 2, 0, 1)
        tex = _smooth_noise(np.random.default_rng([g["tex_seed"], 2]), U.shape, 8)
        D += body * (g["tissue"] + 0.14 * round_ + 0.015 * tex) + 0.1 * _ramp(V - g["vd"] - 0.04, 0.1) * body
        # arms at the sides
        arm = _ramp(adx - g["bw"] - 0.012, 4 * cv.e) * _ramp(g["bw"] + 0.15 - adx, 4 * cv.e) \
            * _ramp(V - g["shoulder"] - 0.03, 0.08)
        D += 0.34 * arm
        # gastric bubble under the left hemidiaphragm
        bx, by = 0.5 + 0.45 * g["tw"], g["vd"] + g["dl"] + 0.06
        rb = 0.035 * g["bubble"]
        win = cv.window(bx - rb * 1.6, by - rb, bx + rb * 1.6, by + rb)
        d = ((cv.U[win] - bx) / (1.5 * rb)) ** 2 + ((cv.V[win] - by) / rb) ** 2
        D[win] -= 0.12 * _ramp(1 - d, 0.25) * _ramp(by + 0.3 * rb - cv.V[win], cv.e * 2)

    def draw_heart(self):
        g, cv, A = self.g, self.cv, self.A
        hw = g["hw"]
        win = cv.window(0.5 - 2 * hw * g["hsplit"] - 0.01, g["vt"] - 0.01,
                        0.5 + 2 * hw * (1 - g["hsplit"]) + 0.01, g["vb"] + 0.01)
        U, V = cv.U[win], cv.V[win]
        right, left = _heart_extent(g, V)
        e = 1.5 * cv.e
        heart = _ramp(U - 0.5 + right, e) * _ramp(left - (U - 0.5), e) * _ramp(V - g["vt"], 4 * e) \
            * _ramp(g["vb"] - V, e)
        A[win] *= 1 - heart
        self.D[win] += 0.05 * heart
        # aortic knob and upper mediastinum
        st = self.s("enlarged cardiomediastinum")
        mu = g["mw"] * (1.05 + 0.9 * st)
        mv0, mv1 = g["apex"] + 0.02, g["vt0"] + 0.06
        mwin = cv.window(0.5 - mu - 0.02, mv0, 0.5 + mu + 0.04, mv1)
        mc = 0.5 * (mv0 + mv1)
        md = np.sqrt(((cv.U[mwin] - 0.5 - 0.12 * mu) / mu) ** 2 + ((cv.V[mwin] - mc) / (0.5 * (mv1 - mv0))) ** 8)
        med = _ramp((1 - md) * mu, 1.5 * cv.e)
        kx, ky, kr = 0.5 + g["mw"] + 0.005 + 0.4 * (mu - g["mw"]), g["apex"] + 0.16, 0.026
        kd = np.sqrt((cv.U[mwin] - kx) ** 2 + (0.6 * (cv.V[mwin] - ky)) ** 2)
        med = np.maximum(med, _ramp(kr - kd, 1.5 * cv.e))
        A[mwin] *= 1 - med
        if st:
            self.add_box("enlarged cardiomediastinum", _bbox(med, mwin, 0.5))
        if self.s("cardiomegaly"):
            self.add_box("cardiomegaly", _bbox(heart, win, 0.5))

    def draw_markings(self):
        """Vessel trees from the hila, drawn with PIL and masked by lung air."""
        g, cv, S = self.g, self.cv, self.S
        layer = Image.new("L", (S, S), 0)
        draw = ImageDraw.Draw(layer)
        rng = np.random.default_rng([g["vessel_seed"], 1])
        hv = g["apex"] + 0.28
        k = 9
        side = np.repeat([-1.0, 1.0], k)
        ang = -1.35 + 2.6 * (np.tile(np.arange(k), 2) + rng.uniform(-0.35, 0.35, 2 * k)) / (k - 1)
        ang = np.where(side > 0, ang, math.pi - ang)
        starts = np.stack([0.5 + side * (g["mw"] + 0.025), hv + rng.uniform(-0.03, 0.04, 2 * k)], axis=1)
        _draw_tree(draw, cv, rng, starts, ang, rng.uniform(0.06, 0.09, 2 * k), 0.011, 4, 200, S)
        M = np.asarray(layer, dtype=np.float32) * (1 / 255)
        M = ndimage.gaussian_filter(M, 0.8 * S / 256, truncate=2.5)
        amp = 0.16 * (1 - 0.6 * self.emph)
        mask = np.clip(self.A, 0, 1)
        if self.ptx is not None:
            win, ptx = self.ptx
            mask[win] *= 1 - ptx
        self.D += amp * M * mask

    def draw_bones(self):
        g, cv, D = self.g, self.cv, self.D
        # ribs: posterior arcs (strong) and anterior arcs (faint), both sides at once
        win = cv.window(0.5 - g["tw"] - 0.06, g["apex"] - 0.06, 0.5 + g["tw"] + 0.06, g["vd"] + 0.12)
        U, V = cv.U[win], cv.V[win]
        r = np.abs(U - 0.5) / g["tw"]
        sp = g["rib_sp"]
        # posterior ribs rise a little from the spine, then arc down to the lateral wall
        vp = V - g["apex"] - g["rib_v0"] + 0.035 * r - g["rib_curve"] * np.clip(r - 0.25, 0, None) ** 2
        phi = vp / (sp * (1 + 0.6 * np.clip(vp, 0, None)))
        f = np.abs(phi - np.floor(phi) - 0.5)
        rib = _ramp(0.2 - f, 0.05) * (0.7 + 0.3 * _ramp(f - 0.13, 0.04))   # brighter cortex
        # anterior ribs: run down and inwards from the lateral wall, faint
        va = V - g["apex"] + 0.03 - 0.3 * g["tw"] * np.clip(1.05 - r, 0, None) ** 1.5
        fa = va / (sp * 1.2)
        fa = np.abs(fa - np.floor(fa) - 0.5)
        ant = _ramp(0.16 - fa, 0.06)
        extent = _ramp(1.1 - r, 0.04) * _ramp(r - 0.1, 0.08) * _ramp(V - g["apex"] + 0.04, 0.03) \
            * _ramp(g["vd"] + 0.06 - V, 0.06)
        ribs = (rib * 0.07 + ant * 0.03 * _ramp(r - 0.35, 0.25)) * extent
        if self.s("fracture"):
            ribs = self.f_fracture("fracture", ribs, win, phi)
        D[win] += ribs
        # clavicles
        for side in (-1, 1):
            p0 = (0.5 + side * 0.035, g["apex"] + 0.07)
            p1 = (0.5 + side * (g["tw"] + 0.08), g["apex"] - 0.03)
            cwin = cv.window(min(p0[0], p1[0]) - 0.03, p1[1] - 0.04, max(p0[0], p1[0]) + 0.03, p0[1] + 0.04)
            U, V = cv.U[cwin], cv.V[cwin]
            dx, dy = p1[0] - p0[0], p1[1] - p0[1]
            L2 = dx * dx + dy * dy
            t = np.clip(((U - p0[0]) * dx + (V - p0[1]) * dy) / L2, 0, 1)
            bend = 0.015 * np.sin(t * 2 * math.pi)
            d = np.sqrt((U - p0[0] - t * dx) ** 2 + (V - p0[1] - t * dy - bend) ** 2)
            th = 0.012 + 0.004 * t
            D[cwin] += 0.13 * _ramp(th - d, 1.5 * cv.e) * (0.75 + 0.25 * _ramp(d - 0.6 * th, cv.e)) \
                * self.body[cwin]
        # spine with vertebrae (mostly visible above the heart)
        win = cv.window(0.46, 0.0, 0.54, 1.0)
        U, V = cv.U[win], cv.V[win]
        adx = np.abs(U - 0.5)
        spine = _ramp(0.032 - adx, 2 * cv.e)
        ph = V / 0.042
        disc = np.abs(ph - np.floor(ph) - 0.5)
        vert = 0.75 + 0.25 * _ramp(disc - 0.12, 0.08)
        D[win] += 0.07 * spine * vert + 0.04 * spine * _ramp(adx - 0.022, cv.e)

    def draw_mediastinum_details(self):
        g, cv, D = self.g, self.cv, self.D
        win = cv.window(0.47, 0.0, 0.53, g["apex"] + 0.22)
        U, V = cv.U[win], cv.V[win]
        tr = _ramp(0.013 - np.abs(U - 0.5 + 0.003), 1.5 * cv.e) * _ramp(g["apex"] + 0.2 - V, 0.03)
        D[win] -= 0.09 * tr
        for side in (-1, 1):  # hila
            hx, hv = 0.5 + side * (g["mw"] + 0.025), g["apex"] + 0.29
            hwin = cv.window(hx - 0.04, hv - 0.06, hx + 0.04, hv + 0.06)
            d = ((cv.U[hwin] - hx) / 0.03) ** 2 + ((cv.V[hwin] - hv) / 0.05) ** 2
            D[hwin] += 0.06 * np.exp(-d)
