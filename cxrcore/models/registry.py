"""Backbones by name through timm, and head swaps that keep the rows of shared labels.

A model spec is a plain dict stored in the checkpoint card::

    {"library": "timm", "arch": "regnetx_002", "kwargs": {"output_stride": 16}, "pretrained": "none"}

``pretrained`` is ``none`` (random initialisation, only when asked for) or ``timm`` (timm's own
hub/cache loading; offline and not cached raises a ConfigError naming where the file goes).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import timm
import torch
from torch import nn

from ..errors import ConfigError
from ..labels import canonical

PRETRAINED_CHOICES = ("none", "timm")


def build_model(arch: str, num_labels: int, pretrained: str = "none", kwargs: dict | None = None) -> nn.Module:
    kwargs = dict(kwargs or {})
    if pretrained not in PRETRAINED_CHOICES:
        raise ConfigError(f"pretrained must be one of {PRETRAINED_CHOICES}, not {pretrained!r}.")
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:8]
        raise ConfigError(
            f"Unknown architecture {arch!r}. timm knows e.g. {', '.join(close) or 'resnet18, densenet121'}; "
            "`python -c \"import timm; print(timm.list_models())\"` lists all."
        )
    try:
        return timm.create_model(arch, pretrained=(pretrained == "timm"), num_classes=num_labels, **kwargs)
    except (TypeError, AssertionError, NotImplementedError) as exc:
        raise ConfigError(f"Architecture {arch} does not accept the options {kwargs}: {exc or type(exc).__name__}. "
                          "Remove them (e.g. output_stride is only for ResNet/RegNet-like backbones).") from exc
    except (OSError, RuntimeError, ValueError) as exc:
        if pretrained == "timm":
            from huggingface_hub.constants import HF_HUB_CACHE

            raise ConfigError(
                f"Pretrained weights for {arch} could not be loaded ({type(exc).__name__}). This machine may be "
                f"offline and they are not in timm's cache ({HF_HUB_CACHE}). Place the model's files there "
                "(or set HF_HUB_CACHE), or choose --pretrained none to start from random weights."
            ) from exc
        if kwargs:
            raise ConfigError(f"Architecture {arch} does not accept the options {kwargs}: {exc}.") from exc
        raise


def check_architecture(arch: str, pretrained: str = "none", kwargs: dict | None = None) -> None:
    """Raise ConfigError now for an architecture / options that would fail at training time.

    Builds the model on the meta device: no memory, no weights, no download.
    """
    if pretrained not in PRETRAINED_CHOICES:
        raise ConfigError(f"pretrained must be one of {PRETRAINED_CHOICES}, not {pretrained!r}.")
    with torch.device("meta"):
        build_model(arch, 2, "none", kwargs)


def spec_for(arch: str, pretrained: str = "none", kwargs: dict | None = None) -> dict:
    """The model spec stored in a checkpoint card for a model built by ``build_model``."""
    return {"library": "timm", "arch": arch, "kwargs": dict(kwargs or {}), "pretrained": pretrained}


def preprocess_for(arch: str) -> dict:
    """Preprocess options (``norm``, ``channels``) the architecture expects; {} = the defaults (ImageNet, 3 channels)."""
    return {}


def model_from_spec(spec: dict, num_labels: int) -> nn.Module:
    if spec.get("library", "timm") != "timm":
        raise ConfigError(f"Model library {spec.get('library')!r} is not supported yet; use timm.")
    # Weights come from the checkpoint: never download when rebuilding a saved model.
    return build_model(spec["arch"], num_labels, "none", spec.get("kwargs"))


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
