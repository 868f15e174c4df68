"""Checkpoint folders on disk: ``weights.safetensors`` + ``card.json``. Never pickled.

The low layer of checkpoints: the card, and reading and writing a checkpoint *folder*. Model families
and library models use it; :mod:`cxrcore.checkpoint` (above the model registry) adds library model
names (``xrv:...``, ``clip:...``) on top. Writes are atomic: a new checkpoint is written to a sibling
folder and swapped in with renames, so a kill at any moment leaves either the old or the new
checkpoint, never a mix.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CheckpointError

if TYPE_CHECKING:  # torch is imported where tensors are read or written: reading a card needs only JSON
    import torch

    from ..data.preprocess import Preprocess

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
    # What the model has seen: {"kind": "phantom" | "real" | "library" | "unknown",
    # "datasets": [names], "summary": one line for people}. See :func:`trained_on`.
    trained_on: dict = field(default_factory=dict)
    weights_sha256: str = ""
    # Site profiles (cxrcore.eval.site): {name: {"fitted_on", "n", "strategy", "target", "labels": {label:
    # {"temperature", "threshold", their CIs, before / after}}, "curve", "created"}}; see :meth:`with_site`.
    sites: dict = field(default_factory=dict)
    format: str = CARD_FORMAT

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def sha256(self) -> str:
        """A digest of everything the card says (labels, thresholds, preprocessing, the weights' own digest, ...):
        what a result records to name the exact model and settings that gave it (DICOM reports, score tables)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, default=str).encode()).hexdigest()

    @classmethod
    def from_dict(cls, d: dict) -> "Card":
        missing = [k for k in ("labels", "model", "preprocess") if k not in d]
        if missing:
            raise CheckpointError(f"The checkpoint card lacks {missing}; it was not written by cxrcore.")
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @property
    def prep(self) -> Preprocess:
        from ..data.preprocess import Preprocess

        return Preprocess.from_dict(self.preprocess)

    def temperature_list(self) -> list[float] | None:
        """Per-label temperatures stored by evaluation (``cxr eval --save-calibration``), or None."""
        temps = (self.metrics.get("calibration") or {}).get("temperatures")
        return None if not temps else [float(temps.get(x, 1.0)) for x in self.labels]

    def training_kind(self) -> str:
        """``phantom`` | ``real`` | ``library`` | ``unknown``: what the model's weights were trained on."""
        kind = str((self.trained_on or infer_trained_on(self)).get("kind", "unknown"))
        return kind if kind in TRAINED_ON_KINDS else "unknown"

    def threshold_list(self) -> list[float]:
        return [float(self.thresholds.get(x, 0.5)) for x in self.labels]

    @property
    def change_tuned(self) -> bool:
        """Whether change thresholds were tuned for this model (``metrics["change"]``)."""
        return bool((self.metrics.get("change") or {}).get("thresholds"))

    def change_threshold_list(self, default: float) -> list[float]:
        """Per-label thresholds on a change of probability between a prior and a current film (``cxr eval-change
        --tune --save`` stores them in ``metrics["change"]``); ``default`` for labels never tuned."""
        tuned = (self.metrics.get("change") or {}).get("thresholds") or {}
        return [float(tuned.get(x, default)) for x in self.labels]

    def with_site(self, name: str | None) -> "Card":
        """This card as used at site ``name``: the profile's thresholds and temperatures in place of the card's
        (labels the profile did not fit keep the card's threshold and no temperature), and ``metrics["site"]``
        naming the profile, so a result says which one it used. ``None`` or "": the card itself.
        CheckpointError naming the profiles there are for a name the card does not hold."""
        if not name:
            return self
        if name not in self.sites:
            have = ", ".join(sorted(self.sites)) or "none yet (cxr site fit)"
            raise CheckpointError(f"The model has no site profile {name!r}; its profiles: {have}.")
        import copy

        profile = self.sites[name]
        labels = {x: v for x, v in (profile.get("labels") or {}).items() if x in self.labels}
        fitted = {x: v for x, v in labels.items() if v.get("fitted")}
        # a threshold the profile fitted, or one set by hand for the site (the Thresholds page: "edited")
        set_here = {x: v for x, v in labels.items() if v.get("threshold") is not None and
                    (v.get("fitted") or v.get("edited"))}
        card = copy.deepcopy(self)
        card.thresholds.update({x: float(v["threshold"]) for x, v in set_here.items()})
        card.metrics["calibration"] = {"temperatures": {x: float(v["temperature"]) for x, v in fitted.items()},
                                       "fitted_on": f"site {name}: {profile.get('fitted_on', '')}"}
        card.metrics["site"] = {"name": name, "fitted_on": profile.get("fitted_on"), "n": profile.get("n"),
                                "labels": sorted(set_here)}
        return card


TRAINED_ON_KINDS = ("phantom", "real", "library", "unknown")


