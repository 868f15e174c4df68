"""The built-in model families' name prefixes and the library models' names, declared once; no torch.

A model name is ``<prefix>:<name>`` (``tv:resnet50``, ``xrv:densenet121-res224-all``,
``clip:ViT-B-32/openai``) or, for timm, a bare name. The families (:mod:`cxrcore.models.family`) take
their prefixes from here, and the model pickers, hosting and the CLI's help read the names from here
without importing torch.
"""
from __future__ import annotations

TIMM = "timm"
TORCHVISION = "torchvision"
XRV = "xrv"
OPEN_CLIP = "open_clip"
TWO_NETWORK = "two_network"

# family -> the prefixes of its names (the first is the one names are written with); timm's names also go bare
PREFIXES: dict[str, tuple[str, ...]] = {
    TIMM: ("timm",),
    TORCHVISION: ("tv", "torchvision"),
    XRV: ("xrv",),
    OPEN_CLIP: ("clip",),
}
XRV_PREFIX = PREFIXES[XRV][0] + ":"
CLIP_PREFIX = PREFIXES[OPEN_CLIP][0] + ":"

# torchxrayvision's pretrained chest X-ray models, usable by name wherever a checkpoint is (models/library.py)
XRV_WEIGHT_SETS = ("all", "nih", "pc", "chex", "rsna", "mimic_nb", "mimic_ch")
XRV_NAMES = (tuple(f"{XRV_PREFIX}densenet121-res224-{w}" for w in XRV_WEIGHT_SETS)
             + (f"{XRV_PREFIX}resnet50-res512-all",))
XRV_ALIASES = {**{f"{XRV_PREFIX}{w}": f"{XRV_PREFIX}densenet121-res224-{w}" for w in XRV_WEIGHT_SETS},
               f"{XRV_PREFIX}resnet50": f"{XRV_PREFIX}resnet50-res512-all"}


def library_hint() -> str:
    """The torchxrayvision library models for a command's help, e.g. ``a library model by name:
    xrv:densenet121-res224-all|nih|...|mimic_ch, xrv:resnet50-res512-all`` (what ``cxr``'s LIBRARY_HINT says)."""
    dense = [n for n in XRV_NAMES if "densenet" in n]
    first, rest = dense[0], [n.rsplit("-", 1)[1] for n in dense[1:]]
    others = [n for n in XRV_NAMES if n not in dense]
    return "a library model by name: " + "|".join([first, *rest]) + ", " + ", ".join(others)
