"""The two-network family: a model made of a gate network and a disease network, each a model of any
other family (seed 000's variant; :mod:`cxrcore.models.two_network` combines two checkpoints into one).

Its spec is ``{"arch": "two_network", "disease": {spec}, "gate": {spec}, "disease_labels": n, "two_stage":
{...}}``: rebuilt from the two member specs through their own families. It has no names: it is made
from checkpoints, never built by name.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from . import names as names_
from .family import ModelFamily, model_from_spec, register

ARCH = names_.TWO_NETWORK


class TwoNetwork(nn.Module):
    """``forward(x) = concat(disease(x), gate(x))``: two networks reading the same preprocessed image."""

    def __init__(self, disease: nn.Module, gate: nn.Module):
        super().__init__()
        self.disease = disease
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.disease(x), self.gate(x)], dim=1)

    def cam_members(self) -> list[nn.Module]:
        """The networks in output order; each gives the heatmaps of its own outputs."""
        return [self.disease, self.gate]


def is_two_network(spec: dict | None) -> bool:
    return str((spec or {}).get("arch", "")) == ARCH


def build(spec: dict, num_labels: int) -> TwoNetwork:
    """The combined model with random weights (they come from the checkpoint)."""
    n_disease = int(spec.get("disease_labels", num_labels - 1))
    if n_disease + 1 != num_labels or "disease" not in spec or "gate" not in spec:
        raise CheckpointError(f"The two-network card is inconsistent: {num_labels} labels, "
                              f"{n_disease} disease outputs plus one gate expected.")
    return TwoNetwork(model_from_spec(spec["disease"], n_disease), model_from_spec(spec["gate"], 1))


class TwoNetworkFamily(ModelFamily):
    name = names_.TWO_NETWORK
    spec_arch = ARCH
    order = 4

    def build(self, arch: str, name: str, num_labels: int, mode: str, kwargs: dict,
              labels: list[str] | None) -> nn.Module:
        raise ConfigError("A two-network model is made from two checkpoints (cxr combine), not built by name.")

    def from_spec(self, spec: dict, num_labels: int) -> nn.Module:
        return build(spec, num_labels)


FAMILY = register(TwoNetworkFamily())
