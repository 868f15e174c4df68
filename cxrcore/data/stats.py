"""Label statistics of a :class:`~cxrcore.data.index.DatasetIndex`.

Pure pandas / numpy and vectorised: every function runs well under a second on the full
CheXpert train table (223,414 rows), and :func:`all_statistics` (what the Dataset page caches)
computes the arrays they share — label matrix, patient codes, cleaned ages, category codes —
once. Raw label values are 1 (positive), 0 (negative), -1 (uncertain, CheXpert) and NaN (not
mentioned); "positive" always means exactly 1.

Every function accepts degenerate input (no images, no labels, no positive label, one image)
and returns empty or zero-filled tables instead of raising.
"""
from __future__ import annotations

from functools import cached_property

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

def has_uncertainty(index: DatasetIndex) -> bool:
    """True when any label value is -1 (uncertain) or NaN (unmentioned): CheXpert-style data."""
    if not index.labels or len(index.frame) == 0:
        return False
    return _uncertain(index.label_matrix())


def _uncertain(raw: np.ndarray) -> bool:
    return bool(raw.size and (np.isnan(raw).any() or (raw == -1).any()))


def _pct(num, den) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    if den == 0:
        return np.full(num.shape, np.nan)
    return 100.0 * num / den


def _patient_codes(frame: pd.DataFrame) -> tuple[np.ndarray, int]:
    """Integer patient code per row; a missing patient id counts as its own patient (the image)."""
    if len(frame) == 0:
        return np.zeros(0, dtype=np.int64), 0
    pid = frame["patient_id"]
    missing = pid.isna()
    if missing.any():
        pid = pid.astype(object).where(~missing, "image:" + frame["image_id"].astype(str))
    codes, uniques = pd.factorize(pid)  # the column's own dtype: a hash of Arrow strings is fast
    return codes.astype(np.int64), len(uniques)


def _clean_age(frame: pd.DataFrame) -> pd.Series:
    age = pd.to_numeric(frame["age"], errors="coerce").astype(float)
    return age.where((age >= 0) & (age <= MAX_AGE))


def _category_codes(series: pd.Series) -> tuple[np.ndarray, list[str]]:
    """``(codes, names)``: ``names[codes[i]]`` is row i as a string, missing values (NaN, None, "",
    "nan", "None") as ``unknown``; names in order of first appearance. Each distinct raw value is
    turned into a string once (not once per row)."""
    raw_codes, uniques = pd.factorize(series, use_na_sentinel=True)  # missing -> -1
    names: list[str] = []
    where: dict[str, int] = {}
    remap = np.empty(len(uniques) + 1, dtype=np.int64)  # last slot: the missing code -1
    order = list(range(len(uniques)))
    missing = raw_codes < 0
    if missing.any():  # where "unknown" first appears, for first-appearance order
        first = int(np.argmax(missing))  # codes before it are all >= 0 and numbered by first appearance
        order.insert(int(raw_codes[:first].max()) + 1 if first else 0, -1)
    for u in order:
        s = UNKNOWN if u < 0 else str(uniques[u])
        if s in ("nan", "None", ""):
            s = UNKNOWN
        if s not in where:
            where[s] = len(names)
            names.append(s)
        remap[u] = where[s]
    return remap[raw_codes], names


def _ranked(codes: np.ndarray, names: list[str]) -> list[tuple[str, int]]:
    """``(name, count)`` most frequent first; ties in order of first appearance (as ``value_counts``)."""
    counts = np.bincount(codes, minlength=len(names))
    idx = np.argsort(-counts, kind="stable")
    return [(names[i], int(counts[i])) for i in idx if counts[i] > 0]