def dataset_trained_on(root: str | os.PathLike, name: str, fmt: str) -> dict:
    """``trained_on`` for a model trained on the dataset folder ``root``: phantom (the generator's
    ``PHANTOM.json`` is there) or real data."""
    root = Path(root)
    if (root / "PHANTOM.json").is_file():
        try:
            meta = json.loads((root / "PHANTOM.json").read_text())
        except (OSError, json.JSONDecodeError):
            meta = {}
        domain = meta.get("domain", fmt)
        return {"kind": "phantom", "datasets": [f"synthetic phantom ({domain} layout) {name}"],
                "summary": f"synthetic chest phantoms only ({name}); never real radiographs"}
    label = {"nih": "NIH ChestX-ray14", "chexpert": "CheXpert"}.get(fmt, f"{fmt} dataset")
    return {"kind": "real", "datasets": [f"{label}: {name}"], "summary": f"real radiographs ({label}, folder {name})"}


def combine_trained_on(init: dict | None, own: dict) -> dict:
    """A model initialised from ``init`` and trained on ``own``: the datasets of both; the kind of the
    last data it was trained on, except that phantom training on top of real or library weights
    stays "phantom" only if nothing real was ever seen."""
    if not init:
        return own
    datasets = list(init.get("datasets", [])) + [d for d in own.get("datasets", []) if d not in init.get("datasets", [])]
    kinds = {init.get("kind"), own.get("kind")}
    kind = "phantom" if kinds == {"phantom"} else ("real" if "real" in kinds else own.get("kind", "unknown"))
    if kinds == {"phantom"}:  # (library or real weights fine-tuned on phantoms: say both, never "phantoms only")
        summary = own.get("summary", "")
    else:
        summary = f"{init.get('summary', 'initial weights')}; then fine-tuned on {own.get('summary', 'more data')}"
    return {"kind": kind, "datasets": datasets, "summary": summary}


def infer_trained_on(card: "Card") -> dict:
    """``trained_on`` for a card written before the field existed: from its data record."""
    data = card.data or {}
    root, name = data.get("root"), str(data.get("name", ""))
    if root and Path(root).is_dir():
        return dataset_trained_on(root, name, str(data.get("format", "")))
    if name.startswith("phantom-"):
        return {"kind": "phantom", "datasets": [f"synthetic phantom {name}"],
                "summary": f"synthetic chest phantoms only ({name}); never real radiographs"}
    return {"kind": "unknown", "datasets": [name] if name else [], "summary": "not recorded in the card"}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(folder: str | os.PathLike, state_dict: dict[str, torch.Tensor], card: Card,
                    dtype: torch.dtype | None = None) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {k: (v.detach().to("cpu", dtype=dtype if (dtype and v.is_floating_point()) else v.dtype)).contiguous()
               for k, v in state_dict.items()}
    save_file(tensors, str(tmp / WEIGHTS), metadata={"format": CARD_FORMAT})
    card.weights_sha256 = file_sha256(tmp / WEIGHTS)
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


def read_folder_card(folder: str | os.PathLike) -> Card:
    """The card of a checkpoint folder or a run folder (no weights read)."""
    folder = resolve_folder(Path(folder))
    try:
        return Card.from_dict(json.loads((folder / CARD).read_text()))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{folder / CARD} is not valid JSON ({exc}); the checkpoint is damaged.") from exc


def write_folder_card(folder: str | os.PathLike, card: Card) -> None:
    """Rewrite only the card of a checkpoint folder (e.g. new thresholds), atomically."""
    folder = resolve_folder(Path(folder))
    tmp = folder / (CARD + ".tmp")
    tmp.write_text(json.dumps(card.to_dict(), indent=2, default=_json_default))
    os.replace(tmp, folder / CARD)


def load_folder(folder: str | os.PathLike, verify: bool = True) -> tuple[Card, dict[str, torch.Tensor]]:
    """(card, state dict) of a checkpoint folder or a run folder; the weights checked against the card's hash."""
    folder = resolve_folder(Path(folder))
    card = read_folder_card(folder)
    weights = folder / WEIGHTS
    if verify and card.weights_sha256 and file_sha256(weights) != card.weights_sha256:
        raise CheckpointError(f"{weights} does not match the hash in its card: the checkpoint is damaged or mixed. "
                              "Re-run the training or restore the folder.")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"Could not read {weights}: {exc}.") from exc
    return card, state


def resolve_folder(folder: Path) -> Path:
    """Accept a checkpoint folder, or a run folder holding checkpoint/ (falls back to .old after a kill)."""
    for cand in (folder, folder / "checkpoint", folder.with_name(folder.name + ".old")):
        if (cand / CARD).is_file() and (cand / WEIGHTS).is_file():
            return cand
    if not folder.exists():
        raise CheckpointError(f"No checkpoint at {folder}: the folder does not exist.")
    raise CheckpointError(f"{folder} is not a checkpoint: it needs {WEIGHTS} and {CARD}.")
