"""Backbones by name through timm, torchvision and torchxrayvision, and head swaps that keep
the rows of shared labels.

Names: a timm name as is (``resnet18``, ``vit_small_patch16_224``; ``timm:`` may prefix it),
torchvision classifiers with ``tv:`` (``tv:resnet50``, ``tv:densenet121``, ``tv:efficientnet_b0``,
``tv:convnext_tiny``, ``tv:vit_b_16``) and torchxrayvision's chest X-ray models with ``xrv:``
(``xrv:densenet121-res224-all`` / ``-nih`` / ``-chex`` / ``-pc`` / ``-mimic_ch`` / ``-mimic_nb`` /
``-rsna``, ``xrv:resnet50-res512-all``). torchvision and xrv models come wrapped
(:mod:`cxrcore.models.wrappers`) so that every model offers timm's interface.

A model spec is a plain dict stored in the checkpoint card::

    {"library": "timm" | "torchvision" | "xrv", "arch": "tv:resnet50", "kwargs": {...}, "pretrained": "hub"}

``pretrained``:

* ``none``: random initialisation (only when asked for; allowed for every library, xrv too).
* ``hub``: the library's own pretrained weights, through the library's own loading code and
  cache (``timm`` is accepted as an alias, for any library). timm: the Hugging Face hub cache
  (``HF_HUB_CACHE``); torchvision: ``weights="DEFAULT"`` through torch.hub's cache
  (``$TORCH_HOME/hub/checkpoints``); xrv: its cache folder (``~/.torchxrayvision/models_data``,
  moved by ``CXR_XRV_CACHE_DIR``, which is passed as xrv's ``cache_dir``).
* ``auto``: ``hub`` for xrv names (they name pretrained chest X-ray models: random weights would
  make the baseline meaningless), ``none`` for timm and torchvision.

A cached file is loaded without touching the network. A missing one is downloaded by the
library only when its server answers within two seconds; otherwise a ConfigError names the file,
the folder to place it in and the environment variable that moves that folder. Never a silent
random initialisation.

Rebuilding a saved model (:func:`model_from_spec`) never downloads or loads pretrained weights:
they come from the checkpoint.

Building is safe in a server whose sessions are threads of one process: no library global is
patched while a model is built. A cached timm file is loaded through timm's own file loader
(``pretrained_cfg_overlay={"file": ...}``, no hub call); meta-device checks use a thread-local
torch-function mode (:func:`on_meta`) and, for builders that cannot run on meta, torch's
parameter / buffer registration hooks gated by a thread-local flag (:func:`params_on_meta`).
"""
from __future__ import annotations

import difflib
import functools
import math
import os
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from ..errors import ConfigError
from ..labels import canonical
from . import xrv_weights  # noqa: F401 - registers the allowlist for xrv's weight files with torch, once
from .wrappers import TorchvisionWrapper, XRVWrapper, torchvision_family

PRETRAINED_CHOICES = ("none", "hub", "timm", "auto")
LIBRARIES = ("timm", "torchvision", "xrv", "open_clip")
PREFIXES = {"timm": "timm", "tv": "torchvision", "torchvision": "torchvision", "xrv": "xrv", "clip": "open_clip"}
SHORT = {"timm": "", "torchvision": "tv:", "xrv": "xrv:", "open_clip": "clip:"}
XRV_CACHE_ENV = "CXR_XRV_CACHE_DIR"
XRV_BASE_URL_ENV = "CXR_XRV_BASE_URL"  # optional mirror of torchxrayvision's release downloads
ONLINE_TIMEOUT_S = 2.0


# ----------------------------------------------------------------------------------- names
def split_arch(arch: str) -> tuple[str, str]:
    """``"tv:resnet50"`` -> ``("torchvision", "resnet50")``; no prefix -> timm. No validation."""
    arch = str(arch).strip()
    if ":" in arch:
        prefix, name = arch.split(":", 1)
        if prefix.lower() in PREFIXES:
            return PREFIXES[prefix.lower()], name.strip()
        raise ConfigError(f"Unknown model library prefix {prefix!r} in {arch!r}: use a timm name as is, "
                          "tv:<name> for torchvision, xrv:<name> for torchxrayvision or clip:<model>/<tag> for open_clip.")
    return "timm", arch


