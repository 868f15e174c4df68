"""The model registry: models by name through the registered model families (timm, torchvision,
torchxrayvision, open_clip, two-network; :mod:`cxrcore.models.family`), and head swaps that keep the
rows of shared labels.

Every question (parse a name, build, where the weights are, the spec to save, rebuild a saved
spec, preprocessing, what a model takes) is dispatched to the family of the name's prefix or of the
spec's library; adding a library is one family module and one ``register(...)`` line in it, plus
importing that module here for the built-in ones.

Names: a timm name as is (``resnet18``, ``vit_small_patch16_224``; ``timm:`` may prefix it),
torchvision classifiers with ``tv:`` (``tv:resnet50``, ``tv:densenet121``, ``tv:efficientnet_b0``,
``tv:convnext_tiny``, ``tv:vit_b_16``) and torchxrayvision's chest X-ray models with ``xrv:``
(``xrv:densenet121-res224-all`` / ``-nih`` / ``-chex`` / ``-pc`` / ``-mimic_ch`` / ``-mimic_nb`` /
``-rsna``, ``xrv:resnet50-res512-all``), CLIP image towers with ``clip:`` (:mod:`cxrcore.models.clip`).
torchvision and xrv models come wrapped
(:mod:`cxrcore.models.wrappers`) so that every model offers timm's interface.

A model spec is a plain dict stored in the checkpoint card::

    {"library": "timm" | "torchvision" | "xrv" | "open_clip", "arch": "tv:resnet50", "kwargs": {...},
     "pretrained": "hub"}

``pretrained``:

* ``none``: random initialisation (only when asked for; allowed for every library, xrv too).
* ``hub``: the library's own pretrained weights, through the library's own loading code and
  cache (``timm`` is accepted as an alias, for any library). timm: the Hugging Face hub cache
  (``HF_HUB_CACHE``); torchvision: ``weights="DEFAULT"`` through torch.hub's cache
  (``$TORCH_HOME/hub/checkpoints``); xrv: its cache folder (``~/.torchxrayvision/models_data``,
  moved by ``CXR_XRV_CACHE_DIR``, which is passed as xrv's ``cache_dir``).
* ``auto``: ``hub`` for xrv names (they name pretrained chest X-ray models: random weights would
  make the baseline meaningless) and CLIP names with a pretrained tag, ``none`` for timm and torchvision
  (each family's :meth:`~cxrcore.models.family.ModelFamily.auto_pretrained`).

A cached file is loaded without touching the network. A missing one is downloaded by the
library only when its server answers within two seconds; otherwise a ConfigError names the file,
the folder to place it in and the environment variable that moves that folder. Never a silent
random initialisation.

Rebuilding a saved model (:func:`model_from_spec`) never downloads or loads pretrained weights:
they come from the checkpoint.

Building is safe in a server whose sessions are threads of one process: no library global is
patched while a model is built. A cached timm file is loaded through timm's own file loader
(``pretrained_cfg_overlay={"file": ...}``, no hub call); meta-device checks use
:func:`cxrcore.models.meta.on_meta` and :func:`cxrcore.models.meta.params_on_meta` (thread-local).
Where weights are, downloading and reading them: :mod:`cxrcore.models.weights`.
"""
from __future__ import annotations

import functools

from torch import nn

from ..errors import ConfigError

# the built-in families, each registered by its module
from . import clip, timm_family, torchvision_family, two_network_family, xrv_family  # noqa: F401
from .family import ModelFamily, families, family_of, model_from_spec  # noqa: F401 - model_from_spec: by family
from .meta import on_meta, params_on_meta
from .names import library_hint  # noqa: F401 - the CLI's library model hint, without torch from names
from .weights import ONLINE_TIMEOUT_S, WeightsLocation  # noqa: F401 - where callers found them
from .wrappers import HeadSwapReport, swap_head  # noqa: F401 - where callers found them
from .xrv_family import XRV_BASE_URL_ENV, XRV_CACHE_ENV, xrv_cache_dir  # noqa: F401 - where callers found them

PRETRAINED_CHOICES = ("none", "hub", "timm", "auto")


# ----------------------------------------------------------------------------------- names
def split_arch(arch: str) -> tuple[str, str]:
    """``"tv:resnet50"`` -> ``("torchvision", "resnet50")``; no prefix -> timm. No validation."""
    fam = family_of(arch)
    return fam.name, fam.strip(arch)


def _parse(arch: str) -> tuple[ModelFamily, str]:
    fam = family_of(arch)
    return fam, fam.parse(str(arch).strip(), fam.strip(arch))


def parse_arch(arch: str) -> tuple[str, str]:
    """(library, name) for a name the library knows; ConfigError with suggestions otherwise."""
    fam, name = _parse(arch)
    return fam.name, name


def library_of(arch: str) -> str:
    return family_of(arch).name


