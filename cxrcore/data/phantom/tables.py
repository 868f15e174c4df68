"""Table sampling: the real label tables, the patient layout and the rows of a phantom dataset.

Loads the NIH and CheXpert label tables that ship with torchxrayvision, lays images out over
patients (1-4 images each, deterministic blocks), decides the CheXpert train / valid split per
patient, draws one real table row per image (:func:`sample_table`) and turns a row into the
``{label: value}`` findings the renderer draws (:func:`row_labels`). Also holds the dataset's
column layouts, the domains and the argument checks shared with the writer. Nothing here draws.
"""
from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ...errors import ConfigError
from ...labels import CHEXPERT14


DOMAINS = {"nih": 1, "chexpert": 2}
MIN_SIZE, MAX_SIZE = 64, 1024
MAX_N = 200_000

NIH_COLUMNS = [
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
    "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]",
]
CHEXPERT_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"] + CHEXPERT14
BOX_COLUMNS = ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"]
CHEXPERT_PREFIX = "CheXpert-v1.0-small"
VALID_FRACTION = 0.05

# Patients have 1-4 images with these probabilities.
_IMAGES_PER_PATIENT = np.array([1, 2, 3, 4])
_IMAGES_PER_PATIENT_P = np.array([0.45, 0.28, 0.17, 0.10])
_PATIENT_BLOCK = 4096

# Tags that keep the random streams apart: rng([seed, domain_code, TAG, index]).
_TAG_IMAGE, _TAG_PATIENT, _TAG_COUNTS, _TAG_ROW = 0, 1, 2, 3


_TABLES: dict[str, object] = {}


def _table_path(domain: str) -> Path:
    """The table inside the installed torchxrayvision package (found without importing it:
    importing torchxrayvision imports torch, which takes seconds)."""
    import importlib.util

    name = {"nih": "Data_Entry_2017_v2020.csv.gz", "chexpert": "chexpert_train.csv.gz"}[domain]
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.origin:
        raise ConfigError(
            "The phantom generator needs the label tables that ship with torchxrayvision, which is "
            "not installed. Install it with: pip install torchxrayvision"
        )
    return Path(os.path.dirname(spec.origin)) / "data" / name


def _load_table(domain: str):
    """The real label table of ``domain`` (only the needed columns), cached per process."""
    if domain in _TABLES:
        return _TABLES[domain]
    import pandas as pd

    path = _table_path(domain)
    if not path.is_file():
        raise ConfigError(
            f"The {domain} label table {path} that ships with torchxrayvision is missing. "
            "Reinstall torchxrayvision (pip install --force-reinstall torchxrayvision)."
        )
    if domain == "nih":
        cols = ["Finding Labels", "Patient Age", "Patient Gender", "View Position"]
        table = pd.read_csv(path, usecols=cols)
    else:
        cols = ["Sex", "Age", "Frontal/Lateral", "AP/PA"] + CHEXPERT14
        table = pd.read_csv(path, usecols=cols)
        table = table[table["Frontal/Lateral"] == "Frontal"].reset_index(drop=True)
    _TABLES[domain] = table
    return table


