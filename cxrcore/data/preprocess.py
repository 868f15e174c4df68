"""Preprocessing shared by training and inference, recorded in the checkpoint card.

An image becomes a square uint8 array of ``size`` pixels (aspect kept: letterbox ``pad`` or
center ``crop``), which is what the cache stores; ``normalize`` turns a uint8 batch into the
network's input. Training reads the cache, inference calls :meth:`Preprocess.square` on the
upload: the same function either way.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_unit(batch: torch.Tensor) -> torch.Tensor:
    """uint8 (B, S, S) or (B, 1, S, S) -> float (B, 1, S, S) in [0, 1]."""
    if batch.ndim == 3:
        batch = batch[:, None]
    return batch.float() / 255.0


@dataclass(frozen=True)
class Geometry:
    """Where the resized image sits inside the square input."""

    scale: float
    top: int
    left: int
    height: int  # resized image height inside the square
    width: int


@dataclass(frozen=True)
class Preprocess:
    size: int = 160
    fit: str = "pad"         # pad (letterbox, keeps the whole image) | crop (center crop)
    norm: str = "imagenet"   # imagenet (mean/std) | xrv (torchxrayvision's [-1024, 1024]) | stats (mean/std below)
    channels: int = 3
    mean: tuple | None = None  # norm "stats": per-channel mean and sd of the [0, 1] input (one value: all channels)
    std: tuple | None = None
    stats_from: str | None = None  # norm "stats": "model" (its pretrained config) or "dataset" (the training split)

    def __post_init__(self):
        if self.fit not in ("pad", "crop"):
            raise ConfigError(f"Preprocess fit must be 'pad' or 'crop', not {self.fit!r}.")
        if self.norm not in ("imagenet", "xrv", "stats"):
            raise ConfigError(f"Preprocess norm must be 'imagenet', 'xrv' or 'stats', not {self.norm!r}.")
        if self.norm == "stats":
            if not self.mean or not self.std or len(self.mean) != len(self.std) or len(self.mean) not in (1, 3):
                raise ConfigError("Preprocess norm 'stats' needs mean and std of 1 or 3 values each.")
            if min(self.std) <= 0:
                raise ConfigError(f"Preprocess std must be positive, not {self.std}.")
            object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
            object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if not 32 <= self.size <= 2048:
            raise ConfigError(f"Image size {self.size} is out of range 32..2048.")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, not {self.channels}.")

    def to_dict(self) -> dict:
        """The card's ``preprocess``: mean / std / stats_from only when set (norm "stats")."""
        return {k: v for k, v in asdict(self).items()
                if not (k in ("mean", "std", "stats_from") and v is None)}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(**{k: d[k] for k in ("size", "fit", "norm", "channels", "mean", "std", "stats_from") if k in d})

    def key(self) -> str:
        return f"{self.size}-{self.fit}"

    def geometry(self, height: int, width: int) -> Geometry:
        s = self.size
        scale = (s / max(height, width)) if self.fit == "pad" else (s / min(height, width))
        nh, nw = max(1, round(height * scale)), max(1, round(width * scale))
        return Geometry(scale, (s - nh) // 2, (s - nw) // 2, nh, nw)

    def square(self, pixels: np.ndarray) -> np.ndarray:
        """A 2-D image (uint8, or float in [0, 1]) -> uint8 (size, size)."""
        if pixels.dtype != np.uint8:
            pixels = (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        h, w = pixels.shape
        g = self.geometry(h, w)
        resized = np.asarray(Image.fromarray(pixels).resize((g.width, g.height), Image.BILINEAR))
        out = np.zeros((self.size, self.size), dtype=np.uint8)
        # pad: the image sits inside the square; crop: the square sits inside the image.
        t, l = g.top, g.left
        src = resized[max(0, -t): max(0, -t) + self.size, max(0, -l): max(0, -l) + self.size]
        out[max(0, t): max(0, t) + src.shape[0], max(0, l): max(0, l) + src.shape[1]] = src
        return out

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (B, S, S) or (B, 1, S, S) -> float (B, C, S, S)."""
        return self.standardize(to_unit(batch))

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """Gray float in [0, 1] (B, 1, S, S) -> the network's input (B, C, S, S).

        Training augments the one-channel image before this step (three times less work than
        augmenting the three-channel input)."""
        if self.norm == "xrv":
            x = x * 2048.0 - 1024.0
            return x.expand(-1, self.channels, -1, -1)
        if self.norm == "stats":
            k = self.channels if len(self.mean) == self.channels else 1
            mean = torch.tensor(self.mean[:k], device=x.device).view(1, k, 1, 1)
            std = torch.tensor(self.std[:k], device=x.device).view(1, k, 1, 1)
            return (x.expand(-1, self.channels, -1, -1) - mean) / std
        if self.channels == 1:
            return (x - 0.5) / 0.25
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        return (x.expand(-1, 3, -1, -1) - mean) / std

    def unsquare(self, grid: np.ndarray, height: int, width: int) -> np.ndarray:
        """Map a (h, w) map over the square input back onto the original image frame.

        Returns an array of the resized image's shape inside the square (aspect of the original).
        """
        g = self.geometry(height, width)
        up = np.asarray(
            torch.nn.functional.interpolate(
                torch.as_tensor(grid, dtype=torch.float32)[None, None], size=(self.size, self.size),
                mode="bilinear", align_corners=False,
            )[0, 0]
        )
        if self.fit == "pad":
            return up[g.top: g.top + g.height, g.left: g.left + g.width]
        # crop: the square covers only the middle of the image; pad the rest with zeros
        out = np.zeros((g.height, g.width), dtype=np.float32)
        out[-g.top: -g.top + self.size, -g.left: -g.left + self.size] = up
        return out
