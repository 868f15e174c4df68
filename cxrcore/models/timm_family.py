"""The timm family: every timm model by its name as is (``resnet18``, ``vit_small_patch16_224``; ``timm:``
may prefix it).

Pretrained weights (``hub``) come from the Hugging Face hub cache (``HF_HUB_CACHE``), or torch.hub's
checkpoints folder for weights with a URL only. A cached file is loaded through timm's own file loader
(``pretrained_cfg_overlay={"file": ...}``, no hub call, no process-wide offline switch that other
sessions' threads would see); a missing one is downloaded by the hub client when its server answers
(:mod:`cxrcore.models.weights`).
"""
from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from ..errors import ConfigError
from . import names as names_
from . import weights
from .family import ModelFamily, families, options_error, register, stats_preprocess
from .meta import on_meta


class TimmFamily(ModelFamily):
    name = names_.TIMM
    prefixes = names_.PREFIXES[names_.TIMM]
    bare = True
    hint = "a timm name as is"
    order = 0
    output_stride_option = True

    def names(self) -> list[str]:
        return list(timm.list_models())

    def parse(self, arch: str, name: str) -> str:
        if timm.is_model(name):
            return name
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8] if name else []
        elsewhere = [s for f in families() if f is not self for s in f.suggest(name)]
        hint = f" Did you mean {', '.join(elsewhere)}?" if elsewhere else ""
        raise ConfigError(
            f"Unknown architecture {arch!r}.{hint} timm knows e.g. {', '.join(close) or 'resnet18, densenet121'}; "
            "`python -c \"import timm; print(timm.list_models())\"` lists all. torchvision models take the prefix "
            "tv: (tv:resnet50), torchxrayvision's the prefix xrv: (xrv:densenet121-res224-all)."
        )

    def weights_location(self, arch: str, name: str) -> weights.WeightsLocation:
        cfg = timm.models.get_pretrained_cfg(name)
        hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        url = getattr(cfg, "url", None) if cfg is not None else None
        if hub_id:
            import huggingface_hub

            repo, _, revision = hub_id.partition("@")
            cache = weights.hf_cache_dir()
            files = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else ["model.safetensors",
                                                                                          "pytorch_model.bin"]
            for f in files:
                hit = huggingface_hub.try_to_load_from_cache(repo, f, cache_dir=cache, revision=revision or None)
                if isinstance(hit, str):
                    return weights.WeightsLocation(self.name, f, Path(hit), cache, f"https://huggingface.co/{repo}",
                                                   "HF_HUB_CACHE", True, repo)
            path = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / "<commit>" / files[0]
            return weights.WeightsLocation(self.name, files[0], path, cache,
                                           f"https://huggingface.co/{repo}/resolve/main/{files[0]}",
                                           "HF_HUB_CACHE (or HF_HOME)", False, repo)
        if url:
            folder = weights.torch_checkpoints()
            f = weights.url_file(url)
            return weights.WeightsLocation(self.name, f, folder / f, folder, url,
                                           "TORCH_HOME (the folder is $TORCH_HOME/hub/checkpoints)", (folder / f).is_file())
        raise ConfigError(f"timm has no pretrained weights for {name}; choose --pretrained none or another model.")

    def build(self, arch: str, name: str, num_labels: int, mode: str, kwargs: dict,
              labels: list[str] | None) -> nn.Module:
        loc = weights.require(arch, self.weights_location(arch, name)) if mode == "hub" else None
        extra: dict = {}
        if loc is not None and loc.cached:
            # The cached file through timm's own file loader (pretrained_cfg's ``file``): no hub call, and
            # no process-wide offline switch that other sessions' threads would see.
            extra["pretrained_cfg_overlay"] = {"file": str(loc.path), "source": ""}
        elif loc is not None and loc.hf_repo:
            extra["cache_dir"] = str(loc.folder)  # not cached, host reachable: the hub client downloads into it
        try:
            return timm.create_model(name, pretrained=loc is not None, num_classes=num_labels, **extra, **kwargs)
        except (TypeError, AssertionError, NotImplementedError) as exc:
            raise options_error(arch, kwargs, exc) from exc
        except Exception as exc:
            if loc is not None:
                raise weights.load_failed(arch, loc, exc) from exc
            if kwargs and isinstance(exc, (OSError, RuntimeError, ValueError)):
                raise options_error(arch, kwargs, exc) from exc
            raise

    def facts(self, arch: str, name: str, out: dict) -> dict:
        out["one_channel"] = True
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is not None:
            out["input_size"] = int(cfg.input_size[-1])
            out["mean"], out["std"] = tuple(cfg.mean), tuple(cfg.std)
        out["output_stride"] = self._builds(arch, name, {"output_stride": 16})
        other = 160 if out["input_size"] != 160 else 192
        out["fixed_size"] = (self._forward_error(arch, name, {}, other) is not None
                             and self._forward_error(arch, name, {}, out["input_size"]) is None)
        return out

    def preprocess(self, arch: str, channels: int, facts) -> dict:
        f = facts()
        return stats_preprocess(f.get("mean"), f.get("std"), channels)

    def check_size(self, arch: str, kwargs: dict, size: int, channels: int, facts) -> None:
        # Run the model at the configured size (meta tensors: no compute), so a size it cannot take is
        # refused now, not at the first training step.
        why = self._forward_error(arch, self.strip(arch), dict(kwargs or {}), int(size), channels)
        if why is not None:
            f = facts()
            hint = (f"it takes {f['input_size']} px images only; set the image size to {f['input_size']}"
                    if f["fixed_size"] else f"its native size is {f['input_size']} px")
            raise ConfigError(f"{arch} cannot take {size} px images ({why}): {hint}.")

    def _builds(self, arch: str, name: str, kwargs: dict) -> bool:
        try:
            with on_meta():
                self.build(arch, name, 2, "none", kwargs, None)
            return True
        except (ConfigError, TypeError, ValueError, AssertionError, RuntimeError, NotImplementedError):
            return False

    def _forward_error(self, arch: str, name: str, kwargs: dict, size: int, channels: int = 3) -> str | None:
        """None when the model (built on meta) runs an image of ``size`` pixels, else why not."""
        with on_meta():
            model = self.build(arch, name, 2, "none", kwargs, None)
            x = torch.empty(1, channels, size, size)
            try:
                model.eval()(x)
            except (AssertionError, RuntimeError, ValueError) as exc:
                if "meta" in str(exc).lower() and "size" not in str(exc).lower():
                    return None  # an op without a meta kernel: nothing is known, the real run will tell
                return str(exc) or type(exc).__name__
        return None


FAMILY = register(TimmFamily())
