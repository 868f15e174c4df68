"""Augmentation on float batches after the uint8 cache (on the training device).

Per image, with probability ``p``: a random affine transform (rotation, translation, shear, scale)
and brightness / contrast jitter. All draws come from the epoch's ``torch.Generator`` (on the
CPU), so a resumed run sees the same augmented images.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from .config import AUGMENT_OPTIONS, check_augment_options, check_augment_values


@dataclass(frozen=True)
class Augment:
    p: float = AUGMENT_OPTIONS["p"][0]                    # probability an image is augmented at all
    degrees: float = AUGMENT_OPTIONS["degrees"][0]        # rotation, +/- degrees
    translate: float = AUGMENT_OPTIONS["translate"][0]    # +/- fraction of the image size
    scale: float = AUGMENT_OPTIONS["scale"][0]            # zoom in [1 - scale, 1 + scale]
    shear: float = AUGMENT_OPTIONS["shear"][0]            # +/- degrees
    brightness: float = AUGMENT_OPTIONS["brightness"][0]  # additive, +/- fraction of the intensity range
    contrast: float = AUGMENT_OPTIONS["contrast"][0]      # multiplicative around the image mean, 1 +/- contrast

    def __post_init__(self):
        check_augment_values(asdict(self))

    @classmethod
    def from_dict(cls, d: dict | None) -> "Augment":
        """ConfigError for an unknown option, a value that is not a number or one out of bounds."""
        return cls(**check_augment_options(d))

    def to_dict(self) -> dict:
        return asdict(self)

    def __call__(self, x: torch.Tensor, gen: torch.Generator, extra: torch.Tensor | None = None):
        """x: float (B, C, H, W) in [0, 1]; returns the augmented batch (same shape, clamped to [0, 1]).

        ``extra`` (B, K, h, w), e.g. box masks over the same square: warped with each image's own sampling grid
        (no intensity jitter); then ``(x, extra)`` is returned. The random draws are the same either way."""
        b = x.shape[0]
        u = torch.rand(b, 8, generator=gen)
        on = (u[:, 0] < self.p).to(x.device)
        if not bool(on.any()):
            return x if extra is None else (x, extra)
        sym = lambda col: (u[:, col] * 2 - 1)  # noqa: E731 - uniform in [-1, 1]
        ang = sym(1) * math.radians(self.degrees)
        shear = sym(2) * math.radians(self.shear)
        s = 1 + sym(3) * self.scale
        tx, ty = sym(4) * self.translate * 2, sym(5) * self.translate * 2  # affine_grid works in [-1, 1]
        # Inverse map (output -> input coordinates): rotation * shear, divided by the zoom.
        cos, sin, tan = torch.cos(ang), torch.sin(ang), torch.tan(shear)
        a, bb = cos / s, (cos * tan - sin) / s
        c, d = sin / s, (sin * tan + cos) / s
        theta = torch.stack([torch.stack([a, bb, tx], 1), torch.stack([c, d, ty], 1)], 1).to(x.device, x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        bright = (sym(6) * self.brightness).to(x.device, x.dtype)[:, None, None, None]
        contrast = (1 + sym(7) * self.contrast).to(x.device, x.dtype)[:, None, None, None]
        mean = warped.mean(dim=(1, 2, 3), keepdim=True)
        jittered = ((warped - mean) * contrast + mean + bright).clamp(0, 1)
        out = torch.where(on[:, None, None, None], jittered, x)
        if extra is None:
            return out
        grid_e = F.affine_grid(theta.to(extra.device), list(extra.shape), align_corners=False)
        moved = F.grid_sample(extra.float(), grid_e, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out, torch.where(on.to(extra.device)[:, None, None, None], moved, extra.float())


def random_affine(x: torch.Tensor, gen: torch.Generator, degrees=7.0, translate=0.06, scale=(0.92, 1.08)) -> torch.Tensor:
    """Affine only, always applied (kept for the cache benchmark's input pipeline)."""
    zoom = (scale[1] - scale[0]) / 2
    return Augment(p=1.0, degrees=degrees, translate=translate, scale=zoom, shear=0.0, brightness=0.0,
                   contrast=0.0)(x, gen)
