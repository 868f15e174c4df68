"""Library models used as they are: torchxrayvision's pretrained chest X-ray classifiers by name.

Every surface that takes a checkpoint (the pages, ``cxr predict / eval / localize / serve / train
--init``, ``Predictor``) also takes one of these names, e.g. ``xrv:densenet121-res224-all`` (the
short forms ``xrv:all``, ``xrv:nih`` … work too). No training is involved:

* **Weights** come from the library's own cache folder (``~/.torchxrayvision/models_data``, moved
  by ``CXR_XRV_CACHE_DIR``) under the library's own file name; a missing file is downloaded from
  the library's own URL into that folder with a progress bar when the host answers, otherwise a
  ConfigError names the file, the folder, the URL and the variable. Never a random model.
* **Safe loading**: the file is read through torch's ``weights_only`` unpickler with an explicit
  allowlist (:mod:`cxrcore.models.weights`, :mod:`cxrcore.models.xrv_family`), never with xrv's
  ``weights_only=False``.
* **Labels**: the outputs the weight set was trained on, named as NIH / CheXpert name them
  (through the synonym table); outputs it was not trained on (``''`` in xrv's label list, or no
  operating threshold) are dropped from the head, so they are never shown as predictions.
* **Thresholds**: xrv's operating points (``op_threshs``) are the card's thresholds ("library
  default" on the Thresholds page; edits are saved to a copy in the workspace).
* **Card**: made from the library's metadata (no file needed to read it); when the model is first
  loaded, the model is written once as an ordinary checkpoint (safetensors + card.json) under the
  workspace (``CXR_HOME/library/<name>``) and reused while the library's file is unchanged.
  Nothing is written next to the code.
"""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from ..errors import CheckpointError, ConfigError
from . import weights as weights_
from .card import Card, file_sha256, read_folder_card, save_checkpoint, write_folder_card
from .names import XRV_ALIASES as ALIASES
from .names import XRV_NAMES as NAMES
from .names import XRV_PREFIX as PREFIX
from .names import XRV_WEIGHT_SETS as WEIGHT_SETS  # noqa: F401 - where callers found it
from .weights import LibraryWeightsMissing  # noqa: F401 - where callers found it

LICENCE_NOTE = ("torchxrayvision's code is Apache-2.0. The weights were trained on the datasets listed; each has its "
                "own terms (e.g. CheXpert's and MIMIC-CXR's research-use agreements, PadChest's and VinDr-CXR's "
                "licences): check them before any use beyond research. Not a medical device.")


# ------------------------------------------------------------------------------------ names
def library_names() -> list[str]:
    """Every library model name, in display order (torchxrayvision's, then open_clip's; see models/clip.py).
    Imports neither library (nor torch) unless ``$CXR_CLIP_MODELS`` adds names to check."""
    from . import clip_names

    if not clip_names.extra_names_set():
        return list(NAMES) + list(clip_names.LISTED)
    from . import clip

    return list(NAMES) + clip.listed_names()


def library_ref(ref) -> str | None:
    """The canonical library model name ``ref`` stands for, or None when it is not a library name.

    A library name is a string ``xrv:<weights>`` (or an alias such as ``xrv:all``); an existing
    path always wins. A path whose last part is a library name and that does not exist counts too
    (callers that ``Path(...).resolve()`` a name before passing it on). Unknown ``xrv:`` names are
    a ConfigError listing the known ones.
    """
    if ref is None:
        return None
    text = str(ref).strip()
    if not text:
        return None
    path = Path(text).expanduser()
    if path.exists():
        return None
    from . import clip

    if clip.is_clip(text):  # open_clip models: clip:<model>/<tag>, clip:hf-hub:..., clip:local-dir:...
        return clip.clip_ref(text)
    for cand in (text, path.name):
        if cand.lower().startswith(PREFIX):
            key = PREFIX + cand[len(PREFIX):].strip()
            key = ALIASES.get(key, key)
            if key in NAMES:
                return key
            raise ConfigError(f"Unknown library model {cand!r}. Library models: {', '.join(NAMES)} "
                              f"(short forms: {', '.join(ALIASES)}).")
    return None


