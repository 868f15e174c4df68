"""Monte-Carlo dropout (Gal & Ghahramani 2016), optionally with test-time augmentation.

N stochastic forward passes with dropout active and everything else in eval mode (BatchNorm uses
its running statistics, nothing is updated). The model's own dropout layers (``nn.Dropout`` and
kin, p > 0) are active; when it has none (regnetx_002's head dropout rate is 0), dropout with rate
``p`` is applied to the pooled features right before the classifier:
``forward_features -> pool -> dropout(p) -> classifier``. The spread of the N sigmoid outputs per
label is the uncertainty.

The model is shared (one per checkpoint for every session of the app, each a thread) and is not
changed: no module is switched to training mode and no global random state is touched. The masks
come from this call's own generator (seeded, on the CPU: the same masks on any device), drawn in
the order and with the arithmetic of ``F.dropout``; the model's own dropout layers are replaced by
such layers in a private view of the model (:func:`cxrcore.explain.cam.private_view`). So a seed
gives the same passes however many other calls run at the same time, and on the CPU the same
numbers as ``torch.manual_seed(seed)`` followed by the model's dropout in training mode.

Caveat: a model trained without dropout was never taught to be robust to it, so the variance
measures sensitivity of the head to feature dropout, a proxy for epistemic uncertainty, not a
calibrated error bar.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .cam import private_view

DEFAULT_P = 0.2
MAX_SAMPLES = 200
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


@dataclass
class MCResult:
    mean: np.ndarray      # (L,) mean probability over the passes
    var: np.ndarray       # (L,) variance of the probability
    std: np.ndarray       # (L,)
    samples: np.ndarray   # (N, L) every pass's probabilities
    p: float              # dropout rate added before the classifier (0 when the model's own dropout was used)
    tta: bool

    def to_dict(self, labels: list[str]) -> dict:
        return {"mean": {x: float(v) for x, v in zip(labels, self.mean)},
                "var": {x: float(v) for x, v in zip(labels, self.var)},
                "std": {x: float(v) for x, v in zip(labels, self.std)},
                "n": int(len(self.samples)), "dropout_p": self.p, "tta": self.tta}


def dropout_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, _DROPOUT) and getattr(m, "p", 0) > 0]


_ALPHA = 1.7580993408473766  # SELU's alpha * lambda: AlphaDropout's saturation value (ATen's)


def _batched(x: torch.Tensor, kind: type) -> bool:
    """Whether F.dropout1d / 3d would treat ``x`` as batched (otherwise they add a batch dimension first)."""
    if issubclass(kind, nn.Dropout1d):
        return x.dim() == 3
    if issubclass(kind, nn.Dropout3d):
        return x.dim() == 5
    return True


def seeded_dropout(x: torch.Tensor, p: float, generator: torch.Generator, kind: type = nn.Dropout) -> torch.Tensor:
    """Dropout in training mode with its mask drawn from ``generator`` (a CPU generator): ATen's arithmetic
    for the layer ``kind`` (``nn.Dropout``; ``Dropout1d/2d/3d``: one draw per channel; ``AlphaDropout``), so
    on the CPU bitwise what that layer gives in training mode after ``torch.manual_seed`` with the same
    generator state. Nothing outside ``generator`` changes."""
    if p == 0:
        return x
    if p == 1:
        return x * torch.zeros((), dtype=x.dtype, device=x.device)
    unsqueeze = not _batched(x, kind)
    y = x.unsqueeze(0) if unsqueeze else x
    if issubclass(kind, (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)):  # ATen's make_feature_noise
        noise = torch.empty(tuple(y.shape[:2]) + (1,) * (y.dim() - 2), dtype=y.dtype)
    else:
        noise = torch.empty_like(y, device="cpu")
    noise.bernoulli_(1 - p, generator=generator)
    if issubclass(kind, nn.AlphaDropout):
        a = 1.0 / math.sqrt((_ALPHA * _ALPHA * p + 1) * (1 - p))
        b = noise.add(-1).mul_(_ALPHA * a).add_(_ALPHA * a * p)
        noise.mul_(a)
        out = (y * noise.to(y.device)).add_(b.to(y.device))
    else:
        noise.div_(1 - p)
        out = y * noise.to(y.device)
    return out.squeeze(0) if unsqueeze else out


class SeededDropout(nn.Module):
    """A dropout layer of the model, active, drawing its masks from one call's generator."""

    def __init__(self, like: nn.Module, generator: torch.Generator):
        super().__init__()
        self.kind, self.p, self.generator = type(like), float(like.p), generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return seeded_dropout(x, self.p, self.generator, self.kind)

    def extra_repr(self) -> str:
        return f"{self.kind.__name__}(p={self.p}), seeded"