def xrv_names() -> list[str]:
    """torchxrayvision's pretrained chest X-ray models (its weights names, without the short aliases)."""
    import torchxrayvision as xrv

    return [k for k in xrv.models.model_urls if k.startswith(("densenet", "resnet"))]


def tv_names() -> list[str]:
    from torchvision import models as tvm

    return list(tvm.list_models(module=tvm))  # classification models only


def _close(name: str, names: list[str], n: int = 8) -> list[str]:
    near = difflib.get_close_matches(name, names, n=n, cutoff=0.5)
    stem = name.replace("-", "_").split("_")[0]
    more = [x for x in names if stem and stem in x and x not in near]
    return (near + more)[:n]


def parse_arch(arch: str) -> tuple[str, str]:
    """(library, name) for a name the library knows; ConfigError with suggestions otherwise."""
    lib, name = split_arch(arch)
    if lib == "open_clip":  # CLIP image towers through open_clip (models/clip.py)
        from .clip import PREFIX, clip_ref

        return lib, clip_ref(arch)[len(PREFIX):]
    if lib == "timm":
        if timm.is_model(name):
            return lib, name
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8] if name else []
        elsewhere = [f"tv:{name}"] if name in tv_names() else []
        elsewhere += [f"xrv:{x}" for x in _close(name, xrv_names(), 3)] if "res" in name and "-" in name else []
        hint = f" Did you mean {', '.join(elsewhere)}?" if elsewhere else ""
        raise ConfigError(
            f"Unknown architecture {arch!r}.{hint} timm knows e.g. {', '.join(close) or 'resnet18, densenet121'}; "
            "`python -c \"import timm; print(timm.list_models())\"` lists all. torchvision models take the prefix "
            "tv: (tv:resnet50), torchxrayvision's the prefix xrv: (xrv:densenet121-res224-all)."
        )
    if lib == "torchvision":
        names = tv_names()
        if name in names:
            return lib, name
        close = _close(name, names)
        raise ConfigError(
            f"Unknown torchvision architecture {arch!r}. torchvision knows e.g. "
            f"{', '.join('tv:' + x for x in close) or 'tv:resnet50, tv:densenet121, tv:efficientnet_b0'}; "
            "`python -c \"import torchvision; print(torchvision.models.list_models(module=torchvision.models))\"` "
            "lists all."
        )
    names = xrv_names()
    if name in names:
        return lib, name
    raise ConfigError(f"Unknown torchxrayvision model {arch!r}. It offers "
                      f"{', '.join('xrv:' + x for x in names)}.")


def library_of(arch: str) -> str:
    return split_arch(arch)[0]


def resolve_pretrained(arch: str, pretrained: str) -> str:
    """``none`` or ``hub`` for ``arch`` (``timm`` is an alias of ``hub``; ``auto``: hub for xrv only)."""
    p = str(pretrained or "none").strip().lower()
    if p not in PRETRAINED_CHOICES:
        raise ConfigError(f"pretrained must be one of {PRETRAINED_CHOICES}, not {pretrained!r}.")
    if p == "timm":
        return "hub"
    if p == "auto":
        if library_of(arch) == "open_clip":  # a name with a pretrained tag names pretrained weights
            from .clip import clip_ref, has_weights

            return "hub" if has_weights(clip_ref(arch)) else "none"
        return "hub" if library_of(arch) == "xrv" else "none"
    return p


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


