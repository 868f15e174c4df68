"""How a model's sigmoid outputs become the probabilities users see.

Plain models: one sigmoid per label. Two-stage models (``card.model["two_stage"]``) have an extra
last label, the gate "Any finding", trained on every image, while the disease outputs were trained
on abnormal images only, i.e. they estimate P(disease | abnormal). They are combined with the gate
threshold ``t``::

    p(disease) = p_cond                     where p_gate >= t   (the gate says abnormal)
               = p_gate * p_cond            where p_gate <  t   (scaled down by the gate's belief)

``t = 0`` keeps the disease classifier's own output; ``t = 1`` is the chain rule
P(abnormal) * P(disease | abnormal) everywhere. The gate's own probability is reported as a label; its threshold is the card's threshold of the gate
label (one threshold, tuned on validation, editable like any label's). In ``hard`` mode a disease below
the gate is reported as 0 (not assessed). "No Finding" is never gated.
"""
from __future__ import annotations

import numpy as np
import torch


GATE_MODES = ("soft", "hard")


def two_stage(spec: dict | None) -> dict | None:
    """The two-stage settings of a model spec ({"gate_threshold": t, ...}), or None for a plain model."""
    ts = (spec or {}).get("two_stage")
    return ts if isinstance(ts, dict) else None


def gate_threshold(spec: dict | None, thresholds: dict | None = None) -> float | None:
    """The one gate threshold of a two-stage model: the card's threshold of its gate label (tuned on
    validation, editable on the Thresholds page like any label's), else the spec's (older cards)."""
    ts = two_stage(spec)
    if ts is None:
        return None
    label = ts.get("gate_label")
    if thresholds and label in thresholds:
        return float(thresholds[label])
    return float(ts.get("gate_threshold", 0.5))


def combine(probs, spec: dict | None, thresholds: dict | None = None, t: float | None = None):
    """Apply the two-stage combination to sigmoid outputs (numpy (N, L) or torch); plain models unchanged.

    The gate threshold is ``t`` when given, else :func:`gate_threshold` (the card's ``thresholds``). Mode
    ``soft`` (default) scales a disease below the gate by the gate's probability; ``hard`` reports it as 0
    (not assessed: the gate says normal), as seed 000 does. Columns in ``exempt`` (No Finding) pass as they are.
    """
    ts = two_stage(spec)
    if ts is None:
        return probs
    t = gate_threshold(spec, thresholds) if t is None else float(t)
    hard = ts.get("mode", "soft") == "hard"
    exempt = [int(j) for j in ts.get("exempt", [])]
    if isinstance(probs, torch.Tensor):
        gate = probs[..., -1:]
        below = probs[..., :-1] * (0.0 if hard else gate)
        scaled = torch.where(gate >= t, probs[..., :-1], below)
        if exempt:
            scaled[..., exempt] = probs[..., exempt]
        return torch.cat([scaled, gate], dim=-1)
    probs = np.asarray(probs)
    gate = probs[..., -1:]
    below = probs[..., :-1] * (0.0 if hard else gate)
    scaled = np.where(gate >= t, probs[..., :-1], below)
    if exempt:
        scaled[..., exempt] = probs[..., exempt]
    return np.concatenate([scaled, gate], axis=-1).astype(probs.dtype, copy=False)
