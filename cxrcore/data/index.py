"""The dataset index: one table row per image, the same shape for every reader.

Columns of ``DatasetIndex.frame``:

- ``image_id``: file name or dataset-relative path, unique per row
- ``path``: absolute path of the image file
- ``patient_id``, ``study_id``: strings
- ``sex`` (``M`` / ``F`` / NaN), ``age`` (float years or NaN), ``view`` (``PA``, ``AP``, ``LL``, ... or NaN),
  ``frontal`` (bool)
- one column per label in ``labels``, holding the raw value as the dataset states it:
  1 positive, 0 negative, -1 uncertain (CheXpert), NaN not mentioned.

``boxes`` holds ground-truth boxes: ``image_id``, ``label`` (as in ``labels``), and ``x``, ``y``,
``w``, ``h`` as fractions of the image width / height.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from ..labels import canonical

BOX_COLUMNS = ["image_id", "label", "x", "y", "w", "h"]

# How CheXpert's uncertain (-1) and unmentioned (NaN) values become training targets.
# Each maps raw value -> target; NaN target means "ignore in loss and metrics".
POLICIES = {
    "zeros": {-1: 0.0, "blank": 0.0},   # U-Zeros
    "ones": {-1: 1.0, "blank": 0.0},    # U-Ones
    "ignore": {-1: np.nan, "blank": 0.0},  # U-Ignore: uncertain masked out
}


POLICY_EXAMPLE = '"ones:Atelectasis,Edema;zeros" or {"Atelectasis": "ones", "*": "zeros"}'


def parse_policy(spec) -> tuple[dict[str, str], str]:
    """A plain policy name, a mix string or a dict -> ({canonical label: policy}, default policy).

    Mix string: ``"ones:Atelectasis,Edema;ignore:Cardiomegaly;zeros"``: ``policy:label,label`` parts
    separated by ``;``, the last part a bare policy for every other label (default ``zeros`` when absent).
    Dict: ``{"Atelectasis": "ones", "*": "zeros"}`` (``"*"`` is the default).
    """
    def bad(why: str) -> DataError:
        return DataError(f"Bad uncertainty policy {spec!r}: {why}. Use one of {', '.join(POLICIES)}, "
                         f"or a per-label mix such as {POLICY_EXAMPLE}.")

    def check(name) -> str:
        name = str(name).strip().lower()
        if name not in POLICIES:
            raise bad(f"unknown policy {name!r}")
        return name

    per: dict[str, str] = {}
    default = "zeros"
    if isinstance(spec, dict):
        if not spec:
            raise bad("empty")
        for label, pol in spec.items():
            if not isinstance(label, str) or not label.strip():
                raise bad(f"label {label!r} is not a name")
            if label.strip() == "*":
                default = check(pol)
            else:
                per[canonical(label)] = check(pol)
        return per, default
    if not isinstance(spec, str) or not spec.strip():
        raise bad("not a policy name or mix")
    parts = [p.strip() for p in spec.split(";")]
    if any(not p for p in parts):
        raise bad("empty part between ';'")
    for k, part in enumerate(parts):
        if ":" not in part:
            if k != len(parts) - 1:
                raise bad(f"the bare default policy {part!r} must come last")
            default = check(part)
            continue
        pol, _, labels = part.partition(":")
        pol = check(pol)
        names = [x.strip() for x in labels.split(",") if x.strip()]
        if not names:
            raise bad(f"no labels after {pol}:")
        for name in names:
            key = canonical(name)
            if key in per and per[key] != pol:
                raise bad(f"label {name!r} is given two policies")
            per[key] = pol
    return per, default


@dataclass
class DatasetIndex:
    root: Path
    format: str
    frame: pd.DataFrame
    labels: list[str]
    boxes: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=BOX_COLUMNS))
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def name(self) -> str:
        return self.root.name

    def label_matrix(self) -> np.ndarray:
        """Raw values (N, L): 1, 0, -1, NaN."""
        return self.frame[self.labels].to_numpy(dtype=np.float32)

    def targets(self, label_space: list[str], policy: str | dict = "zeros") -> np.ndarray:
        """Training targets (N, len(label_space)) for a model's label list.

        Labels are matched through synonyms. A label the dataset does not have is NaN
        (ignored) for every image. ``policy`` decides CheXpert's -1 and blanks: a name in
        POLICIES, or a per-label mix (see :func:`parse_policy`).
        """
        if isinstance(policy, str) and policy in POLICIES:
            per, default = {}, policy
        else:
            per, default = parse_policy(policy)
        by_key = {canonical(c): c for c in self.labels}
        out = np.full((len(self.frame), len(label_space)), np.nan, dtype=np.float32)
        for j, name in enumerate(label_space):
            col = by_key.get(canonical(name))
            if col is None:
                continue
            rule = POLICIES[per.get(canonical(name), default)]
            raw = self.frame[col].to_numpy(dtype=np.float32)
            t = raw.copy()
            t[raw == -1] = rule[-1]
            t[np.isnan(raw)] = rule["blank"]
            out[:, j] = t
        return out

    def shared_labels(self, label_space: list[str]) -> list[str]:
        keys = {canonical(c) for c in self.labels}
        return [name for name in label_space if canonical(name) in keys]

    def fingerprint(self) -> str:
        """Short hash of the image list and raw labels: identifies the data a model saw."""
        h = hashlib.sha256()
        h.update(self.format.encode())
        h.update("\n".join(self.frame["image_id"].astype(str)).encode())
        h.update(np.nan_to_num(self.label_matrix(), nan=9).astype(np.int8).tobytes())
        return h.hexdigest()[:16]

    def subset(self, mask) -> "DatasetIndex":
        frame = self.frame[np.asarray(mask)].reset_index(drop=True)
        boxes = self.boxes[self.boxes["image_id"].isin(set(frame["image_id"]))].reset_index(drop=True)
        return DatasetIndex(self.root, self.format, frame, list(self.labels), boxes, list(self.notes))


def patient_split(patient_ids: pd.Series, seed: int = 0, val: float = 0.1, test: float = 0.2) -> np.ndarray:
    """Assign every image to ``train`` / ``val`` / ``test`` by a hash of its patient and the seed.

    All images of one patient land in one split. The assignment of a patient does not depend
    on which other patients are present, so a subset of a dataset keeps its images' splits.
    """
    if not 0 <= val < 1 or not 0 <= test < 1 or val + test >= 1:
        raise DataError(f"Split fractions val={val}, test={test} must be in [0, 1) and sum below 1.")

    u = _patient_units(patient_ids, seed)
    out = np.where(u < test, "test", np.where(u < test + val, "val", "train"))
    return out.astype(object)


def _patient_units(patient_ids, seed: int) -> np.ndarray:
    """A number in [0, 1) per image from a hash of its patient and the seed (the same for all of a patient's)."""
    def unit(pid: str) -> float:
        d = hashlib.blake2b(f"{seed}:{pid}".encode(), digest_size=8).digest()
        return int.from_bytes(d, "big") / 2**64

    return np.array([unit(str(p)) for p in patient_ids], dtype=np.float64)


MAX_FOLDS = 20


def crossfit_folds(patient_ids: pd.Series, folds: int, seed: int = 0) -> np.ndarray:
    """The fold (0 … ``folds`` - 1) of every image for k-fold cross-fitting, by patient: all of a patient's images in
    one fold, a patient's fold independent of the others present (the hash :func:`patient_split` uses)."""
    if not 2 <= int(folds) <= MAX_FOLDS:
        raise DataError(f"Cross-fitting takes 2 to {MAX_FOLDS} folds, not {folds}.")
    return np.minimum((_patient_units(patient_ids, seed) * folds).astype(int), folds - 1)


def crossfit_split(patient_ids: pd.Series, folds: int, fold: int, seed: int = 0, val: float = 0.1) -> np.ndarray:
    """The split of one fold's training: its fold's patients are ``test`` (never trained on: their probabilities are
    out of sample), the other folds' patients ``val`` (a ``val`` share of them, by the hash's remainder) or
    ``train``."""
    if not 0 <= fold < folds:
        raise DataError(f"Fold {fold} is not one of 0 … {folds - 1}.")
    if not 0 <= val < 1:
        raise DataError(f"Validation fraction {val} must be in [0, 1).")
    scaled = _patient_units(patient_ids, seed) * folds
    which = np.minimum(scaled.astype(int), folds - 1)
    rest = scaled - which
    return np.where(which == fold, "test", np.where(rest < val, "val", "train")).astype(object)
