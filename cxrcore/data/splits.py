"""Patient-level, multi-label stratified splits and a per-label balance report.

``stratified_patient_split`` is iterative stratification (Sechidis et al. 2011) over patients:
every patient carries its images' positive counts per label; labels are taken rarest first
(fewest positives among patients not yet placed), and every patient with that label goes to the
split that still needs the most positives of it (ties: the split needing the most images, then a
seeded random pick). Patients without any positive fill the splits by image count. All images of a
patient land in one split. Unlike :func:`cxrcore.data.index.patient_split` (a hash per patient),
the assignment depends on the whole cohort: recompute it from the same filtered index and seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import DataError

SPLITS = ("train", "val", "test")
OFFICIAL_TRAIN = ("train_val", "train")   # NIH train_val_list.txt, CheXpert train.csv
WARN_GAP = 0.02  # 2 percentage points

# The split methods, declared once (name -> label on the forms): TrainConfig's ``split_method`` choices,
# ``cxr train --split-method``, the Training form and the Dataset page read this mapping (a new entry shows
# up on all of them); :func:`assign_split` computes each.
SPLIT_METHODS: dict[str, str] = {
    "hash": "hash by patient",
    "stratified": "stratified by label",
    "official": "official test split",
}


@dataclass(frozen=True)
class Fraction:
    """The bounds of a split fraction (a share of the patients) and its default."""

    default: float
    min: float
    max: float


# The split fractions' bounds, declared once: TrainConfig (its options and validate), the CLI flags derived
# from it, the Dataset page and :func:`assign_split` read them.
VAL_FRACTION = Fraction(0.1, 0.01, 0.5)
TEST_FRACTION = Fraction(0.2, 0.0, 0.5)
MAX_HELD_OUT = 0.9  # val + test stay below this: the rest trains


def check_fractions(val: float, test: float) -> None:
    """DataError unless ``val`` and ``test`` lie in their bounds and leave enough patients for training."""
    for name, value, b in (("Validation", val, VAL_FRACTION), ("Test", test, TEST_FRACTION)):
        if not b.min <= value <= b.max:
            raise DataError(f"{name} fraction {value:g} must be from {b.min:g} to {b.max:g}.")
    if val + test >= MAX_HELD_OUT:
        raise DataError(f"Validation + test fraction ({val + test:g}) leaves too little for training; keep them "
                        f"below {MAX_HELD_OUT:g} together.")


def stratified_patient_split(frame: pd.DataFrame, targets: np.ndarray, seed: int = 0, val: float = 0.1,
                             test: float = 0.2) -> np.ndarray:
    """``train`` / ``val`` / ``test`` per image (object array), stratified by patient and label."""
    if not 0 <= val < 1 or not 0 <= test < 1 or val + test >= 1:
        raise DataError(f"Split fractions val={val}, test={test} must be in [0, 1) and sum below 1.")
    targets = np.asarray(targets, dtype=np.float32)
    if targets.ndim != 2 or len(targets) != len(frame):
        raise DataError(f"targets must be (images, labels) with one row per image; got {targets.shape} for {len(frame)} images.")
    n = len(frame)
    if n == 0:
        return np.array([], dtype=object)
    pid = frame["patient_id"].astype(str).to_numpy()
    patients, inverse = np.unique(pid, return_inverse=True)
    pos = np.nan_to_num(targets, nan=0.0) == 1
    counts = np.zeros((len(patients), targets.shape[1]), dtype=np.float64)
    np.add.at(counts, inverse, pos.astype(np.float64))
    weights = np.bincount(inverse, minlength=len(patients)).astype(np.float64)

    ratios = np.array([1 - val - test, val, test], dtype=np.float64)
    active = ratios > 0
    need_labels = ratios[:, None] * counts.sum(0)[None, :]      # (3, L) positives still wanted
    need_images = ratios * n                                    # (3,) images still wanted
    rng = np.random.default_rng(seed)
    order_key = rng.permutation(len(patients))                  # seeded order among equals
    tie = rng.random((len(patients), 3))                        # seeded tie-break per patient
    assign = np.full(len(patients), -1, dtype=np.int64)

    def place(p: int, label: int | None) -> None:
        score = np.where(active, need_images, -np.inf)
        if label is not None:
            key = np.lexsort((tie[p], need_images, np.where(active, need_labels[:, label], -np.inf)))
        else:
            key = np.lexsort((tie[p], score))
        s = int(key[-1])
        assign[p] = s
        need_labels[s] -= counts[p]
        need_images[s] -= weights[p]

    remaining = np.ones(len(patients), dtype=bool)
    while True:
        left = counts[remaining].sum(0)
        if not (left > 0).any():
            break
        label = int(np.argmin(np.where(left > 0, left, np.inf)))
        members = np.flatnonzero(remaining & (counts[:, label] > 0))
        members = members[np.argsort(order_key[members], kind="stable")]
        for p in members:
            place(int(p), label)
        remaining[members] = False
    rest = np.flatnonzero(remaining)
    # Largest patients first, so the image counts come out close to the fractions.
    rest = rest[np.lexsort((order_key[rest], -weights[rest]))]
    for p in rest:
        place(int(p), None)
    return np.array(SPLITS, dtype=object)[assign[inverse]]


def balance_report(targets: np.ndarray, split, labels: list[str], warn_gap: float = WARN_GAP) -> pd.DataFrame:
    """Per label: positive rate in each split (positives / images with a target), positive counts,
    the largest rate gap between two non-empty splits, and ``warn`` when it exceeds ``warn_gap``
    (0.02 = 2 percentage points). Rows whose split is not train/val/test (e.g. ``unreadable``) are left out.
    """
    targets = np.asarray(targets, dtype=np.float64)
    split = np.asarray(split, dtype=object)
    if targets.ndim != 2 or targets.shape[1] != len(labels) or len(split) != len(targets):
        raise DataError(f"balance_report: targets {targets.shape}, split {len(split)} and {len(labels)} labels do not match.")
    present = [s for s in SPLITS if (split == s).any()]
    rows = []
    for j, label in enumerate(labels):
        row: dict = {"label": label}
        rates = []
        for s in SPLITS:
            t = targets[split == s, j]
            known = t[~np.isnan(t)]
            rate = float((known == 1).mean()) if len(known) else np.nan
            row[s] = rate
            row[f"{s}_pos"] = int((known == 1).sum())
            if s in present and not np.isnan(rate):
                rates.append(rate)
        gap = float(max(rates) - min(rates)) if len(rates) >= 2 else 0.0
        row["max_gap"] = gap
        row["warn"] = bool(gap > warn_gap + 1e-12)
        rows.append(row)
    return pd.DataFrame(rows, columns=["label", *SPLITS, *(f"{s}_pos" for s in SPLITS), "max_gap", "warn"])


def balance_warnings(report: pd.DataFrame) -> list[str]:
    """One line per flagged label, for cards and logs."""
    out = []
    for _, r in report[report["warn"]].iterrows():
        rates = ", ".join(f"{s} {100 * r[s]:.1f}%" for s in SPLITS if not pd.isna(r[s]))
        out.append(f"{r['label']}: positive rate differs by {100 * r['max_gap']:.1f} points between splits ({rates})")
    return out


def assign_split(frame: pd.DataFrame, targets: np.ndarray, method: str = "hash", seed: int = 0, val: float = 0.1,
                 test: float = 0.2) -> np.ndarray:
    """The training code's split (``split_method``, one of :data:`SPLIT_METHODS`): ``hash``
    (:func:`~cxrcore.data.index.patient_split`), ``stratified`` (:func:`stratified_patient_split`) or
    ``official`` (:func:`official_patient_split`; ``test`` unused); ``train`` / ``val`` / ``test`` per image
    (``unlisted`` too for ``official``). DataError for fractions out of their bounds (:func:`check_fractions`).

    ``hash`` gives exactly ``patient_split(frame["patient_id"], ...)``, hashing each distinct patient
    once instead of once per image (a third of the work on CheXpert's 223,414 images of 64,540 patients).
    """
    if method not in SPLIT_METHODS:
        raise DataError(f"Unknown split method {method!r}; use one of {', '.join(SPLIT_METHODS)}.")
    check_fractions(val, test)
    if method == "stratified":
        return stratified_patient_split(frame, targets, seed, val, test)
    if method == "official":
        return official_patient_split(frame, seed, val)
    if method != "hash":
        raise DataError(f"The split method {method!r} is declared but not computed here yet.")
    from .index import patient_split

    pid = frame["patient_id"]
    if len(pid) == 0 or pid.isna().any():  # missing ids: let patient_split spell them per row
        return patient_split(pid, seed, val, test)
    codes, uniques = pd.factorize(pid)
    return patient_split(pd.Series(np.asarray(uniques, dtype=object)), seed, val, test)[codes]


def split_sizes(frame: pd.DataFrame, split) -> pd.DataFrame:
    """Per split (rows train, val, test): ``images``, ``patients``, ``pct_images``, ``pct_patients``
    (of the images / patients in the three splits; a split with no image has zeros). Images without a
    patient id count as one patient, as :func:`~cxrcore.data.index.patient_split` places them."""
    split = np.asarray(split, dtype=object)
    if len(split) != len(frame):
        raise DataError(f"split_sizes: {len(split)} split entries for {len(frame)} images.")
    codes, uniques = pd.factorize(frame["patient_id"], use_na_sentinel=False)
    images = np.zeros(len(SPLITS), dtype=np.int64)
    patients = np.zeros(len(SPLITS), dtype=np.int64)
    for i, s in enumerate(SPLITS):
        mask = split == s
        images[i] = int(mask.sum())
        patients[i] = int(np.count_nonzero(np.bincount(codes[mask], minlength=len(uniques))))
    with np.errstate(divide="ignore", invalid="ignore"):
        return pd.DataFrame({
            "images": images,
            "patients": patients,
            "pct_images": 100.0 * images / images.sum() if images.sum() else np.zeros(3),
            "pct_patients": 100.0 * patients / patients.sum() if patients.sum() else np.zeros(3),
        }, index=pd.Index(SPLITS, name="split", dtype=object))


def split_balance(index, labels: list[str], method: str = "hash", seed: int = 0, val: float = 0.1,
                  test: float = 0.2, policy="zeros", warn_gap: float = WARN_GAP) -> dict:
    """The split training would make of ``index`` (a DatasetIndex, before any cohort filter) and its
    balance: targets for ``labels`` under ``policy`` (as ``prepare_data``), :func:`assign_split`,
    :func:`balance_report`, :func:`balance_warnings` and :func:`split_sizes`.

    Returns ``{"split", "report", "warnings", "sizes"}``."""
    targets = index.targets(labels, policy)
    split = assign_split(index.frame, targets, method, seed, val, test)
    report = balance_report(targets, split, labels, warn_gap)
    return {"split": split, "report": report, "warnings": balance_warnings(report),
            "sizes": split_sizes(index.frame, split)}


def official_patient_split(frame: pd.DataFrame, seed: int = 0, val: float = 0.1) -> np.ndarray:
    """The dataset's official split: its test list (NIH ``test_list.txt``, CheXpert ``valid.csv``) is the
    test split; the rest of the official training part (``train_val_list.txt``, ``train.csv``) is split
    into train / val by a hash of the patient (``val`` of its patients). Images in neither list are
    ``unlisted`` and used nowhere. A patient with images on both sides of the official line (the official
    lists are patient-disjoint; a hand-made list may not be) keeps its test images in test and the rest
    out of training (``unlisted``), so no patient is in both.
    """
    from .index import patient_split
    from .readers import OFFICIAL_HELP, OFFICIAL_TEST

    if "official_split" not in frame.columns or not frame["official_split"].isin(OFFICIAL_TEST).any():
        raise DataError(f"The split method 'official' needs the dataset's official test list. {OFFICIAL_HELP}")
    if not 0 <= val < 1:
        raise DataError(f"Validation fraction {val} must be in [0, 1).")
    off = frame["official_split"]
    test = off.isin(OFFICIAL_TEST).to_numpy()
    train_part = off.isin(OFFICIAL_TRAIN).to_numpy()
    inner = patient_split(frame["patient_id"], seed, val, 0.0)
    out = np.where(test, "test", np.where(train_part, inner, "unlisted")).astype(object)
    test_patients = set(frame.loc[test, "patient_id"].astype(str))
    leak = train_part & frame["patient_id"].astype(str).isin(test_patients).to_numpy()
    out[leak] = "unlisted"
    return out
