"""Phantom generator: procedural chest radiographs in the on-disk layouts of NIH and CheXpert.

This is the embedded default dataset. :func:`generate` writes ``n`` radiograph-like images
with the folder layout, file names and label tables of the real dataset it imitates, so the
ordinary dataset readers open it unchanged:

- ``nih``: ``images/NNNNNNNN_MMM.png``, ``Data_Entry_2017.csv``, ``BBox_List_2017.csv``
  (box coordinates in the 1024-pixel frame of a real NIH image).
- ``chexpert``: ``train|valid/patientNNNNN/studyN/view1_frontal.jpg``, ``train.csv``,
  ``valid.csv`` (paths prefixed ``CheXpert-v1.0-small/``) and ``phantom_boxes.csv``
  (NIH box format, ``Image Index`` = the ``Path`` string, 1024-pixel frame).
- both: ``PHANTOM.json`` (generator version, domain, n, size, seed).

Which findings an image carries is a row drawn uniformly from the real label table that
ships with torchxrayvision (frontal rows only for CheXpert), so prevalence and co-occurrence
match the real datasets. Each finding is drawn as a visible, localized sign with a
ground-truth box. The two domains look different on purpose (NIH: clean, sharp PA-like films;
CheXpert: portable AP-like films with lower contrast, more noise, rotation, a brightness
gradient, an L/R marker and blur), so a model trained on one transfers imperfectly.

Everything is deterministic: image ``i`` depends only on ``(seed, domain, i)``, so a smaller
``n`` yields exactly the first images and rows of a larger one.
"""
from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin
from scipy import ndimage

from .imageio import PHANTOM_MARK, PHANTOM_MARK_KEY
from ..errors import ConfigError
from ..labels import CHEXPERT14, NIH14, canonical

GENERATOR_VERSION = "1.0.0"

DOMAINS = {"nih": 1, "chexpert": 2}
MIN_SIZE, MAX_SIZE = 64, 1024
MAX_N = 200_000
BOX_FRAME = 1024  # box coordinates are written in the pixel frame of a 1024 x 1024 NIH image

NIH_COLUMNS = [
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
    "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]",
]
CHEXPERT_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"] + CHEXPERT14
BOX_COLUMNS = ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"]
CHEXPERT_PREFIX = "CheXpert-v1.0-small"
VALID_FRACTION = 0.05

# Patients have 1-4 images with these probabilities.
_IMAGES_PER_PATIENT = np.array([1, 2, 3, 4])
_IMAGES_PER_PATIENT_P = np.array([0.45, 0.28, 0.17, 0.10])
_PATIENT_BLOCK = 4096

# Tags that keep the random streams apart: rng([seed, domain_code, TAG, index]).
_TAG_IMAGE, _TAG_PATIENT, _TAG_COUNTS, _TAG_ROW = 0, 1, 2, 3

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
# Box label spelling in NIH's own box file.
_NIH_BOX_NAME = {"Infiltration": "Infiltrate"}

Box = tuple[str, float, float, float, float]  # label, x, y, w, h in pixels of the rendered image


# --------------------------------------------------------------------------------------------
# Real label tables
# --------------------------------------------------------------------------------------------

_TABLES: dict[str, object] = {}


def _table_path(domain: str) -> Path:
    """The table inside the installed torchxrayvision package (found without importing it:
    importing torchxrayvision imports torch, which takes seconds)."""
    import importlib.util

    name = {"nih": "Data_Entry_2017_v2020.csv.gz", "chexpert": "chexpert_train.csv.gz"}[domain]
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.origin:
        raise ConfigError(
            "The phantom generator needs the label tables that ship with torchxrayvision, which is "
            "not installed. Install it with: pip install torchxrayvision"
        )
    return Path(os.path.dirname(spec.origin)) / "data" / name


def _load_table(domain: str):
    """The real label table of ``domain`` (only the needed columns), cached per process."""
    if domain in _TABLES:
        return _TABLES[domain]
    import pandas as pd

    path = _table_path(domain)
    if not path.is_file():
        raise ConfigError(
            f"The {domain} label table {path} that ships with torchxrayvision is missing. "
            "Reinstall torchxrayvision (pip install --force-reinstall torchxrayvision)."
        )
    if domain == "nih":
        cols = ["Finding Labels", "Patient Age", "Patient Gender", "View Position"]
        table = pd.read_csv(path, usecols=cols)
    else:
        cols = ["Sex", "Age", "Frontal/Lateral", "AP/PA"] + CHEXPERT14
        table = pd.read_csv(path, usecols=cols)
        table = table[table["Frontal/Lateral"] == "Frontal"].reset_index(drop=True)
    _TABLES[domain] = table
    return table