def slug(name: str) -> str:
    """A folder name for a library model (``xrv:densenet121-res224-all`` -> ``xrv-densenet121-res224-all``)."""
    from . import clip_names

    return clip_names.slug(name) if clip_names.is_clip(name) else name.replace(":", "-")


def _weights_name(name: str) -> str:
    return name[len(PREFIX):]


# ----------------------------------------------------------------------------------- status
def library_status(name: str) -> dict:
    """Where a library model's weights are and whether they are cached (nothing is read or fetched).

    {"name", "title", "library", "cached", "file", "folder", "path", "url", "env", "datasets"}
    """
    from . import clip
    from .registry import weights_location
    from .xrv_family import DATASETS, XRV_CACHE_ENV

    key = library_ref(name) or name
    if clip.is_clip(key):
        return clip.status(key)
    if key not in NAMES:
        raise ConfigError(f"Unknown library model {name!r}. Library models: {', '.join(NAMES)}.")
    loc = weights_location(key)
    return {"name": key, "title": f"{key} (torchxrayvision, pretrained)", "library": "torchxrayvision",
            "cached": bool(loc.cached), "file": loc.file, "folder": str(loc.folder), "path": str(loc.path),
            "url": loc.url, "env": XRV_CACHE_ENV, "datasets": list(DATASETS.get(_weights_name(key), []))}


def library_models() -> list[dict]:
    """:func:`library_status` of every library model."""
    return [library_status(n) for n in NAMES]


def missing_message(status: dict, reason: str = "") -> str:
    if status.get("library") == "open_clip":
        from .clip import missing_message as clip_message

        return clip_message(status, reason)
    return (f"The torchxrayvision weights for {status['name']} are not on this machine"
            f"{reason or ''}. Put the file {status['file']} into the folder {status['folder']} "
            f"(download it from {status['url']} on a machine that is online, e.g. "
            f"`curl -L -o {status['path']} {status['url']}`). {status['env']} moves that folder "
            "(default ~/.torchxrayvision/models_data).")


def fetch_weights(name: str, progress=None) -> Path:
    """The library's cached file for ``name``: downloaded first (library URL and folder; progress
    ``(done_bytes, total_bytes)``, a tqdm bar on stderr when None) when missing and the host answers;
    LibraryWeightsMissing (a ConfigError) naming file, folder, URL and variable otherwise."""
    from urllib.parse import urlparse

    from . import clip

    if clip.is_clip(name):
        return clip.fetch_weights(library_ref(name))
    status = library_status(name)
    path = Path(status["path"])
    if status["cached"]:
        return path
    host = urlparse(status["url"]).hostname
    if not weights_.online(status["url"]):
        raise LibraryWeightsMissing(missing_message(status, f" and {host} cannot be reached (offline?)"), status)
    try:
        return weights_.download(status["url"], path, progress or weights_.tqdm_progress(f"downloading {status['file']}"))
    except Exception as exc:  # noqa: BLE001 - network / disk errors of any kind
        raise LibraryWeightsMissing(missing_message(status, f"; downloading it failed ({type(exc).__name__}: "
                                                            f"{str(exc)[:200]})"), status) from exc


# -------------------------------------------------------------------------------------- card
def _display_label(x: str) -> str:
    """xrv's output name as NIH (first) or CheXpert spell it, through the synonym table."""
    from ..labels import CHEXPERT14, NIH14, find_label

    for space in (NIH14, CHEXPERT14):
        i = find_label(x, space)
        if i is not None:
            return space[i]
    return x


def trained_outputs(name: str) -> list[tuple[int, str, str, float | None]]:
    """(xrv output index, xrv name, our name, operating threshold) of the outputs the weight set was
    trained on: a name in xrv's list ('' = unused output) and, where xrv has operating points, a
    finite one (the ResNet lists all 18 names but has none for the two its datasets never label)."""
    from .xrv_family import xrv_info

    info = xrv_info(_weights_name(name))
    op = list(info.get("op_threshs") or [])
    out = []
    for i, x in enumerate(info["labels"]):
        t = float(op[i]) if i < len(op) and op[i] is not None else None
        if not x or (op and (t is None or math.isnan(t))):
            continue
        out.append((i, x, _display_label(x), t))
    return out