class _Shared:
    """The arrays several statistics need, each computed once per index."""

    def __init__(self, index: DatasetIndex):
        self.index = index
        self.frame = index.frame
        self.labels = list(index.labels)
        self.n = len(index.frame)
        self._categories: dict[str, tuple[np.ndarray, list[str]]] = {}

    @cached_property
    def raw(self) -> np.ndarray:
        if not self.labels:
            return np.zeros((self.n, 0), dtype=np.float32)
        return self.index.label_matrix()

    @cached_property
    def pos(self) -> np.ndarray:
        return self.raw == 1

    @cached_property
    def uncertainty(self) -> bool:
        return bool(self.labels) and self.n > 0 and _uncertain(self.raw)

    @cached_property
    def patients(self) -> tuple[np.ndarray, int]:
        return _patient_codes(self.frame)

    @cached_property
    def age(self) -> np.ndarray:
        return _clean_age(self.frame).to_numpy(dtype=np.float64) if self.n else np.zeros(0)

    def category(self, column: str) -> tuple[np.ndarray, list[str]]:
        if column not in self._categories:
            self._categories[column] = _category_codes(self.frame[column]) if self.n else \
                (np.zeros(0, dtype=np.int64), [])
        return self._categories[column]


# --------------------------------------------------------------------------- statistics

def summary(index: DatasetIndex) -> dict:
    """Headline numbers: images, patients, studies, format, images on disk, frontal count,
    view and sex counts, age mean / median (plausible ages only) and notes."""
    return _summary(_Shared(index))


def _summary(d: _Shared) -> dict:
    f, n, index = d.frame, d.n, d.index
    notes = list(index.notes)
    on_disk = int(f["path"].notna().sum()) if "path" in f else 0
    if n and on_disk == 0:
        notes.append("Label table only: no image files belong to this source (statistics of the labels only).")
    elif on_disk < n:
        notes.append(f"{n - on_disk} of {n} images are not on disk.")
    if "age" in f:
        raw_age = pd.to_numeric(f["age"], errors="coerce").to_numpy(dtype=np.float64)
        age = d.age
    else:
        raw_age = age = np.zeros(0)
    known = ~np.isnan(age)
    bad_age = int((~np.isnan(raw_age) & ~known).sum())
    if bad_age:
        notes.append(f"{bad_age} images have an implausible age (<0 or >{MAX_AGE:.0f} years); ignored in age statistics.")
    views = _ranked(*d.category("view")) if n else []
    sex = _ranked(*d.category("sex")) if n else []
    frontal = int(f["frontal"].fillna(False).astype(bool).sum()) if n else 0
    return {
        "format": index.format,
        "name": index.name,
        "images": n,
        "patients": d.patients[1],
        "studies": int(f["study_id"].nunique(dropna=True)) if n else 0,
        "images_on_disk": on_disk,
        "frontal": frontal,
        "lateral": n - frontal,
        "views": {k: v for k, v in views},
        "sex": {k: v for k, v in sex},
        "age_mean": float(pd.Series(age).mean()) if known.any() else None,
        "age_median": float(pd.Series(age).median()) if known.any() else None,
        "age_known": int(known.sum()),
        "labels": list(index.labels),
        "uncertainty": d.uncertainty,
        "notes": notes,
    }


def prevalence(index: DatasetIndex) -> pd.DataFrame:
    """Per label (index ``label``): ``images_positive``, ``pct_images``, ``patients_positive``
    (patients with at least one positive image), ``pct_patients``; for CheXpert-style data
    (any -1 or NaN) also the raw value counts ``positive``, ``negative``, ``uncertain``
    (-1) and ``unmentioned`` (NaN)."""
    return _prevalence(_Shared(index))