def _hf_cache_dir() -> Path:
    """huggingface_hub's cache folder, read now (its constants are read once, at import)."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE).expanduser()


def _torch_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"  # $TORCH_HOME/hub/checkpoints, read now


def xrv_cache_dir() -> Path:
    """torchxrayvision's weights folder: ``$CXR_XRV_CACHE_DIR`` or xrv's ``~/.torchxrayvision/models_data``."""
    if os.environ.get(XRV_CACHE_ENV):
        return Path(os.environ[XRV_CACHE_ENV]).expanduser()
    import torchxrayvision as xrv

    return Path(xrv.utils.get_cache_dir())


def _url_file(url: str) -> str:
    return os.path.basename(urlparse(url).path)


def weights_location(arch: str) -> WeightsLocation:
    """Where ``arch``'s pretrained weights are looked for (ConfigError if the library has none)."""
    lib, name = parse_arch(arch)
    if lib == "open_clip":
        from . import clip

        return clip.weights_location(clip.PREFIX + name)
    if lib == "timm":
        cfg = timm.models.get_pretrained_cfg(name)
        hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        url = getattr(cfg, "url", None) if cfg is not None else None
        if hub_id:
            import huggingface_hub

            repo, _, revision = hub_id.partition("@")
            cache = _hf_cache_dir()
            files = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else ["model.safetensors",
                                                                                          "pytorch_model.bin"]
            for f in files:
                hit = huggingface_hub.try_to_load_from_cache(repo, f, cache_dir=cache, revision=revision or None)
                if isinstance(hit, str):
                    return WeightsLocation(lib, f, Path(hit), cache, f"https://huggingface.co/{repo}", "HF_HUB_CACHE",
                                           True, repo)
            path = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / "<commit>" / files[0]
            return WeightsLocation(lib, files[0], path, cache, f"https://huggingface.co/{repo}/resolve/main/{files[0]}",
                                   "HF_HUB_CACHE (or HF_HOME)", False, repo)
        if url:
            folder = _torch_checkpoints()
            f = _url_file(url)
            return WeightsLocation(lib, f, folder / f, folder, url, "TORCH_HOME (the folder is $TORCH_HOME/hub/checkpoints)",
                                   (folder / f).is_file())
        raise ConfigError(f"timm has no pretrained weights for {name}; choose --pretrained none or another model.")
    if lib == "torchvision":
        from torchvision import models as tvm

        try:
            weights = tvm.get_model_weights(name).DEFAULT
        except (ValueError, AttributeError, KeyError) as exc:
            raise ConfigError(f"torchvision has no pretrained weights for {name}; choose --pretrained none.") from exc
        folder = _torch_checkpoints()
        f = _url_file(weights.url)
        return WeightsLocation(lib, f, folder / f, folder, weights.url,
                               "TORCH_HOME (the folder is $TORCH_HOME/hub/checkpoints)", (folder / f).is_file(),
                               note=f" (weights {weights})")
    import torchxrayvision as xrv

    url = xrv.models.model_urls[name]["weights_url"]
    folder = xrv_cache_dir()
    f = _url_file(url)
    if os.environ.get(XRV_BASE_URL_ENV):  # a mirror of xrv's release files (same file names)
        url = os.environ[XRV_BASE_URL_ENV].rstrip("/") + "/" + f
    return WeightsLocation(lib, f, folder / f, folder, url,
                           f"{XRV_CACHE_ENV} (cxrcore's; passed to xrv as cache_dir; default ~/.torchxrayvision/models_data)",
                           (folder / f).is_file())


def _online(url: str, timeout: float = ONLINE_TIMEOUT_S) -> bool:
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


def _require_weights(arch: str) -> WeightsLocation:
    """The location, when the file is cached or can be downloaded now; else ConfigError naming it."""
    loc = weights_location(arch)
    if loc.cached or _online(loc.url):
        return loc
    raise ConfigError(
        f"Pretrained weights for {arch} ({loc.library}) are not on this machine and {urlparse(loc.url).hostname} "
        f"cannot be reached (offline?). {loc.describe()} Or choose --pretrained none to start from random weights."
    )


def _load_failed(arch: str, loc: WeightsLocation, exc: Exception) -> ConfigError:
    return ConfigError(f"Pretrained weights for {arch} could not be loaded from {loc.path} "
                       f"({type(exc).__name__}: {str(exc)[:300]}). Replace the file (it may be damaged or partial): "
                       f"{loc.describe()} Or choose --pretrained none.")


