"""Label statistics of a :class:`~cxrcore.data.index.DatasetIndex`.

Pure pandas / numpy and vectorised: every function runs well under a second on the full
CheXpert train table (223,414 rows). Raw label values are 1 (positive), 0 (negative),
-1 (uncertain, CheXpert) and NaN (not mentioned); "positive" always means exactly 1.

Every function accepts degenerate input (no images, no labels, no positive label, one image)
and returns empty or zero-filled tables instead of raising.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..labels import canonical
from .index import DatasetIndex

NO_FINDING = canonical("No Finding")
NO_POSITIVE = "(no positive label)"
UNKNOWN = "unknown"
AGE_BINS = [f"{lo}–{lo + 9}" for lo in range(0, 90, 10)] + ["90+"]
MAX_AGE = 120.0  # ages above this (or below 0) are data errors and count as unknown


# --------------------------------------------------------------------------- helpers

def positive_matrix(index: DatasetIndex) -> np.ndarray:
    """Boolean (N, L): raw value == 1."""
    if not index.labels:
        return np.zeros((len(index.frame), 0), dtype=bool)
    return index.label_matrix() == 1


def has_uncertainty(index: DatasetIndex) -> bool:
    """True when any label value is -1 (uncertain) or NaN (unmentioned): CheXpert-style data."""
    if not index.labels or len(index.frame) == 0:
        return False
    raw = index.label_matrix()
    return bool(np.isnan(raw).any() or (raw == -1).any())


def _pct(num, den) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    if den == 0:
        return np.full(num.shape, np.nan)
    return 100.0 * num / den


def _patient_codes(frame: pd.DataFrame) -> tuple[np.ndarray, int]:
    """Integer patient code per row; a missing patient id counts as its own patient (the image)."""
    if len(frame) == 0:
        return np.zeros(0, dtype=np.int64), 0
    pid = frame["patient_id"].astype(object)
    missing = pid.isna()
    if missing.any():
        pid = pid.where(~missing, "image:" + frame["image_id"].astype(str))
    codes, uniques = pd.factorize(pid)
    return codes.astype(np.int64), len(uniques)


def _clean_age(frame: pd.DataFrame) -> pd.Series:
    age = pd.to_numeric(frame["age"], errors="coerce").astype(float)
    return age.where((age >= 0) & (age <= MAX_AGE))


def _category(series: pd.Series) -> pd.Series:
    """String categories (object dtype) with missing values as ``unknown``."""
    s = series.astype(object)
    s = s.where(s.notna(), UNKNOWN).astype(str)
    return s.mask(s.isin(["nan", "None", ""]), UNKNOWN).astype(object)


# --------------------------------------------------------------------------- statistics

def summary(index: DatasetIndex) -> dict:
    """Headline numbers: images, patients, studies, format, images on disk, frontal count,
    view and sex counts, age mean / median (plausible ages only) and notes."""
    f = index.frame
    n = len(f)
    notes = list(index.notes)
    on_disk = int(f["path"].notna().sum()) if "path" in f else 0
    if n and on_disk == 0:
        notes.append("Label table only: no image files belong to this source (statistics of the labels only).")
    elif on_disk < n:
        notes.append(f"{n - on_disk} of {n} images are not on disk.")
    raw_age = pd.to_numeric(f["age"], errors="coerce") if "age" in f else pd.Series(dtype=float)
    age = _clean_age(f) if "age" in f else pd.Series(dtype=float)
    bad_age = int((raw_age.notna() & age.isna()).sum())
    if bad_age:
        notes.append(f"{bad_age} images have an implausible age (<0 or >{MAX_AGE:.0f} years); ignored in age statistics.")
    views = _category(f["view"]).value_counts() if n else pd.Series(dtype=int)
    sex = _category(f["sex"]).value_counts() if n else pd.Series(dtype=int)
    frontal = int(f["frontal"].fillna(False).astype(bool).sum()) if n else 0
    return {
        "format": index.format,
        "name": index.name,
        "images": n,
        "patients": _patient_codes(f)[1],
        "studies": int(f["study_id"].nunique(dropna=True)) if n else 0,
        "images_on_disk": on_disk,
        "frontal": frontal,
        "lateral": n - frontal,
        "views": {str(k): int(v) for k, v in views.items()},
        "sex": {str(k): int(v) for k, v in sex.items()},
        "age_mean": float(age.mean()) if age.notna().any() else None,
        "age_median": float(age.median()) if age.notna().any() else None,
        "age_known": int(age.notna().sum()),
        "labels": list(index.labels),
        "uncertainty": has_uncertainty(index),
        "notes": notes,
    }


def prevalence(index: DatasetIndex) -> pd.DataFrame:
    """Per label (index ``label``): ``images_positive``, ``pct_images``, ``patients_positive``
    (patients with at least one positive image), ``pct_patients``; for CheXpert-style data
    (any -1 or NaN) also the raw value counts ``positive``, ``negative``, ``uncertain``
    (-1) and ``unmentioned`` (NaN)."""
    f = index.frame
    labels = list(index.labels)
    n = len(f)
    pos = positive_matrix(index)
    codes, n_pat = _patient_codes(f)
    L = len(labels)
    img = pos.sum(axis=0).astype(np.int64) if L else np.zeros(0, dtype=np.int64)
    # Patients with >= 1 positive image: unique (patient, label) pairs among the positive cells.
    rows, cols = np.nonzero(pos)
    pairs = np.unique(codes[rows] * max(L, 1) + cols) if len(rows) else np.zeros(0, dtype=np.int64)
    pat = np.bincount(pairs % max(L, 1), minlength=L).astype(np.int64) if L else np.zeros(0, dtype=np.int64)
    out = pd.DataFrame({
        "images_positive": img,
        "pct_images": _pct(img, n),
        "patients_positive": pat[:L],
        "pct_patients": _pct(pat[:L], n_pat),
    }, index=pd.Index(labels, name="label", dtype=object))
    if has_uncertainty(index):
        raw = index.label_matrix()
        out["positive"] = img
        out["negative"] = (raw == 0).sum(axis=0).astype(np.int64)
        out["uncertain"] = (raw == -1).sum(axis=0).astype(np.int64)
        out["unmentioned"] = np.isnan(raw).sum(axis=0).astype(np.int64)
    return out


def cooccurrence(index: DatasetIndex) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(counts, conditional)``, both L x L with labels as index and columns.

    ``counts[a, b]``: images positive for both a and b (diagonal: images positive for a).
    ``conditional[a, b]`` = P(b | a) = counts[a, b] / counts[a, a]: of the images positive for
    the row label, the fraction also positive for the column label (NaN when a has none).
    """
    labels = pd.Index(list(index.labels), dtype=object)
    p = positive_matrix(index).astype(np.float64)
    counts = np.rint(p.T @ p).astype(np.int64)
    diag = np.diag(counts).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        cond = np.where(diag[:, None] > 0, counts / np.where(diag > 0, diag, 1.0)[:, None], np.nan)
    return (pd.DataFrame(counts, index=labels, columns=labels),
            pd.DataFrame(cond, index=labels, columns=labels))


