"""torchxrayvision's weight files: read without running pickled code, and downloaded with progress.

torchxrayvision stores its DenseNets as whole pickled modules and its ResNet as a state dict; it
opens both with ``torch.load(weights_only=False)``, which runs whatever code a file names. Here a
file goes through torch's ``weights_only`` unpickler instead, with an explicit allowlist: the
module classes those files hold (found with ``torch.serialization.get_unsafe_globals_in_checkpoint``
on a file made as the library makes them). Each allowed class path maps to an inert record class
of this module, not to the real class, so a file can neither call a constructor (xrv's DenseNet
constructor would load and unpickle another file) nor run a method: records only keep the
attributes the file stores, and the tensors are read from their ``_parameters`` / ``_buffers`` /
``_modules`` dictionaries. A file that needs any other global is refused with a clear error before
anything in it runs.

The allowlist is registered with torch once, when this module is imported (never per request:
torch keeps it in one process-wide set, and adding and removing entries around each load would
race between app sessions). It only affects class paths torch refuses by default.
"""
from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..workspace import file_lock  # noqa: F401 - used here and by models/library.py

# The classes a torchxrayvision DenseNet file holds (torch.save of xrv.models.DenseNet).
ALLOWED_CLASSES = (
    "torchxrayvision.models.DenseNet",
    "torchxrayvision.models._DenseBlock",
    "torchxrayvision.models._DenseLayer",
    "torchxrayvision.models._Transition",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.pooling.AvgPool2d",
    "torch.nn.modules.linear.Linear",
)


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


RECORDS = {path: type("Record_" + path.rsplit(".", 1)[1].lstrip("_"), (ModuleRecord,), {"source_class": path})
           for path in ALLOWED_CLASSES}
torch.serialization.add_safe_globals([(cls, path) for path, cls in RECORDS.items()])

MAX_DEPTH = 64


def _tensors_of(obj, prefix: str, out: dict, seen: set, depth: int) -> None:
    """Collect parameters and persistent buffers of a module record (or a real module) as a state dict."""
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


def read_state_dict(path: str | os.PathLike, expect: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a torchxrayvision weight file, read safely (see the module docstring).

    Accepts a pickled module whose classes are in ``ALLOWED_CLASSES`` (the DenseNets) or a plain
    state dict (the ResNet). ``expect``: the name to use in messages (e.g. ``xrv:densenet121-res224-all``).
    Raises CheckpointError naming the file, and the offending global when the file needs one
    outside the allowlist.
    """
    path = Path(path)
    what = f" for {expect}" if expect else ""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"Refused to load {path}{what}: it needs code outside the allowlist of classes torchxrayvision's weight "
            f"files contain ({exc_summary(exc)}). Nothing in it was run. The file is not a torchxrayvision weight "
            "file (or has been tampered with): delete it and download it again.") from None
    except (OSError, RuntimeError, EOFError, ValueError, TypeError, AttributeError, KeyError) as exc:
        raise CheckpointError(f"Could not read {path}{what} ({type(exc).__name__}: {str(exc)[:300]}); it may be "
                              "damaged or partial: delete it and download it again.") from None
    if isinstance(obj, (ModuleRecord, torch.nn.Module)):
        state: dict[str, torch.Tensor] = {}
        _tensors_of(obj, "", state, set(), 0)
    elif isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        state = {k: v.detach() for k, v in obj.items()}
    else:
        raise CheckpointError(f"{path}{what} holds a {type(obj).__name__}, not a torchxrayvision model or state dict; "
                              "delete it and download it again.")
    state.pop("op_threshs", None)  # xrv sets its operating points from its own table, never from the file
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


# What each weight set was trained on: torchxrayvision's model_urls descriptions and file names
# (nih-pc-chex-mimic_ch-google-openi-kaggle-..., pc-nih-rsna-siim-vin-...) and its README.
DATASETS = {
    "densenet121-res224-all": ["NIH ChestX-ray14", "PadChest", "CheXpert", "MIMIC-CXR (CheXpert labeler)",
                               "Google's NIH relabelling", "OpenI", "RSNA Pneumonia Challenge (Kaggle)"],
    "densenet121-res224-nih": ["NIH ChestX-ray14"],
    "densenet121-res224-pc": ["PadChest"],
    "densenet121-res224-chex": ["CheXpert"],
    "densenet121-res224-rsna": ["RSNA Pneumonia Challenge (Kaggle)"],
    "densenet121-res224-mimic_nb": ["MIMIC-CXR (NegBio labeler)"],
    "densenet121-res224-mimic_ch": ["MIMIC-CXR (CheXpert labeler)"],
    "resnet50-res512-all": ["PadChest", "NIH ChestX-ray14", "RSNA Pneumonia Challenge (Kaggle)",
                            "SIIM-ACR Pneumothorax", "VinDr-CXR"],
}


def library_version() -> str:
    try:
        from importlib.metadata import version

        return version("torchxrayvision")
    except Exception:  # noqa: BLE001 - metadata missing: the module's own attribute
        import torchxrayvision as xrv

        return str(getattr(xrv, "__version__", "unknown"))


def trained_on(weights: str) -> dict:
    """``Card.trained_on`` for torchxrayvision's weight set ``weights`` (e.g. ``densenet121-res224-all``)."""
    datasets = DATASETS.get(weights) or [f"torchxrayvision weights {weights}"]
    return {"kind": "library", "datasets": list(datasets),
            "summary": f"torchxrayvision {library_version()} pretrained weights {weights}: real radiographs of "
                       + ", ".join(datasets)}
