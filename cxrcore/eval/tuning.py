"""The Thresholds page's logic, without Streamlit: the sliders' grid and starting values, where each threshold
comes from, what Save writes, and a two-stage model's gate.

A two-stage model (one network with a gate output, or a two-network run's combined checkpoint: a gate network
and a disease network) has one gate threshold, its gate label's: every finding's probability is recombined from
the raw outputs (:func:`cxrcore.models.heads.combine`) whenever it moves.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..models.heads import combine, gate_threshold, two_stage

LIBRARY_DEFAULT, SAVED, DEFAULT, EDITED = "library default", "saved in the card", "default 0.5", "edited"


def slider_grid(library_defaults: Mapping[str, float] | None) -> tuple[float, int]:
    """(step, digits) of the sliders: a library model's own operating points (torchxrayvision's op_threshs) are
    small raw-sigmoid values (0.0004 … 0.5), so its sliders move in steps of 0.0001 instead of 0.01."""
    return (0.0001, 4) if library_defaults else (0.01, 2)


def saved_threshold(thresholds: Mapping[str, float], label: str, digits: int) -> float:
    """A slider's starting value: the card's threshold of ``label`` (0.5 without one) on the slider's grid."""
    return float(round(thresholds.get(label, 0.5), digits))


def threshold_origin(label: str, t: float, thresholds: Mapping[str, float],
                     library_defaults: Mapping[str, float], digits: int) -> str:
    """Where the threshold ``t`` of ``label`` comes from (compared on the slider's grid): the library's default,
    the card (``thresholds``), the 0.5 of a label without one, or edited."""
    t = round(float(t), digits)
    if label in library_defaults and round(library_defaults[label], digits) == t:
        return LIBRARY_DEFAULT
    if label in thresholds and round(thresholds[label], digits) == t:
        return SAVED
    return DEFAULT if label not in thresholds and t == 0.5 else EDITED


def thresholds_to_save(chosen: Mapping[str, float], thresholds: Mapping[str, float],
                       library_defaults: Mapping[str, float], digits: int) -> dict[str, float]:
    """What Save writes for the sliders' values ``chosen`` (label -> value): a library default left as it is keeps
    its exact value (the slider shows it rounded)."""
    return {x: (library_defaults[x] if threshold_origin(x, t, thresholds, library_defaults, digits) == LIBRARY_DEFAULT
                else float(t)) for x, t in chosen.items()}


def moved_thresholds(chosen: Mapping[str, float], thresholds: Mapping[str, float],
                     library_defaults: Mapping[str, float], digits: int) -> dict[str, float]:
    """Of the sliders' values ``chosen``, those moved away from where they started (the ``thresholds`` in use, on
    the slider's grid): what a site profile records as set by hand (a slider left alone records nothing)."""
    return {x: float(t) for x, t in chosen.items()
            if threshold_origin(x, t, thresholds, library_defaults, digits) == EDITED}


@dataclass(frozen=True)
class Gate:
    """A two-stage model's gate: its label, the threshold in use and the mode (``hard``: a finding below the gate
    is reported as 0, not assessed; ``soft``: scaled by the gate's probability)."""

    label: str
    threshold: float
    mode: str


def gate_of(model: dict | None, thresholds: Mapping[str, float], labels: list[str],
            current: Mapping[str, float] | None = None) -> Gate | None:
    """The gate of a two-stage model (``model``: its card's model spec) whose gate label is one of ``labels`` (the
    predicted columns), at ``current``'s value for it (the slider's) else the card's; None for any other model."""
    ts = two_stage(model)
    label = ts.get("gate_label") if ts else None
    if label is None or label not in labels:
        return None
    current = current or {}
    t = current[label] if label in current else gate_threshold(model, dict(thresholds))
    return Gate(label, float(t), ts.get("mode", "soft"))


def recombine(raw_probs: np.ndarray, model: dict | None, gate: Gate | float | None) -> np.ndarray:
    """The probabilities the model reports, from its raw outputs (``predict_split(..., raw=True)``), with the gate
    at ``gate`` (a :class:`Gate` or its threshold); ``raw_probs`` as they are without a gate."""
    if gate is None:
        return raw_probs
    return combine(raw_probs, model, t=gate.threshold if isinstance(gate, Gate) else float(gate))
