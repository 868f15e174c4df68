"""Is a heatmap faithful to the model? ROAD and deletion / insertion curves for one label's map.

A heatmap can sit on the right region (it scores well against boxes) and still not be what the model
uses. These scores perturb the model's own input, in the order the heatmap ranks the pixels, and watch
the label's probability:

- **ROAD** (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for Attribution Methods",
  pytorch-grad-cam's :mod:`pytorch_grad_cam.metrics.road`). Pixels are *removed and debiased*: each
  removed pixel is filled by noisy linear imputation from its neighbours (so the hole's shape leaks little
  information to the model). At each percentile q of ``ROAD_PERCENTILES`` (10, 20 ... 90):

  * **MoRF** (most relevant first) removes the (100 - q) % pixels the map ranks highest; its score is the
    mean, over q, of p(after) - p(before). A faithful map makes p fall: *lower (more negative) is better*.
  * **LeRF** (least relevant first) removes the (100 - q) % pixels the map ranks lowest, keeping its top
    q %; the same mean change. A faithful map keeps p: *higher (closer to 0) is better*.
  * **combined** = (LeRF - MoRF) / 2, pytorch-grad-cam's ``ROADCombined``: *higher is more faithful*; 0 is
    what a map unrelated to the model scores on average.

  The masks, the imputer and the metric objects are pytorch-grad-cam's (``RemoveMostRelevantFirst`` /
  ``RemoveLeastRelevantFirst`` / ``NoisyLinearImputer`` inside ``PerturbationConfidenceMetric``, exactly as
  its ``ROADMostRelevantFirst`` / ``ROADLeastRelevantFirst`` build them). Two things differ and are said:
  the imputer's noise comes from a seeded generator (the same map gives the same score; the library draws
  from torch's global generator), and the map is replaced by its rank, ties broken at random (seeded),
  before the library cuts it at a percentile: a Grad-CAM map is 0 over much of the image after its ReLU,
  and the library's ``cam < percentile`` cut would otherwise remove all tied pixels at once (a "remove 20 %"
  step that removes 60 %). ROAD only uses the map's order, so the rank changes nothing else.

- **Deletion / insertion** (Petsiuk et al. 2018, RISE). Deletion replaces the most relevant pixels, a
  growing share f from 0 to 1, by the normalisation's mean (0 in the model's input space: a flat mid-grey);
  insertion starts from a heavily blurred copy of the image and puts back the most relevant pixels first.
  The curves are p against f; their areas (trapezoid over f in [0, 1]) are the scores: *deletion AUC lower
  is better, insertion AUC higher is better*. pytorch-grad-cam's ``RemoveMostRelevantFirst`` /
  ``RemoveLeastRelevantFirst`` cut the masks; only the fill (mean / blurred canvas) is ours.

The score followed is the label's own **sigmoid probability** (``SigmoidOutputTarget``): these models are
multi-label with one sigmoid per label, so pytorch-grad-cam's ``ClassifierOutputSoftmaxTarget`` (a softmax
across labels) would measure something the model does not output. For a two-stage model it is the label's
raw sigmoid, before the gate scales it.

Everything happens in the model's input space (the checkpoint card's preprocessing: size, padding,
normalisation, 1 or 3 channels); the heatmap is the one the app shows (the feature-grid map, bilinearly
upsampled over the square input).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError

ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
CURVE_STEPS = 20
TARGET_NOTE = "the label's sigmoid probability (multi-label outputs; not a softmax over labels)"

HOW_TO_READ = ("ROAD combined: higher = more faithful (0 ≈ a map unrelated to the model). ROAD MoRF: the mean change "
               "in p when the map's most relevant pixels are removed (more negative = better); LeRF: when its least "
               "relevant are removed (closer to 0 = better). Deletion AUC: lower = better; insertion AUC: higher = better.")


class SigmoidOutputTarget:
    """A pytorch-grad-cam target: the sigmoid of one label's logit (multi-label models)."""

    def __init__(self, category: int):
        self.category = int(category)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(model_output[..., self.category])


