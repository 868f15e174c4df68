"""The torchxrayvision family: its chest X-ray models with ``xrv:`` (``xrv:densenet121-res224-all`` / ``-nih`` /
``-chex`` / ``-pc`` / ``-mimic_ch`` / ``-mimic_nb`` / ``-rsna``, ``xrv:resnet50-res512-all``), wrapped
(:class:`cxrcore.models.wrappers.XRVWrapper`) to offer timm's interface.

``pretrained="auto"`` means ``hub`` here: the names name pretrained chest X-ray models, random weights
would make the baseline meaningless (``none`` only when asked for). The weights come from xrv's cache
folder (``~/.torchxrayvision/models_data``, moved by ``CXR_XRV_CACHE_DIR``), a missing file downloaded
from xrv's URL (or the mirror ``CXR_XRV_BASE_URL``) when the host answers. xrv opens its files with
``torch.load(weights_only=False)``, which runs whatever code a file names; here a file is read through
torch's ``weights_only`` unpickler with an explicit allowlist of the module classes those files hold
(:func:`cxrcore.models.weights.read_module_file`), found with
``torch.serialization.get_unsafe_globals_in_checkpoint`` on a file made as the library makes them.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from . import names as names_
from . import weights
from .family import ModelFamily, close_names, register
from .wrappers import XRVWrapper, swap_head

XRV_CACHE_ENV = "CXR_XRV_CACHE_DIR"
XRV_BASE_URL_ENV = "CXR_XRV_BASE_URL"  # optional mirror of torchxrayvision's release downloads

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

weights.allow_module_classes(ALLOWED_CLASSES)  # once, at import (torch keeps one process-wide set)


def xrv_names() -> list[str]:
    """torchxrayvision's pretrained chest X-ray models (its weights names, without the short aliases)."""
    import torchxrayvision as xrv

    return [k for k in xrv.models.model_urls if k.startswith(("densenet", "resnet"))]


def xrv_info(name: str) -> dict:
    import torchxrayvision as xrv

    return xrv.models.model_urls[name]


def xrv_cache_dir() -> Path:
    """torchxrayvision's weights folder: ``$CXR_XRV_CACHE_DIR`` or xrv's ``~/.torchxrayvision/models_data``."""
    if os.environ.get(XRV_CACHE_ENV):
        return Path(os.environ[XRV_CACHE_ENV]).expanduser()
    import torchxrayvision as xrv

    return Path(xrv.utils.get_cache_dir())


def read_state_dict(path: str | os.PathLike, expect: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a torchxrayvision weight file, read safely: a pickled module whose classes are in
    ``ALLOWED_CLASSES`` (the DenseNets) or a plain state dict (the ResNet); see
    :func:`cxrcore.models.weights.read_module_file`. ``expect``: the name to use in messages."""
    state = weights.read_module_file(path, expect, "torchxrayvision")
    state.pop("op_threshs", None)  # xrv sets its operating points from its own table, never from the file
    return state


def random_module(name: str) -> nn.Module:
    """xrv's module for ``name`` with random weights, no file read (xrv's own constructor for the
    DenseNet; its ResNet cannot be built without weights, so it is assembled as xrv.models.ResNet
    does, minus the loading)."""
    import torchvision
    import torchxrayvision as xrv

    info = xrv_info(name)
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



def weights_file(arch: str, progress=None) -> Path:
    """The library's cached weight file for an ``xrv:`` name; downloaded first (xrv's URL, into xrv's
    folder, ``progress(done_bytes, total_bytes)``, a tqdm bar when None) when missing and the host
    answers; ConfigError naming file, folder, URL and variable when offline."""
    loc = weights.require(arch, FAMILY.weights_location(arch, FAMILY.parse(arch, FAMILY.strip(arch))))
    if not loc.cached:
        try:
            weights.download(loc.url, loc.path, progress or weights.tqdm_progress(f"downloading {loc.file}"))
        except Exception as exc:  # noqa: BLE001 - network / disk errors of any library
            raise ConfigError(f"Downloading the weights for {arch} failed ({type(exc).__name__}: {str(exc)[:200]}). "
                              f"{loc.describe()}") from exc
    return loc.path



class XRVFamily(ModelFamily):
    name = names_.XRV
    prefixes = names_.PREFIXES[names_.XRV]
    hint = "xrv:<name> for torchxrayvision"
    order = 2

    def names(self) -> list[str]:
        return xrv_names()

    def suggest(self, name: str) -> list[str]:
        return [self.short + x for x in close_names(name, xrv_names(), 3)] if "res" in name and "-" in name else []

    def parse(self, arch: str, name: str) -> str:
        names = xrv_names()
        if name in names:
            return name
        raise ConfigError(f"Unknown torchxrayvision model {arch!r}. It offers "
                          f"{', '.join(self.short + x for x in names)}.")

    def auto_pretrained(self, arch: str) -> str:
        return "hub"

    def weights_location(self, arch: str, name: str) -> weights.WeightsLocation:
        url = xrv_info(name)["weights_url"]
        folder = xrv_cache_dir()
        f = weights.url_file(url)
        if os.environ.get(XRV_BASE_URL_ENV):  # a mirror of xrv's release files (same file names)
            url = os.environ[XRV_BASE_URL_ENV].rstrip("/") + "/" + f
        return weights.WeightsLocation(
            self.name, f, folder / f, folder, url,
            f"{XRV_CACHE_ENV} (cxrcore's; passed to xrv as cache_dir; default ~/.torchxrayvision/models_data)",
            (folder / f).is_file())

    def build(self, arch: str, name: str, num_labels: int, mode: str, kwargs: dict,
              labels: list[str] | None) -> nn.Module:
        if kwargs:
            raise ConfigError(f"torchxrayvision models take no options; remove {kwargs}.")
        info = xrv_info(name)
        net = random_module(name)
        if mode == "hub":
            path = weights_file(arch)
            # Read through torch's weights_only unpickler with an allowlist (xrv itself unpickles the
            # file with weights_only=False, which would run any code it names).
            state = read_state_dict(path, arch)
            target = net if name.startswith("densenet") else net.model  # xrv's ResNet file is its inner torchvision model
            try:
                target.load_state_dict(state)
            except RuntimeError as exc:
                raise weights.load_failed(arch, self.weights_location(arch, name), exc) from exc
        thr = {lab: float(t) for lab, t in zip(info["labels"], info.get("op_threshs") or []) if lab and not math.isnan(t)}
        # Our head replaces xrv's: its operating points do not apply to it, and a None buffer keeps the
        # state dict the same whichever way the module was built.
        net.op_threshs = None
        model = XRVWrapper(self.short + name, net, name, info["labels"], thr)
        if mode == "hub":
            model.trained_on = trained_on(name)  # the trainer records what the library weights saw
        if mode == "hub" and labels is not None:
            report = swap_head(model, list(info["labels"]), list(labels))
            report.dropped = [x for x in report.dropped if x]  # '' = an output xrv leaves unused
            model.head_swap_report = report
        else:
            model.reset_classifier(num_labels)
        return model

    def facts(self, arch: str, name: str, out: dict) -> dict:
        out.update(input_size=512 if "res512" in name else 224, mean=None, std=None)
        return out

    def preprocess(self, arch: str, channels: int, facts) -> dict:
        return {"norm": "xrv", "channels": 1}


FAMILY = register(XRVFamily())


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