def offered_names() -> list[str]:
    """Every model name the registered families offer, as written (``resnet18``, ``tv:resnet50``, ...)."""
    return [f.short + n for f in families() for n in f.names()]


def resolve_pretrained(arch: str, pretrained: str) -> str:
    """``none`` or ``hub`` for ``arch`` (``timm`` is an alias of ``hub``; ``auto``: the family's choice, hub for
    xrv and for CLIP names with a pretrained tag)."""
    p = str(pretrained or "none").strip().lower()
    if p not in PRETRAINED_CHOICES:
        raise ConfigError(f"pretrained must be one of {PRETRAINED_CHOICES}, not {pretrained!r}.")
    if p == "timm":
        return "hub"
    if p == "auto":
        return family_of(arch).auto_pretrained(arch)
    return p


def weights_location(arch: str) -> WeightsLocation:
    """Where ``arch``'s pretrained weights are looked for (ConfigError if the library has none)."""
    fam, name = _parse(arch)
    return fam.weights_location(arch, name)


# ------------------------------------------------------------------------------- building
def build_model(arch: str, num_labels: int, pretrained: str = "none", kwargs: dict | None = None,
                labels: list[str] | None = None) -> nn.Module:
    """A model with ``num_labels`` raw-logit outputs and timm's interface.

    ``labels`` (the target label names, optional): for xrv models with their pretrained weights,
    the new head's rows for labels shared with xrv's pathologies (through synonyms) are copied
    from xrv's classifier (CLIP's: made from text prompts); ``model.head_swap_report`` tells which.
    """
    kwargs = dict(kwargs or {})
    fam, name = _parse(arch)
    mode = resolve_pretrained(arch, pretrained)
    if labels is not None and len(labels) != num_labels:
        raise ConfigError(f"{len(labels)} label names given for a head of {num_labels} outputs.")
    return fam.build(arch, name, num_labels, mode, kwargs, labels)


def check_architecture(arch: str, pretrained: str = "none", kwargs: dict | None = None, size: int | None = None,
                       channels: int = 3) -> None:
    """Raise ConfigError now for an architecture / options that would fail at training time.

    Builds the model on the meta device: no memory, no weights, no download. With pretrained
    weights asked for, also checks that the library has some (not that they are cached).
    Thread-safe: nothing global changes (see :func:`on_meta`), so app sessions can check and
    build models at the same time.
    """
    mode = resolve_pretrained(arch, pretrained)
    fam, name = _parse(arch)
    if mode == "hub":
        fam.weights_location(arch, name)
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
    if size is not None:
        fam.check_size(arch, dict(kwargs or {}), int(size), channels, lambda: arch_facts(arch))


def spec_for(arch: str, pretrained: str = "none", kwargs: dict | None = None) -> dict:
    """The model spec stored in a checkpoint card for a model built by ``build_model``."""
    return family_of(arch).spec(arch, resolve_pretrained(arch, pretrained), dict(kwargs or {}))


def preprocess_for(arch: str, channels: int = 3) -> dict:
    """Preprocess options (``norm``, ``channels``, ``mean`` / ``std``) the architecture expects; {} = the
    defaults (ImageNet mean / sd, 3 channels).

    xrv models take one channel scaled to [-1024, 1024]. timm models are normalised with the mean and
    sd of their own pretrained configuration (ViTs: 0.5 / 0.5), ``channels`` 1 when built with
    ``in_chans=1``. Native sizes (224 for the xrv DenseNets, 512 for its ResNet) are not imposed: the
    image size stays the trainer's choice unless the model only takes one (:func:`arch_facts`).
    """
    return family_of(arch).preprocess(arch, channels, lambda: arch_facts(arch))


@functools.lru_cache(maxsize=512)
def arch_facts(arch: str) -> dict:
    """What an architecture takes, from its own configuration (timm's ``pretrained_cfg``; the wrappers'
    specs): ``input_size`` (its native side in pixels), ``fixed_size`` (True when it takes no other,
    e.g. a ViT's fixed patch grid), ``output_stride`` (it accepts output_stride=16 for finer heatmaps),
    ``one_channel`` (it can be built with ``in_chans=1``), ``mean`` / ``std`` (its input normalisation).
    Found by building the model on the meta device (no memory, no weights); cached per name.
    """
    fam, name = _parse(arch)
    out = {"input_size": 224, "fixed_size": False, "output_stride": False, "one_channel": False,
           "mean": None, "std": None}
    return fam.facts(arch, name, out)


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
    elif stride16 and family_of(arch).output_stride_option:
        notes.append(f"{arch} has no output-stride option: trained at its own stride.")
    if facts["fixed_size"] and image_size != facts["input_size"]:
        notes.append(f"{arch} takes {facts['input_size']} px images only: trained at {facts['input_size']} px "
                     f"(the form said {image_size}).")
        out["image_size"] = facts["input_size"]
    return out, notes


def count_parameters(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