def labels_per_image(index: DatasetIndex) -> pd.DataFrame:
    """Images by their number of positive labels (``n_labels`` 0..max, ``images``, ``pct``);
    a "No Finding" label does not count as a finding."""
    pos = positive_matrix(index)
    keep = [j for j, x in enumerate(index.labels) if canonical(x) != NO_FINDING]
    per_image = pos[:, keep].sum(axis=1) if keep else np.zeros(len(pos), dtype=np.int64)
    counts = np.bincount(per_image.astype(np.int64), minlength=1)
    n = len(pos)
    return pd.DataFrame({
        "n_labels": np.arange(len(counts), dtype=np.int64),
        "images": counts.astype(np.int64),
        "pct": _pct(counts, n),
    })


def top_combinations(index: DatasetIndex, k: int = 20) -> pd.DataFrame:
    """The ``k`` most frequent sets of positive labels: ``combination`` (labels joined by
    " | ", or "(no positive label)"), ``n_labels``, ``images``, ``pct`` of all images."""
    labels = list(index.labels)
    pos = positive_matrix(index)
    n = len(pos)
    cols = ["combination", "n_labels", "images", "pct"]
    if n == 0 or k <= 0:
        return pd.DataFrame({c: pd.Series(dtype=object if c == "combination" else float) for c in cols})
    if len(labels) <= 62:  # one int64 bit mask per image
        weights = (np.int64(1) << np.arange(len(labels), dtype=np.int64))
        masks = (pos.astype(np.int64) * weights).sum(axis=1) if labels else np.zeros(n, dtype=np.int64)
        uniq, counts = np.unique(masks, return_counts=True)
        rows = [((int(m) >> np.arange(len(labels))) & 1).astype(bool) for m in uniq]
    else:
        uniq_rows, counts = np.unique(pos, axis=0, return_counts=True)
        rows = list(uniq_rows)
    names = [" | ".join(x for x, on in zip(labels, r) if on) or NO_POSITIVE for r in rows]
    out = pd.DataFrame({
        "combination": pd.Series(names, dtype=object),
        "n_labels": [int(np.sum(r)) for r in rows],
        "images": counts.astype(np.int64),
    })
    out["pct"] = _pct(out["images"].to_numpy(), n)
    out = out.sort_values(["images", "combination"], ascending=[False, True], kind="mergesort")
    return out.head(k).reset_index(drop=True)


