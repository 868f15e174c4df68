"""The torchvision family: torchvision's classifiers with ``tv:`` (``tv:resnet50``, ``tv:densenet121``,
``tv:efficientnet_b0``, ``tv:convnext_tiny``, ``tv:vit_b_16``), wrapped (:mod:`cxrcore.models.wrappers`)
to offer timm's interface.

Pretrained weights (``hub``): ``weights="DEFAULT"`` through torch.hub's cache
(``$TORCH_HOME/hub/checkpoints``), downloaded by torchvision when its server answers.
"""
from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from . import names as names_
from . import weights
from .family import ModelFamily, close_names, options_error, register
from .wrappers import TorchvisionWrapper, torchvision_family


class TorchvisionFamily(ModelFamily):
    name = names_.TORCHVISION
    prefixes = names_.PREFIXES[names_.TORCHVISION]
    hint = "tv:<name> for torchvision"
    order = 1

    def names(self) -> list[str]:
        from torchvision import models as tvm

        return list(tvm.list_models(module=tvm))  # classification models only

    def suggest(self, name: str) -> list[str]:
        return [self.short + name] if name in self.names() else []

    def parse(self, arch: str, name: str) -> str:
        names = self.names()
        if name in names:
            return name
        close = close_names(name, names)
        raise ConfigError(
            f"Unknown torchvision architecture {arch!r}. torchvision knows e.g. "
            f"{', '.join(self.short + x for x in close) or 'tv:resnet50, tv:densenet121, tv:efficientnet_b0'}; "
            "`python -c \"import torchvision; print(torchvision.models.list_models(module=torchvision.models))\"` "
            "lists all."
        )

    def weights_location(self, arch: str, name: str) -> weights.WeightsLocation:
        from torchvision import models as tvm

        try:
            w = tvm.get_model_weights(name).DEFAULT
        except (ValueError, AttributeError, KeyError) as exc:
            raise ConfigError(f"torchvision has no pretrained weights for {name}; choose --pretrained none.") from exc
        folder = weights.torch_checkpoints()
        f = weights.url_file(w.url)
        return weights.WeightsLocation(self.name, f, folder / f, folder, w.url,
                                       "TORCH_HOME (the folder is $TORCH_HOME/hub/checkpoints)", (folder / f).is_file(),
                                       note=f" (weights {w})")

    def build(self, arch: str, name: str, num_labels: int, mode: str, kwargs: dict,
              labels: list[str] | None) -> nn.Module:
        from torchvision import models as tvm

        loc = weights.require(arch, self.weights_location(arch, name)) if mode == "hub" else None
        try:
            net = tvm.get_model(name, weights="DEFAULT" if loc is not None else None, **kwargs)
        except (TypeError, AssertionError, NotImplementedError) as exc:
            raise options_error(arch, kwargs, exc) from exc
        except Exception as exc:
            if loc is not None:
                raise weights.load_failed(arch, loc, exc) from exc
            if kwargs and isinstance(exc, (RuntimeError, ValueError)):
                raise options_error(arch, kwargs, exc) from exc
            raise
        family = torchvision_family(net)
        if family is None:
            raise ConfigError(f"{self.short}{name} ({type(net).__name__}) has no feature map + linear head the app can use; "
                              "supported torchvision families: ResNet/ResNeXt/Wide-ResNet, RegNet, DenseNet, "
                              "EfficientNet, MobileNet v2/v3, ConvNeXt, VGG, AlexNet and ViT.")
        model = TorchvisionWrapper(self.short + name, net, family)
        model.reset_classifier(num_labels)
        return model


FAMILY = register(TorchvisionFamily())
