"""Model families, in timm's style: each model library is one module with one :class:`ModelFamily`,
registered with one line (``register(MyFamily())``), saying what it can build, read and preprocess.

The registry (:mod:`cxrcore.models.registry`) registers the built-in families (timm, torchvision,
torchxrayvision, open_clip, two-network) and dispatches every question by family: a name
(``tv:resnet50``) goes to the family of its prefix (a bare name to the one ``bare`` family, timm's),
a saved model spec to the family of its ``library`` (or of its ``arch``, :attr:`ModelFamily.spec_arch`).
Families import only downward (this module, :mod:`.weights`, :mod:`.card`, :mod:`.meta`,
:mod:`.wrappers`), never the registry or :mod:`cxrcore.checkpoint`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from ..data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from ..errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from .weights import WeightsLocation

IMAGENET = (IMAGENET_MEAN, IMAGENET_STD)


class ModelFamily:
    """One model library. A subclass sets the attributes and overrides what its library does; the
    defaults are those of a plain image classifier library without pretrained weights."""

    name = ""                        # the spec's "library"
    prefixes: tuple[str, ...] = ()   # prefixes of its names (the first one is written), e.g. ("tv", "torchvision")
    bare = False                     # names without a prefix are this family's (timm)
    spec_arch = ""                   # a spec whose "arch" is this belongs to this family, whatever its "library"
    hint = ""                        # how its names are written, for messages: "tv:<name> for torchvision"
    output_stride_option = False     # some of its models take output_stride (timm's ResNet-likes)
    order = 100                      # where it comes in lists and messages (the built-in ones first)

    # -- names ----------------------------------------------------------------------------------
    @property
    def short(self) -> str:
        """The prefix its names are written with (``"tv:"``; ``""`` for the bare family)."""
        return "" if self.bare or not self.prefixes else self.prefixes[0] + ":"

    def claims(self, arch: str) -> bool:
        """Whether ``arch`` is written as one of this family's names (no check that it exists)."""
        arch = str(arch).strip()
        if ":" not in arch:
            return self.bare
        return arch.split(":", 1)[0].strip().lower() in self.prefixes

    def strip(self, arch: str) -> str:
        """``arch`` without this family's prefix."""
        arch = str(arch).strip()
        return arch.split(":", 1)[1].strip() if ":" in arch and self.claims(arch) else arch

    def names(self) -> list[str]:
        """The names it offers, without prefix (what a model picker may list)."""
        return []

    def suggest(self, name: str) -> list[str]:
        """Its names (prefixed) that ``name``, written for another family, may have meant."""
        return []

    def parse(self, arch: str, name: str) -> str:
        """The canonical name (without prefix) ``name`` stands for; ConfigError with suggestions otherwise."""
        if name in self.names():
            return name
        raise ConfigError(f"Unknown {self.name} model {arch!r}. It offers "
                          f"{', '.join(self.short + x for x in self.names()) or 'none'}.")

    # -- weights --------------------------------------------------------------------------------
    def auto_pretrained(self, arch: str) -> str:
        """What ``pretrained="auto"`` means for ``arch``: ``hub`` or ``none``."""
        return "none"

    def weights_location(self, arch: str, name: str) -> WeightsLocation:
        """Where the library looks for ``name``'s pretrained weights (ConfigError when it has none)."""
        raise ConfigError(f"{self.name} has no pretrained weights for {name}; choose --pretrained none.")

    # -- building -------------------------------------------------------------------------------
    def build(self, arch: str, name: str, num_labels: int, mode: str, kwargs: dict,
              labels: list[str] | None) -> nn.Module:
        """A model with ``num_labels`` raw-logit outputs and timm's interface; ``mode`` ``none`` (random
        weights) or ``hub`` (the library's pretrained weights)."""
        raise NotImplementedError

    def spec(self, arch: str, pretrained: str, kwargs: dict) -> dict:
        """The model spec stored in a checkpoint card for a model built from ``arch``."""
        return {"library": self.name, "arch": arch, "kwargs": dict(kwargs), "pretrained": pretrained}

    def from_spec(self, spec: dict, num_labels: int) -> nn.Module:
        """Rebuild a saved model with random weights (they come from the checkpoint): never a download."""
        arch = str(spec["arch"])
        if ":" not in arch:
            arch = self.short + arch
        name = self.parse(arch, self.strip(arch))
        return self.build(arch, name, num_labels, "none", dict(spec.get("kwargs") or {}), None)

    # -- what it takes --------------------------------------------------------------------------
    def facts(self, arch: str, name: str, out: dict) -> dict:
        """:func:`cxrcore.models.registry.arch_facts` for this family: ``out`` holds the defaults."""
        out.update(mean=IMAGENET[0], std=IMAGENET[1])
        return out

    def preprocess(self, arch: str, channels: int, facts: Callable[[], dict]) -> dict:
        """Preprocess options the model expects ({} = ImageNet mean / sd, 3 channels); ``facts()`` gives
        :func:`cxrcore.models.registry.arch_facts` of ``arch``."""
        return stats_preprocess(None, None, channels)

    def check_size(self, arch: str, kwargs: dict, size: int, channels: int, facts: Callable[[], dict]) -> None:
        """ConfigError when the model cannot take ``size`` px images (nothing by default)."""


