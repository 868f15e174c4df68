"""Readers for datasets as they lie on disk: NIH ChestX-ray14 and CheXpert layouts.

The phantom writes the same layouts, so the same code reads the phantom, the real sample in
``shared/data/nih-sample`` and the full datasets. The label tables that ship inside
torchxrayvision can be read without images for statistics (:func:`builtin_table`).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from ..labels import CHEXPERT14, NIH14, canonical
from .index import BOX_COLUMNS, DatasetIndex

NIH_LABELS = NIH14 + ["No Finding"]
NIH_BOX_FRAME = 1024.0  # NIH box coordinates are pixels of the 1024x1024 PNGs
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm")


def detect_format(root: Path) -> str:
    if not root.exists():
        raise DataError(f"The folder {root} does not exist. Check the path.")
    if not root.is_dir():
        raise DataError(f"{root} is a file, not a dataset folder. Point to the folder that holds the label table.")
    if _nih_table(root) is not None:
        return "nih"
    if (root / "train.csv").exists() or (root / "valid.csv").exists():
        return "chexpert"
    raise DataError(
        f"No label table found in {root}. Expected Data_Entry_2017*.csv (NIH ChestX-ray14 layout) "
        "or train.csv / valid.csv (CheXpert layout)."
    )


def read_dataset(root: str | os.PathLike, format: str = "auto", check_files: bool = True) -> DatasetIndex:
    """Read a dataset folder. ``format`` is ``auto``, ``nih`` or ``chexpert``."""
    root = Path(root).expanduser().resolve()
    fmt = detect_format(root) if format == "auto" else format
    if fmt == "nih":
        return read_nih(root, check_files=check_files)
    if fmt == "chexpert":
        return read_chexpert(root, check_files=check_files)
    raise DataError(f"Unknown dataset format {format!r}; use auto, nih or chexpert.")


# --------------------------------------------------------------------------- NIH

def _nih_table(root: Path) -> Path | None:
    tables = sorted(root.glob("Data_Entry_2017*.csv")) + sorted(root.glob("Data_Entry_2017*.csv.gz"))
    return tables[0] if tables else None


def _nih_image_dirs(root: Path) -> list[Path]:
    dirs = [root / "images"] + sorted(root.glob("images_*/images")) + sorted(root.glob("images_*"))
    return [d for d in dirs if d.is_dir()]


def _parse_age(value) -> float:
    if pd.isna(value):
        return np.nan
    m = re.match(r"\s*(\d+)", str(value))
    return float(m.group(1)) if m else np.nan


def nih_frame_from_table(table: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ("Image Index", "Finding Labels", "Patient ID") if c not in table.columns]
    if missing:
        raise DataError(f"The NIH label table lacks the column(s) {missing}; it must have the columns of Data_Entry_2017.csv.")
    findings = table["Finding Labels"].fillna("").astype(str).str.split("|")
    frame = pd.DataFrame({
        "image_id": table["Image Index"].astype(str),
        "patient_id": table["Patient ID"].astype(str),
        "study_id": table["Patient ID"].astype(str) + "_" + table.get("Follow-up #", pd.Series(0, index=table.index)).astype(str),
        "sex": table.get("Patient Gender", pd.Series(np.nan, index=table.index)),
        "age": table.get("Patient Age", pd.Series(np.nan, index=table.index)).map(_parse_age).astype(float),
        "view": table.get("View Position", pd.Series(np.nan, index=table.index)),
    })
    frame["frontal"] = frame["view"].isin(["PA", "AP"]) | frame["view"].isna()
    keys = findings.map(lambda fs: {canonical(f) for f in fs if f})
    unknown = set().union(*keys) - {canonical(x) for x in NIH_LABELS} if len(keys) else set()
    for label in NIH_LABELS:
        k = canonical(label)
        frame[label] = keys.map(lambda s: 1.0 if k in s else 0.0).astype(np.float32)
    frame.attrs["unknown_labels"] = sorted(unknown)
    return frame


def read_nih(root: Path, check_files: bool = True) -> DatasetIndex:
    table_path = _nih_table(root)
    if table_path is None:
        raise DataError(f"No Data_Entry_2017*.csv in {root}; this is not an NIH ChestX-ray14 folder.")
    try:
        table = pd.read_csv(table_path)
    except Exception as exc:  # pandas raises many kinds for a broken CSV
        raise DataError(f"Could not read {table_path.name}: {exc}. Is it a CSV file?") from exc
    frame = nih_frame_from_table(table)
    notes = []
    if frame.attrs.get("unknown_labels"):
        notes.append(f"Ignored label names not in NIH-14: {', '.join(frame.attrs['unknown_labels'])}.")
    dups = frame["image_id"].duplicated()
    if dups.any():
        notes.append(f"Dropped {int(dups.sum())} duplicate rows (same Image Index).")
        frame = frame[~dups].reset_index(drop=True)
    # Images may sit in images/ or in the twelve images_0NN/images/ folders of the download.
    located: dict[str, str] = {}
    for d in _nih_image_dirs(root):
        for entry in os.scandir(d):
            if entry.name.lower().endswith(IMAGE_EXTENSIONS):
                located.setdefault(entry.name, entry.path)
    frame["path"] = frame["image_id"].map(located)
    frame = _keep_found(frame, root, notes, check_files)

    boxes = _read_nih_boxes(root, set(frame["image_id"]), NIH_LABELS)
    return DatasetIndex(root, "nih", frame[_column_order(frame, NIH_LABELS)], list(NIH_LABELS), boxes, notes)


def _read_box_table(path: Path, labels: list[str]) -> pd.DataFrame:
    table = pd.read_csv(path)
    cols = list(table.columns)
    if len(cols) < 6 or "Image Index" not in cols:
        raise DataError(f"{path.name} is not in NIH box format (Image Index, Finding Label, Bbox [x, y, w, h]).")
    by_key = {canonical(x): x for x in labels}
    out = pd.DataFrame({
        "image_id": table["Image Index"].astype(str),
        "label": table[cols[1]].astype(str).map(lambda s: by_key.get(canonical(s), s)),
        "x": table[cols[2]].astype(float) / NIH_BOX_FRAME,
        "y": table[cols[3]].astype(float) / NIH_BOX_FRAME,
        "w": table[cols[4]].astype(float) / NIH_BOX_FRAME,
        "h": table[cols[5]].astype(float) / NIH_BOX_FRAME,
    })
    return out[BOX_COLUMNS]


def _read_nih_boxes(root: Path, image_ids: set[str], labels: list[str]) -> pd.DataFrame:
    files = sorted(root.glob("BBox_List_2017*.csv"))
    if not files:
        return pd.DataFrame(columns=BOX_COLUMNS)
    boxes = _read_box_table(files[0], labels)
    return boxes[boxes["image_id"].isin(image_ids)].reset_index(drop=True)


# --------------------------------------------------------------------------- CheXpert

CHEXPERT_PREFIX = re.compile(r"^CheXpert-v1\.0(-small)?/")


def chexpert_frame_from_table(table: pd.DataFrame) -> pd.DataFrame:
    if "Path" not in table.columns:
        raise DataError("The CheXpert table lacks the Path column; it must have the columns of train.csv.")
    missing = [c for c in CHEXPERT14 if c not in table.columns]
    if len(missing) == len(CHEXPERT14):
        raise DataError("The CheXpert table has none of the 14 CheXpert label columns.")
    paths = table["Path"].astype(str)
    patient = paths.str.extract(r"patient(\d+)")[0]
    study = paths.str.extract(r"(study\d+)")[0]
    frame = pd.DataFrame({
        "image_id": paths,
        "patient_id": patient.fillna(paths),
        "study_id": patient.fillna(paths) + "_" + study.fillna("study0"),
        "sex": table.get("Sex", pd.Series(np.nan, index=table.index)).map({"Male": "M", "Female": "F"}),
        "age": pd.to_numeric(table.get("Age", pd.Series(np.nan, index=table.index)), errors="coerce").astype(float),
    })
    fl = table.get("Frontal/Lateral", pd.Series("Frontal", index=table.index))
    frame["frontal"] = fl.astype(str).eq("Frontal")
    frame["view"] = np.where(frame["frontal"], table.get("AP/PA", pd.Series(np.nan, index=table.index)), "LL")
    frame.loc[frame["view"].astype(str).isin(["nan", "None"]), "view"] = np.nan
    for label in CHEXPERT14:
        frame[label] = pd.to_numeric(table[label], errors="coerce").astype(np.float32) if label in table.columns else np.nan
    return frame


def read_chexpert(root: Path, check_files: bool = True) -> DatasetIndex:
    parts = []
    for name in ("train.csv", "valid.csv"):
        p = root / name
        if p.exists():
            try:
                t = pd.read_csv(p)
            except Exception as exc:
                raise DataError(f"Could not read {name}: {exc}. Is it a CSV file?") from exc
            f = chexpert_frame_from_table(t)
            f["official_split"] = name.removesuffix(".csv")
            parts.append(f)
    if not parts:
        raise DataError(f"No train.csv or valid.csv in {root}; this is not a CheXpert folder.")
    frame = pd.concat(parts, ignore_index=True)
    notes = []
    dups = frame["image_id"].duplicated()
    if dups.any():
        notes.append(f"Dropped {int(dups.sum())} duplicate rows (same Path).")
        frame = frame[~dups].reset_index(drop=True)
    frame["path"] = frame["image_id"].map(lambda p: _resolve_chexpert_path(root, p))
    frame = _keep_found(frame, root, notes, check_files)
    boxes = pd.DataFrame(columns=BOX_COLUMNS)
    if (root / "phantom_boxes.csv").exists():
        boxes = _read_box_table(root / "phantom_boxes.csv", CHEXPERT14)
        boxes = boxes[boxes["image_id"].isin(set(frame["image_id"]))].reset_index(drop=True)
    cols = _column_order(frame, CHEXPERT14) + ["official_split"]
    return DatasetIndex(root, "chexpert", frame[cols], list(CHEXPERT14), boxes, notes)


def _resolve_chexpert_path(root: Path, rel: str) -> str | None:
    """Paths in the CSVs carry the dataset folder name (CheXpert-v1.0-small/...); accept either."""
    stripped = CHEXPERT_PREFIX.sub("", rel)
    for cand in (root / stripped, root.parent / rel, root / rel):
        if cand.is_file():
            return str(cand)
    return None


# --------------------------------------------------------------------------- shared

def _keep_found(frame: pd.DataFrame, root: Path, notes: list[str], check_files: bool) -> pd.DataFrame:
    if not check_files:
        return frame
    found = frame["path"].notna()
    n, k = len(frame), int(found.sum())
    if k == 0:
        raise DataError(
            f"None of the {n} images listed in the label table were found under {root}. "
            "Check that the image folders sit beside the table (NIH: images/ or images_0NN/images/; "
            "CheXpert: train/ and valid/)."
        )
    if k < n:
        notes.append(f"{n - k} of {n} images listed in the table were not found on disk; using the {k} found.")
    return frame[found].reset_index(drop=True)


def _column_order(frame: pd.DataFrame, labels: list[str]) -> list[str]:
    meta = ["image_id", "path", "patient_id", "study_id", "sex", "age", "view", "frontal"]
    for c in meta:
        if c not in frame.columns:
            frame[c] = np.nan
    return meta + list(labels)


def _xrv_data(name: str) -> Path:
    import torchxrayvision  # local import: only statistics of the builtin tables need it

    path = Path(torchxrayvision.__file__).parent / "data" / name
    if not path.exists():
        raise DataError(f"torchxrayvision does not ship {name} in this installation ({path}).")
    return path


BUILTIN_TABLES = {
    "nih": ("NIH ChestX-ray14 (full label table, 112,120 images)", "Data_Entry_2017_v2020.csv.gz"),
    "chexpert": ("CheXpert train (full label table, 223,414 images)", "chexpert_train.csv.gz"),
}


def builtin_table(name: str) -> DatasetIndex:
    """The full label table of a real dataset, as shipped inside torchxrayvision (no images)."""
    if name not in BUILTIN_TABLES:
        raise DataError(f"Unknown builtin table {name!r}; use one of {', '.join(BUILTIN_TABLES)}.")
    path = _xrv_data(BUILTIN_TABLES[name][1])
    table = pd.read_csv(path)
    if name == "nih":
        frame = nih_frame_from_table(table)
        frame["path"] = None
        boxes = _read_box_table(_xrv_data("BBox_List_2017.csv.gz"), NIH_LABELS)
        return DatasetIndex(path.parent, "nih", frame[_column_order(frame, NIH_LABELS)], list(NIH_LABELS), boxes)
    frame = chexpert_frame_from_table(table)
    frame["path"] = None
    return DatasetIndex(path.parent, "chexpert", frame[_column_order(frame, CHEXPERT14)], list(CHEXPERT14))