class _SeededImputer:
    """pytorch-grad-cam's NoisyLinearImputer with its noise drawn from a seeded generator."""

    def __init__(self, generator: torch.Generator, noise: float = 0.01):
        from pytorch_grad_cam.metrics.road import NoisyLinearImputer, neighbors_weights

        self._lib = NoisyLinearImputer
        self._weights = neighbors_weights
        self.noise = noise
        self.generator = generator

    def __call__(self, img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from scipy.sparse import csc_matrix
        from scipy.sparse.linalg import spsolve

        flat = img.reshape(img.shape[0], -1)
        todo = np.flatnonzero(mask.reshape(-1).numpy() == 0)
        if todo.size == 0:
            return img.clone()
        a, b = self._lib.setup_sparse_system(mask.numpy(), img.numpy(), self._weights)
        res = torch.as_tensor(spsolve(csc_matrix(a), b), dtype=torch.float).reshape(todo.size, -1)
        out = flat.clone()
        out[:, todo] = res.t() + self.noise * torch.randn(res.t().shape, generator=self.generator)
        return out.reshape_as(img)


class _Fill:
    """An 'imputer' for pytorch-grad-cam's Remove*RelevantFirst: removed pixels take ``canvas``'s values."""

    def __init__(self, canvas: torch.Tensor):
        self.canvas = canvas

    def __call__(self, img: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        keep = keep.to(img.dtype)[None]
        return img * keep + self.canvas * (1 - keep)


def rank_map(cam: np.ndarray, seed: int = 0) -> np.ndarray:
    """The map's pixels replaced by their rank in [0, 1] (ties broken at random with ``seed``): same order,
    every value distinct, so a percentile cut removes exactly that share of the pixels."""
    flat = np.asarray(cam, dtype=np.float64).ravel()
    tie = np.random.default_rng(seed).random(flat.size)
    order = np.lexsort((tie, flat))              # ascending by value, ties by the random key
    rank = np.empty(flat.size, dtype=np.float32)
    rank[order] = np.arange(flat.size, dtype=np.float32) / max(1, flat.size - 1)
    return rank.reshape(np.shape(cam))


def to_input_size(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A feature-grid map bilinearly upsampled to the input (as the app draws it); unchanged when it fits."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape == tuple(size):
        return cam
    t = torch.nn.functional.interpolate(torch.from_numpy(cam)[None, None], size=tuple(size), mode="bilinear",
                                        align_corners=False)
    return t[0, 0].numpy()


def blurred(x: torch.Tensor) -> torch.Tensor:
    """Insertion's starting canvas: a heavy Gaussian blur of the input (sigma = 1/16 of its side)."""
    from torchvision.transforms.functional import gaussian_blur

    side = int(min(x.shape[-2:]))
    sigma = max(1.0, side / 16)
    k = min(int(4 * sigma) | 1, side if side % 2 else side - 1)   # odd, and no wider than the image
    return gaussian_blur(x, kernel_size=[k, k], sigma=[sigma, sigma])


def _auc(f: np.ndarray, p: np.ndarray) -> float:
    return float(np.trapezoid(p, f))


@dataclass
class Faithfulness:
    """ROAD and deletion / insertion of one heatmap for one label (see the module's docstring)."""

    label: str
    method: str
    prob: float                       # the label's sigmoid p on the unperturbed input
    road_morf: float                  # mean p change, most relevant removed first (lower = better)
    road_lerf: float                  # mean p change, least relevant removed first (higher = better)
    road_combined: float              # (LeRF - MoRF) / 2 (higher = more faithful)
    deletion_auc: float               # lower = better
    insertion_auc: float              # higher = better
    percentiles: list[int] = field(default_factory=list)
    road_removed: list[float] = field(default_factory=list)     # share of pixels removed at each percentile
    road_morf_p: list[float] = field(default_factory=list)      # p after removing the most relevant share
    road_lerf_p: list[float] = field(default_factory=list)      # p after removing the least relevant share
    fractions: list[float] = field(default_factory=list)        # 0 ... 1
    deletion_p: list[float] = field(default_factory=list)
    insertion_p: list[float] = field(default_factory=list)
    target: str = TARGET_NOTE
    forward_passes: int = 0
    seconds: float = 0.0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def scores(self) -> dict:
        return {k: getattr(self, k) for k in ("road_morf", "road_lerf", "road_combined", "deletion_auc",
                                              "insertion_auc")}


@torch.no_grad()
def _probs(model: nn.Module, batch: torch.Tensor, target, batch_size: int) -> np.ndarray:
    out = []
    for k in range(0, len(batch), batch_size):
        logits = model(batch[k:k + batch_size])
        out.append(target(logits).float().cpu().numpy().reshape(-1))
    return np.concatenate(out)


def faithfulness(model: nn.Module, x: torch.Tensor, label_index: int, cam: np.ndarray, *, label: str = "",
                 method: str = "", percentiles=ROAD_PERCENTILES, steps: int = CURVE_STEPS, seed: int = 0,
                 batch_size: int = 16) -> Faithfulness:
    """ROAD (MoRF, LeRF, combined) and deletion / insertion curves of ``cam`` for output ``label_index``.

    ``x``: one preprocessed input (1, C, S, S) as the model takes it (any C, 1 for torchxrayvision);
    ``cam``: the heatmap over that input, at feature-grid or input resolution (upsampled bilinearly).
    Costs 1 + 2 * len(percentiles) + 2 * (steps + 1) forward passes and 2 * len(percentiles) sparse solves.
    """
    from pytorch_grad_cam.metrics.perturbation_confidence import (PerturbationConfidenceMetric,
                                                                  RemoveLeastRelevantFirst, RemoveMostRelevantFirst)

    t0 = time.perf_counter()
    if x.ndim != 4 or x.shape[0] != 1:
        raise ConfigError(f"Faithfulness scores one image at a time: an input of shape (1, C, H, W), not {tuple(x.shape)}.")
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2 or cam.size == 0 or not np.isfinite(cam).all():
        raise ConfigError(f"The heatmap must be a finite 2-D map, not an array of shape {cam.shape}.")
    percentiles = [int(q) for q in percentiles]
    if not percentiles or any(not 0 < q < 100 for q in percentiles):
        raise ConfigError(f"ROAD percentiles must lie strictly between 0 and 100, not {percentiles}.")
    if steps < 2:
        raise ConfigError(f"A deletion / insertion curve needs at least 2 steps, not {steps}.")
    was_training = model.training
    model.eval()
    try:
        device = x.device
        x = x.detach()
        target = SigmoidOutputTarget(label_index)
        ranked = rank_map(to_input_size(cam, tuple(x.shape[-2:])), seed)
        cams = ranked[None]
        p0 = float(_probs(model, x, target, batch_size)[0])
        passes = 1

        # ROAD: pytorch-grad-cam's metric objects (as ROADMostRelevantFirst / ROADLeastRelevantFirst build
        # them), with the seeded imputer; p before is computed once, not once per percentile.
        gen = torch.Generator().manual_seed(int(seed))
        morf, lerf = [], []
        for q in percentiles:
            for removal, out in ((RemoveMostRelevantFirst(q, _SeededImputer(gen)), morf),
                                 (RemoveLeastRelevantFirst(q, _SeededImputer(gen)), lerf)):
                metric = PerturbationConfidenceMetric(removal)
                out.append(float(metric(x, cams, [target], model, return_diff=False)[0]))
                passes += 1
        morf_p, lerf_p = np.array(morf), np.array(lerf)

        # deletion / insertion: pytorch-grad-cam's masks, removed pixels filled with the mean / blurred image
        fractions = np.linspace(0.0, 1.0, steps + 1)
        mean_canvas, blur_canvas = torch.zeros_like(x[0]).cpu(), blurred(x)[0].cpu()
        xc, mask = x[0].cpu(), torch.from_numpy(ranked)
        deleted, inserted = [], []
        for f in fractions:
            if f <= 0:
                deleted.append(xc)
                inserted.append(blur_canvas)
            elif f >= 1:
                deleted.append(mean_canvas)
                inserted.append(xc)
            else:
                deleted.append(RemoveMostRelevantFirst(100 * (1 - f), _Fill(mean_canvas))(xc, mask))
                inserted.append(RemoveLeastRelevantFirst(100 * f, _Fill(blur_canvas))(xc, mask))
        del_p = _probs(model, torch.stack(deleted).to(device), target, batch_size)
        ins_p = _probs(model, torch.stack(inserted).to(device), target, batch_size)
        passes += 2 * len(fractions)
    finally:
        model.train(was_training)
    road_morf = float(np.mean(morf_p - p0))
    road_lerf = float(np.mean(lerf_p - p0))
    return Faithfulness(
        label=label, method=method, prob=p0, road_morf=road_morf, road_lerf=road_lerf,
        road_combined=(road_lerf - road_morf) / 2, deletion_auc=_auc(fractions, del_p),
        insertion_auc=_auc(fractions, ins_p), percentiles=percentiles,
        road_removed=[round(1 - q / 100, 4) for q in percentiles], road_morf_p=morf_p.tolist(),
        road_lerf_p=lerf_p.tolist(), fractions=fractions.round(4).tolist(), deletion_p=del_p.tolist(),
        insertion_p=ins_p.tolist(), forward_passes=passes, seconds=time.perf_counter() - t0, seed=int(seed))


def summarize(results: list[Faithfulness]) -> dict:
    """Means over images of the five scores, and n."""
    if not results:
        return {"n": 0}
    out = {"n": len(results)}
    for k in ("road_morf", "road_lerf", "road_combined", "deletion_auc", "insertion_auc"):
        out[k] = float(np.mean([getattr(r, k) for r in results]))
    out["seconds_per_image"] = float(np.mean([r.seconds for r in results]))
    return out


def input_and_cam(predictor, image, label: str, method: str = "GradCAM") -> tuple[torch.Tensor, np.ndarray, int]:
    """The model's input for ``image`` (the card's preprocessing) and ``label``'s heatmap over it at the
    feature grid, exactly as the app computes it: GradCAM through the single-pass path where the model has one
    (= pytorch-grad-cam's GradCAM for a GAP + linear head), every other method through pytorch-grad-cam."""
    from ..data.imageio import LoadedImage, read_image
    from ..errors import CheckpointError
    from .cam import CAM_METHODS, forward_with_cams, gradcam_loop

    if label not in predictor.labels:
        raise CheckpointError(f"{predictor.name} has no label {label!r}; its labels are {', '.join(predictor.labels)}.")
    if method not in CAM_METHODS:
        raise ConfigError(f"Unknown CAM method {method!r}; use one of {', '.join(CAM_METHODS)}.")
    loaded = image if isinstance(image, LoadedImage) else read_image(image)
    j = predictor.labels.index(label)
    x = predictor.prep.normalize(torch.from_numpy(predictor.prep.square(loaded.pixels))[None].to(predictor.device))
    if method == "GradCAM" and predictor.fast_cam:
        _, cams = forward_with_cams(predictor.model, x)
        return x, cams[0, j], j
    with torch.enable_grad():
        _, cams = gradcam_loop(predictor.model, x, [j], method)
    return x, cams[0, 0], j


def predictor_faithfulness(predictor, image, label: str, method: str = "GradCAM", seed: int = 0,
                           percentiles=ROAD_PERCENTILES, steps: int = CURVE_STEPS) -> Faithfulness:
    """:func:`faithfulness` of the heatmap a :class:`~cxrcore.predictor.Predictor` shows for ``label``."""
    t0 = time.perf_counter()
    x, cam, j = input_and_cam(predictor, image, label, method)
    out = faithfulness(predictor.model, x, j, cam, label=label, method=method, seed=seed, percentiles=percentiles,
                       steps=steps)
    out.seconds = time.perf_counter() - t0
    return out
