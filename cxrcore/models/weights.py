"""Pretrained weights, for every model family: where they are, downloading them, reading them safely.

* **Where**: :class:`WeightsLocation` (file, folder, URL, the variable that moves the folder); each
  family says where its library looks (the Hugging Face hub cache, torch.hub's checkpoints folder,
  torchxrayvision's and open_clip's folders) with the helpers here.
* **Online or not**: a missing file is downloaded only when its server answers within two seconds
  (:func:`online`; ``HF_HUB_OFFLINE`` / ``CXR_OFFLINE`` say no); otherwise :func:`require` raises a
  ConfigError naming the file, the folder and the variable. Never a silent random initialisation.
* **Downloading** files the libraries do not fetch themselves: :func:`download` (resumable, one
  download per file at a time, with progress).
* **Reading** without running pickled code: safetensors with safetensors, anything else with torch's
  ``weights_only`` unpickler (:func:`read_tensors`); a file that holds a pickled module (torchxrayvision's
  DenseNets) through an explicit allowlist of module classes read as inert records (:func:`read_module_file`).
  Each allowed class path maps to an inert record class of this module, not to the real class, so a
  file can neither call a constructor nor run a method: records only keep the attributes the file
  stores, and the tensors are read from their ``_parameters`` / ``_buffers`` / ``_modules``
  dictionaries. A file that needs any other global is refused with a clear error before anything in
  it runs.
"""
from __future__ import annotations

import os
import pickle
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from ..errors import CheckpointError, ConfigError
from ..workspace import file_lock  # noqa: F401 - used here and by models/library.py

if TYPE_CHECKING:  # torch is imported where weights are read: a weights location or a download needs none
    import torch

ONLINE_TIMEOUT_S = 2.0


class LibraryWeightsMissing(ConfigError):
    """A library model's weight file is not cached and cannot be downloaded now."""

    def __init__(self, message: str, status: dict):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------- where weights live
@dataclass
class WeightsLocation:
    """Where a library looks for an architecture's pretrained weights."""

    library: str
    file: str           # the file name the library expects
    path: Path          # full path it loads from (timm/HF: with <commit> when not cached yet)
    folder: Path        # the cache folder to place it in
    url: str            # where the library downloads it from
    env: str            # environment variable that moves the folder
    cached: bool
    hf_repo: str = ""   # timm on the Hugging Face hub: the repo id
    note: str = ""

    def describe(self) -> str:
        where = (f"the file {self.file} of {self.hf_repo} as {self.path} (plus {self.folder}/"
                 f"models--{self.hf_repo.replace('/', '--')}/refs/main holding <commit>; e.g. "
                 f"`hf download {self.hf_repo} {self.file} --cache-dir <folder>` on a machine online, then copy "
                 "the folder)" if self.hf_repo else f"the file {self.file} in {self.folder} (= {self.path})")
        return f"Place {where}; download it from {self.url}. {self.env} moves that folder.{self.note}"


def hf_cache_dir() -> Path:
    """huggingface_hub's cache folder, read now (its constants are read once, at import)."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE).expanduser()


def torch_checkpoints() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"  # $TORCH_HOME/hub/checkpoints, read now


def url_file(url: str) -> str:
    return os.path.basename(urlparse(url).path)


# ---------------------------------------------------------------------- online or not
def online(url: str, timeout: float = ONLINE_TIMEOUT_S) -> bool:
    """Whether the host serving ``url`` answers within ``timeout`` seconds (HF_HUB_OFFLINE / CXR_OFFLINE: no)."""
    if any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "CXR_OFFLINE")):
        return False
    parts = urlparse(url)
    host = parts.hostname
    if not host:
        return False
    try:
        socket.create_connection((host, parts.port or (80 if parts.scheme == "http" else 443)), timeout=timeout).close()
        return True
    except OSError:
        return False


def require(arch: str, loc: WeightsLocation) -> WeightsLocation:
    """``loc`` (where ``arch``'s weights are), when the file is cached or can be downloaded now; else
    ConfigError naming it."""
    if loc.cached or online(loc.url):
        return loc
    raise ConfigError(
        f"Pretrained weights for {arch} ({loc.library}) are not on this machine and {urlparse(loc.url).hostname} "
        f"cannot be reached (offline?). {loc.describe()} Or choose --pretrained none to start from random weights."
    )


def load_failed(arch: str, loc: WeightsLocation, exc: Exception) -> ConfigError:
    return ConfigError(f"Pretrained weights for {arch} could not be loaded from {loc.path} "
                       f"({type(exc).__name__}: {str(exc)[:300]}). Replace the file (it may be damaged or partial): "
                       f"{loc.describe()} Or choose --pretrained none.")


# ---------------------------------------------------------------------------- reading
def _torch_load(path: Path, what: str, refused: str, library: str):
    """``torch.load`` with its ``weights_only`` unpickler (nothing in the file runs); CheckpointError naming the
    file: ``refused`` says why when the unpickler refuses a global, else the file is damaged or partial."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"Refused to load {path}{what}: {refused} ({exc_summary(exc)}). Nothing in it was run. The file is not a "
            f"{library} weight file (or has been tampered with): delete it and download it again.") from None
    except (OSError, RuntimeError, EOFError, ValueError, TypeError, AttributeError, KeyError) as exc:
        raise CheckpointError(f"Could not read {path}{what} ({type(exc).__name__}: {str(exc)[:300]}); it may be "
                              "damaged or partial: delete it and download it again.") from None