def _crosstab(categories: pd.Series, order: list[str], pos: np.ndarray, labels: list[str]) -> pd.DataFrame:
    """Rows = categories in ``order``; column ``all`` = images, then one column per label =
    positive images. One matrix product of the category one-hot with the positive matrix."""
    cat = pd.Categorical(categories, categories=order)
    codes = np.asarray(cat.codes)
    onehot = np.zeros((len(codes), len(order)), dtype=np.float64)
    ok = codes >= 0
    onehot[np.nonzero(ok)[0], codes[ok]] = 1.0
    data = np.column_stack([onehot.sum(axis=0), onehot.T @ pos.astype(np.float64)]) if len(order) else \
        np.zeros((0, 1 + len(labels)))
    out = pd.DataFrame(np.rint(data).astype(np.int64), index=pd.Index(order, dtype=object),
                       columns=pd.Index(["all"] + labels, dtype=object))
    return out


def demographics(index: DatasetIndex) -> dict[str, pd.DataFrame]:
    """``{"age", "sex", "view"}`` -> image counts per category (rows) overall (column ``all``)
    and among the positive images of each label (one column per label).

    Age bins are decades 0–9 … 80–89 and 90+; missing or implausible ages are ``unknown``
    (a row only present when such images exist). Sex is M, F (and ``unknown``); views are
    those in the data, most frequent first (and ``unknown``).
    """
    f = index.frame
    labels = list(index.labels)
    pos = positive_matrix(index)
    out: dict[str, pd.DataFrame] = {}

    age = _clean_age(f).to_numpy() if len(f) else np.zeros(0)
    bins = np.minimum(np.floor(np.nan_to_num(age, nan=-1.0) / 10.0), 9).astype(np.int64)
    age_cat = pd.Series(np.where(np.isnan(age), UNKNOWN, np.array(AGE_BINS, dtype=object)[np.clip(bins, 0, 9)]),
                        dtype=object)
    age_order = AGE_BINS + ([UNKNOWN] if np.isnan(age).any() else [])
    out["age"] = _crosstab(age_cat, age_order, pos, labels)

    sex = _category(f["sex"]) if len(f) else pd.Series(dtype=object)
    sex_order = ["M", "F"] + sorted(set(sex) - {"M", "F", UNKNOWN}) + ([UNKNOWN] if (sex == UNKNOWN).any() else [])
    out["sex"] = _crosstab(sex, sex_order, pos, labels)

    view = _category(f["view"]) if len(f) else pd.Series(dtype=object)
    counts = view.value_counts()
    view_order = [str(v) for v in counts.index if v != UNKNOWN] + ([UNKNOWN] if UNKNOWN in counts.index else [])
    out["view"] = _crosstab(view, view_order, pos, labels)
    for key, df in out.items():
        df.index.name = key
    return out


def all_statistics(index: DatasetIndex, k: int = 20) -> dict:
    """Every statistic above in one dict (what the Dataset page caches per source)."""
    counts, conditional = cooccurrence(index)
    return {
        "summary": summary(index),
        "prevalence": prevalence(index),
        "cooccurrence": counts,
        "conditional": conditional,
        "labels_per_image": labels_per_image(index),
        "top_combinations": top_combinations(index, k),
        "demographics": demographics(index),
    }
