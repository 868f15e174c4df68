"""Checkpoints: ``weights.safetensors`` + ``card.json``. Never pickled.

The card is the contract between training and inference: labels, model spec, preprocessing,
thresholds, metrics, training config and a fingerprint of the data. The card and the folder I/O live
in :mod:`cxrcore.models.card` (below the model families); this module, above the model registry,
adds library model names (``xrv:...``, ``clip:...``: made into a checkpoint in the workspace, see
:mod:`cxrcore.models.library`) to every read.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CheckpointError
from .models.card import (CARD, CARD_FORMAT, TRAINED_ON_KINDS, WEIGHTS, Card, combine_trained_on,  # noqa: F401
                          dataset_trained_on, file_sha256, infer_trained_on, load_folder, read_folder_card,
                          resolve_folder, save_checkpoint, write_folder_card)

if TYPE_CHECKING:
    import torch

_resolve = resolve_folder  # the name callers use (a checkpoint folder, or a run folder holding checkpoint/)


def _library(ref) -> str | None:
    """The library model name ``ref`` stands for (``xrv:densenet121-res224-all``), or None."""
    if isinstance(ref, (str, os.PathLike)) and ":" in str(ref):
        from .models.library import library_ref

        return library_ref(ref)
    return None


def read_card(folder: str | os.PathLike) -> Card:
    """The card of a checkpoint folder, a run folder, or a library model name (no weights needed)."""
    name = _library(folder)
    if name:
        from .models.library import read_library_card

        return read_library_card(name)
    return read_folder_card(folder)


def write_card(folder: str | os.PathLike, card: Card) -> None:
    """Rewrite only the card (e.g. new thresholds), atomically."""
    name = _library(folder)
    if name:
        raise CheckpointError(f"{name} is a library model; its card is not edited in place. Save to its workspace "
                              "copy instead (cxrcore.models.library.editable_copy, as the Thresholds page does).")
    write_folder_card(folder, card)


def load_checkpoint(folder: str | os.PathLike, verify: bool = True,
                    progress=None) -> tuple[Card, dict[str, torch.Tensor]]:
    """(card, state dict) of a checkpoint folder, a run folder, or a library model name (``xrv:...``:
    its weights fetched into the library's cache if needed, ``progress(done_bytes, total_bytes)``,
    and made into a checkpoint in the workspace once; see :mod:`cxrcore.models.library`)."""
    name = _library(folder)
    if name:
        from .models.library import materialize

        folder = materialize(name, progress)
    return load_folder(folder, verify)


def shipped_copy_state(name: str, root: str | os.PathLike | None = None) -> str | None:
    """Whether the workspace holds your copy of the shipped model ``name`` (thresholds or temperatures saved):
    None (no copy), "current" (same weights as the shipped model) or "older" (made from an earlier build of the
    shipped models: its thresholds and temperatures were tuned for other weights, so it is not offered).
    ``root``: the folder holding the copy (default the workspace's ``checkpoints/``, the shared copies; a
    visitor's own copies on a shared server: :func:`cxrcore.eval.thresholds.own_copies_root`)."""
    from . import workspace

    copy = Path(root if root is not None else workspace.sub("checkpoints")) / name
    source = workspace.shipped_checkpoints() / name
    if not (copy / "card.json").exists():
        return None
    if not (source / "card.json").exists():
        return "current"
    try:
        same = read_card(copy).weights_sha256 == read_card(source).weights_sha256
    except CheckpointError:
        return "older"
    return "current" if same else "older"