def library_card(name: str, source: dict | None = None):
    """The card of a library model, from the library's metadata (no weight file needed)."""
    from ..data.preprocess import Preprocess
    from . import clip
    from .registry import spec_for
    from .xrv_family import library_version, trained_on, xrv_info

    name = library_ref(name) or name
    if clip.is_clip(name):
        return clip.card_for(name, source=source)
    weights = _weights_name(name)
    info = xrv_info(weights)
    outs = trained_outputs(name)
    size = int(info.get("input_resolution", 512 if weights.startswith("resnet") else 224))
    prep = Preprocess(size=size, fit="crop", norm="xrv", channels=1)
    status = library_status(name)
    defaults = {ours: float(t) for _, _, ours, t in outs if t is not None}
    unused = [x or f"output {i}" for i, x in enumerate(info["labels"]) if i not in {o[0] for o in outs}]
    library = {"name": "torchxrayvision", "version": library_version(), "weights": weights, "file": status["file"],
               "url": status["url"], "default_thresholds": defaults, "threshold_origin": "op_threshs",
               "xrv_labels": {ours: x for _, x, ours, _ in outs}, "unused_outputs": unused,
               "description": info.get("description", ""), "licence": LICENCE_NOTE, **(source or {})}
    notes = [
        f"Pretrained torchxrayvision {library_version()} model {weights}, used as it is (no training here).",
        f"Preprocessing as torchxrayvision's: one channel scaled to [-1024, 1024], center crop to a square, "
        f"{size}x{size} px.",
        "Thresholds: torchxrayvision's operating points (op_threshs) unless you saved your own.",
        "Outputs the weight set was not trained on are not part of this model: " + (", ".join(unused) or "none") + ".",
        LICENCE_NOTE,
    ]
    return Card(labels=[o[2] for o in outs], model=spec_for(name, "hub"), preprocess=prep.to_dict(),
                thresholds=dict(defaults), training={"library": library}, data={}, name=name, notes=notes,
                trained_on=trained_on(weights))


def default_thresholds(card) -> dict[str, float]:
    """The library's own thresholds recorded in a library model's card (or a copy of it); {} otherwise."""
    return dict(((card.training or {}).get("library") or {}).get("default_thresholds") or {})


def _rounded(values) -> list:
    return [round(float(v), 3) for v in (values or [])]


def describe_card(card) -> dict:
    """What a page or the CLI shows next to a model's predictions: name, source, data, licence, labels, input."""
    lib = (card.training or {}).get("library") or {}
    prep = card.preprocess or {}
    out = {"name": card.name, "trained on": (card.trained_on or {}).get("summary", "")}
    if lib.get("name") == "open_clip":
        from .clip import describe

        out.update(describe(card))
        lib = {**lib, "_clip": True}
    elif lib:
        out["source"] = f"torchxrayvision {lib.get('version', '')}, weights {lib.get('weights', '')} ({lib.get('url', '')})"
        out["licence"] = lib.get("licence", LICENCE_NOTE)
    out["labels"] = ", ".join(card.labels)
    out["input"] = (f"{prep.get('size')} px, {prep.get('fit')}, "
                    + ("one channel scaled to [-1024, 1024] (torchxrayvision)" if prep.get("norm") == "xrv"
                       else f"{prep.get('channels', 3)} channels, mean {_rounded(prep.get('mean'))} / sd {_rounded(prep.get('std'))}"
                       if prep.get("norm") == "stats" else f"{prep.get('channels', 3)} channels, ImageNet mean/std"))
    if lib:
        saved = {k: v for k, v in card.thresholds.items() if lib.get("default_thresholds", {}).get(k) != v}
        origin = "0.5 (open_clip has no operating points)" if lib.get("_clip") else "torchxrayvision's op_threshs"
        out["thresholds"] = (f"library default ({origin})" if not saved else
                             f"yours for {', '.join(sorted(saved))}; library default for the rest")
    return out