def _prevalence(d: _Shared) -> pd.DataFrame:
    labels, n, pos = d.labels, d.n, d.pos
    codes, n_pat = d.patients
    L = len(labels)
    img = pos.sum(axis=0).astype(np.int64) if L else np.zeros(0, dtype=np.int64)
    # Patients with >= 1 positive image: mark (patient, label) for every positive cell, count per label.
    seen = np.zeros((n_pat, L), dtype=bool)
    rows, cols = np.nonzero(pos)
    seen[codes[rows], cols] = True
    pat = seen.sum(axis=0).astype(np.int64)
    out = pd.DataFrame({
        "images_positive": img,
        "pct_images": _pct(img, n),
        "patients_positive": pat,
        "pct_patients": _pct(pat, n_pat),
    }, index=pd.Index(labels, name="label", dtype=object))
    if d.uncertainty:
        raw = d.raw
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
    return _cooccurrence(_Shared(index))


def _cooccurrence(d: _Shared) -> tuple[pd.DataFrame, pd.DataFrame]:
    labels = pd.Index(d.labels, dtype=object)
    p = d.pos.astype(np.float64)
    counts = np.rint(p.T @ p).astype(np.int64)
    diag = np.diag(counts).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        cond = np.where(diag[:, None] > 0, counts / np.where(diag > 0, diag, 1.0)[:, None], np.nan)
    return (pd.DataFrame(counts, index=labels, columns=labels),
            pd.DataFrame(cond, index=labels, columns=labels))


def labels_per_image(index: DatasetIndex) -> pd.DataFrame:
    """Images by their number of positive labels (``n_labels`` 0..max, ``images``, ``pct``);
    a "No Finding" label does not count as a finding."""
    return _labels_per_image(_Shared(index))


def _labels_per_image(d: _Shared) -> pd.DataFrame:
    pos = d.pos
    keep = [j for j, x in enumerate(d.labels) if canonical(x) != NO_FINDING]
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
    return _top_combinations(_Shared(index), k)


def _top_combinations(d: _Shared, k: int) -> pd.DataFrame:
    labels, pos = d.labels, d.pos
    n = len(pos)
    cols = ["combination", "n_labels", "images", "pct"]
    if n == 0 or k <= 0:
        return pd.DataFrame({c: pd.Series(dtype=object if c == "combination" else float) for c in cols})
    if len(labels) <= 62:  # one int64 bit code per image
        weights = (np.int64(1) << np.arange(len(labels), dtype=np.int64))
        masks = pos.astype(np.int64) @ weights if labels else np.zeros(n, dtype=np.int64)
        uniq, counts = np.unique(masks, return_counts=True)
        # Only combinations that can reach the top k (ties with the k-th included) get a name.
        cut = np.sort(counts)[::-1][min(k, len(counts)) - 1]
        keep = counts >= cut
        uniq, counts = uniq[keep], counts[keep]
        rows = ((uniq[:, None] >> np.arange(len(labels), dtype=np.int64)[None, :]) & 1).astype(bool)
    else:
        rows, counts = np.unique(pos, axis=0, return_counts=True)
    names = [" | ".join(x for x, on in zip(labels, r) if on) or NO_POSITIVE for r in rows]
    out = pd.DataFrame({
        "combination": pd.Series(names, dtype=object),
        "n_labels": np.asarray(rows, dtype=bool).sum(axis=1).astype(np.int64),
        "images": counts.astype(np.int64),
    })
    out["pct"] = _pct(out["images"].to_numpy(), n)
    out = out.sort_values(["images", "combination"], ascending=[False, True], kind="mergesort")
    return out.head(k).reset_index(drop=True)


def combination_tail(index: DatasetIndex, rare: tuple = (1, 5, 10)) -> dict:
    """How many distinct sets of positive labels the dataset has, and its rare tail: for each bound b in
    ``rare``, how many combinations occur at most b times and how many images carry one of them."""
    return _combination_tail(_Shared(index), rare)


def _combination_tail(d: "_Shared", rare: tuple = (1, 5, 10)) -> dict:
    pos = d.pos
    if len(pos) == 0:
        return {"distinct": 0, "images": 0, "tail": []}
    _, counts = np.unique(np.asarray(pos, dtype=bool), axis=0, return_counts=True)
    tail = [{"at_most": int(b), "combinations": int((counts <= b).sum()), "images": int(counts[counts <= b].sum()),
             "pct_images": float(100.0 * counts[counts <= b].sum() / len(pos))} for b in rare]
    return {"distinct": int(len(counts)), "images": int(len(pos)), "tail": tail}