def _options_error(arch: str, kwargs: dict, exc: Exception) -> ConfigError:
    return ConfigError(f"Architecture {arch} does not accept the options {kwargs}: {exc or type(exc).__name__}. "
                       "Remove them (e.g. output_stride is only for ResNet/RegNet-like timm backbones).")


# ------------------------------------------------------------------------------- building
def build_model(arch: str, num_labels: int, pretrained: str = "none", kwargs: dict | None = None,
                labels: list[str] | None = None) -> nn.Module:
    """A model with ``num_labels`` raw-logit outputs and timm's interface.

    ``labels`` (the target label names, optional): for xrv models with their pretrained weights,
    the new head's rows for labels shared with xrv's pathologies (through synonyms) are copied
    from xrv's classifier; ``model.head_swap_report`` tells which.
    """
    kwargs = dict(kwargs or {})
    lib, name = parse_arch(arch)
    mode = resolve_pretrained(arch, pretrained)
    if labels is not None and len(labels) != num_labels:
        raise ConfigError(f"{len(labels)} label names given for a head of {num_labels} outputs.")
    if lib == "timm":
        return _build_timm(arch, name, num_labels, mode, kwargs)
    if lib == "torchvision":
        return _build_tv(arch, name, num_labels, mode, kwargs)
    if lib == "open_clip":  # image tower + linear head; with pretrained weights and labels: the zero-shot head
        from . import clip

        return clip.build(clip.PREFIX + name, num_labels, mode, kwargs, labels)
    return _build_xrv(arch, name, num_labels, mode, kwargs, labels)


def _build_timm(arch: str, name: str, n: int, mode: str, kwargs: dict) -> nn.Module:
    loc = _require_weights(arch) if mode == "hub" else None
    extra: dict = {}
    if loc is not None and loc.cached:
        # The cached file through timm's own file loader (pretrained_cfg's ``file``): no hub call, and
        # no process-wide offline switch that other sessions' threads would see.
        extra["pretrained_cfg_overlay"] = {"file": str(loc.path), "source": ""}
    elif loc is not None and loc.hf_repo:
        extra["cache_dir"] = str(loc.folder)  # not cached, host reachable: the hub client downloads into it
    try:
        return timm.create_model(name, pretrained=loc is not None, num_classes=n, **extra, **kwargs)
    except (TypeError, AssertionError, NotImplementedError) as exc:
        raise _options_error(arch, kwargs, exc) from exc
    except Exception as exc:
        if loc is not None:
            raise _load_failed(arch, loc, exc) from exc
        if kwargs and isinstance(exc, (OSError, RuntimeError, ValueError)):
            raise _options_error(arch, kwargs, exc) from exc
        raise


def _build_tv(arch: str, name: str, n: int, mode: str, kwargs: dict) -> nn.Module:
    from torchvision import models as tvm

    loc = _require_weights(arch) if mode == "hub" else None
    try:
        net = tvm.get_model(name, weights="DEFAULT" if loc is not None else None, **kwargs)
    except (TypeError, AssertionError, NotImplementedError) as exc:
        raise _options_error(arch, kwargs, exc) from exc
    except Exception as exc:
        if loc is not None:
            raise _load_failed(arch, loc, exc) from exc
        if kwargs and isinstance(exc, (RuntimeError, ValueError)):
            raise _options_error(arch, kwargs, exc) from exc
        raise
    family = torchvision_family(net)
    if family is None:
        raise ConfigError(f"tv:{name} ({type(net).__name__}) has no feature map + linear head the app can use; "
                          "supported torchvision families: ResNet/ResNeXt/Wide-ResNet, RegNet, DenseNet, EfficientNet, "
                          "MobileNet v2/v3, ConvNeXt, VGG, AlexNet and ViT.")
    model = TorchvisionWrapper(f"tv:{name}", net, family)
    model.reset_classifier(n)
    return model


def _xrv_info(name: str) -> dict:
    import torchxrayvision as xrv

    return xrv.models.model_urls[name]


