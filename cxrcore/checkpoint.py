"""Checkpoints: ``weights.safetensors`` + ``card.json``. Never pickled.

The card is the contract between training and inference: labels, model spec, preprocessing,
thresholds, metrics, training config and a fingerprint of the data. Writes are atomic: a new
checkpoint is written to a sibling folder and swapped in with renames, so a kill at any moment
leaves either the old or the new checkpoint, never a mix.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .data.preprocess import Preprocess
from .errors import CheckpointError

CARD_FORMAT = "cxrcore-checkpoint/1"
WEIGHTS = "weights.safetensors"
CARD = "card.json"


@dataclass
class Card:
    labels: list[str]
    model: dict
    preprocess: dict
    thresholds: dict[str, float] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    name: str = ""
    created: str = ""
    notes: list[str] = field(default_factory=list)
    weights_sha256: str = ""
    format: str = CARD_FORMAT

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict) -> "Card":
        missing = [k for k in ("labels", "model", "preprocess") if k not in d]
        if missing:
            raise CheckpointError(f"The checkpoint card lacks {missing}; it was not written by cxrcore.")
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @property
    def prep(self) -> Preprocess:
        return Preprocess.from_dict(self.preprocess)

    def temperature_list(self) -> list[float] | None:
        """Per-label temperatures stored by evaluation (``cxr eval --save-calibration``), or None."""
        temps = (self.metrics.get("calibration") or {}).get("temperatures")
        return None if not temps else [float(temps.get(x, 1.0)) for x in self.labels]

    def threshold_list(self) -> list[float]:
        return [float(self.thresholds.get(x, 0.5)) for x in self.labels]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(folder: str | os.PathLike, state_dict: dict[str, torch.Tensor], card: Card,
                    dtype: torch.dtype | None = None) -> Path:
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {k: (v.detach().to("cpu", dtype=dtype if (dtype and v.is_floating_point()) else v.dtype)).contiguous()
               for k, v in state_dict.items()}
    save_file(tensors, str(tmp / WEIGHTS), metadata={"format": CARD_FORMAT})
    card.weights_sha256 = _sha256(tmp / WEIGHTS)
    card.created = card.created or time.strftime("%Y-%m-%dT%H:%M:%S%z")
    (tmp / CARD).write_text(json.dumps(card.to_dict(), indent=2, default=_json_default))
    _swap_in(tmp, folder)
    return folder


def _swap_in(tmp: Path, folder: Path) -> None:
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_card(folder: str | os.PathLike) -> Card:
    folder = _resolve(Path(folder))
    try:
        return Card.from_dict(json.loads((folder / CARD).read_text()))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{folder / CARD} is not valid JSON ({exc}); the checkpoint is damaged.") from exc


def write_card(folder: str | os.PathLike, card: Card) -> None:
    """Rewrite only the card (e.g. new thresholds), atomically."""
    folder = _resolve(Path(folder))
    tmp = folder / (CARD + ".tmp")
    tmp.write_text(json.dumps(card.to_dict(), indent=2, default=_json_default))
    os.replace(tmp, folder / CARD)


def load_checkpoint(folder: str | os.PathLike, verify: bool = True) -> tuple[Card, dict[str, torch.Tensor]]:
    folder = _resolve(Path(folder))
    card = read_card(folder)
    weights = folder / WEIGHTS
    if verify and card.weights_sha256 and _sha256(weights) != card.weights_sha256:
        raise CheckpointError(f"{weights} does not match the hash in its card: the checkpoint is damaged or mixed. "
                              "Re-run the training or restore the folder.")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"Could not read {weights}: {exc}.") from exc
    return card, state


def _resolve(folder: Path) -> Path:
    """Accept a checkpoint folder, or a run folder holding checkpoint/ (falls back to .old after a kill)."""
    for cand in (folder, folder / "checkpoint", folder.with_name(folder.name + ".old")):
        if (cand / CARD).is_file() and (cand / WEIGHTS).is_file():
            return cand
    if not folder.exists():
        raise CheckpointError(f"No checkpoint at {folder}: the folder does not exist.")
    raise CheckpointError(f"{folder} is not a checkpoint: it needs {WEIGHTS} and {CARD}.")