# ------------------------------------------------------------------------- the checkpoint
def _fingerprint(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def library_folder(name: str) -> Path:
    """Where the model made from the library's file is kept (under the workspace)."""
    from .. import workspace

    return workspace.sub("library") / slug(library_ref(name) or name)


def card_stamp(ref) -> tuple:
    """What changes when the model behind ``ref`` (a checkpoint folder or a library name) changes: its
    card file's modification time and size (thresholds saved, weights rewritten: the card holds their
    hash). ``()`` while a library model's card is not made yet. Cache keys of the app use it."""
    name = library_ref(ref)
    p = (library_folder(name) if name else Path(ref)) / "card.json"
    try:
        s = p.stat()
    except OSError:
        return ()
    return (s.st_mtime_ns, s.st_size)


def _current(folder: Path, source: Path):
    """The card in ``folder`` when it was made from ``source`` as it is now, else None."""
    if not ((folder / "card.json").is_file() and (folder / "weights.safetensors").is_file()):
        return None
    try:
        card = read_folder_card(folder)
    except CheckpointError:
        return None
    lib = (card.training or {}).get("library") or {}
    fp = _fingerprint(source)
    if lib.get("size") == fp["size"] and lib.get("mtime_ns") == fp["mtime_ns"]:
        return card
    return None


def materialize(name: str, progress=None) -> Path:
    """The library model as an ordinary checkpoint folder in the workspace, made (once per version of
    the library's file) from that file, fetched first if needed (see :func:`fetch_weights`)."""
    from .registry import build_model

    name = library_ref(name) or name
    source = fetch_weights(name, progress)
    folder = library_folder(name)
    if _current(folder, source) is not None:
        return folder
    with weights_.file_lock(folder.with_name("." + folder.name + ".lock")):
        if _current(folder, source) is not None:  # made by another session meanwhile
            return folder
        fp = _fingerprint(source)
        from . import clip

        if clip.is_clip(name):  # the zero-shot model with the default prompts (models/clip.py)
            return clip.make_zero_shot(name, folder, source={"sha256": file_sha256(source), **fp})
        card = library_card(name, {"sha256": file_sha256(source), **fp})
        model = build_model(name, len(card.labels), "hub", labels=card.labels)
        report = model.head_swap_report
        if report is None or report.new:
            raise CheckpointError(f"Could not map {name}'s outputs to {card.labels}: new rows {report and report.new}.")
        save_checkpoint(folder, model.state_dict(), card)
    return folder


def resolve(ref, progress=None) -> Path:
    """A checkpoint folder for ``ref``: a library name is made into one (see :func:`materialize`)."""
    name = library_ref(ref)
    return materialize(name, progress) if name else Path(ref)


def read_library_card(name: str):
    """A library model's card: the made checkpoint's (it may hold saved calibration) when current,
    else the one built from the library's metadata."""
    name = library_ref(name) or name
    source = Path(library_status(name)["path"])
    card = _current(library_folder(name), source) if source.is_file() else None
    return card if card is not None else library_card(name)


def editable_copy(ref, progress=None) -> Path:
    """A copy of a library model in the workspace's ``checkpoints/`` (as for shipped models), where
    thresholds and temperatures are saved; made on first use, reused afterwards."""
    from .. import workspace

    name = library_ref(ref)
    if name is None:
        return Path(ref)
    target = workspace.sub("checkpoints") / slug(name)
    if (target / "card.json").is_file() and (target / "weights.safetensors").is_file():
        return target
    folder = materialize(name, progress)
    with weights_.file_lock(target.with_name("." + target.name + ".lock")):  # two sessions saving at once: one copy
        if (target / "card.json").is_file() and (target / "weights.safetensors").is_file():
            return target
        tmp = target.with_name(target.name + ".copy")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(folder, tmp)
        card = read_folder_card(tmp)
        card.name = f"{name} (your thresholds)"
        write_folder_card(tmp, card)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    return target
