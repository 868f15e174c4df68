"""The renderer: one phantom radiograph from a set of labels.

:class:`_Renderer` combines the anatomy, findings, devices and film mixins: it sets the image's
pose, inspiration and exposure, applies the geometry changes findings cause (cardiomegaly,
emphysema, atelectasis), builds the lung air, calls the finding renderers in their fixed order
and hands the density to the film stage. :func:`render` is the public entry point.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ...errors import ConfigError
from ...labels import canonical
from .anatomy import AnatomyMixin, _lung_fields, _patient_params
from .canvas import Box, _Canvas, _ramp
from .devices import DevicesMixin
from .film import FilmMixin
from .findings import _FINDING_CODE, _OPACITIES, FindingsMixin, _strengths
from .tables import DOMAINS, MAX_SIZE, MIN_SIZE


def _as_key(seed) -> list[int]:
    if isinstance(seed, (int, np.integer)):
        return [int(seed)]
    key = [int(s) for s in seed]
    if not key:
        raise ConfigError("An empty random seed sequence was given; pass an int or a list of ints.")
    return key


class _Renderer(AnatomyMixin, FindingsMixin, DevicesMixin, FilmMixin):
    """One image: pose and patient geometry, the drawing order, the boxes."""

    def __init__(self, labels, key, pkey, domain, size, view, fkey=None, reseed=(), pose=None):
        self.key = key
        self.domain = domain
        self.S = size
        self.view = view
        self.strength, self.names = _strengths(labels)
        self.boxes: list[Box] = []
        g = dict(_patient_params(pkey))
        r = np.random.default_rng(key + [10])
        # Image-level pose, inspiration and exposure.
        g["vd"] += r.uniform(-0.015, 0.015)
        if domain == "chexpert":
            angle = math.radians(r.uniform(-5.0, 5.0))
            shift = (r.uniform(-0.04, 0.04), r.uniform(-0.03, 0.05))
            zoom = r.uniform(0.92, 1.04)
            g["vd"] -= r.uniform(0.0, 0.04)     # shallow inspiration in supine portable films
            mag = 1.1                           # AP projection magnifies the heart
        else:
            angle = math.radians(r.uniform(-1.0, 1.0))
            shift = (r.uniform(-0.012, 0.012), r.uniform(-0.01, 0.015))
            zoom = r.uniform(0.97, 1.03)
            mag = 1.0
        if str(view).upper() == "AP":
            mag *= 1.05
        g["hw"] = g["ctr"] * g["tw"] * mag    # half of the heart's width
        self.exposure = r.uniform(-0.03, 0.03)
        if pose:  # a follow-up film's differences from the prior: added to what this film drew
            p = _check_pose(pose)
            angle += math.radians(p["rotate"])
            shift = (shift[0] + p["shift_x"], shift[1] + p["shift_y"])
            zoom *= p["zoom"]
            g["vd"] += p["inspiration"]
            self.exposure += p["exposure"]
        self.g = g
        self.cv = _Canvas(size, angle, shift, zoom)
        fkey = key if fkey is None else fkey
        reseed = {canonical(x) for x in reseed}
        self.frng = {k: np.random.default_rng((key if k in reseed else fkey) + [_FINDING_CODE[k]])
                     for k in self.strength}

    def landmarks(self) -> dict[str, tuple[float, float]]:
        """Anatomical landmarks in pixels (x, y) of this image, after :meth:`render` (which moves the diaphragm for
        emphysema and inspiration): medial and lateral ends of both clavicles, both lung apices, the lateral
        costophrenic angles and the hemidiaphragm domes. Names say the patient's side (image left is the patient's
        right)."""
        g = self.g
        pts = {}
        for side, name in ((-1, "right"), (1, "left")):
            pts[f"{name} clavicle head"] = (0.5 + side * 0.035, g["apex"] + 0.07)
            pts[f"{name} clavicle end"] = (0.5 + side * (g["tw"] + 0.08), g["apex"] - 0.03)
            pts[f"{name} lung apex"] = (0.5 + side * (g["mw"] + 0.42 * (g["tw"] - g["mw"])), g["apex"])
            vd = g["vd"] + (g["dl"] if side > 0 else 0.0) - self.raise_.get(side, 0.0)
            pts[f"{name} costophrenic angle"] = (0.5 + side * g["tw"], vd + g["kd"])  # the dome at the lateral wall
            pts[f"{name} dome"] = (0.5 + side * (g["mw"] + 0.4 * (g["tw"] - g["mw"])), vd)
        out = {}
        for name, (u, v) in pts.items():
            x, y = self.cv.to_px(u, v)
            out[name] = (float(x), float(y))
        return out

    def s(self, key: str) -> float:
        return self.strength.get(key, 0.0)

    def add_box(self, key: str, box):
        if box is not None and box[2] >= 1 and box[3] >= 1:
            self.boxes.append((self.names[key], *box))

    # ---------------------------------------------------------------- main
    def render(self):
        g, cv, S = self.g, self.cv, self.S
        st = self.s
        # ---- geometry changes caused by findings
        g["vt0"] = g["apex"] + g["ht"]
        if st("cardiomegaly"):
            g["hw"] *= 1.0 + 0.45 * st("cardiomegaly")
            g["ht"] -= 0.025 * st("cardiomegaly")
        self.emph = st("emphysema")
        if self.emph:
            g["tw"] = min(g["tw"] * (1 + 0.05 * self.emph), 0.44)
            g["vd"] += 0.05 * self.emph
            g["kd"] *= 1 - 0.6 * self.emph
            g["apex"] -= 0.015 * self.emph
        g["vt"] = g["apex"] + g["ht"]
        g["vb"] = g["vd"] + g["dl"] + 0.05
        g["hy"] = g["vt"] + 0.6 * (g["vb"] - g["vt"])
        self.raise_ = {}
        if st("atelectasis"):
            r = self.frng["atelectasis"]
            self.atel_side = 1 if r.random() < 0.5 else -1
            self.raise_[self.atel_side] = 0.045 * st("atelectasis")

        D = np.zeros((S, S), np.float32)      # density (brightness before the domain's film curve)
        A = np.zeros((S, S), np.float32)      # lung air
        self.D, self.A = D, A
        self.draw_body()
        lungs = {}
        for side in (-1, 1):
            win = cv.window(0.5 + side * (g["mw"] - 0.01), g["apex"] - 0.01,
                            0.5 + side * (g["tw"] + 0.01), g["vd"] + g["dl"] + g["kd"] + 0.02)
            m, a = _lung_fields(cv, win, side, g, self.raise_.get(side, 0.0))
            V = cv.V[win]
            # more air laterally and high, less near the hilum and the bases
            air = (1.0 - 0.25 * np.exp(-(a / 0.3) ** 2) - 0.15 * np.clip((V - 0.45) / 0.25, 0, 1)
                   - 0.12 * np.exp(-((V - g["apex"]) / 0.07) ** 2) - 0.08 * _ramp(a - 0.85, 0.2))
            if self.emph:
                air = air * (1 + 0.12 * self.emph)
            A[win] += m * air
            lungs[side] = (win, m, a)
        self.lungs = lungs
        self.draw_heart()
        # ---- findings that change lung air
        self.ptx = None
        for key, fn in (("pleural effusion", self.f_effusion), ("pneumothorax", self.f_pneumothorax),
                        ("atelectasis", self.f_atelectasis), ("consolidation", self.f_consolidation),
                        ("pneumonia", self.f_pneumonia), ("edema", self.f_edema),
                        ("infiltration", self.f_infiltration), ("fibrosis", self.f_fibrosis),
                        ("pleural thickening", self.f_pleural), ("pleural other", self.f_pleural),
                        ("lung opacity", self.f_opacity)):
            if st(key):
                fn(key)
        # ---- compose density
        D -= g["air"] * A
        self.draw_markings()
        self.draw_bones()
        self.draw_mediastinum_details()
        for key, fn in (("nodule", self.f_nodule), ("mass", self.f_mass),
                        ("lung lesion", self.f_lesion), ("hernia", self.f_hernia),
                        ("support devices", self.f_devices)):
            if st(key):
                fn(key)
        if st("lung opacity") and any(st(k) for k in _OPACITIES):
            for b in list(self.boxes):
                if canonical(b[0]) in _OPACITIES:
                    self.boxes.append((self.names["lung opacity"], *b[1:]))
        return self.finish()


# What may differ between two films of one patient (a follow-up's pose against its prior's): rotation in degrees,
# shift in image units, zoom factor, inspiration (the diaphragm's shift in body-frame units, + lower) and exposure.
POSE_KEYS = {"rotate": 0.0, "shift_x": 0.0, "shift_y": 0.0, "zoom": 1.0, "inspiration": 0.0, "exposure": 0.0}


def _check_pose(pose: Mapping[str, float]) -> dict[str, float]:
    unknown = set(pose) - set(POSE_KEYS)
    if unknown:
        raise ConfigError(f"Unknown pose change(s) {sorted(unknown)}; use {', '.join(POSE_KEYS)}.")
    p = {**POSE_KEYS, **{k: float(v) for k, v in pose.items()}}
    if not (0.5 <= p["zoom"] <= 2.0 and abs(p["rotate"]) <= 45 and abs(p["shift_x"]) <= 0.3
            and abs(p["shift_y"]) <= 0.3 and abs(p["inspiration"]) <= 0.1 and abs(p["exposure"]) <= 0.3):
        raise ConfigError(f"The pose change {p} is out of range (zoom 0.5-2, rotate within 45 degrees, shifts within "
                          "0.3, inspiration within 0.1, exposure within 0.3).")
    return p


def render_film(labels: Mapping[str, float], rng_seed: int | Sequence[int] = 0, domain: str = "nih",
                size: int = 256, patient_seed: int | Sequence[int] | None = None, view: str | None = None,
                finding_seed: int | Sequence[int] | None = None, reseed: Sequence[str] = (),
                pose: Mapping[str, float] | None = None
                ) -> tuple[np.ndarray, list[Box], dict[str, tuple[float, float]]]:
    """:func:`render` for follow-up films: also the anatomical landmarks (pixels) of the image.

    ``finding_seed`` fixes where each finding goes apart from the film's pose and noise (``rng_seed``): two films
    with one patient and one finding seed show the same effusion, larger or smaller with its strength, on two
    different exposures. Findings named in ``reseed`` draw from the film's own seed instead (a device moved).
    ``pose`` adds a follow-up's differences (:data:`POSE_KEYS`) to the film's own."""
    if domain not in DOMAINS:
        raise ConfigError(f"Unknown phantom domain {domain!r}; use one of {', '.join(DOMAINS)}.")
    size = int(size)
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"Image size {size} is out of range; use {MIN_SIZE} to {MAX_SIZE} pixels.")
    key = _as_key(rng_seed)
    pkey = key if patient_seed is None else _as_key(patient_seed)
    fkey = None if finding_seed is None else _as_key(finding_seed)
    r = _Renderer(labels, key, pkey, domain, size, view, fkey, reseed, pose)
    img, boxes = r.render()
    return img, boxes, r.landmarks()


def render(labels: Mapping[str, float], rng_seed: int | Sequence[int] = 0, domain: str = "nih",
           size: int = 256, patient_seed: int | Sequence[int] | None = None,
           view: str | None = None) -> tuple[np.ndarray, list[Box]]:
    """Draw one phantom radiograph.

    ``labels`` maps finding names (NIH or CheXpert spelling, matched through
    :func:`cxrcore.labels.canonical`) to raw values: 1 draws the sign, -1 draws it at about half
    intensity, 0 / NaN / None and ``No Finding`` draw nothing. ``rng_seed`` (int or list of
    non-negative ints) fixes pose, noise and where each finding goes; every finding has its own
    random stream, so adding or removing a finding leaves the rest of the image unchanged.
    ``patient_seed`` fixes the body shape (defaults to ``rng_seed``). ``view`` ``AP`` magnifies
    the heart slightly.

    Returns the uint8 image (size x size) and boxes ``(label, x, y, w, h)`` in pixels, the label
    spelled as given in ``labels``; one box per localized sign (several for bilateral signs,
    several nodules, several devices).
    """
    img, boxes, _ = render_film(labels, rng_seed, domain, size, patient_seed, view)
    return img, boxes
