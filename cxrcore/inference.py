"""What inference does to a model's outputs, below the predictor and the evaluation that both use it.

- **Test-time augmentation**: a model's sigmoid outputs averaged over several views of each input.
  ``flip``: the image and its left-right mirror (2 views). ``tencrop``: CheXNet's ten-crop (Rajpurkar
  et al. 2017): the input enlarged by 256/224, then the four corner crops, the centre crop and their
  mirrors at the model's input size (torchvision's ``ten_crop``). Probabilities (not logits) are averaged,
  as CheXNet does. A chest film is not left-right symmetric (the heart is on the left): mirrored views ask
  the model about anatomy it may not have seen.
- **Temperature scaling**: each label's logit divided by its own temperature (fitted by
  :mod:`cxrcore.eval.calibration`).

torch is imported by the functions that need it, so the temperature functions stay light.
"""
from __future__ import annotations

import numpy as np
from scipy.special import expit, logit

from .errors import ConfigError

TTA_MODES = ("none", "flip", "tencrop")
VIEWS = {"none": 1, "flip": 2, "tencrop": 10}
EPS = 1e-7


# --------------------------------------------------------------------------- test-time augmentation

def check_tta(mode: str | None) -> str:
    mode = (mode or "none").strip().lower()
    if mode not in TTA_MODES:
        raise ConfigError(f"Test-time augmentation must be one of {', '.join(TTA_MODES)}, not {mode!r}.")
    return mode


def tta_views(x, mode: str) -> list:
    """The views of a normalised batch (B, C, S, S) for ``mode``."""
    import torch
    import torch.nn.functional as F
    from torchvision.transforms.functional import ten_crop

    mode = check_tta(mode)
    if mode == "none":
        return [x]
    if mode == "flip":
        return [x, torch.flip(x, dims=[-1])]
    s = x.shape[-1]
    big = int(round(s * 256 / 224))
    up = F.interpolate(x, size=(big, big), mode="bilinear", align_corners=False)
    return list(ten_crop(up, [s, s]))


def tta_sigmoid(model, x, mode: str):
    """Mean sigmoid output of ``model`` over the views of ``x`` (B, L), without gradients."""
    import torch

    with torch.no_grad():
        views = tta_views(x, mode)
        return torch.stack([torch.sigmoid(model(v).float()) for v in views]).mean(0)


# --------------------------------------------------------------------------- temperature scaling

def logits_from_probs(probs: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Logits of (cached) sigmoid probabilities, clipped away from 0 and 1."""
    return logit(np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps))


def apply_temperature(logits: np.ndarray, temperatures) -> np.ndarray:
    """Calibrated probabilities ``sigmoid(logits / T)``; ``temperatures`` is a scalar or (L,)."""
    return expit(np.asarray(logits, dtype=np.float64) / np.asarray(temperatures, dtype=np.float64))


EMBED_DIM = 32   # the width of the embedding a scored table keeps per image (cxrcore.score, drift monitoring)


def project_embedding(pooled: np.ndarray, dim: int = EMBED_DIM) -> np.ndarray:
    """The model's penultimate-layer features (N, C) -> (N, ``dim``) by one fixed Gaussian random projection (seeded
    by C alone: every table of every model with C features uses the same one), scaled by 1/sqrt(dim) so distances are
    kept on average (Johnson-Lindenstrauss). Small enough to keep per image in a scored table; distances, and so a
    kernel two-sample test on them (MMD, cxrcore.eval.drift), mean about what they meant on the full features."""
    pooled = np.asarray(pooled, dtype=np.float32)
    c = pooled.shape[1]
    matrix = np.random.default_rng(c).standard_normal((c, dim)).astype(np.float32) / np.float32(np.sqrt(dim))
    return pooled @ matrix