def _xrv_random(name: str) -> nn.Module:
    """xrv's module for ``name`` with random weights, no file read (xrv's own constructor for the
    DenseNet; its ResNet cannot be built without weights, so it is assembled as xrv.models.ResNet
    does, minus the loading)."""
    import torchvision
    import torchxrayvision as xrv

    info = _xrv_info(name)
    if name.startswith("densenet"):
        return xrv.models.DenseNet(weights=None, num_classes=len(info["labels"]))
    net = xrv.models.ResNet.__new__(xrv.models.ResNet)
    nn.Module.__init__(net)
    net.weights, net.apply_sigmoid, net.weights_dict = name, False, info
    net.targets = info["labels"]
    net.pathologies = net.targets
    builder = torchvision.models.resnet101 if name.startswith("resnet101") else torchvision.models.resnet50
    net.model = builder(num_classes=len(info["labels"]), weights=None)
    net.model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)  # xrv: single channel
    net.register_buffer("op_threshs", None)
    if "input_resolution" in info:
        net.input_resolution = info["input_resolution"]
    return net


def xrv_weights_file(arch: str, progress=None) -> Path:
    """The library's cached weight file for an ``xrv:`` name; downloaded first (xrv's URL, into xrv's
    folder, ``progress(done_bytes, total_bytes)``, a tqdm bar when None) when missing and the host
    answers; ConfigError naming file, folder, URL and variable when offline."""
    loc = _require_weights(arch)
    if not loc.cached:
        from .xrv_weights import download, tqdm_progress

        try:
            download(loc.url, loc.path, progress or tqdm_progress(f"downloading {loc.file}"))
        except Exception as exc:  # noqa: BLE001 - network / disk errors of any library
            raise ConfigError(f"Downloading the weights for {arch} failed ({type(exc).__name__}: {str(exc)[:200]}). "
                              f"{loc.describe()}") from exc
    return loc.path


def _build_xrv(arch: str, name: str, n: int, mode: str, kwargs: dict, labels: list[str] | None) -> nn.Module:
    if kwargs:
        raise ConfigError(f"torchxrayvision models take no options; remove {kwargs}.")
    info = _xrv_info(name)
    net = _xrv_random(name)
    if mode == "hub":
        from .xrv_weights import read_state_dict, trained_on

        path = xrv_weights_file(arch)
        # Read through torch's weights_only unpickler with an allowlist (xrv itself unpickles the
        # file with weights_only=False, which would run any code it names).
        state = read_state_dict(path, arch)
        target = net if name.startswith("densenet") else net.model  # xrv's ResNet file is its inner torchvision model
        try:
            target.load_state_dict(state)
        except RuntimeError as exc:
            raise _load_failed(arch, weights_location(arch), exc) from exc
    thr = {lab: float(t) for lab, t in zip(info["labels"], info.get("op_threshs") or []) if lab and not math.isnan(t)}
    # Our head replaces xrv's: its operating points do not apply to it, and a None buffer keeps the
    # state dict the same whichever way the module was built.
    net.op_threshs = None
    model = XRVWrapper(f"xrv:{name}", net, name, info["labels"], thr)
    if mode == "hub":
        model.trained_on = trained_on(name)  # the trainer records what the library weights saw
    if mode == "hub" and labels is not None:
        report = swap_head(model, list(info["labels"]), list(labels))
        report.dropped = [x for x in report.dropped if x]  # '' = an output xrv leaves unused
        model.head_swap_report = report
    else:
        model.reset_classifier(n)
    return model


