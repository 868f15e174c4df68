"""Label spaces, synonyms and the CheXpert hierarchy.

Label names are kept exactly as each dataset spells them (``Pleural_Thickening`` in NIH,
``Pleural Effusion`` in CheXpert). Matching across spaces goes through :func:`canonical`,
which folds case, underscores and the synonym table, so ``Effusion`` matches
``Pleural Effusion``.
"""
from __future__ import annotations

from .errors import ConfigError

NIH14 = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
    "Hernia",
]

CHEXPERT14 = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
]

CHEXPERT5 = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]

LABEL_SPACES: dict[str, list[str]] = {
    "nih14": NIH14,
    "chexpert14": CHEXPERT14,
    "chexpert5": CHEXPERT5,
}

# What became of a finding between a prior film and the current one: the truth of a phantom pair
# (cxrcore.data.phantom.pairs) and the call of a comparison (cxrcore.prior), in this order everywhere.
CHANGES = ("new", "resolved", "worse", "better", "unchanged")

# Different spellings of the same finding, folded to one canonical key.
SYNONYMS = {
    "effusion": "pleural effusion",
    "pleural thickening": "pleural thickening",
    "infiltrate": "infiltration",
    "infiltrates": "infiltration",
    "enlarged cardiomediastinum": "enlarged cardiomediastinum",
    "lung lesion": "lung lesion",
}

# The gate label of a two-stage model: its target follows from the findings (gate_targets).
GATE_LABEL = "Any finding"

# CheXpert parent -> children (Irvin et al. 2019, figure 2).
CHEXPERT_HIERARCHY = {
    "Lung Opacity": ["Edema", "Consolidation", "Pneumonia", "Lung Lesion", "Atelectasis"],
    "Consolidation": ["Pneumonia"],
    "Enlarged Cardiomediastinum": ["Cardiomegaly"],
}


def canonical(name: str) -> str:
    """Case-, underscore- and synonym-folded key used to match labels across spaces."""
    key = " ".join(name.replace("_", " ").strip().lower().split())
    return SYNONYMS.get(key, key)


def resolve_label_space(spec: str | list[str]) -> list[str]:
    """A named space (``nih14``, ``chexpert14``, ``chexpert5``) or a comma-separated list."""
    if isinstance(spec, list):
        labels = [s.strip() for s in spec if s.strip()]
    elif spec in LABEL_SPACES:
        return list(LABEL_SPACES[spec])
    else:
        labels = [s.strip() for s in spec.split(",") if s.strip()]
        if len(labels) < 2 and spec not in LABEL_SPACES:
            raise ConfigError(
                f"Unknown label space {spec!r}. Use one of {', '.join(LABEL_SPACES)} "
                "or a comma-separated list of label names."
            )
    keys = [canonical(s) for s in labels]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"The label list {labels} names the same finding twice.")
    return labels


def match_labels(source: list[str], target: list[str]) -> dict[int, int]:
    """Map target index -> source index for labels the two lists share (through synonyms)."""
    by_key = {canonical(s): i for i, s in enumerate(source)}
    return {j: by_key[canonical(t)] for j, t in enumerate(target) if canonical(t) in by_key}


def find_label(name: str, labels: list[str]) -> int | None:
    """Index of ``name`` in ``labels`` under synonym folding, or None."""
    key = canonical(name)
    for i, s in enumerate(labels):
        if canonical(s) == key:
            return i
    return None


def gate_targets(targets, labels: list[str] | None = None):
    """The "Any finding" target per image (two-stage models, :func:`cxrcore.train.losses.two_stage_targets`):
    1 when a finding is positive, 0 for a "No Finding" film or one whose findings are all known and negative,
    NaN otherwise. ``targets``: (N, L) with NaN = unknown; returns (N,) float32."""
    import numpy as np

    targets = np.asarray(targets, dtype=np.float32)
    nf = [j for j, x in enumerate(labels or []) if canonical(x) == "no finding"]
    finding = np.ones(targets.shape[1], dtype=bool)
    finding[nf] = False
    t = targets[:, finding]
    pos = np.nansum(t == 1, axis=1) > 0
    normal = (~np.isnan(t)).all(axis=1) & ~pos
    if nf:
        normal |= (targets[:, nf] == 1).any(axis=1) & ~pos
    return np.where(pos, 1.0, np.where(normal, 0.0, np.nan)).astype(np.float32)