def read_tensors(path: Path, name: str = "", library: str = "open_clip") -> dict[str, torch.Tensor]:
    """The tensors of a state-dict weight file, read safely: safetensors, or torch's weights_only unpickler
    (open_clip's own ``load_state_dict`` semantics: a ``state_dict`` entry, a ``module.`` prefix).
    ``library``: whose weight files these are (for messages)."""
    import torch

    path = Path(path)
    what = f" for {name}" if name else ""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"Could not read {path}{what} ({exc}); it may be damaged or partial: delete it "
                                  "and download it again.") from None
    else:
        obj = _torch_load(path, what, "it needs code a plain weights file does not", library)
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not (isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())):
        raise CheckpointError(f"{path}{what} holds a {type(obj).__name__}, not a {library} state dict; delete it and "
                              "download it again.")
    if next(iter(obj)).startswith("module."):
        obj = {k[7:]: v for k, v in obj.items()}
    return obj


class ModuleRecord:
    """What a pickled module becomes here: its attributes as plain data, and nothing callable.

    Unpickling creates it with ``__new__`` and fills ``__dict__``; calling the class (a pickle's
    REDUCE, i.e. running a constructor) is refused.
    """

    source_class = ""

    def __init__(self, *args, **kwargs):
        raise pickle.UnpicklingError(f"refusing to call {self.source_class} while reading weights")

    def __repr__(self) -> str:
        return f"<record of {self.source_class}>"


RECORDS: dict[str, type] = {}  # allowed class path -> its record class (see allow_module_classes)


def allow_module_classes(paths) -> None:
    """Let torch's ``weights_only`` unpickler read the module classes ``paths`` as records (see
    :class:`ModuleRecord`). Called once per family, when its module is imported: torch keeps the
    allowlist in one process-wide set, and adding and removing entries around each load would race
    between app sessions. Only affects class paths torch refuses by default."""
    import torch

    new = {p: type("Record_" + p.rsplit(".", 1)[1].lstrip("_"), (ModuleRecord,), {"source_class": p})
           for p in paths if p not in RECORDS}
    RECORDS.update(new)
    torch.serialization.add_safe_globals([(cls, path) for path, cls in new.items()])

MAX_DEPTH = 64


def _tensors_of(obj, prefix: str, out: dict, seen: set, depth: int) -> None:
    """Collect parameters and persistent buffers of a module record (or a real module) as a state dict."""
    import torch

    if depth > MAX_DEPTH or id(obj) in seen:
        raise CheckpointError("the module tree in the file is cyclic or too deep")
    seen.add(id(obj))
    attrs = vars(obj)
    params, buffers, modules = (attrs.get(k) or {} for k in ("_parameters", "_buffers", "_modules"))
    skip = attrs.get("_non_persistent_buffers_set") or set()
    if not all(isinstance(d, dict) for d in (params, buffers, modules)):
        raise CheckpointError("a module in the file has malformed parameter / buffer / submodule tables")
    for table, kind in ((params, "parameter"), (buffers, "buffer")):
        for name, t in table.items():
            if t is None or (kind == "buffer" and name in skip):
                continue
            if not isinstance(name, str) or not isinstance(t, torch.Tensor):
                raise CheckpointError(f"the {kind} {prefix}{name} in the file is not a tensor ({type(t).__name__})")
            out[prefix + name] = t.detach()
    for name, child in modules.items():
        if child is None:
            continue
        if not isinstance(name, str) or not isinstance(child, (ModuleRecord, torch.nn.Module)):
            raise CheckpointError(f"the submodule {prefix}{name} in the file is a {type(child).__name__}")
        _tensors_of(child, f"{prefix}{name}.", out, seen, depth + 1)