def stats_preprocess(mean, std, channels: int) -> dict:
    """Preprocess options for a model normalised with ``mean`` / ``std`` (None or ImageNet's: {}), ``channels``
    1 or 3; one channel without own statistics: ImageNet's channels averaged."""
    out: dict = {} if channels == 3 else {"channels": 1}
    if mean and std and (tuple(mean) != IMAGENET[0] or tuple(std) != IMAGENET[1]):
        out.update(norm="stats", mean=tuple(mean), std=tuple(std), stats_from="model")
    elif channels == 1:
        # one channel: the gray image goes through the mean / sd of ImageNet's channels averaged
        out.update(norm="stats", mean=(sum(IMAGENET[0]) / 3,), std=(sum(IMAGENET[1]) / 3,), stats_from="model")
    return out


_FAMILIES: dict[str, ModelFamily] = {}


def register(family: ModelFamily) -> ModelFamily:
    """Add a model family (one line in its module); its name and prefixes must be new."""
    if not family.name or family.name in _FAMILIES:
        raise ValueError(f"a model family needs a new name, not {family.name!r}")
    taken = {p for f in _FAMILIES.values() for p in f.prefixes}
    if taken & set(family.prefixes):
        raise ValueError(f"the prefixes {sorted(taken & set(family.prefixes))} of {family.name} are taken")
    if family.bare and any(f.bare for f in _FAMILIES.values()):
        raise ValueError("only one model family takes names without a prefix")
    _FAMILIES[family.name] = family
    return family


def unregister(name: str) -> None:
    """Remove a model family (e.g. one a test registered)."""
    _FAMILIES.pop(name, None)


def families() -> list[ModelFamily]:
    """The registered families, by :attr:`ModelFamily.order` (then registration order, whichever module
    was imported first)."""
    return sorted(_FAMILIES.values(), key=lambda f: f.order)


def get(name: str) -> ModelFamily:
    """The family named ``name`` (a spec's ``library``)."""
    if name not in _FAMILIES:
        known = ", ".join(f.name for f in families())
        raise ConfigError(f"Model library {name!r} is not supported; use one of {known}.")
    return _FAMILIES[name]


def family_of(arch: str) -> ModelFamily:
    """The family ``arch`` is written as one of (no check that the model exists)."""
    found = [f for f in families() if f.claims(arch)]
    if len(found) == 1:
        return found[0]
    prefix = str(arch).strip().split(":", 1)[0]
    hints = [f.hint for f in families() if f.hint]
    hints = ", ".join(hints[:-1]) + " or " + hints[-1] if len(hints) > 1 else "".join(hints)
    raise ConfigError(f"Unknown model library prefix {prefix!r} in {arch!r}: use {hints}.")


def family_of_spec(spec: dict) -> ModelFamily:
    """The family that rebuilds a saved model spec: by its ``arch`` (:attr:`ModelFamily.spec_arch`), else by
    its ``library``."""
    arch = str(spec.get("arch", ""))
    for f in families():
        if f.spec_arch and f.spec_arch == arch:
            return f
    return get(str(spec.get("library", "timm")))


def model_from_spec(spec: dict, num_labels: int) -> nn.Module:
    """Rebuild a saved model: the architecture with random weights (they come from the checkpoint)."""
    return family_of_spec(spec).from_spec(spec, num_labels)


def close_names(name: str, names: list[str], n: int = 8) -> list[str]:
    """Up to ``n`` of ``names`` close to ``name`` (for "did you mean" messages)."""
    import difflib

    near = difflib.get_close_matches(name, names, n=n, cutoff=0.5)
    stem = name.replace("-", "_").split("_")[0]
    more = [x for x in names if stem and stem in x and x not in near]
    return (near + more)[:n]


def options_error(arch: str, kwargs: dict, exc: Exception) -> ConfigError:
    return ConfigError(f"Architecture {arch} does not accept the options {kwargs}: {exc or type(exc).__name__}. "
                       "Remove them (e.g. output_stride is only for ResNet/RegNet-like timm backbones).")
