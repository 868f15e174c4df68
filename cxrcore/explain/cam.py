"""Grad-CAM heatmaps for every label.

Fast path: where the head is global average pooling followed by a linear layer, Grad-CAM of a
label's logit is that label's class activation map (the gradient of the logit with respect to
the last feature map is the label's weight row divided by the number of cells). So one forward
pass gives the probabilities and every label's heatmap: ``relu(W @ features)``, scaled to [0, 1]
per label exactly as pytorch-grad-cam scales its maps. Elsewhere, pytorch-grad-cam's GradCAM
runs once per label.

A model here is shared: the app caches one per checkpoint for all its sessions (threads). Nothing in
this module changes it. What a heatmap method has to set -- eval mode, pytorch-grad-cam's hooks, the
gradients of a backward pass -- it sets on a :func:`private_view` made for that call.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from ..models.wrappers import scale_maps  # ReLU + min-max per map (models' own heatmaps use it too)

log = logging.getLogger(__name__)


def target_layer(model: nn.Module) -> nn.Module:
    """The module whose output is the last feature map (timm's feature_info names it).

    ViTs: the last block's first norm, as pytorch-grad-cam advises: the head reads only the class
    token, so the patch tokens leaving the last block carry no gradient; entering its attention they do.
    torchvision / torchxrayvision wrappers name theirs (``cam_layer``: ResNet ``layer4``, DenseNet the
    ReLU after ``features``, EfficientNet / ConvNeXt ``features``, ViT the last encoder block's ``ln_1``).
    """
    if callable(getattr(model, "cam_layer", None)):
        return model.cam_layer()
    blocks = getattr(model, "blocks", None)
    if hasattr(model, "patch_embed") and blocks is not None and hasattr(blocks[-1], "norm1"):
        return blocks[-1].norm1
    info = getattr(model, "feature_info", None)
    if info:
        name = info[-1]["module"]
        return model.get_submodule(name)
    raise ValueError(f"{type(model).__name__} does not expose feature_info; pass a target layer explicitly.")


def input_channels(model: nn.Module) -> int:
    """Channels the model takes (xrv models: 1): ``in_chans`` where set, else the first conv's."""
    if getattr(model, "in_chans", None):
        return int(model.in_chans)
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return int(conv.in_channels) if conv is not None else 3


# A module's own tables (parameters, buffers, submodules, every kind of hook): copied for a private view.
_MODULE_TABLES = frozenset(k for k, v in vars(nn.Module()).items() if isinstance(v, (dict, set)))


def private_view(model: nn.Module) -> nn.Module:
    """``model`` for one call: new module objects around the same weight and buffer tensors (nothing is
    copied), so what the call sets on it -- training mode, hooks, a swapped submodule, the ``.grad`` of a
    backward pass -- reaches no other caller of the shared model.

    Each module's tables (parameters, buffers, submodules, hooks) are its own; each parameter is a new leaf
    over the same storage with the same ``requires_grad``, so a backward pass fills the view's ``.grad``,
    never the shared ones'. Everything else (buffers, plain attributes) is the shared object itself:
    read, not written, at inference. Outputs are bitwise those of ``model``.
    """
    params: dict[int, nn.Parameter] = {}
    views: dict[int, nn.Module] = {}

    def view(m: nn.Module) -> nn.Module:
        if id(m) in views:  # a module used at two places stays one module
            return views[id(m)]
        v = object.__new__(type(m))
        v.__dict__.update(vars(m))
        for k in _MODULE_TABLES & v.__dict__.keys():
            v.__dict__[k] = v.__dict__[k].copy()  # dict, OrderedDict or set: a shallow copy of its kind
        if "_compiled_call_impl" in v.__dict__:  # module.compile() binds the shared module: run the view eagerly
            v._compiled_call_impl = None
        views[id(m)] = v
        for k, p in m._parameters.items():
            if p is not None:
                if id(p) not in params:  # tied weights stay tied
                    params[id(p)] = nn.Parameter(p.detach(), requires_grad=p.requires_grad)
                v._parameters[k] = params[id(p)]
        for k, sub in m._modules.items():
            if sub is not None:
                v._modules[k] = view(sub)
        return v

    return view(model)


def _members(model: nn.Module) -> list[nn.Module] | None:
    """The networks of a model made of several (models/two_network.py), in output order; None otherwise."""
    members = getattr(model, "cam_members", None)
    return members() if callable(members) else None


def _member_outputs(model: nn.Module, x: torch.Tensor) -> list[int]:
    with torch.no_grad():
        return [int(m(x[:1]).shape[1]) for m in _members(model)]


def _to_grid(maps: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(B, L, h, w) maps resampled to the grid ``hw`` (members of one model may have different grids)."""
    if tuple(maps.shape[-2:]) == tuple(hw):
        return maps
    t = torch.nn.functional.interpolate(torch.from_numpy(maps), size=hw, mode="bilinear", align_corners=False)
    return t.numpy()


def _join(parts: list[tuple[torch.Tensor, np.ndarray]]) -> tuple[torch.Tensor, np.ndarray]:
    """Outputs and maps of several member networks as one model's: grids brought to the finest."""
    hw = max((p[1].shape[-2:] for p in parts), key=lambda s: s[0] * s[1])
    return torch.cat([p[0] for p in parts], dim=1), np.concatenate([_to_grid(p[1], hw) for p in parts], axis=1)


def fast_cam_check(model: nn.Module, size: int = 64) -> tuple[bool, str]:
    """(True, "") when the output of forward_features, averaged, is exactly what the linear classifier
    sees (then every label's Grad-CAM is its class activation map, all from one pass); otherwise
    (False, why), and the caller falls back to pytorch-grad-cam's per-label loop."""
    members = _members(model)
    if members is not None:  # several networks: single pass when every one allows it
        for m in members:
            ok, why = fast_cam_check(m, size)
            if not ok:
                return False, f"its {type(m).__name__} network: {why}"
        return True, ""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Linear):
        return False, f"the classifier is {type(head).__name__ if head is not None else 'missing'}, not one linear layer"
    if not hasattr(model, "forward_features"):
        return False, "the model has no forward_features"
    model = private_view(model).eval()  # the check's eval mode and hook stay off the caller's model
    try:
        with torch.no_grad():
            fixed = getattr(getattr(model, "patch_embed", None), "img_size", None)  # ViTs take one size
            size = int(fixed[0]) if fixed else size
            x = torch.randn(1, input_channels(model), size, size, device=next(model.parameters()).device)
            feats = model.forward_features(x)
            if feats.ndim != 4:
                return False, f"its features are {feats.ndim}-D (tokens), not a 2-D map"
            pooled = model.forward_head(feats, pre_logits=True)
            if not torch.allclose(pooled.flatten(1), feats.mean((2, 3)), atol=1e-5, rtol=1e-4):
                return False, "its head is not global average pooling of the feature map"
            if not _captures(model, target_layer(model), x, feats):
                return False, "its Grad-CAM layer does not output the feature map the head pools"
            return True, ""
    except Exception as exc:  # noqa: BLE001 - any failure means: use the general per-label method
        return False, f"the single-pass check failed ({type(exc).__name__}: {str(exc)[:160]})"


def supports_fast_cam(model: nn.Module, size: int = 64) -> bool:
    """Whether every label's heatmap can come from one forward pass (see :func:`fast_cam_check`);
    the reason is logged when not."""
    ok, why = fast_cam_check(model, size)
    if not ok:
        log.info("single-pass Grad-CAM not available for %s: %s; using pytorch-grad-cam per label",
                 type(model).__name__, why)
    return ok


def _captures(model, layer, x, feats) -> bool:
    box = {}
    handle = layer.register_forward_hook(lambda m, i, o: box.__setitem__("out", o))
    try:
        model.forward_features(x)
    finally:
        handle.remove()
    out = box.get("out")
    return out is not None and out.shape == feats.shape and torch.allclose(out, feats)


@torch.no_grad()
def forward_with_cams(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """Logits (B, L) and every label's Grad-CAM (B, L, h, w) in [0, 1] from one forward pass (of each
    network, for a model made of several: each label's map comes from the network that outputs it)."""
    if _members(model) is not None:
        return _join([forward_with_cams(m, x) for m in _members(model)])
    feats = model.forward_features(x)
    logits = model.forward_head(feats)
    weight = model.get_classifier().weight
    cams = torch.einsum("lc,bchw->blhw", weight.float(), feats.float())
    return logits, scale_maps(cams.cpu().numpy())


CAM_METHODS = ("GradCAM", "GradCAMPlusPlus", "HiResCAM", "XGradCAM", "LayerCAM", "EigenCAM", "ScoreCAM")
# Perturbation methods: one forward pass per activation channel of the target layer (hundreds to thousands
# per image and label), not one backward pass; bounded separately on a shared server (CXR_MAX_SLOW_CAM_IMAGES).
SLOW_CAM_METHODS = ("ScoreCAM",)


def model_cam_methods(model: nn.Module) -> tuple[str, ...]:
    """Heatmap methods a model offers besides pytorch-grad-cam's (``extra_cam_methods``; CLIP models: the
    similarity of each patch token to the label's text embedding, see models/clip.py)."""
    return tuple(getattr(model, "extra_cam_methods", ()) or ())


def cam_methods(model: nn.Module | None = None) -> tuple[str, ...]:
    """pytorch-grad-cam's methods, then the model's own (:func:`model_cam_methods`)."""
    return CAM_METHODS + (model_cam_methods(model) if model is not None else ())


def vit_reshape_transform(model: nn.Module):
    """pytorch-grad-cam's reshape for ViTs: drop the class (prefix) tokens, tokens -> (B, C, h, w)."""
    prefix = int(getattr(model, "num_prefix_tokens", 1))

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        b, n, c = tokens.shape
        side = int(round((n - prefix) ** 0.5))
        return tokens[:, prefix:, :].reshape(b, side, side, c).permute(0, 3, 1, 2)

    return reshape


def default_reshape(model: nn.Module):
    """A reshape transform when the model's features are tokens (ViT-like), else None."""
    tokens = hasattr(model, "patch_embed") or getattr(model, "token_features", False)  # timm ViT / torchvision ViT wrapper
    return vit_reshape_transform(model) if tokens and hasattr(model, "num_prefix_tokens") else None


def gradcam_loop(model: nn.Module, x: torch.Tensor, labels: list[int] | None = None,
                 method: str = "GradCAM", reshape_transform=None) -> tuple[torch.Tensor, np.ndarray]:
    """pytorch-grad-cam, once per label, with any of its methods (ViTs through a reshape transform).

    The general path for heads that are not GAP + linear, and for methods other than Grad-CAM.
    Returns maps at feature-map resolution (B, L, h, w), scaled to [0, 1]. pytorch-grad-cam's hooks,
    its eval() and its backward passes' gradients land on a :func:`private_view` of ``model``, so calls
    from several threads on one shared model neither see each other's activations nor leave anything.
    """
    if method in model_cam_methods(model):  # a model's own map (e.g. CLIP's patch-text similarity)
        return model.extra_cam(method, x, labels)
    if method not in CAM_METHODS:
        raise ValueError(f"Unknown CAM method {method!r}; use one of {', '.join(CAM_METHODS)}.")
    return _gradcam(private_view(model), x, labels, method, reshape_transform)


def _gradcam(model: nn.Module, x: torch.Tensor, labels: list[int] | None, method: str,
             reshape_transform=None) -> tuple[torch.Tensor, np.ndarray]:
    """:func:`gradcam_loop` on a model of this call's own (a private view: hooks may go on it)."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    members = _members(model)
    if members is not None:  # each label's map from the network that outputs it
        sizes = _member_outputs(model, x)
        starts = np.cumsum([0] + sizes)
        wanted = list(range(int(starts[-1]))) if labels is None else list(labels)
        parts, order = [], []
        for m, lo, n in zip(members, starts[:-1], sizes):
            mine = [j for j in wanted if lo <= j < lo + n]
            with torch.no_grad():
                logits_m = m(x)
            if mine:
                _, maps = _gradcam(m, x, [j - lo for j in mine], method)
                parts.append((logits_m, maps))
                order += mine
            else:
                parts.append((logits_m, None))
        logits = torch.cat([p[0] for p in parts], dim=1)
        found = [p[1] for p in parts if p[1] is not None]
        hw = max((f.shape[-2:] for f in found), key=lambda s: s[0] * s[1])
        maps = np.concatenate([_to_grid(f, hw) for f in found], axis=1)
        return logits, maps[:, [order.index(j) for j in wanted]]
    cam_cls = getattr(pgc, method)
    layer = target_layer(model)
    reshape_transform = reshape_transform or default_reshape(model)
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
        if reshape_transform is not None:
            feats = reshape_transform(feats)
    h, w = feats.shape[-2:]
    labels = list(range(logits.shape[1])) if labels is None else labels
    out = np.zeros((x.shape[0], len(labels), h, w), dtype=np.float32)
    with cam_cls(model=model, target_layers=[layer], reshape_transform=reshape_transform) as cam:
        for k, j in enumerate(labels):
            grayscale = cam(input_tensor=x, targets=[ClassifierOutputTarget(j)] * x.shape[0])
            # pytorch-grad-cam resizes to the input size; bring it back to the feature grid
            t = torch.from_numpy(grayscale)[:, None]
            out[:, k] = torch.nn.functional.adaptive_avg_pool2d(t, (h, w))[:, 0].numpy()
    return logits, scale_maps(out)