def _patient_layout(n: int, domain_code: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Patient index (0-based) and follow-up number of images 0..n-1.

    Image counts per patient come in fixed blocks of a deterministic stream, so the layout
    of the first ``m`` images does not depend on ``n``.
    """
    counts = []
    total = 0
    block = 0
    while total < n:
        rng = np.random.default_rng([seed, domain_code, _TAG_COUNTS, block])
        c = rng.choice(_IMAGES_PER_PATIENT, size=_PATIENT_BLOCK, p=_IMAGES_PER_PATIENT_P)
        counts.append(c)
        total += int(c.sum())
        block += 1
    ends = np.cumsum(np.concatenate(counts))
    i = np.arange(n)
    patient = np.searchsorted(ends, i, side="right")
    starts = ends - np.concatenate(counts)
    return patient, i - starts[patient]


def _valid_patient(seed: int, pid: int) -> bool:
    d = hashlib.blake2b(f"phantom-valid:{seed}:{pid}".encode(), digest_size=8).digest()
    return int.from_bytes(d, "big") / 2**64 < VALID_FRACTION


def sample_table(n: int, domain: str = "nih", seed: int = 0):
    """The label table of ``generate(out, n, domain, seed=seed)`` without rendering any image.

    Returns a DataFrame with the dataset's own CSV columns (``NIH_COLUMNS`` without the size
    columns for nih, ``CHEXPERT_COLUMNS`` for chexpert) plus internal columns ``_file`` (path
    relative to the output folder), ``_patient`` (int), ``_followup`` (int), ``_row`` (row of
    the real table) and, for chexpert, ``_split`` (``train`` / ``valid``).
    Patient sex and age come from the row drawn for the patient's first image; view position
    and findings from each image's own row.
    """
    _check_args(n, domain, 256, seed, 1)
    import pandas as pd

    code = DOMAINS[domain]
    table = _load_table(domain)
    patient, follow = _patient_layout(n, code, seed)
    rows = np.array([np.random.default_rng([seed, code, _TAG_ROW, i]).integers(len(table))
                     for i in range(n)], dtype=np.int64)
    first = np.arange(n) - follow  # index of the patient's first image
    demo_rows = rows[first]
    pid = patient + 1
    if domain == "nih":
        src = table.iloc[rows].reset_index(drop=True)
        demo = table.iloc[demo_rows].reset_index(drop=True)
        names = [f"{p:08d}_{f:03d}.png" for p, f in zip(pid, follow)]
        frame = pd.DataFrame({
            "Image Index": names,
            "Finding Labels": src["Finding Labels"].to_numpy(),
            "Follow-up #": follow,
            "Patient ID": pid,
            "Patient Age": demo["Patient Age"].to_numpy(),
            "Patient Gender": demo["Patient Gender"].to_numpy(),
            "View Position": src["View Position"].to_numpy(),
        })
        frame["_file"] = ["images/" + s for s in names]
    else:
        src = table.iloc[rows].reset_index(drop=True)
        demo = table.iloc[demo_rows].reset_index(drop=True)
        split = np.array(["valid" if _valid_patient(seed, int(p)) else "train" for p in pid])
        files = [f"{s}/patient{p:05d}/study{f + 1}/view1_frontal.jpg"
                 for s, p, f in zip(split, pid, follow)]
        frame = pd.DataFrame({
            "Path": [f"{CHEXPERT_PREFIX}/{f}" for f in files],
            "Sex": demo["Sex"].to_numpy(),
            "Age": demo["Age"].to_numpy(),
            "Frontal/Lateral": src["Frontal/Lateral"].to_numpy(),
            "AP/PA": src["AP/PA"].to_numpy(),
        })
        for col in CHEXPERT14:
            frame[col] = src[col].to_numpy(dtype=np.float64)
        frame["_file"] = files
        frame["_split"] = split
    frame["_patient"] = pid
    frame["_followup"] = follow
    frame["_row"] = rows
    return frame


def row_labels(row: Mapping, domain: str) -> dict[str, float]:
    """Findings of one ``sample_table`` row as ``{dataset label name: raw value}``.

    NIH: every listed finding with value 1.0 (``No Finding`` gives an empty dict).
    CheXpert: the 14 label columns that are not blank, with their raw value (1, 0, -1).
    """
    if domain == "nih":
        return {s: 1.0 for s in str(row["Finding Labels"]).split("|") if s and s != "No Finding"}
    out = {}
    for col in CHEXPERT14:
        v = row[col]
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            out[col] = float(v)
    return out


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

def _as_key(seed) -> list[int]:
    if isinstance(seed, (int, np.integer)):
        return [int(seed)]
    key = [int(s) for s in seed]
    if not key:
        raise ConfigError("An empty random seed sequence was given; pass an int or a list of ints.")
    return key


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


def _smooth_noise(rng, shape, cells: int):
    """Low-frequency noise, roughly unit variance, with about ``cells`` blobs across."""
    h, w = shape
    g = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    im = Image.fromarray(g).resize((w, h), Image.BICUBIC, box=(1, 1, cells + 2, cells + 2))
    return np.asarray(im, dtype=np.float32)


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


class _Renderer:
    def __init__(self, labels, key, pkey, domain, size, view):
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
        self.g = g
        self.cv = _Canvas(size, angle, shift, zoom)
        self.frng = {k: np.random.default_rng(key + [_FINDING_CODE[k]]) for k in self.strength}

    def s(self, key: str) -> float:
        return self.strength.get(key, 0.0)

    def add_box(self, key: str, box):
        if box is not None and box[2] >= 1 and box[3] >= 1:
            self.boxes.append((self.names[key], *box))

    # ---------------------------------------------------------------- placement helpers
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

    # ---------------------------------------------------------------- findings
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

    # ---------------------------------------------------------------- film
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


class _SubCanvas:
    """A canvas whose pixel coordinates are relative to window ``win`` of ``cv``."""

    def __init__(self, cv: _Canvas, win):
        self.cv, self.y0, self.x0 = cv, win[0].start, win[1].start

    def to_px(self, u, v):
        x, y = self.cv.to_px(u, v)
        return x - self.x0, y - self.y0


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


def _clip_box(b, S):
    x, y, w, h = b
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(S), x + w), min(float(S), y + h)
    return (x0, y0, max(0.0, x1 - x0), max(0.0, y1 - y0))


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
    if domain not in DOMAINS:
        raise ConfigError(f"Unknown phantom domain {domain!r}; use one of {', '.join(DOMAINS)}.")
    size = int(size)
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"Image size {size} is out of range; use {MIN_SIZE} to {MAX_SIZE} pixels.")
    key = _as_key(rng_seed)
    pkey = key if patient_seed is None else _as_key(patient_seed)
    return _Renderer(labels, key, pkey, domain, size, view).render()


# --------------------------------------------------------------------------------------------
# Dataset writer
# --------------------------------------------------------------------------------------------

def _check_args(n, domain, size, seed, workers):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"The number of images must be a whole number of at least 1, not {n!r}.")
    if n > MAX_N:
        raise ConfigError(f"{n} images is more than the phantom generator makes ({MAX_N}); ask for fewer.")
    if domain not in DOMAINS:
        raise ConfigError(f"Unknown phantom domain {domain!r}; use one of {', '.join(DOMAINS)}.")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"Image size {size!r} is out of range; use a whole number from {MIN_SIZE} to {MAX_SIZE}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"The seed must be a non-negative whole number, not {seed!r}.")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ConfigError(f"workers must be a whole number of at least 1, not {workers!r}.")


def _work(task):
    """Render and write one image (runs in a pool worker or in-process)."""
    i, path, labels, key, pkey, domain, size, view = task
    img, boxes = render(labels, key, domain, size, pkey, view)
    im = Image.fromarray(img)
    if domain == "nih":  # the mark tells a phantom from a real film wherever it is uploaded
        mark = PngImagePlugin.PngInfo()
        mark.add_text(PHANTOM_MARK_KEY, PHANTOM_MARK)
        im.save(path, format="PNG", compress_level=1, pnginfo=mark)
    else:
        im.save(path, format="JPEG", quality=90, comment=PHANTOM_MARK)
    return i, boxes


def _init_worker():
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and cleans up


def _pool_context():
    methods = multiprocessing.get_all_start_methods()
    # fork is fastest and needs no importable __main__, but is unsafe in threaded processes
    # (e.g. the Streamlit server); there the forkserver starts workers from a clean process.
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    if "forkserver" in methods:
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")


def generate(out: str | Path, n: int, domain: str = "nih", size: int = 256, seed: int = 0,
             workers: int = 2, progress: Callable[[int, int], None] | None = None) -> Path:
    """Write a phantom dataset of ``n`` images into ``out`` in the real layout of ``domain``.

    ``domain`` is ``nih`` or ``chexpert``; ``size`` the image side in pixels (64-1024);
    ``workers`` processes render in parallel (1 renders in this process); ``progress(done,
    total)`` is called in this process as images finish. ``out`` must not exist or be an empty
    folder. The dataset is built in a hidden sibling folder and renamed into place at the end,
    so an interrupted run leaves nothing at ``out``. Returns ``out``.
    """
    _check_args(n, domain, size, seed, workers)
    n, size, seed, workers = int(n), int(size), int(seed), int(workers)
    out = Path(out).expanduser()
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"{out} exists and is a file; choose a new folder for the phantom dataset.")
        if any(out.iterdir()):
            raise ConfigError(
                f"{out} already exists and is not empty; it was left untouched. "
                "Choose a new folder or delete this one first."
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    frame = sample_table(n, domain, seed)
    code = DOMAINS[domain]
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        tasks = []
        dirs = sorted({str(Path(f).parent) for f in frame["_file"]})
        for d in dirs:
            (tmp / d).mkdir(parents=True, exist_ok=True)
        view_col = "View Position" if domain == "nih" else "AP/PA"
        for i, row in enumerate(frame.to_dict("records")):
            tasks.append((i, str(tmp / row["_file"]), row_labels(row, domain),
                          [seed, code, _TAG_IMAGE, i], [seed, code, _TAG_PATIENT, int(row["_patient"])],
                          domain, size, row[view_col]))
        boxes: dict[int, list[Box]] = {}
        done = 0
        if workers == 1 or n == 1:
            for t in tasks:
                i, b = _work(t)
                boxes[i] = b
                done += 1
                if progress:
                    progress(done, n)
        else:
            ctx = _pool_context()
            chunk = max(1, min(16, n // (workers * 8)))
            with ctx.Pool(min(workers, n), initializer=_init_worker) as pool:
                for i, b in pool.imap_unordered(_work, tasks, chunksize=chunk):
                    boxes[i] = b
                    done += 1
                    if progress:
                        progress(done, n)
        _write_tables(tmp, frame, boxes, domain, size)
        (tmp / "PHANTOM.json").write_text(json.dumps({
            "generator": "cxrcore.data.phantom", "version": GENERATOR_VERSION, "domain": domain,
            "n": n, "size": size, "seed": seed,
        }, indent=2) + "\n")
        if out.exists():
            try:
                out.rmdir()
            except OSError:
                raise ConfigError(
                    f"{out} was filled by something else while the phantom dataset was generated; "
                    "it was left untouched. Choose a new folder."
                ) from None
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _box_rows(image_id: str, boxes: list[Box], size: int, domain: str):
    f = BOX_FRAME / size
    rows = []
    for lab, x, y, w, h in boxes:
        if domain == "nih":
            lab = _NIH_BOX_NAME.get(lab, lab)
        rows.append((image_id, lab, round(x * f, 2), round(y * f, 2), round(w * f, 2), round(h * f, 2)))
    return rows


def _write_tables(root: Path, frame, boxes: dict[int, list[Box]], domain: str, size: int):
    import pandas as pd

    box_rows = []
    if domain == "nih":
        table = frame[NIH_COLUMNS[:7]].copy()
        spacing = round(0.143 * BOX_FRAME / size, 3)
        table["OriginalImage[Width"] = size
        table["Height]"] = size
        table["OriginalImagePixelSpacing[x"] = spacing
        table["y]"] = spacing
        table.to_csv(root / "Data_Entry_2017.csv", index=False)
        for i, name in enumerate(frame["Image Index"]):
            box_rows += _box_rows(name, boxes[i], size, domain)
        pd.DataFrame(box_rows, columns=BOX_COLUMNS).to_csv(root / "BBox_List_2017.csv", index=False)
    else:
        for split in ("train", "valid"):
            part = frame[frame["_split"] == split]
            part[CHEXPERT_COLUMNS].to_csv(root / f"{split}.csv", index=False)
        for i, path in enumerate(frame["Path"]):
            box_rows += _box_rows(path, boxes[i], size, domain)
        pd.DataFrame(box_rows, columns=BOX_COLUMNS).to_csv(root / "phantom_boxes.csv", index=False)


__all__ = ["generate", "render", "sample_table", "row_labels", "GENERATOR_VERSION", "DOMAINS",
           "NIH_COLUMNS", "CHEXPERT_COLUMNS", "BOX_COLUMNS"]
