"""CLIP model names without importing torch or open_clip: what the model pickers and the home page list
(see :mod:`cxrcore.models.clip` for the models themselves)."""
from __future__ import annotations

import hashlib
import os
import re

from .names import CLIP_PREFIX as PREFIX

EXTRA_ENV = "CXR_CLIP_MODELS"     # more CLIP names for the model pickers, comma-separated
# Listed in the model pickers ("needs weights" until their file is in the cache); canonical names (a test checks
# each against open_clip's registry)
LISTED = (
    "clip:ViT-B-32/laion2b_s34b_b79k",
    "clip:ViT-B-32/openai",
    "clip:ViT-B-16/laion2b_s34b_b88k",
    "clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
)


def is_clip(ref) -> bool:
    return isinstance(ref, (str, os.PathLike)) and str(ref).strip().lower().startswith(PREFIX)


def slug(name: str) -> str:
    """A folder name: ``clip:ViT-B-32/openai`` -> ``clip-ViT-B-32-openai`` (long local paths: a hash)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")
    if len(s) > 80:
        s = s[:60] + "-" + hashlib.sha1(name.encode()).hexdigest()[:12]
    return s


def extra_names_set() -> bool:
    """Whether ``$CXR_CLIP_MODELS`` adds names (which need open_clip to check)."""
    return bool(os.environ.get(EXTRA_ENV, "").strip())
