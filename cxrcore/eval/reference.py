"""Published per-label AUROCs on NIH ChestX-ray14, to set beside a model's own figures.

Two columns from the literature, as tabulated in CheXNet's comparison table (Rajpurkar et al. 2017,
Table 2), each with what it was measured on:

- **Wang et al. 2017** (ChestX-ray8, CVPR 2017; arXiv:1705.02315): the dataset's official patient-level
  split, the same images as ``test_list.txt``.
- **CheXNet** (Rajpurkar et al. 2017, "CheXNet: Radiologist-Level Pneumonia Detection on Chest X-Rays
  with Deep Learning", arXiv:1711.05225): DenseNet-121 on CheXNet's own random patient split
  (70 / 10 / 20 %), not ``test_list.txt``: same dataset and labels, different test images.

Neither is a result of this tool; they say what the field reported, so a reader can place a model's
figures. They are shown only for NIH-14 labels.
"""
from __future__ import annotations

from ..labels import canonical

SOURCES = {
    "wang2017": {
        "title": "Wang et al. 2017 (ChestX-ray8, CVPR)",
        "citation": "X. Wang, Y. Peng, L. Lu, Z. Lu, M. Bagheri, R. M. Summers. ChestX-ray8: Hospital-scale Chest "
                    "X-ray Database and Benchmarks on Weakly-Supervised Classification and Localization of Common "
                    "Thorax Diseases. CVPR 2017. arXiv:1705.02315.",
        "split": "the official NIH patient-level test split (test_list.txt)",
    },
    "chexnet": {
        "title": "CheXNet (Rajpurkar et al. 2017)",
        "citation": "P. Rajpurkar, J. Irvin, K. Zhu, et al. CheXNet: Radiologist-Level Pneumonia Detection on Chest "
                    "X-Rays with Deep Learning. arXiv:1711.05225 (2017), Table 2.",
        "split": "CheXNet's own random 70/10/20 patient split, not test_list.txt",
    },
}

# NIH-14 label -> AUROC, as published (CheXNet, Table 2).
AUROC = {
    "wang2017": {
        "Atelectasis": 0.716, "Cardiomegaly": 0.807, "Effusion": 0.784, "Infiltration": 0.609, "Mass": 0.706,
        "Nodule": 0.671, "Pneumonia": 0.633, "Pneumothorax": 0.806, "Consolidation": 0.708, "Edema": 0.835,
        "Emphysema": 0.815, "Fibrosis": 0.769, "Pleural_Thickening": 0.708, "Hernia": 0.767,
    },
    "chexnet": {
        "Atelectasis": 0.8094, "Cardiomegaly": 0.9248, "Effusion": 0.8638, "Infiltration": 0.7345, "Mass": 0.8676,
        "Nodule": 0.7802, "Pneumonia": 0.7680, "Pneumothorax": 0.8887, "Consolidation": 0.7901, "Edema": 0.8878,
        "Emphysema": 0.9371, "Fibrosis": 0.8047, "Pleural_Thickening": 0.8062, "Hernia": 0.9164,
    },
}


def published_auroc(labels: list[str], source: str) -> dict[str, float | None]:
    """The published AUROC of each of ``labels`` (matched by synonym: Effusion / Pleural Effusion...),
    None where the source has no figure for it."""
    table = {canonical(k): v for k, v in AUROC[source].items()}
    return {x: table.get(canonical(x)) for x in labels}


def mean_published(source: str) -> float:
    v = list(AUROC[source].values())
    return sum(v) / len(v)