def check_architecture(arch: str, pretrained: str = "none", kwargs: dict | None = None, size: int | None = None,
                       channels: int = 3) -> None:
    """Raise ConfigError now for an architecture / options that would fail at training time.

    Builds the model on the meta device: no memory, no weights, no download. With pretrained
    weights asked for, also checks that the library has some (not that they are cached).
    Thread-safe: nothing global changes (see :func:`on_meta`), so app sessions can check and
    build models at the same time.
    """
    mode = resolve_pretrained(arch, pretrained)
    parse_arch(arch)
    if mode == "hub":
        weights_location(arch)
    try:
        with on_meta():
            build_model(arch, 2, "none", kwargs)
    except (ConfigError, NotImplementedError, RuntimeError) as exc:
        if "meta" not in str(exc.__cause__ or exc):
            raise
        # A builder that computes its layer sizes with tensors (torchvision's RegNet: torch.arange
        # ... .tolist()) cannot run on the meta device: build it on the CPU, each parameter and
        # buffer moved to meta as soon as it is registered (a full-size model is never allocated).
        with params_on_meta():
            build_model(arch, 2, "none", kwargs)
        return
    if size is not None and library_of(arch) == "open_clip":  # CLIP's positional embedding: its own size only
        side = arch_facts(arch)["input_size"]
        if int(size) != side:
            raise ConfigError(f"{arch} takes {side} px images only (its patch grid is fixed); set the image size to {side}.")
    if size is not None and library_of(arch) == "timm":
        # Run the model at the configured size (meta tensors: no compute), so a size it cannot take is
        # refused now, not at the first training step.
        why = _forward_error(arch, dict(kwargs or {}), int(size), channels)
        if why is not None:
            facts = arch_facts(arch)
            hint = (f"it takes {facts['input_size']} px images only; set the image size to {facts['input_size']}"
                    if facts["fixed_size"] else f"its native size is {facts['input_size']} px")
            raise ConfigError(f"{arch} cannot take {size} px images ({why}): {hint}.")


