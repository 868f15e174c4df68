"""Test-time augmentation: a model's sigmoid outputs averaged over several views of each input.

- ``flip``: the image and its left-right mirror (2 views).
- ``tencrop``: CheXNet's ten-crop (Rajpurkar et al. 2017): the input enlarged by 256/224, then the four
  corner crops, the centre crop and their mirrors at the model's input size (torchvision's ``ten_crop``).

Probabilities (not logits) are averaged, as CheXNet does. A chest film is not left-right symmetric
(the heart is on the left): mirrored views ask the model about anatomy it may not have seen.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import ten_crop

from ..errors import ConfigError

TTA_MODES = ("none", "flip", "tencrop")
VIEWS = {"none": 1, "flip": 2, "tencrop": 10}


def check_tta(mode: str | None) -> str:
    mode = (mode or "none").strip().lower()
    if mode not in TTA_MODES:
        raise ConfigError(f"Test-time augmentation must be one of {', '.join(TTA_MODES)}, not {mode!r}.")
    return mode


def tta_views(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The views of a normalised batch (B, C, S, S) for ``mode``."""
    mode = check_tta(mode)
    if mode == "none":
        return [x]
    if mode == "flip":
        return [x, torch.flip(x, dims=[-1])]
    s = x.shape[-1]
    big = int(round(s * 256 / 224))
    up = F.interpolate(x, size=(big, big), mode="bilinear", align_corners=False)
    return list(ten_crop(up, [s, s]))


@torch.no_grad()
def tta_sigmoid(model, x: torch.Tensor, mode: str) -> torch.Tensor:
    """Mean sigmoid output of ``model`` over the views of ``x`` (B, L)."""
    views = tta_views(x, mode)
    return torch.stack([torch.sigmoid(model(v).float()) for v in views]).mean(0)
