"""Two-stage models made of two separate networks (seed 000's variant): a binary "Any finding" gate
network and a disease network, each trained with its own optimiser and saved as its own checkpoint
with its own card, combined at inference.

The combined checkpoint is an ordinary checkpoint (``weights.safetensors`` + ``card.json``): its
weights are the two networks' weights under ``disease.`` and ``gate.``, its spec is::

    {"arch": "two_network", "disease": {disease network's spec}, "gate": {gate network's spec},
     "disease_labels": n, "two_stage": {"gate_label": "Any finding", "gate_threshold": t, "mode": ...}}

and its outputs are the disease network's followed by the gate's, so everything downstream
(:func:`cxrcore.models.heads.combine`, thresholds, the Thresholds page's gate slider, evaluation)
treats it exactly like the one-network two-stage model. Heatmaps come from the network that made the
label's output (:mod:`cxrcore.explain.cam` asks :meth:`TwoNetwork.cam_members`). The model itself is
the two-network family's (:mod:`cxrcore.models.two_network_family`); combining checkpoints reads
them, so this module sits above :mod:`cxrcore.checkpoint`.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..checkpoint import Card, load_checkpoint, resolve_folder, save_checkpoint
from ..errors import CheckpointError
from ..labels import canonical
from .heads import GATE_MODES, two_stage
from .two_network_family import ARCH, TwoNetwork, build, is_two_network

_PREP_KEYS = ("size", "fit", "channels", "norm", "mean", "std")


def _prep_differences(a: dict, b: dict) -> list[str]:
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in _PREP_KEYS if a.get(k) != b.get(k)]


def combine_checkpoints(disease: str | os.PathLike, gate: str | os.PathLike, out: str | os.PathLike,
                        mode: str = "soft", name: str = "", gate_label: str | None = None):
    """Write the combined two-network checkpoint of a disease checkpoint and a one-label gate checkpoint
    into ``out``. The gate threshold is the gate checkpoint's own (tuned on its validation split).

    Both must read the image the same way (size, fit, channels, normalisation): the combined model
    preprocesses once. A disease model that is itself two-stage, or a gate with more than one label,
    is refused with a message. Returns the combined card.
    """
    if mode not in GATE_MODES:
        raise CheckpointError(f"The gate mode is one of {', '.join(GATE_MODES)}, not {mode!r}.")
    d_card, d_state = load_checkpoint(disease)
    g_card, g_state = load_checkpoint(gate)
    if len(g_card.labels) != 1:
        raise CheckpointError(f"The gate checkpoint {gate} has {len(g_card.labels)} labels; a gate network has one "
                              "(e.g. 'Any finding': train it with hierarchy two_network, or a one-label run).")
    if two_stage(d_card.model) or is_two_network(d_card.model):
        raise CheckpointError(f"The disease checkpoint {disease} is already a two-stage model; use a plain one.")
    diff = _prep_differences(d_card.preprocess, g_card.preprocess)
    if diff:
        raise CheckpointError("The two networks read images differently (" + "; ".join(diff) + "); the combined "
                              "model preprocesses once, so train them at the same size and normalisation.")
    gate_name = gate_label or g_card.labels[0]
    if gate_name in d_card.labels:
        raise CheckpointError(f"The disease checkpoint already has a label {gate_name!r}.")
    labels = list(d_card.labels) + [gate_name]
    t = float(g_card.thresholds.get(g_card.labels[0], 0.5))
    spec = {"arch": ARCH, "disease": dict(d_card.model), "gate": dict(g_card.model),
            "disease_labels": len(d_card.labels),
            "two_stage": {"gate_threshold": t, "gate_label": gate_name, "mode": mode,
                          "tuned_on": "the gate network's validation split (max F1)",
                          "exempt": [j for j, x in enumerate(d_card.labels) if canonical(x) == "no finding"]}}
    state = {**{f"disease.{k}": v for k, v in d_state.items()}, **{f"gate.{k}": v for k, v in g_state.items()}}
    thresholds = {**{x: float(d_card.thresholds.get(x, 0.5)) for x in d_card.labels}, gate_name: t}
    member = lambda c, p: {"path": str(Path(p)), "name": c.name, "weights_sha256": c.weights_sha256,  # noqa: E731
                           "labels": list(c.labels), "metrics": c.metrics, "config": c.training.get("config")}
    kinds = {d_card.trained_on.get("summary"), g_card.trained_on.get("summary")}
    trained_on = dict(d_card.trained_on) if len(kinds) == 1 else {
        "kind": d_card.trained_on.get("kind", "unknown"),
        "datasets": sorted(set(d_card.trained_on.get("datasets", [])) | set(g_card.trained_on.get("datasets", []))),
        "summary": f"disease network: {d_card.trained_on.get('summary', '?')}; gate network: "
                   f"{g_card.trained_on.get('summary', '?')}"}
    data = dict(d_card.data)
    if data.get("splits_file"):  # relative to the disease checkpoint's folder: made absolute for the new place
        data["splits_file"] = str((resolve_folder(Path(disease)) / data["splits_file"]).resolve())
    card = Card(labels=labels, model=spec, preprocess=dict(d_card.preprocess), thresholds=thresholds,
                metrics={}, training={"config": d_card.training.get("config"),
                                      "two_network": {"disease": member(d_card, disease), "gate": member(g_card, gate)}},
                data=data, name=name or f"{d_card.name or Path(disease).name} + gate",
                trained_on=trained_on,
                notes=[f"Two networks: {d_card.name or disease} (diseases, trained on abnormal images) and "
                       f"{g_card.name or gate} ({gate_name}), combined with the gate ({mode})."])
    save_checkpoint(out, state, card)
    return card


__all__ = ["ARCH", "TwoNetwork", "build", "combine_checkpoints", "is_two_network"]