class _MetaDeviceMode(TorchFunctionMode):
    """``torch.device("meta")`` as a context manager, minus its process-wide side effect.

    torch's own device context pushes a mode on this thread's torch-function mode stack (thread
    local) but also sets the module global ``torch.utils._device.CURRENT_DEVICE`` on enter and
    restores it on exit; two threads interleaving enter/exit can leave it at "meta" for
    everyone (torch.compile guards read it). This mode only does the thread-local part: tensor
    constructors called without a device make meta tensors.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _DEVICE_CONSTRUCTORS and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def _device_constructors() -> frozenset:
    try:
        from torch.utils._device import _device_constructors as constructors

        return frozenset(constructors())
    except (ImportError, AttributeError):  # a torch without the private list: the common constructors
        return frozenset({torch.empty, torch.empty_strided, torch.zeros, torch.ones, torch.full, torch.arange,
                          torch.rand, torch.randn, torch.randint, torch.tensor, torch.as_tensor, torch.linspace,
                          torch.eye, torch.scalar_tensor})


_DEVICE_CONSTRUCTORS = _device_constructors()


def on_meta():
    """A context in which this thread builds models on the meta device (other threads are unaffected)."""
    return _MetaDeviceMode()


_META_PARAMS = threading.local()


def _param_to_meta(module, name, param):
    if getattr(_META_PARAMS, "on", False) and param is not None and param.device.type != "meta":
        return nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
    return None


def _buffer_to_meta(module, name, tensor):
    if getattr(_META_PARAMS, "on", False) and tensor is not None and tensor.device.type != "meta":
        return tensor.to("meta")
    return None


# torch's registration hooks, registered once when this module is imported; they do something
# only on a thread inside params_on_meta() (a thread-local flag), so building a model never
# changes anything global.
nn.modules.module.register_module_parameter_registration_hook(_param_to_meta)
nn.modules.module.register_module_buffer_registration_hook(_buffer_to_meta)


@contextmanager
def params_on_meta():
    """On this thread only: every parameter and buffer a module registers is moved to meta at once."""
    before = getattr(_META_PARAMS, "on", False)
    _META_PARAMS.on = True
    try:
        yield
    finally:
        _META_PARAMS.on = before


def spec_for(arch: str, pretrained: str = "none", kwargs: dict | None = None) -> dict:
    """The model spec stored in a checkpoint card for a model built by ``build_model``."""
    spec = {"library": library_of(arch), "arch": arch, "kwargs": dict(kwargs or {}),
            "pretrained": resolve_pretrained(arch, pretrained)}
    if spec["library"] == "open_clip":  # open_clip's image-tower config: rebuilt offline, whatever is registered
        from . import clip

        spec["arch"] = clip.clip_ref(arch)
        spec["open_clip"] = clip.vision_spec(spec["arch"])
    return spec


def preprocess_for(arch: str, channels: int = 3) -> dict:
    """Preprocess options (``norm``, ``channels``, ``mean`` / ``std``) the architecture expects; {} = the
    defaults (ImageNet mean / sd, 3 channels).

    xrv models take one channel scaled to [-1024, 1024]. timm models are normalised with the mean and
    sd of their own pretrained configuration (ViTs: 0.5 / 0.5), ``channels`` 1 when built with
    ``in_chans=1``. Native sizes (224 for the xrv DenseNets, 512 for its ResNet) are not imposed: the
    image size stays the trainer's choice unless the model only takes one (:func:`arch_facts`).
    """
    if library_of(arch) == "xrv":
        return {"norm": "xrv", "channels": 1}
    if library_of(arch) == "open_clip":  # CLIP's own mean / sd (open_clip's preprocess config), 3 channels
        from .clip import clip_ref, vision_spec

        vs = vision_spec(clip_ref(arch))
        return {"norm": "stats", "mean": tuple(vs["mean"]), "std": tuple(vs["std"]), "stats_from": "model"}
    facts = arch_facts(arch) if library_of(arch) == "timm" else {}
    mean, std = facts.get("mean"), facts.get("std")
    out: dict = {} if channels == 3 else {"channels": 1}
    if mean and std and (tuple(mean) != IMAGENET_MEAN or tuple(std) != IMAGENET_STD):
        out.update(norm="stats", mean=tuple(mean), std=tuple(std), stats_from="model")
    elif channels == 1:
        # one channel: the gray image goes through the mean / sd of ImageNet's channels averaged
        out.update(norm="stats", mean=(sum(IMAGENET_MEAN) / 3,), std=(sum(IMAGENET_STD) / 3,), stats_from="model")
    return out


@functools.lru_cache(maxsize=512)
def arch_facts(arch: str) -> dict:
    """What an architecture takes, from its own configuration (timm's ``pretrained_cfg``; the wrappers'
    specs): ``input_size`` (its native side in pixels), ``fixed_size`` (True when it takes no other,
    e.g. a ViT's fixed patch grid), ``output_stride`` (it accepts output_stride=16 for finer heatmaps),
    ``one_channel`` (it can be built with ``in_chans=1``), ``mean`` / ``std`` (its input normalisation).
    Found by building the model on the meta device (no memory, no weights); cached per name.
    """
    lib, name = parse_arch(arch)
    out = {"input_size": 224, "fixed_size": False, "output_stride": False, "one_channel": lib == "timm",
           "mean": None, "std": None}
    if lib == "xrv":
        out.update(input_size=512 if "res512" in name else 224, mean=None, std=None)
        return out
    if lib == "torchvision":
        out.update(mean=IMAGENET_MEAN, std=IMAGENET_STD)
        return out
    if lib == "open_clip":  # a ViT's fixed patch grid: its own size only
        from .clip import PREFIX, vision_spec

        vs = vision_spec(PREFIX + name)
        out.update(input_size=vs["image_size"], fixed_size=True, mean=tuple(vs["mean"]), std=tuple(vs["std"]))
        return out
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is not None:
        out["input_size"] = int(cfg.input_size[-1])
        out["mean"], out["std"] = tuple(cfg.mean), tuple(cfg.std)
    out["output_stride"] = _builds(arch, {"output_stride": 16})
    other = 160 if out["input_size"] != 160 else 192
    out["fixed_size"] = _forward_error(arch, {}, other) is not None and _forward_error(arch, {}, out["input_size"]) is None
    return out


def form_arch_defaults(arch: str, image_size: int | None, stride16: bool) -> tuple[dict, list[str]]:
    """Options the model's own configuration decides over a form's generic defaults, and a note for each:
    output stride 16 only where the model has that option, and a model that takes one input size only
    (a ViT's fixed patch grid) trains at that size. An unknown name gives ({}, []): the submit check
    refuses it with suggestions."""
    try:
        facts = arch_facts(arch)
    except ConfigError:
        return {}, []
    out, notes = {"arch_kwargs": {}}, []
    if stride16 and facts["output_stride"]:
        out["arch_kwargs"] = {"output_stride": 16}
    elif stride16 and library_of(arch) == "timm":
        notes.append(f"{arch} has no output-stride option: trained at its own stride.")
    if facts["fixed_size"] and image_size != facts["input_size"]:
        notes.append(f"{arch} takes {facts['input_size']} px images only: trained at {facts['input_size']} px "
                     f"(the form said {image_size}).")
        out["image_size"] = facts["input_size"]
    return out, notes


def _builds(arch: str, kwargs: dict) -> bool:
    try:
        with on_meta():
            build_model(arch, 2, "none", kwargs)
        return True
    except (ConfigError, TypeError, ValueError, AssertionError, RuntimeError, NotImplementedError):
        return False


def _forward_error(arch: str, kwargs: dict, size: int, channels: int = 3) -> str | None:
    """None when the model (built on meta) runs an image of ``size`` pixels, else why not."""
    with on_meta():
        model = build_model(arch, 2, "none", kwargs)
        x = torch.empty(1, channels, size, size)
        try:
            model.eval()(x)
        except (AssertionError, RuntimeError, ValueError) as exc:
            if "meta" in str(exc).lower() and "size" not in str(exc).lower():
                return None  # an op without a meta kernel: nothing is known, the real run will tell
            return str(exc) or type(exc).__name__
    return None


def model_from_spec(spec: dict, num_labels: int) -> nn.Module:
    """Rebuild a saved model: the architecture with random weights (they come from the checkpoint)."""
    if spec.get("arch") == "two_network":  # a gate network and a disease network (models/two_network.py)
        from .two_network import build

        return build(spec, num_labels)
    lib = spec.get("library", "timm")
    if lib == "open_clip":  # the image tower from the spec's open_clip config (models/clip.py)
        from .clip import model_from_spec as clip_from_spec

        return clip_from_spec(spec, num_labels)
    if lib not in LIBRARIES:
        raise ConfigError(f"Model library {lib!r} is not supported; use one of {', '.join(LIBRARIES)}.")
    arch = str(spec["arch"])
    if ":" not in arch and lib != "timm":
        arch = SHORT[lib] + arch
    # Weights come from the checkpoint: never download when rebuilding a saved model.
    return build_model(arch, num_labels, "none", spec.get("kwargs"))


@dataclass
class HeadSwapReport:
    copied: dict[str, str] = field(default_factory=dict)  # new label -> old label whose row was copied
    new: list[str] = field(default_factory=list)          # new labels with fresh rows
    dropped: list[str] = field(default_factory=list)      # old labels with no place in the new head

    def to_dict(self) -> dict:
        return {"copied": self.copied, "new": self.new, "dropped": self.dropped}

    def summary(self) -> str:
        pairs = ", ".join(f"{o} -> {n}" if o != n else n for n, o in self.copied.items())
        return (f"head swap: copied {len(self.copied)} rows ({pairs}); "
                f"new {len(self.new)} ({', '.join(self.new) or '-'}); dropped {len(self.dropped)}")


def swap_head(model: nn.Module, old_labels: list[str], new_labels: list[str]) -> HeadSwapReport:
    """Give ``model`` a head for ``new_labels``, copying rows of labels shared with ``old_labels``."""
    old = model.get_classifier()
    if not isinstance(old, nn.Linear):
        raise ConfigError(f"Head swap needs a linear classifier; {type(model).__name__} has {type(old).__name__}.")
    w, b = old.weight.detach().clone(), (old.bias.detach().clone() if old.bias is not None else None)
    model.reset_classifier(len(new_labels))
    head = model.get_classifier()
    report = HeadSwapReport()
    old_by_key = {canonical(x): i for i, x in enumerate(old_labels)}
    used = set()
    with torch.no_grad():
        for j, name in enumerate(new_labels):
            i = old_by_key.get(canonical(name))
            if i is None:
                report.new.append(name)
                continue
            head.weight[j] = w[i]
            if b is not None and head.bias is not None:
                head.bias[j] = b[i]
            report.copied[name] = old_labels[i]
            used.add(i)
    report.dropped = [x for i, x in enumerate(old_labels) if i not in used]
    return report


def count_parameters(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