def seeded_dropout_view(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """A private view of ``model`` (nothing copied, nothing of ``model`` changed) in eval mode whose dropout
    layers with p > 0 are active and draw from ``generator``."""
    view = private_view(model).eval()
    swapped: dict[int, nn.Module] = {}
    for parent in list(view.modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, _DROPOUT) and getattr(child, "p", 0) > 0:
                if id(child) not in swapped:
                    swapped[id(child)] = SeededDropout(child, generator)
                parent._modules[name] = swapped[id(child)]
    return view


def tta_views(x: torch.Tensor, shift: int = 4, scale: float = 0.06) -> list[torch.Tensor]:
    """Small shifts and zooms of a (B, C, S, S) batch; borders filled with the batch's minimum."""
    s = x.shape[-1]
    fill = x.amin(dim=(2, 3), keepdim=True)

    def shifted(dy: int, dx: int) -> torch.Tensor:
        pad = F.pad(x - fill, (shift, shift, shift, shift)) + fill
        return pad[..., shift + dy:shift + dy + s, shift + dx:shift + dx + s]

    def zoom(f: float) -> torch.Tensor:
        n = max(8, round(s * f))
        z = F.interpolate(x - fill, size=(n, n), mode="bilinear", align_corners=False)
        if n >= s:
            o = (n - s) // 2
            return z[..., o:o + s, o:o + s] + fill
        o = (s - n) // 2
        return F.pad(z, (o, s - n - o, o, s - n - o)) + fill

    return [x, shifted(shift, 0), shifted(-shift, 0), shifted(0, shift), shifted(0, -shift),
            zoom(1 + scale), zoom(1 - scale)]


def _has_split_head(model: nn.Module) -> bool:
    return all(hasattr(model, a) for a in ("forward_features", "forward_head", "get_classifier"))


@torch.no_grad()
def mc_dropout(model: nn.Module, x: torch.Tensor, n: int = 20, p: float = DEFAULT_P, seed: int = 0,
               tta: bool = False, post=None) -> MCResult:
    """``n`` stochastic passes of one preprocessed image ``x`` (1, C, S, S); per-label mean / var / std."""
    if not 1 <= n <= MAX_SAMPLES:
        raise ValueError(f"n must be in 1..{MAX_SAMPLES}, not {n}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout p must be in [0, 1), not {p}")
    own = dropout_modules(model)
    split = _has_split_head(model)
    extra = 0.0 if own or not split else float(p)
    views = tta_views(x) if tta else [x]
    generator = torch.Generator().manual_seed(int(seed))  # this call's own: no global state
    net = seeded_dropout_view(model, generator)           # eval mode; its own dropout layers active
    out = []
    if split and not own:  # backbone deterministic: features once per view, masks batched
        pooled_views = [net.forward_head(net.forward_features(v), pre_logits=True).flatten(1) for v in views]
        counts = [n // len(views) + (i < n % len(views)) for i in range(len(views))]
        for pooled, k in zip(pooled_views, counts):
            if k == 0:
                continue
            batch = pooled.expand(k, -1)
            logits = net.get_classifier()(seeded_dropout(batch, extra, generator))
            out.append(torch.sigmoid(logits).float().cpu().numpy())
    else:  # the model's own dropout layers (or, with none and no split head, n equal passes)
        for i in range(n):
            out.append(torch.sigmoid(net(views[i % len(views)])).float().cpu().numpy())
    samples = np.concatenate(out).astype(np.float32)
    if post is not None:  # e.g. a two-stage model's gate combination (models.heads.combine)
        samples = np.asarray(post(samples), dtype=np.float32)
    mean = samples.mean(0)
    var = samples.var(0)
    return MCResult(mean, var, np.sqrt(var), samples, extra, bool(tta))
