"""Thin wrappers that give torchvision and torchxrayvision classifiers timm's interface.

The rest of cxrcore (training, Grad-CAM, MC dropout, head swaps) talks to models through the
interface timm models offer::

    forward(x)                          -> logits (B, num_labels), raw (no sigmoid)
    forward_features(x)                 -> feature map (B, C, H, W); ViTs: tokens (B, 1 + N, C)
    forward_head(feats, pre_logits=False)
    get_classifier()                    -> the nn.Linear that makes the logits
    reset_classifier(n)                 -> a fresh nn.Linear for n outputs

A wrapper keeps the library's own module as ``self.net``: its state-dict keys are the library's
keys under ``net.``, and the library's constructors and loaders build and fill it. The wrappers
add no parameters or buffers of their own. :func:`swap_head` gives any model with this interface a
head for other labels, keeping the rows of shared labels; :func:`scale_maps` is how heatmaps are scaled
(Grad-CAM's and the models' own, e.g. CLIP's patch-text similarity).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..labels import canonical

# torchvision / xrv module families the wrapper knows how to split into features + head
FAMILIES = ("resnet", "regnet", "densenet", "convnet", "vit")


def first_conv_channels(module: nn.Module, default: int = 3) -> int:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return default


def torchvision_family(net: nn.Module) -> str | None:
    """Which split of features / head applies to a torchvision classifier, or None (unsupported)."""
    from torchvision import models as tvm

    if isinstance(net, tvm.VisionTransformer):
        return "vit"
    if isinstance(net, tvm.ResNet):
        return "resnet"
    if isinstance(net, tvm.RegNet):
        return "regnet"
    if isinstance(net, tvm.DenseNet):
        return "densenet"
    classifier = getattr(net, "classifier", None)
    if (isinstance(getattr(net, "features", None), nn.Module) and isinstance(classifier, nn.Sequential)
            and isinstance(classifier[-1], nn.Linear)):
        return "convnet"  # efficientnet(_v2), mobilenet_v2/v3, convnext, vgg, alexnet
    return None


class TimmLikeWrapper(nn.Module):
    """A library's classifier ``net`` behind timm's interface.

    ``body`` is the submodule of ``net`` that holds the layers (``""``: ``net`` itself; xrv's
    ResNet keeps a torchvision ResNet at ``net.model``).
    """

    library = ""

    def __init__(self, arch: str, net: nn.Module, family: str, body: str = ""):
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}")
        self.arch = arch
        self.family = family
        self.net = net
        self._body = body
        if family == "densenet":
            # DenseNets end their features with a norm and apply the ReLU in forward(); a module
            # for it gives Grad-CAM a layer whose output is exactly the map the head pools.
            self.act = nn.ReLU()
        if family == "vit":
            self.num_prefix_tokens = 1   # the class token, as timm names it (for Grad-CAM's reshape)
            self.token_features = True
        self.in_chans = first_conv_channels(net)

    @property
    def body(self) -> nn.Module:
        return self.net.get_submodule(self._body)

    # -- features -----------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        b = self.body
        if self.family == "resnet":
            x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
            return b.layer4(b.layer3(b.layer2(b.layer1(x))))
        if self.family == "regnet":
            return b.trunk_output(b.stem(x))
        if self.family == "densenet":
            return self.act(b.features(x))
        if self.family == "convnet":
            return b.features(x)
        # vit: torchvision's VisionTransformer.forward up to the class-token pick
        x = b._process_input(x)
        x = torch.cat([b.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return b.encoder(x)

    # -- head -----------------------------------------------------------------------------------
    def _slot(self) -> tuple[nn.Module, str]:
        """(parent module, attribute name) of the classifier Linear."""
        b = self.body
        if self.family in ("resnet", "regnet"):
            return b, "fc"
        if self.family == "densenet":
            return b, "classifier"
        if self.family == "convnet":
            return b.classifier, list(b.classifier._modules)[-1]
        return b.heads, list(b.heads._modules)[-1]

    def _pre_head(self) -> list[nn.Module]:
        """Modules between pooling and the classifier (dropout, norms, hidden layers)."""
        if self.family == "convnet":
            return list(self.body.classifier.children())[:-1]
        if self.family == "vit":
            return list(self.body.heads.children())[:-1]
        return []

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        b = self.body
        if self.family == "vit":
            x = x[:, 0]
        elif self.family in ("resnet", "regnet"):
            x = b.avgpool(x)
        elif self.family == "convnet" and isinstance(getattr(b, "avgpool", None), nn.Module):
            x = b.avgpool(x)  # vgg / alexnet pool to 7x7; the rest to 1x1
        else:
            x = F.adaptive_avg_pool2d(x, 1)
        for m in self._pre_head():
            if isinstance(m, nn.Linear) and x.ndim > 2:
                x = x.flatten(1)
            x = m(x)
        x = x.flatten(1)
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        parent, name = self._slot()
        return getattr(parent, name)

    def reset_classifier(self, num_classes: int, global_pool=None) -> None:
        parent, name = self._slot()
        old = getattr(parent, name)
        new = nn.Linear(old.in_features, int(num_classes), bias=old.bias is not None,
                        device=old.weight.device, dtype=old.weight.dtype)
        setattr(parent, name, new)

    @property
    def num_classes(self) -> int:
        return self.get_classifier().out_features

    @property
    def num_features(self) -> int:
        return self.get_classifier().in_features

    def cam_layer(self) -> nn.Module:
        """The module whose output is the last feature map (for Grad-CAM)."""
        b = self.body
        if self.family == "resnet":
            return b.layer4
        if self.family == "regnet":
            return b.trunk_output
        if self.family == "densenet":
            return self.act
        if self.family == "convnet":
            return b.features
        # vit: the last block's first norm (see cxrcore.explain.cam.target_layer)
        return b.encoder.layers[-1].ln_1


class TorchvisionWrapper(TimmLikeWrapper):
    library = "torchvision"


class XRVWrapper(TimmLikeWrapper):
    """A torchxrayvision DenseNet / ResNet with a head for our labels.

    Bypasses xrv's forward: no resizing to the native resolution (the image size is the
    trainer's choice), no sigmoid and no ``op_threshs`` calibration; forward returns raw logits
    for our labels. ``xrv_labels`` are the pathologies of the weights (``""`` = unused output),
    ``xrv_op_threshs`` xrv's operating points per pathology (for reference; its 18-output head
    is replaced).
    """

    library = "xrv"

    def __init__(self, arch: str, net: nn.Module, weights_name: str, xrv_labels: list[str],
                 op_threshs: dict[str, float] | None = None):
        family, body = ("resnet", "model") if weights_name.startswith("resnet") else ("densenet", "")
        super().__init__(arch, net, family, body)
        self.weights_name = weights_name
        self.xrv_labels = list(xrv_labels)
        self.xrv_op_threshs = dict(op_threshs or {})
        self.head_swap_report = None


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


def scale_maps(maps: np.ndarray) -> np.ndarray:
    """ReLU, then min-max per map to [0, 1] (pytorch-grad-cam's scale_cam_image, without resizing)."""
    maps = np.maximum(maps, 0)
    lo = maps.min(axis=(-2, -1), keepdims=True)
    maps = maps - lo
    return maps / (1e-7 + maps.max(axis=(-2, -1), keepdims=True))
