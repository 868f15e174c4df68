"""Resumable training state without pickle: ``last/state.safetensors`` + ``last/state.json``.

Written atomically at the end of every epoch (a kill at any moment leaves the previous complete
state). Holds the model (unmerged: LoRA adapters included), the optimizer, the LR scheduler, the
AMP grad scaler, the data-order / augmentation generator and torch's global RNG, numpy's RNG,
the epoch, the history and the early-stopping record.

Optimizer and scheduler state dicts are nested dicts of tensors and plain values; tensors go to
safetensors under flattened keys, everything else to JSON with a marker where a tensor was.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError

STATE_DIR = "last"
TENSORS = "state.safetensors"
META = "state.json"
_MARK = "__tensor__"


def _split(obj, prefix: str, tensors: dict):
    """Replace every tensor in a nested dict/list by a marker, collecting it under a flattened key."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().to("cpu").contiguous().clone()
        return {_MARK: prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[_key(k), _split(v, f"{prefix}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_split(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)],
                "tuple": isinstance(obj, tuple)}
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in the training state")


def _key(k):
    if isinstance(k, (bool, int, float, str)) or k is None:
        return k
    raise TypeError(f"cannot store a dict key of type {type(k).__name__}")


def _join(obj, tensors: dict):
    if isinstance(obj, dict):
        if _MARK in obj:
            return tensors[obj[_MARK]]
        if "__dict__" in obj:
            return {k: _join(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            items = [_join(v, tensors) for v in obj["__list__"]]
            return tuple(items) if obj.get("tuple") else items
    return obj


def save_state(run_dir: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` (nested dicts/lists of tensors and JSON values) atomically to ``run_dir/last``."""
    folder = Path(run_dir) / STATE_DIR
    tmp = folder.with_name(STATE_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors: dict[str, torch.Tensor] = {}
    meta = _split(payload, "s", tensors)
    save_file(tensors, str(tmp / TENSORS))
    (tmp / META).write_text(json.dumps(meta))
    with open(tmp / META, "rb+") as f:
        os.fsync(f.fileno())
    old = folder.with_name(STATE_DIR + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def state_path(run_dir: str | os.PathLike) -> Path | None:
    """The last complete state of a run, or None (falls back to ``last.old`` after a kill mid-swap)."""
    for name in (STATE_DIR, STATE_DIR + ".old"):
        p = Path(run_dir) / name
        if (p / META).is_file() and (p / TENSORS).is_file():
            return p
    return None


def load_state(run_dir: str | os.PathLike) -> dict:
    folder = state_path(run_dir)
    if folder is None:
        raise CheckpointError(f"{run_dir} has no resumable state (no complete epoch was saved); start it again.")
    try:
        tensors = load_file(str(folder / TENSORS))
        meta = json.loads((folder / META).read_text())
    except (SafetensorError, OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"The training state in {folder} cannot be read ({exc}); start the run again.") from exc
    return _join(meta, tensors)


def rng_state(gen: torch.Generator) -> dict:
    np_state = np.random.get_state()
    out = {"gen": gen.get_state(), "torch": torch.get_rng_state(),
           "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                     "has_gauss": int(np_state[3]), "cached": float(np_state[4])}}
    if torch.cuda.is_available():
        out["cuda"] = list(torch.cuda.get_rng_state_all())
    return out


def set_rng_state(gen: torch.Generator, state: dict) -> None:
    gen.set_state(state["gen"])
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
