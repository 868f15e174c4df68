"""Registration of a prior film onto the current one (SimpleITK), and what is shown from it.

:func:`register` aligns the prior to the current film in three steps, each on SimpleITK's multi-resolution
registration with Mattes mutual information (robust to the two films' different exposure): a similarity transform
(rotation, isotropic scale, shift: the patient stood differently), an affine refinement (a different projection or
inspiration stretches the chest unevenly), and a smooth B-spline step on a coarse grid (the diaphragm and heart
border move with breathing). Each step is kept only when it raises the normalised cross-correlation (NCC) of the two
films over the current film's lung fields (:func:`lung_fields`); the NCC before and after is the registration's
quality. A very low NCC after (:data:`NCC_FAILED`), or one that registration did not raise, gives a warning: the
films may not show the same chest in the same view, and what is compared after them is unreliable. A low one
(:data:`NCC_LOW`) gives a caution only: on phantom pairs a large real change (a new effusion, opacities) lowered the
NCC of well-aligned films below 0.5 as often as misalignment did.

Physical coordinates are the current film's pixels (index units); the prior's pixel spacing is set so that its
width spans the current film's width, and the similarity step's scale takes up the rest. The transform maps a
point of the current film to the prior (SimpleITK's fixed-to-moving convention): :meth:`Registration.to_prior`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

WORK_SIZE = 256            # registration runs on films shrunk to about this many pixels on the long side
NCC_FAILED = 0.25          # NCC over the lung fields below this after registration (or not raised by it): a warning
NCC_LOW = 0.5              # below this: a caution (a large real change lowers the NCC as misalignment does)
# Each step is kept only when it raises the NCC by at least this much (a deformable step that barely helps is
# more likely to bend a real change, e.g. a growing effusion, away than to correct a pose).
KEEP_GAIN = {"affine": 0.002, "deformable": 0.005}
BSPLINE_MESH = 4           # control-point grid of the deformable step (mesh cells per side)


def _sitk():
    try:
        import SimpleITK as sitk
    except ImportError as exc:  # pragma: no cover - a requirement; said plainly where it is missing
        raise RuntimeError("Comparing with a prior study needs SimpleITK: pip install SimpleITK") from exc
    return sitk


def _unit(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img, dtype=np.float32)
    lo, hi = np.percentile(a, [0.5, 99.5])
    return np.clip((a - lo) / (hi - lo), 0, 1).astype(np.float32) if hi > lo else np.zeros_like(a)


def lung_fields(img: np.ndarray) -> np.ndarray:
    """A boolean mask of the lung fields of a frontal chest film (dark regions inside the body, not touching the
    film's edge; the two largest), found by thresholding (Otsu) after smoothing. Where that finds too little or too
    much (under 4 % or over 60 % of the film) the central box the lungs usually fill (15-85 % across, 12-80 %
    down) stands in."""
    from skimage import filters, measure, morphology, segmentation, transform

    a = _unit(img)
    h, w = a.shape
    scale = min(1.0, 256 / max(h, w))
    small = transform.resize(a, (max(8, round(h * scale)), max(8, round(w * scale))), anti_aliasing=True) \
        if scale < 1 else a
    smooth = filters.gaussian(small, 2)
    dark = smooth < filters.threshold_otsu(smooth)
    dark = segmentation.clear_border(morphology.opening(dark, morphology.disk(2)))
    lab = measure.label(dark)
    regions = sorted(measure.regionprops(lab), key=lambda r: -r.area)[:2]
    mask = np.isin(lab, [r.label for r in regions]) if regions else np.zeros_like(dark)
    share = mask.mean()
    if not 0.04 <= share <= 0.6:
        mask = np.zeros_like(dark)
        sh, sw = mask.shape
        mask[int(0.12 * sh):int(0.8 * sh), int(0.15 * sw):int(0.85 * sw)] = True
    if mask.shape != (h, w):
        mask = transform.resize(mask.astype(np.float32), (h, w), order=0) > 0.5
    return mask


NCC_SMOOTH = 0.006   # films are smoothed by this share of their width (Gaussian sigma) before the NCC: film noise
                     # (a portable film's grain) differs between any two films and is not misalignment


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Normalised cross-correlation of ``a`` and ``b`` (smoothed, :data:`NCC_SMOOTH`) over ``mask`` (-1..1; 0 where
    either is flat there)."""
    from scipy.ndimage import gaussian_filter

    sigma = NCC_SMOOTH * a.shape[1]
    a, b = gaussian_filter(a.astype(np.float32), sigma), gaussian_filter(b.astype(np.float32), sigma)
    x, y = a[mask].astype(np.float64), b[mask].astype(np.float64)
    if x.size < 2:
        return 0.0
    x, y = x - x.mean(), y - y.mean()
    d = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / d) if d > 0 else 0.0


