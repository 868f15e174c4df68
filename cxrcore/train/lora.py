"""LoRA fine-tuning through ``peft``.

Targets, unless the user names them (a regex over module names):
- ViT-like models: the attention projections (timm's ``*.attn.qkv`` / ``*.attn.proj``; torchvision's
  ``nn.MultiheadAttention`` modules, which peft adapts as a whole);
- CNNs (ResNet, DenseNet, RegNet, EfficientNet, ConvNeXt...): every ``nn.Conv2d`` with ``groups == 1``
  except the stem (the first conv), since peft's conv LoRA is for dense convolutions.
The classifier is trained fully (``modules_to_save``): a new head for new labels must learn.

Checkpoints hold merged weights (``merge_and_unload`` on a copy), so inference, Grad-CAM and
evaluation see a plain model of the original architecture; the unmerged adapter state lives only
in the resumable training state.
"""
from __future__ import annotations

import copy
import re
import sys

import torch
from torch import nn

from ..errors import ConfigError


def classifier_name(model: nn.Module) -> str:
    head = model.get_classifier()
    for name, mod in model.named_modules():
        if mod is head:
            return name
    raise ConfigError(f"{type(model).__name__}: could not find its classifier module for LoRA.")


def default_targets(model: nn.Module) -> list[str]:
    names = dict(model.named_modules())
    attn = [n for n in names if n.endswith("attn.qkv") or n.endswith("attn.proj")]
    if attn:
        return attn
    mha = [n for n, m in names.items() if isinstance(m, nn.MultiheadAttention)]  # torchvision's ViT
    if mha:
        return mha
    head = classifier_name(model)
    convs = [n for n, m in names.items() if isinstance(m, nn.Conv2d) and m.groups == 1 and not n.startswith(head)]
    return convs[1:]  # skip the stem


def apply_lora(model: nn.Module, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               targets: str | None = None) -> nn.Module:
    """Wrap ``model`` in a peft LoRA model; only the adapters and the classifier are trainable."""
    from peft import LoraConfig, get_peft_model

    if r < 1:
        raise ConfigError(f"LoRA rank must be at least 1, not {r}.")
    names = [n for n, _ in model.named_modules() if n]
    if targets:
        try:
            pattern = re.compile(targets)
        except re.error as exc:
            raise ConfigError(f"LoRA targets {targets!r} is not a valid regular expression: {exc}.") from exc
        chosen = [n for n in names if pattern.fullmatch(n)
                  and isinstance(dict(model.named_modules())[n], (nn.Conv2d, nn.Linear, nn.MultiheadAttention))]
    else:
        chosen = default_targets(model)
    if not chosen:
        raise ConfigError(f"No layer of {type(model).__name__} matches the LoRA targets {targets!r}; "
                          "name Conv2d or Linear modules (e.g. '.*attn.qkv' or '.*conv2').")
    head = classifier_name(model)
    chosen = [n for n in chosen if n != head and not n.startswith(head + ".")]
    config = LoraConfig(r=int(r), lora_alpha=float(alpha), lora_dropout=float(dropout), target_modules=chosen,
                        modules_to_save=[head], bias="none")
    try:
        return get_peft_model(model, config)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"peft could not add LoRA to {type(model).__name__}: {exc}") from exc


def is_peft(model: nn.Module) -> bool:
    """Whether ``model`` is a peft wrapper. Only a process that imported peft can hold one, so a plain model is
    told apart without importing it (peft brings transformers: seconds at every save of every training process)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def base_model(model: nn.Module) -> nn.Module:
    """The timm-like model inside a peft wrapper (with adapters in place), or ``model`` itself."""
    return model.base_model.model if is_peft(model) else model


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Plain state dict of the architecture: LoRA merged into the weights (on a copy; training goes on)."""
    if not is_peft(model):
        return model.state_dict()
    merged = copy.deepcopy(model).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}
