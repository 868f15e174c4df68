"""How a model's sigmoid outputs become the probabilities users see.

Plain models: one sigmoid per label. Two-stage models (``card.model["two_stage"]``) have an extra
last label, the gate "Any finding", trained on every image, while the disease outputs were trained
on abnormal images only, i.e. they estimate P(disease | abnormal). They are combined with the gate
threshold ``t``::

    p(disease) = p_cond                     where p_gate >= t   (the gate says abnormal)
               = p_gate * p_cond            where p_gate <  t   (scaled down by the gate's belief)

``t = 0`` keeps the disease classifier's own output; ``t = 1`` is the chain rule
P(abnormal) * P(disease | abnormal) everywhere. The gate's own probability is reported as a label.
"""
from __future__ import annotations

import numpy as np
import torch


def two_stage(spec: dict | None) -> dict | None:
    """The two-stage settings of a model spec ({"gate_threshold": t}), or None for a plain model."""
    ts = (spec or {}).get("two_stage")
    return ts if isinstance(ts, dict) else None


def combine(probs, spec: dict | None):
    """Apply the two-stage combination to sigmoid outputs (numpy (N, L) or torch); plain models unchanged."""
    ts = two_stage(spec)
    if ts is None:
        return probs
    t = float(ts.get("gate_threshold", 0.5))
    if isinstance(probs, torch.Tensor):
        gate = probs[..., -1:]
        scaled = torch.where(gate >= t, probs[..., :-1], probs[..., :-1] * gate)
        return torch.cat([scaled, gate], dim=-1)
    probs = np.asarray(probs)
    gate = probs[..., -1:]
    scaled = np.where(gate >= t, probs[..., :-1], probs[..., :-1] * gate)
    return np.concatenate([scaled, gate], axis=-1).astype(probs.dtype, copy=False)