def _crosstab(codes: np.ndarray, order: list[str], pos: np.ndarray, labels: list[str]) -> pd.DataFrame:
    """Rows = categories in ``order`` (``codes`` index into it; -1 = none); column ``all`` = images,
    then one column per label = positive images. Bin counts over the positive cells."""
    k, L = len(order), len(labels)
    if k:
        ok = codes >= 0
        total = np.bincount(codes[ok], minlength=k)
        r, c = np.nonzero(pos)
        rc = codes[r]
        good = rc >= 0
        per = np.bincount(rc[good] * L + c[good], minlength=k * L).reshape(k, L) if L else np.zeros((k, 0))
        data = np.column_stack([total, per]).astype(np.int64)
    else:
        data = np.zeros((0, 1 + L), dtype=np.int64)
    return pd.DataFrame(data, index=pd.Index(order, dtype=object), columns=pd.Index(["all"] + labels, dtype=object))


def _recode(codes: np.ndarray, names: list[str], order: list[str]) -> np.ndarray:
    """Codes into ``names`` -> codes into ``order`` (-1 for a name not in it)."""
    where = {x: i for i, x in enumerate(order)}
    table = np.array([where.get(x, -1) for x in names], dtype=np.int64)
    return table[codes] if len(names) else np.full(len(codes), -1, dtype=np.int64)


def demographics(index: DatasetIndex) -> dict[str, pd.DataFrame]:
    """``{"age", "sex", "view"}`` -> image counts per category (rows) overall (column ``all``)
    and among the positive images of each label (one column per label).

    Age bins are decades 0–9 … 80–89 and 90+; missing or implausible ages are ``unknown``
    (a row only present when such images exist). Sex is M, F (and ``unknown``); views are
    those in the data, most frequent first (and ``unknown``).
    """
    return _demographics(_Shared(index))


def _demographics(d: _Shared) -> dict[str, pd.DataFrame]:
    labels, pos = d.labels, d.pos
    out: dict[str, pd.DataFrame] = {}

    age = d.age
    missing = np.isnan(age)
    bins = np.clip(np.minimum(np.floor(np.where(missing, -1.0, age) / 10.0), 9), 0, 9).astype(np.int64)
    age_order = AGE_BINS + ([UNKNOWN] if missing.any() else [])
    out["age"] = _crosstab(np.where(missing, len(AGE_BINS), bins), age_order, pos, labels)

    codes, names = d.category("sex")
    sex_order = ["M", "F"] + sorted(set(names) - {"M", "F", UNKNOWN}) + ([UNKNOWN] if UNKNOWN in names else [])
    out["sex"] = _crosstab(_recode(codes, names, sex_order), sex_order, pos, labels)

    codes, names = d.category("view")
    ranked = [x for x, _ in _ranked(codes, names)]
    view_order = [x for x in ranked if x != UNKNOWN] + ([UNKNOWN] if UNKNOWN in ranked else [])
    out["view"] = _crosstab(_recode(codes, names, view_order), view_order, pos, labels)
    for key, df in out.items():
        df.index.name = key
    return out


def all_statistics(index: DatasetIndex, k: int = 20) -> dict:
    """Every statistic above in one dict (what the Dataset page caches per source); the label
    matrix, patient codes, ages and categories are computed once for all of them."""
    d = _Shared(index)
    counts, conditional = _cooccurrence(d)
    return {
        "summary": _summary(d),
        "prevalence": _prevalence(d),
        "cooccurrence": counts,
        "conditional": conditional,
        "labels_per_image": _labels_per_image(d),
        "top_combinations": _top_combinations(d, k),
        "combination_tail": _combination_tail(d),
        "demographics": _demographics(d),
    }