def _patient_layout(n: int, domain_code: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Patient index (0-based) and follow-up number of images 0..n-1.

    Image counts per patient come in fixed blocks of a deterministic stream, so the layout
    of the first ``m`` images does not depend on ``n``.
    """
    counts = []
    total = 0
    block = 0
    while total < n:
        rng = np.random.default_rng([seed, domain_code, _TAG_COUNTS, block])
        c = rng.choice(_IMAGES_PER_PATIENT, size=_PATIENT_BLOCK, p=_IMAGES_PER_PATIENT_P)
        counts.append(c)
        total += int(c.sum())
        block += 1
    ends = np.cumsum(np.concatenate(counts))
    i = np.arange(n)
    patient = np.searchsorted(ends, i, side="right")
    starts = ends - np.concatenate(counts)
    return patient, i - starts[patient]


NIH_TEST_FRACTION = 0.2  # NIH's test_list.txt holds about 23 % of the images (patient-disjoint)


def nih_test_patient(seed: int, pid: int) -> bool:
    """Whether a phantom NIH patient is on the official test list (``test_list.txt``)."""
    d = hashlib.blake2b(f"phantom-nih-test:{seed}:{pid}".encode(), digest_size=8).digest()
    return int.from_bytes(d, "big") / 2**64 < NIH_TEST_FRACTION


def _valid_patient(seed: int, pid: int) -> bool:
    d = hashlib.blake2b(f"phantom-valid:{seed}:{pid}".encode(), digest_size=8).digest()
    return int.from_bytes(d, "big") / 2**64 < VALID_FRACTION


def sample_table(n: int, domain: str = "nih", seed: int = 0):
    """The label table of ``generate(out, n, domain, seed=seed)`` without rendering any image.

    Returns a DataFrame with the dataset's own CSV columns (``NIH_COLUMNS`` without the size
    columns for nih, ``CHEXPERT_COLUMNS`` for chexpert) plus internal columns ``_file`` (path
    relative to the output folder), ``_patient`` (int), ``_followup`` (int), ``_row`` (row of
    the real table) and, for chexpert, ``_split`` (``train`` / ``valid``).
    Patient sex and age come from the row drawn for the patient's first image; view position
    and findings from each image's own row.
    """
    _check_args(n, domain, 256, seed, 1)
    import pandas as pd

    code = DOMAINS[domain]
    table = _load_table(domain)
    patient, follow = _patient_layout(n, code, seed)
    rows = np.array([np.random.default_rng([seed, code, _TAG_ROW, i]).integers(len(table))
                     for i in range(n)], dtype=np.int64)
    first = np.arange(n) - follow  # index of the patient's first image
    demo_rows = rows[first]
    pid = patient + 1
    if domain == "nih":
        src = table.iloc[rows].reset_index(drop=True)
        demo = table.iloc[demo_rows].reset_index(drop=True)
        names = [f"{p:08d}_{f:03d}.png" for p, f in zip(pid, follow)]
        frame = pd.DataFrame({
            "Image Index": names,
            "Finding Labels": src["Finding Labels"].to_numpy(),
            "Follow-up #": follow,
            "Patient ID": pid,
            "Patient Age": demo["Patient Age"].to_numpy(),
            "Patient Gender": demo["Patient Gender"].to_numpy(),
            "View Position": src["View Position"].to_numpy(),
        })
        frame["_file"] = ["images/" + s for s in names]
    else:
        src = table.iloc[rows].reset_index(drop=True)
        demo = table.iloc[demo_rows].reset_index(drop=True)
        split = np.array(["valid" if _valid_patient(seed, int(p)) else "train" for p in pid])
        files = [f"{s}/patient{p:05d}/study{f + 1}/view1_frontal.jpg"
                 for s, p, f in zip(split, pid, follow)]
        frame = pd.DataFrame({
            "Path": [f"{CHEXPERT_PREFIX}/{f}" for f in files],
            "Sex": demo["Sex"].to_numpy(),
            "Age": demo["Age"].to_numpy(),
            "Frontal/Lateral": src["Frontal/Lateral"].to_numpy(),
            "AP/PA": src["AP/PA"].to_numpy(),
        })
        for col in CHEXPERT14:
            frame[col] = src[col].to_numpy(dtype=np.float64)
        frame["_file"] = files
        frame["_split"] = split
    frame["_patient"] = pid
    frame["_followup"] = follow
    frame["_row"] = rows
    return frame


def row_labels(row: Mapping, domain: str) -> dict[str, float]:
    """Findings of one ``sample_table`` row as ``{dataset label name: raw value}``.

    NIH: every listed finding with value 1.0 (``No Finding`` gives an empty dict).
    CheXpert: the 14 label columns that are not blank, with their raw value (1, 0, -1).
    """
    if domain == "nih":
        return {s: 1.0 for s in str(row["Finding Labels"]).split("|") if s and s != "No Finding"}
    out = {}
    for col in CHEXPERT14:
        v = row[col]
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            out[col] = float(v)
    return out


def _check_args(n, domain, size, seed, workers):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"The number of images must be a whole number of at least 1, not {n!r}.")
    if n > MAX_N:
        raise ConfigError(f"{n} images is more than the phantom generator makes ({MAX_N}); ask for fewer.")
    if domain not in DOMAINS:
        raise ConfigError(f"Unknown phantom domain {domain!r}; use one of {', '.join(DOMAINS)}.")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"Image size {size!r} is out of range; use a whole number from {MIN_SIZE} to {MAX_SIZE}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"The seed must be a non-negative whole number, not {seed!r}.")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ConfigError(f"workers must be a whole number of at least 1, not {workers!r}.")