@dataclass
class Registration:
    """The prior aligned to the current film: the transform, the warped prior, its quality."""
    transform: object                  # SimpleITK transform, current-film pixels -> prior physical points
    prior_spacing: float               # the prior's pixel spacing in current-film pixels
    current_shape: tuple[int, int]
    prior_shape: tuple[int, int]
    warped: np.ndarray                 # the prior in the current film's frame, 0..1 (0 outside the prior)
    inside: np.ndarray                 # where the warped prior has data
    lungs: np.ndarray                  # the current film's lung fields (the NCC's mask)
    ncc_before: float
    ncc_after: float
    steps: dict = field(default_factory=dict)   # step -> {"ncc", "kept"}
    params: dict = field(default_factory=dict)  # the similarity step: the current film's rotation_deg, scale and
                                                # shift_px (about) against the prior
    seconds: float = 0.0
    warning: str | None = None         # registration failed: what is compared after it is unreliable
    caution: str | None = None         # aligned, but the lung fields still differ much (a real change, or not)

    @property
    def ok(self) -> bool:
        return self.warning is None

    def to_prior(self, points: np.ndarray) -> np.ndarray:
        """Points (x, y) in current-film pixels -> where registration puts them in the prior, in prior pixels."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        out = np.array([self.transform.TransformPoint((float(x), float(y))) for x, y in pts])
        s = self.prior_spacing
        return (out - 0.5 * (s - 1.0)) / s

    def warp(self, image: np.ndarray, out_shape: tuple[int, int] | None = None, order: int = 1) -> np.ndarray:
        """Another image over the prior's frame (a heatmap of the prior: the prior's size or any size covering it) in
        the current film's frame, at ``out_shape`` (default the current film's size) over the whole current film."""
        sitk = _sitk()
        a = np.asarray(image, dtype=np.float32)
        ph, pw = self.prior_shape
        mov = sitk.GetImageFromArray(a)
        sx, sy = self.prior_spacing * pw / a.shape[1], self.prior_spacing * ph / a.shape[0]
        mov.SetSpacing((sx, sy))
        mov.SetOrigin((0.5 * (sx - 1.0), 0.5 * (sy - 1.0)))   # pixel centres over the same extent
        ch, cw = self.current_shape
        oh, ow = out_shape or (ch, cw)
        ref = sitk.Image(ow, oh, sitk.sitkFloat32)
        ref.SetSpacing((cw / ow, ch / oh))
        ref.SetOrigin((0.5 * (cw / ow - 1.0), 0.5 * (ch / oh - 1.0)))
        interp = sitk.sitkLinear if order else sitk.sitkNearestNeighbor
        return sitk.GetArrayFromImage(sitk.Resample(mov, ref, self.transform, interp, 0.0)).astype(np.float32)

    def to_dict(self) -> dict:
        return {"method": "SimpleITK: similarity, affine, B-spline (Mattes mutual information)",
                "ncc_before": round(self.ncc_before, 4), "ncc_after": round(self.ncc_after, 4),
                "ok": self.ok, "warning": self.warning, "caution": self.caution,
                "steps": {k: {"ncc": round(v["ncc"], 4), "kept": v["kept"]} for k, v in self.steps.items()},
                **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.params.items()},
                "seconds": round(self.seconds, 3)}


def _image(sitk, a: np.ndarray, spacing: float):
    img = sitk.GetImageFromArray(np.ascontiguousarray(a, dtype=np.float32))
    img.SetSpacing((spacing, spacing))
    return img


def _shrunk(sitk, img):
    f = max(1, int(np.ceil(max(img.GetSize()) / WORK_SIZE)))
    return sitk.BinShrink(img, [f, f]) if f > 1 else img


def _method(sitk, shrink: list[int], smooth: list[float], seed: int):
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    r.SetMetricSamplingStrategy(r.RANDOM)
    r.SetMetricSamplingPercentage(0.25, seed)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetShrinkFactorsPerLevel(shrink)
    r.SetSmoothingSigmasPerLevel(smooth)
    r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return r


def register(prior: np.ndarray, current: np.ndarray, deformable: bool = True, seed: int = 0) -> Registration:
    """Align ``prior`` to ``current`` (2-D grey films of any sizes); deterministic for a ``seed``."""
    sitk = _sitk()
    t0 = time.perf_counter()
    cur, pri = _unit(current), _unit(prior)
    ch, cw = cur.shape
    ph, pw = pri.shape
    spacing = cw / pw
    fixed_full, moving_full = _image(sitk, cur, 1.0), _image(sitk, pri, spacing)
    moving_full.SetOrigin((0.5 * (spacing - 1.0),) * 2)  # the prior's pixel centres spread over the same width
    fixed, moving = _shrunk(sitk, fixed_full), _shrunk(sitk, moving_full)
    lungs = lung_fields(cur)
    ref = sitk.Image(cw, ch, sitk.sitkFloat32)

    def warped_by(tx):
        return sitk.GetArrayFromImage(sitk.Resample(moving_full, ref, tx, sitk.sitkLinear, 0.0))

    identity = sitk.TranslationTransform(2)
    before = ncc(cur, warped_by(identity), lungs)
    best_tx, best = identity, before
    steps: dict = {}
    params: dict = {}
    warning = None
    try:
        tried = []
        for start in (sitk.CenteredTransformInitializerFilter.GEOMETRY,   # the films' centres
                      sitk.CenteredTransformInitializerFilter.MOMENTS):   # their centres of mass (a shifted patient)
            init = sitk.CenteredTransformInitializer(fixed, moving, sitk.Similarity2DTransform(), start)
            r = _method(sitk, [4, 2, 1], [2.0, 1.0, 0.0], seed)
            r.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=150,
                                                       relaxationFactor=0.6)
            r.SetOptimizerScalesFromPhysicalShift()
            r.SetInitialTransform(init, inPlace=True)
            r.Execute(fixed, moving)
            tried.append((ncc(cur, warped_by(init), lungs), len(tried), init))
        score, _, sim = max(tried, key=lambda t: t[:2])
        steps["similarity"] = {"ncc": score, "kept": score > best}
        # the current film's pose against the prior (the transform maps the other way: current -> prior)
        params = {"rotation_deg": float(-np.degrees(sim.GetAngle())), "scale": float(1.0 / sim.GetScale()),
                  "shift_px": [round(-float(v), 2) for v in sim.GetTranslation()]}
        if score > best:
            best_tx, best = sim, score
        aff = sitk.AffineTransform(2)
        aff.SetCenter(sim.GetCenter())
        aff.SetMatrix(sim.GetMatrix())
        aff.SetTranslation(sim.GetTranslation())
        r = _method(sitk, [2, 1], [1.0, 0.0], seed)
        r.SetOptimizerAsRegularStepGradientDescent(learningRate=0.5, minStep=1e-4, numberOfIterations=100,
                                                   relaxationFactor=0.6)
        r.SetOptimizerScalesFromPhysicalShift()
        r.SetInitialTransform(aff, inPlace=True)
        r.Execute(fixed, moving)
        score = ncc(cur, warped_by(aff), lungs)
        kept = score > best + KEEP_GAIN["affine"]
        steps["affine"] = {"ncc": score, "kept": kept}
        if kept:
            best_tx, best = aff, score
        if deformable:
            base = best_tx
            bs = sitk.BSplineTransformInitializer(fixed, [BSPLINE_MESH, BSPLINE_MESH], order=3)
            r = _method(sitk, [2, 1], [1.0, 0.0], seed)
            r.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=40,
                                   maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=200)
            r.SetMovingInitialTransform(base)
            r.SetInitialTransform(bs, inPlace=True)
            r.Execute(fixed, moving)
            comp = sitk.CompositeTransform([base, bs])   # applied last-first: the B-spline, then the base
            score = ncc(cur, warped_by(comp), lungs)
            kept = score > best + KEEP_GAIN["deformable"]
            steps["deformable"] = {"ncc": score, "kept": kept}
            if kept:
                best_tx, best = comp, score
    except RuntimeError as exc:  # SimpleITK gives up (e.g. no overlap left): the best transform so far
        warning = f"Registration stopped early ({str(exc).strip().splitlines()[-1][:160]}); "
    warped = warped_by(best_tx).astype(np.float32)
    inside = sitk.GetArrayFromImage(sitk.Resample(moving_full * 0 + 1, ref, best_tx, sitk.sitkNearestNeighbor,
                                                  0.0)) > 0.5
    caution = None
    if best < NCC_FAILED or (best <= before + 0.02 and before < 0.9):
        warning = (warning or "") + (
            f"The films could not be aligned (NCC over the lung fields {before:.2f} before, {best:.2f} after: "
            f"below {NCC_FAILED}, or not raised by registration): they may not be the same patient, view or "
            "projection. The subtraction, change maps and change calls are unreliable.")
    elif best < NCC_LOW:
        caution = (f"The lung fields still differ much after registration (NCC {best:.2f}): a large real change "
                   "(an effusion, an opacity) lowers it as a poor alignment does. Check the checkerboard before "
                   "reading the subtraction.")
    return Registration(best_tx, spacing, (ch, cw), (ph, pw), warped, inside, lungs, before, best, steps, params,
                        time.perf_counter() - t0, warning or None, caution)


def matched_subtraction(current: np.ndarray, reg: Registration) -> np.ndarray:
    """Current minus the registered prior after matching the prior's grey levels to the current film's (a linear fit
    over the lung fields where both have data): signed, about -1..1; 0 where the prior has no data."""
    cur = _unit(current)
    m = reg.lungs & reg.inside
    if m.sum() < 10:
        m = reg.inside
    x, y = reg.warped[m].astype(np.float64), cur[m].astype(np.float64)
    a, b = (np.polyfit(x, y, 1) if x.size > 10 and x.std() > 0 else (1.0, 0.0))
    diff = cur - (a * reg.warped + b)
    diff[~reg.inside] = 0.0
    return diff.astype(np.float32)
