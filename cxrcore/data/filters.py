"""Cohort filters on a DatasetIndex: frontal / view, first studies per patient, age, sex, sampling.

``apply_filters`` returns the filtered index and a report of how many rows each filter removed,
in the order the filters ran. A filter that leaves nothing raises DataError naming it.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ..errors import DataError
from .index import DatasetIndex

SEXES = ("M", "F")


def _study_rank(frame: pd.DataFrame) -> np.ndarray:
    """0-based rank of each row's study within its patient, by study order.

    Study order: the last integer in ``study_id`` (NIH follow-up number, CheXpert studyN), ties and
    ids without a number by first appearance.
    """
    sid = frame["study_id"].astype(str)
    num = sid.map(lambda s: float(re.findall(r"\d+", s)[-1]) if re.findall(r"\d+", s) else np.nan)
    first = pd.Series(np.arange(len(frame)), index=frame.index).groupby(sid).transform("min")
    studies = pd.DataFrame({"patient": frame["patient_id"].astype(str), "study": sid,
                            "num": num.fillna(np.inf), "first": first}).drop_duplicates("study")
    studies = studies.sort_values(["patient", "num", "first"], kind="stable")
    studies["rank"] = studies.groupby("patient").cumcount()
    return sid.map(dict(zip(studies["study"], studies["rank"]))).to_numpy()


def _parse_views(views) -> list[str] | None:
    if views is None:
        return None
    if isinstance(views, str):
        views = [v for v in views.split(",")]
    out = [str(v).strip().upper() for v in views if str(v).strip()]
    if not out:
        raise DataError("views must name at least one view position, e.g. ['PA'] or 'PA,AP'.")
    return out


def apply_filters(index: DatasetIndex, frontal_only: bool = False, views=None, first_n_studies: int | None = None,
                  age_min: float | None = None, age_max: float | None = None, sex: str | None = None,
                  sample_n: int | None = None, seed: int = 0) -> tuple[DatasetIndex, dict]:
    """Filter ``index``; returns (filtered index, {filter: rows removed}).

    Rows with an unknown age are dropped by an age filter; rows with an unknown sex by a sex filter;
    rows with an unknown view by a views filter (but kept by ``frontal_only``, as the readers mark them frontal).
    ``sample_n`` keeps a random sample of that many rows (seeded), after every other filter.
    """
    report: dict[str, int] = {}
    views = _parse_views(views)
    if sex is not None:
        sex = str(sex).strip().upper()[:1]
        if sex not in SEXES:
            raise DataError(f"sex must be M or F, not {sex!r}.")
    if first_n_studies is not None and int(first_n_studies) < 1:
        raise DataError("first_n_studies must be at least 1.")
    if sample_n is not None and int(sample_n) < 1:
        raise DataError("sample_n must be at least 1.")
    if age_min is not None and age_max is not None and float(age_min) > float(age_max):
        raise DataError(f"age_min ({age_min}) is above age_max ({age_max}).")

    def step(name: str, idx: DatasetIndex, keep) -> DatasetIndex:
        keep = np.asarray(keep, dtype=bool)
        report[name] = int((~keep).sum())
        if not keep.any():
            raise DataError(f"The filter {name} removed every image ({len(idx)} before it); relax it.")
        return idx.subset(keep)

    if len(index) == 0:
        raise DataError("The dataset has no images to filter.")
    if frontal_only:
        index = step("frontal_only", index, index.frame["frontal"].fillna(True).astype(bool).to_numpy())
    if views is not None:
        index = step("views", index, index.frame["view"].astype(str).str.upper().isin(views).to_numpy()
                     & index.frame["view"].notna().to_numpy())
    if first_n_studies is not None:
        index = step("first_n_studies", index, _study_rank(index.frame) < int(first_n_studies))
    if age_min is not None:
        index = step("age_min", index, (index.frame["age"] >= float(age_min)).to_numpy())
    if age_max is not None:
        index = step("age_max", index, (index.frame["age"] <= float(age_max)).to_numpy())
    if sex is not None:
        index = step("sex", index, (index.frame["sex"].astype(str).str.upper().str[:1] == sex).to_numpy()
                     & index.frame["sex"].notna().to_numpy())
    if sample_n is not None:
        keep = np.ones(len(index), dtype=bool)
        if len(index) > int(sample_n):
            rng = np.random.default_rng(seed)
            keep[:] = False
            keep[rng.choice(len(index), int(sample_n), replace=False)] = True
        index = step("sample_n", index, keep)
    return index, report