def read_module_file(path: str | os.PathLike, expect: str = "",
                     library: str = "torchxrayvision") -> dict[str, torch.Tensor]:
    """The tensors of a weight file that holds a pickled module (or a plain state dict), read safely:
    torch's ``weights_only`` unpickler, the module classes allowed by :func:`allow_module_classes` read
    as inert records. ``expect``: the name to use in messages (e.g. ``xrv:densenet121-res224-all``);
    ``library``: whose weight files these are.
    Raises CheckpointError naming the file, and the offending global when the file needs one
    outside the allowlist.
    """
    import torch

    path = Path(path)
    what = f" for {expect}" if expect else ""
    obj = _torch_load(path, what, f"it needs code outside the allowlist of classes {library}'s weight files contain",
                      library)
    if isinstance(obj, (ModuleRecord, torch.nn.Module)):
        state: dict[str, torch.Tensor] = {}
        _tensors_of(obj, "", state, set(), 0)
    elif isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        state = {k: v.detach() for k, v in obj.items()}
    else:
        raise CheckpointError(f"{path}{what} holds a {type(obj).__name__}, not a {library} model or state dict; "
                              "delete it and download it again.")
    return state


def exc_summary(exc: Exception) -> str:
    """The line of torch's refusal that names what the file needed (a global, a call), without its advice."""
    lines = [x.strip() for x in str(exc).replace("\x1b[1m", "").replace("\x1b[0m", "").splitlines() if x.strip()]
    keys = ("GLOBAL", "refusing to call", "reduce for", "Can only", "Unsupported")
    hit = next((x for x in lines if any(k in x for k in keys)), "")
    for cut in (" Please use", " Check the"):
        hit = hit.split(cut)[0]
    hit = hit.replace("WeightsUnpickler error:", "").strip().rstrip(".")
    return hit or "not a plain weights file"


def tqdm_progress(desc: str):
    """A progress callback (done_bytes, total_bytes) drawing a tqdm bar on stderr."""
    from tqdm import tqdm

    state = {"bar": None}

    def update(done: int, total: int) -> None:
        if state["bar"] is None:
            state["bar"] = tqdm(total=total or None, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                                file=sys.stderr, dynamic_ncols=True)
        bar = state["bar"]
        bar.n = done
        bar.refresh()
        if total and done >= total:
            bar.close()

    return update


def download(url: str, dest: Path, progress=None, timeout: tuple[float, float] = (10, 60)) -> Path:
    """Download ``url`` to ``dest`` the way torchxrayvision's ``utils.download`` does (into
    ``dest + ".part"``, resuming a partial one with a Range request, moved into place only when
    complete), reporting ``progress(done_bytes, total_bytes)``; one download per file at a time."""
    import requests

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(dest.with_name(dest.name + ".lock")):
        if dest.is_file():  # another session finished it while this one waited
            return dest
        part = dest.with_name(dest.name + ".part")
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with requests.get(url, stream=True, headers=headers, timeout=timeout) as response:
            if response.status_code == 416:  # the partial file is complete or does not match: start over
                part.unlink()
                offset, headers = 0, {}
                response.close()
                return download(url, dest, progress, timeout)
            response.raise_for_status()
            if response.status_code != 206:
                offset = 0  # the server sent the whole file
            remaining = int(response.headers.get("content-length") or 0)
            total = offset + remaining if remaining else 0
            done = offset
            with open(part, "ab" if offset else "wb") as f:
                for chunk in response.iter_content(chunk_size=1 << 20):
                    f.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
        if total and done != total:
            raise OSError(f"the download of {url} stopped at {done} of {total} bytes")
        os.replace(part, dest)
    return dest
