"""Monte-Carlo dropout (Gal & Ghahramani 2016), optionally with test-time augmentation.

N stochastic forward passes with dropout active and everything else in eval mode (BatchNorm uses
its running statistics, nothing is updated). Only ``nn.Dropout`` modules are switched to training
mode; when the model has no dropout with p > 0 (regnetx_002's head dropout rate is 0), dropout
with rate ``p`` is applied to the pooled features right before the classifier:
``forward_features -> pool -> dropout(p) -> classifier``. The spread of the N sigmoid outputs per
label is the uncertainty; passes are reproducible with a seed (the global RNG is not disturbed).

Caveat: a model trained without dropout was never taught to be robust to it, so the variance
measures sensitivity of the head to feature dropout, a proxy for epistemic uncertainty, not a
calibrated error bar.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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


@contextmanager
def dropout_active(model: nn.Module):
    """Eval mode everywhere except dropout layers (training mode); the previous modes are restored."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    for m in model.modules():
        if isinstance(m, _DROPOUT):
            m.train()
    try:
        yield
    finally:
        for m, t in modes.items():
            m.training = t


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
    head_only = split and not own  # backbone deterministic: features once per view, masks batched
    out = []
    with dropout_active(model), torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if head_only:
            pooled_views = [model.forward_head(model.forward_features(v), pre_logits=True).flatten(1) for v in views]
            counts = [n // len(views) + (i < n % len(views)) for i in range(len(views))]
            for pooled, k in zip(pooled_views, counts):
                if k == 0:
                    continue
                batch = pooled.expand(k, -1)
                logits = model.get_classifier()(F.dropout(batch, extra, training=True))
                out.append(torch.sigmoid(logits).float().cpu().numpy())
        else:
            for i in range(n):
                v = views[i % len(views)]
                if split and extra > 0:
                    pooled = model.forward_head(model.forward_features(v), pre_logits=True).flatten(1)
                    logits = model.get_classifier()(F.dropout(pooled, extra, training=True))
                else:
                    logits = model(v)
                out.append(torch.sigmoid(logits).float().cpu().numpy())
    samples = np.concatenate(out).astype(np.float32)
    if post is not None:  # e.g. a two-stage model's gate combination (models.heads.combine)
        samples = np.asarray(post(samples), dtype=np.float32)
    mean = samples.mean(0)
    var = samples.var(0)
    return MCResult(mean, var, np.sqrt(var), samples, extra, bool(tta))
