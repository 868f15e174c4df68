"""Per-subgroup metrics (sex, age band, view, source dataset) and their gaps to the whole split.

``subgroup_metrics`` returns a tidy frame, one row per (kind, group, label), the first rows being
the whole split (kind ``all``). AUROC is NaN where the group has fewer than ``min_positives``
positives or no negatives for the label; sensitivity is NaN without positives, specificity
without negatives. ``*_gap`` = group value - overall value (overall = all images of the split).
``gap_table`` turns the records into what the page and the report show: per kind and label, the
spread of a metric between the groups (highest - lowest), largest first.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

AGE_BANDS = [(None, 40, "<40"), (40, 60, "40–59"), (60, 80, "60–79"), (80, None, "80+")]
COLUMNS = ["kind", "group", "label", "n_images", "n_patients", "positives", "negatives", "auroc", "sensitivity",
           "specificity", "auroc_gap", "sensitivity_gap", "specificity_gap", "enough_positives"]


def age_band(age) -> str | None:
    try:
        a = float(age)
    except (TypeError, ValueError):
        return None
    if math.isnan(a):
        return None
    for lo, hi, name in AGE_BANDS:
        if (lo is None or a >= lo) and (hi is None or a < hi):
            return name
    return None


def _clean(values: pd.Series) -> pd.Series:
    """Strings stripped; missing / empty -> None."""
    out = values.astype(object).where(values.notna(), None)
    return out.map(lambda v: None if v is None or str(v).strip() == "" else str(v).strip())


def subgroup_columns(frame: pd.DataFrame) -> dict[str, pd.Series]:
    """kind -> group value per row (None = in no group of that kind)."""
    kinds = {}
    if "sex" in frame:
        kinds["sex"] = _clean(frame["sex"]).map(lambda v: v and {"MALE": "M", "FEMALE": "F"}.get(v.upper(), v))
    if "age" in frame:
        kinds["age band"] = frame["age"].map(age_band)
    if "view" in frame:
        kinds["view"] = _clean(frame["view"]).map(lambda v: v.upper() if v and v.upper() in ("AP", "PA") else None)
    if "source" in frame:
        kinds["source"] = _clean(frame["source"])
    return kinds


def _metrics(t: np.ndarray, p: np.ndarray, thr: np.ndarray, min_positives: int) -> dict[str, np.ndarray]:
    L = t.shape[1]
    out = {k: np.full(L, np.nan) for k in ("auroc", "sensitivity", "specificity")}
    out["positives"] = np.zeros(L, int)
    out["negatives"] = np.zeros(L, int)
    for j in range(L):
        y, s = t[:, j], p[:, j]
        m = ~np.isnan(y)
        y, s = y[m], s[m]
        P, N = int((y == 1).sum()), int((y == 0).sum())
        out["positives"][j], out["negatives"][j] = P, N
        pred = s >= thr[j]
        if P:
            out["sensitivity"][j] = (pred & (y == 1)).sum() / P
        if N:
            out["specificity"][j] = (~pred & (y == 0)).sum() / N
        if P >= min_positives and N > 0:
            out["auroc"][j] = roc_auc_score(y, s)
    return out


def subgroup_metrics(targets: np.ndarray, probs: np.ndarray, thresholds, frame: pd.DataFrame, labels: list[str],
                     min_positives: int = 5) -> pd.DataFrame:
    """Tidy per-subgroup metrics; ``frame`` has one row per row of ``targets`` / ``probs`` (same order)
    with any of ``sex``, ``age``, ``view``, ``source`` and ``patient_id`` (for ``n_patients``)."""
    targets = np.asarray(targets, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (targets.shape[1],))
    frame = frame.reset_index(drop=True)
    if len(frame) != len(targets):
        raise ValueError(f"frame has {len(frame)} rows, targets {len(targets)}.")
    pids = frame["patient_id"].astype(str).to_numpy() if "patient_id" in frame else None

    def rows(kind, group, mask):
        m = _metrics(targets[mask], probs[mask], thr, min_positives)
        n_pat = int(len(set(pids[mask]))) if pids is not None else np.nan
        return [{"kind": kind, "group": group, "label": x, "n_images": int(mask.sum()), "n_patients": n_pat,
                 "positives": int(m["positives"][j]), "negatives": int(m["negatives"][j]),
                 "auroc": m["auroc"][j], "sensitivity": m["sensitivity"][j], "specificity": m["specificity"][j],
                 "enough_positives": bool(m["positives"][j] >= min_positives and m["negatives"][j] > 0)}
                for j, x in enumerate(labels)]

    records = rows("all", "all", np.ones(len(frame), bool))
    overall = {r["label"]: r for r in records}
    for kind, values in subgroup_columns(frame).items():
        v = values.to_numpy(dtype=object)
        present = {g for g in v if g is not None and not (isinstance(g, float) and g != g)}  # NaN: in no group
        for group in sorted(present, key=lambda g: ([b[2] for b in AGE_BANDS].index(g) if kind == "age band" else 0, g)):
            records += rows(kind, group, v == group)
    df = pd.DataFrame.from_records(records)
    for k in ("auroc", "sensitivity", "specificity"):
        df[f"{k}_gap"] = df[k] - df["label"].map({x: r[k] for x, r in overall.items()}).astype(float)
    df.attrs["min_positives"] = min_positives
    return df[COLUMNS]


def to_records(df: pd.DataFrame) -> list[dict]:
    """JSON-ready records: numpy scalars to Python, NaN to None."""
    out = []
    for r in df.to_dict("records"):
        rec = {}
        for key, v in r.items():
            if isinstance(v, (np.bool_, bool)):
                v = bool(v)
            elif isinstance(v, (np.integer,)):
                v = int(v)
            elif isinstance(v, (float, np.floating)):
                v = None if math.isnan(v) else float(v)
            rec[key] = v
        out.append(rec)
    return out


GAP_COLUMNS = ["kind", "label", "metric", "gap", "lowest", "lowest_value", "highest", "highest_value", "groups",
               "min_positives_in_group"]


def gap_table(records: list[dict] | pd.DataFrame, metric: str = "auroc") -> pd.DataFrame:
    """Per (kind, label): the spread of ``metric`` across the groups of that kind (highest - lowest),
    over the groups with enough positives for the label; largest gaps first. Input: the records of
    :func:`subgroup_metrics` (what ``run_evaluation`` returns as ``subgroups``)."""
    df = pd.DataFrame(records) if not isinstance(records, pd.DataFrame) else records
    if df.empty:
        return pd.DataFrame(columns=GAP_COLUMNS)
    sub = df[(df["kind"] != "all") & df["enough_positives"].astype(bool)].dropna(subset=[metric])
    rows = []
    for (kind, label), g in sub.groupby(["kind", "label"], sort=False):
        if len(g) < 2:
            continue  # a gap needs two groups
        lo, hi = g.loc[g[metric].idxmin()], g.loc[g[metric].idxmax()]
        rows.append({"kind": kind, "label": label, "metric": metric, "gap": float(hi[metric] - lo[metric]),
                     "lowest": lo["group"], "lowest_value": float(lo[metric]), "highest": hi["group"],
                     "highest_value": float(hi[metric]), "groups": int(len(g)),
                     "min_positives_in_group": int(g["positives"].min())})
    out = pd.DataFrame(rows, columns=GAP_COLUMNS)
    return out.sort_values("gap", ascending=False, kind="mergesort").reset_index(drop=True)


def top_gaps(gaps: pd.DataFrame, k: int = 3, min_gap: float = 0.05) -> pd.Series:
    """Which rows of :func:`gap_table` to highlight: the ``k`` largest, and only those of at least ``min_gap``."""
    flag = pd.Series(False, index=gaps.index)
    flag.iloc[:k] = True
    return flag & (gaps["gap"] >= min_gap)
