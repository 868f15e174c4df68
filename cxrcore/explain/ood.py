"""A cheap guard that warns when an upload does not look like a frontal chest radiograph.

Only image statistics are used (no training statistics, no model features): the shipped models
were trained on procedural phantoms, so a feature-space distance to their training data would call
every real radiograph out-of-distribution. The checks, each with a threshold calibrated so that
none of a held-out half of real chest X-rays trips it (``fit_thresholds``, ``bench/ood.py``):

* colour saturation of the original upload (when it was RGB; needs the raw bytes),
* aspect ratio,
* contrast (standard deviation) and histogram entropy (constant / nearly constant images),
* pixel-to-pixel correlation (noise has none; radiographs are smooth at 128 px),
* near-white fraction (document scans: a white page with dark text),
* edge density (text lines, fine textures),
* left-right mirror correlation (a frontal chest is roughly symmetric; a lateral view or a random
  scene is not),
* a dark frame all the way round with a bright centred disc (a CT / MR slice).

It is a warning, not a classifier: it does not catch a grayscale photograph that happens to be
symmetric and smooth, an abdominal or skull radiograph, or a rotated chest X-ray, and a lateral
chest view is only caught when it is clearly asymmetric.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..data.imageio import LoadedImage, open_image, to_uint8

GRID = 128  # statistics are computed on a GRID x GRID resize (aspect ratio measured before)

# Limits. The six marked "fitted" were decided by ``fit_thresholds(k=1)`` on one half (112 images,
# split by patient) of the 258 real frontal radiographs of the development machine's shared data
# (NIH sample at 512 / 1024 px, the formats folder: PNG, JPEG, DICOM); on the other half (146) they
# raise no false alarm, and they catch 31 of 32 non-chest images (bench/ood.py; bench/RESULTS.md).
MAX_SATURATION = 0.12        # mean HSV saturation of the original RGB upload (design limit)
ASPECT_RANGE = (0.5, 2.0)    # width / height (design limit)
MIN_STD = 0.065              # fitted: intensity standard deviation
MIN_ENTROPY = 4.374          # fitted: bits, 64-bin histogram
MIN_NEIGHBOUR_CORR = 0.937   # fitted: correlation of horizontally adjacent pixels on the 128 grid
MAX_WHITE_FRACTION = 0.625   # fitted: share of pixels >= 0.9
MAX_EDGE_DENSITY = 0.109     # fitted: share of pixels with a gradient magnitude >= 0.1 (on 128 grid)
MIN_SYMMETRY = 0.338         # fitted: best mirror correlation (64 grid, left-right trend removed, shifts <= 1/8)
CT_BORDER_DARK = 0.9         # share of border pixels < 0.08 ...
CT_CENTRE_BRIGHT = 0.15      # ... the centre brighter than the border by this much ...
CT_ROTATION = 0.75           # ... and the image nearly unchanged by a 90 degree rotation (a disc)


@dataclass(frozen=True)
class Thresholds:
    """The guard's limits. The six fitted ones come from :func:`fit_thresholds` on real radiographs;
    saturation, aspect and the CT rule are design limits (see the module docstring)."""

    min_std: float = MIN_STD
    min_entropy: float = MIN_ENTROPY
    min_neighbour_corr: float = MIN_NEIGHBOUR_CORR
    max_white_fraction: float = MAX_WHITE_FRACTION
    max_edge_density: float = MAX_EDGE_DENSITY
    min_symmetry: float = MIN_SYMMETRY
    max_saturation: float = MAX_SATURATION
    aspect_range: tuple[float, float] = ASPECT_RANGE


# statistic -> (Thresholds field, "min" | "max"): the limits fitted from real radiographs
FITTED = {"std": ("min_std", "min"), "entropy": ("min_entropy", "min"),
          "neighbour_corr": ("min_neighbour_corr", "min"), "white_fraction": ("max_white_fraction", "max"),
          "edge_density": ("max_edge_density", "max"), "symmetry": ("min_symmetry", "min")}
DEFAULT = Thresholds()


def fit_thresholds(real_stats: list[dict], k: float = 1.0) -> Thresholds:
    """Limits from the statistics of real frontal chest radiographs: each fitted limit is the most
    extreme value seen, pushed outwards by ``k`` standard deviations of that statistic."""
    if not real_stats:
        raise ValueError("fit_thresholds needs the statistics of at least one real radiograph")
    fitted = {}
    for stat, (name, side) in FITTED.items():
        v = np.array([s[stat] for s in real_stats], dtype=np.float64)
        fitted[name] = float(v.min() - k * v.std()) if side == "min" else float(v.max() + k * v.std())
    return Thresholds(**fitted)


@dataclass
class OODResult:
    is_suspect: bool
    score: float                       # number of checks failed (0 = looks like a frontal CXR)
    reasons: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"is_suspect": self.is_suspect, "score": self.score, "reasons": list(self.reasons),
                "stats": {k: round(float(v), 4) for k, v in self.stats.items()}}


def saturation_from_bytes(data: bytes) -> float | None:
    """Mean HSV saturation (0..1) of an RGB PNG/JPEG upload; None for grayscale or non-PIL data, and for an
    image the reader refuses (:func:`~cxrcore.data.imageio.open_image`: its formats, its size limits checked
    on the header before any pixel is decoded; a DICOM whose preamble is also a TIFF gets no second decode)."""
    if data[128:132] == b"DICM":
        return None
    try:
        with open_image(data) as im:
            if im.mode not in ("RGB", "RGBA", "RGBX", "P", "CMYK", "YCbCr"):
                return None
            im.draft("RGB", (256, 256))  # JPEG: decode at reduced size
            im = im.convert("RGB")
            im.thumbnail((256, 256))
            hsv = np.asarray(im.convert("HSV"), dtype=np.float32)
        return float(hsv[..., 1].mean() / 255.0)
    except Exception:
        return None


def _grid(pixels: np.ndarray, n: int) -> np.ndarray:
    return np.asarray(Image.fromarray(to_uint8(pixels)).resize((n, n), Image.BOX), dtype=np.float32) / 255.0


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a.ravel() - a.mean()
    b = b.ravel() - b.mean()
    d = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / d) if d > 1e-12 else 0.0


def _mirror_symmetry(s: np.ndarray, max_shift: int = 8) -> float:
    """Best correlation of ``s`` (square) with its mirror image, after removing a left-right intensity
    trend, over horizontal shifts up to ``max_shift`` cells (patients are not always centred)."""
    n = s.shape[1]
    x = np.linspace(-1.0, 1.0, n, dtype=np.float32)
    d = s - np.outer(s @ x / float(x @ x), x)
    m = d[:, ::-1]
    return max(_corr(d[:, max(0, k):n + min(0, k)], m[:, max(0, -k):n + min(0, -k)])
               for k in range(-max_shift, max_shift + 1, 2))


def image_stats(pixels: np.ndarray, saturation: float | None = None) -> dict:
    """The statistics the guard uses, from a 2-D grayscale image in [0, 1]."""
    pixels = np.asarray(pixels, dtype=np.float32)
    h, w = pixels.shape
    g = _grid(pixels, GRID)
    hist, _ = np.histogram(g, bins=64, range=(0.0, 1.0))
    p = hist[hist > 0] / hist.sum()
    gy, gx = np.gradient(g)
    small = _grid(pixels, 32)
    s64 = _grid(pixels, 64)
    border = np.concatenate([small[0], small[-1], small[:, 0], small[:, -1]])
    centre = small[8:24, 8:24]
    stats = {
        "aspect": w / h,
        "mean": float(g.mean()),
        "std": float(g.std()),
        "entropy": max(0.0, float(-(p * np.log2(p)).sum())),
        "neighbour_corr": _corr(g[:, :-1], g[:, 1:]),
        "white_fraction": float((g >= 0.9).mean()),
        "edge_density": float((np.hypot(gx, gy) >= 0.1).mean()),
        "symmetry": _mirror_symmetry(s64),
        "rotation_corr": _corr(s64, np.rot90(s64)),
        "border_dark": float((border < 0.08).mean()),
        "centre_minus_border": float(centre.mean() - border.mean()),
    }
    if saturation is not None:
        stats["saturation"] = float(saturation)
    return stats


def check_stats(stats: dict, t: Thresholds = DEFAULT) -> list[str]:
    reasons = []
    sat = stats.get("saturation")
    if sat is not None and sat > t.max_saturation:
        reasons.append(f"colour image (mean saturation {sat:.2f}); radiographs are grayscale")
    if not t.aspect_range[0] <= stats["aspect"] <= t.aspect_range[1]:
        reasons.append(f"unusual aspect ratio {stats['aspect']:.2f} (width / height)")
    if stats["std"] < t.min_std:
        reasons.append(f"(almost) constant image (intensity std {stats['std']:.3f})")
        return reasons  # the structure checks below mean nothing on a flat image
    if stats["entropy"] < t.min_entropy:
        reasons.append(f"few grey levels (histogram entropy {stats['entropy']:.1f} bits), unlike a radiograph")
    if stats["neighbour_corr"] < t.min_neighbour_corr:
        reasons.append(f"noise-like: neighbouring pixels barely correlate ({stats['neighbour_corr']:.2f})")
    if stats["white_fraction"] > t.max_white_fraction:
        reasons.append(f"mostly white background ({stats['white_fraction']:.0%}), like a scanned document")
    if stats["edge_density"] > t.max_edge_density:
        reasons.append(f"dense fine edges ({stats['edge_density']:.0%} of pixels), like text or texture")
    if stats["symmetry"] < t.min_symmetry:
        reasons.append(f"not left-right symmetric (mirror correlation {stats['symmetry']:.2f}); "
                       f"a frontal chest view is")
    if (stats["border_dark"] >= CT_BORDER_DARK and stats["centre_minus_border"] >= CT_CENTRE_BRIGHT
            and stats["rotation_corr"] >= CT_ROTATION):
        reasons.append("bright object on a black frame all round, like a CT/MR cross-section")
    return reasons


def check_image(image: LoadedImage | np.ndarray, raw: bytes | None = None) -> OODResult:
    """Warn when ``image`` does not look like a frontal chest radiograph.

    ``raw``: the upload's bytes, used only to measure colour saturation of RGB PNG/JPEG files
    (``read_image`` converts them to grayscale).
    """
    pixels = image.pixels if isinstance(image, LoadedImage) else np.asarray(image, dtype=np.float32)
    sat = saturation_from_bytes(raw) if raw is not None else None
    stats = image_stats(pixels, sat)
    if isinstance(image, LoadedImage) and image.synthetic:
        # a marked phantom is a chest image by provenance (and not a radiograph: its sharper, noisier
        # texture trips the limits fitted on real films); the domain warning speaks for it instead
        return OODResult(False, 0.0, [], stats)
    reasons = check_stats(stats)
    return OODResult(bool(reasons), float(len(reasons)), reasons, stats)
