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
    if _generic_csv(root) is not None:
        return "csv"
    raise DataError(
        f"No label table found in {root}. Expected Data_Entry_2017*.csv (NIH ChestX-ray14 layout), "
        "train.csv / valid.csv (CheXpert layout) or one CSV with a path column "
        f"({', '.join(PATH_COLUMNS)}) and label columns."
    )


def read_dataset(root: str | os.PathLike, format: str = "auto", check_files: bool | str = True,
                 path_column: str | None = None, labels: list[str] | None = None) -> DatasetIndex:
    """Read a dataset folder. ``format`` is ``auto``, ``nih``, ``chexpert`` or ``csv``.

    ``path_column`` and ``labels`` apply to the generic ``csv`` format only (see :func:`read_csv`).
    ``check_files``: True keeps the images found on disk (DataError when none is); False does not look;
    ``"labels_only"`` is True, except that a folder with the label table and no images yet (how people
    start with NIH and CheXpert) gives every row of the table with a note saying so, for label statistics.
    """
    root = Path(root).expanduser().resolve()
    if format == "auto" and (path_column is not None or labels is not None) and root.is_dir() \
            and _nih_table(root) is None and not ((root / "train.csv").exists() or (root / "valid.csv").exists()):
        format = "csv"
    fmt = detect_format(root) if format == "auto" else format
    if fmt == "nih":
        return read_nih(root, check_files=check_files)
    if fmt == "chexpert":
        return read_chexpert(root, check_files=check_files)
    if fmt == "csv":
        return read_csv(root, path_column=path_column, labels=labels, check_files=check_files)
    raise DataError(f"Unknown dataset format {format!r}; use auto, nih, chexpert or csv.")


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


def _map_unique(series: pd.Series, fn) -> pd.Series:
    """``series.map(fn)`` computing ``fn`` once per distinct value (NaN included)."""
    codes, uniques = pd.factorize(series, use_na_sentinel=False)
    return pd.Series(np.asarray([fn(u) for u in uniques], dtype=object)[codes] if len(uniques) else [],
                     index=series.index, dtype=object)


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
        "age": _map_unique(table.get("Patient Age", pd.Series(np.nan, index=table.index)), _parse_age).astype(float),
        "view": table.get("View Position", pd.Series(np.nan, index=table.index)),
    })
    frame["frontal"] = frame["view"].isin(["PA", "AP"]) | frame["view"].isna()
    # Parse each distinct "A|B|C" string once (a few hundred in 112,120 rows), then index by row.
    codes, uniques = pd.factorize(findings.map("|".join))
    keys = [{canonical(f) for f in u.split("|") if f} for u in uniques]
    unknown = set().union(*keys) - {canonical(x) for x in NIH_LABELS} if len(keys) else set()
    for label in NIH_LABELS:
        k = canonical(label)
        per_unique = np.array([1.0 if k in s else 0.0 for s in keys] + [0.0], dtype=np.float32)
        frame[label] = per_unique[codes]  # code -1 (never: findings are strings) would read the 0.0
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
    cols = _column_order(frame, NIH_LABELS)
    if _add_official_split(frame, table_path.parent, notes):
        cols.append("official_split")

    boxes = _read_nih_boxes(root, set(frame["image_id"]), NIH_LABELS)
    return DatasetIndex(root, "nih", frame[cols], list(NIH_LABELS), boxes, notes)


NIH_SPLIT_FILES = {"train_val": "train_val_list.txt", "test": "test_list.txt"}


def _read_list(path: Path) -> set[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DataError(f"Could not read {path.name}: {exc.strerror or exc}.") from None
    return {line.strip() for line in text.splitlines() if line.strip()}


def _add_official_split(frame: pd.DataFrame, folder: Path, notes: list[str]) -> bool:
    """Add ``official_split`` ("train_val" / "test" / NaN) from NIH's train_val_list.txt / test_list.txt."""
    present = {k: folder / v for k, v in NIH_SPLIT_FILES.items() if (folder / v).is_file()}
    if not present:
        return False
    split = pd.Series(np.nan, index=frame.index, dtype=object)
    for key in ("train_val", "test"):  # test wins if an image were (wrongly) in both lists
        if key in present:
            split[frame["image_id"].isin(_read_list(present[key]))] = key
    frame["official_split"] = split
    n_test, n_tv = int((split == "test").sum()), int((split == "train_val").sum())
    msg = (f"Official NIH split from {' and '.join(p.name for p in present.values())}: "
           f"{n_tv:,} train_val and {n_test:,} test images")
    rest = len(frame) - n_test - n_tv
    msg += f"; {rest:,} images are in neither list." if rest else "."
    notes.append(msg)
    return True


# Values of ``official_split`` that mean "the official test set": NIH's test_list.txt, CheXpert's
# radiologist-labelled valid.csv (the public stand-in for its hidden test set).
OFFICIAL_TEST = ("test", "valid")
OFFICIAL_HELP = ("For NIH ChestX-ray14 put train_val_list.txt and test_list.txt beside Data_Entry_2017*.csv; "
                 "a CheXpert folder needs valid.csv beside train.csv.")


def has_official_split(index: DatasetIndex) -> bool:
    return "official_split" in index.frame.columns and index.frame["official_split"].isin(OFFICIAL_TEST).any()


def official_test_mask(index: DatasetIndex) -> np.ndarray:
    """Boolean mask of the images in the dataset's official test split (NIH test_list.txt, CheXpert valid.csv).

    Raises :class:`DataError` when the dataset carries no official split.
    """
    if "official_split" not in index.frame.columns:
        raise DataError(f"{index.name} has no official split. {OFFICIAL_HELP}")
    return index.frame["official_split"].isin(OFFICIAL_TEST).to_numpy(dtype=bool)


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
    # One regex pass where every path reads .../patientNNN/studyN/... with "patient" and "study" once each
    # (then both searches below give exactly these groups); otherwise the two general searches.
    both = paths.str.extract(r"patient(\d+)/(study\d+)")
    if len(paths) and both.notna().all().all() and paths.str.count("patient").eq(1).all() \
            and paths.str.count("study").eq(1).all():
        patient, study = both[0], both[1]
    else:
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


# --------------------------------------------------------------------------- generic CSV

PATH_COLUMNS = ("path", "Path", "image", "filename", "Image Index")
PATIENT_COLUMNS = ("patient_id", "Patient ID", "patient")
SEX_COLUMNS = ("sex", "Sex", "Patient Gender", "gender")
AGE_COLUMNS = ("age", "Age", "Patient Age")
VIEW_COLUMNS = ("view", "View", "View Position", "AP/PA")
_TRUE = {"1", "1.0", "true", "yes"}
_FALSE = {"0", "0.0", "false", "no"}
_UNCERTAIN = {"-1", "-1.0"}


def _csv_files(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_file() and p.name.lower().endswith(".csv"))


def _find_column(columns, candidates) -> str | None:
    for c in candidates:
        if c in columns:
            return c
    return None


def _generic_csv(root: Path) -> Path | None:
    """The single CSV of a generic folder, if it has a recognisable path column."""
    files = _csv_files(root)
    if len(files) != 1:
        return None
    try:
        header = pd.read_csv(files[0], nrows=0)
    except Exception:
        return None
    return files[0] if _find_column(header.columns, PATH_COLUMNS) else None


def _label_values(series: pd.Series) -> pd.Series | None:
    """Raw values 1 / 0 / -1 / NaN, or None when the column is not a label column."""
    s = series.astype(object)
    text = s.where(s.notna(), "").astype(str).str.strip().str.lower()
    blank = text.isin(["", "nan", "none"])
    ok = blank | text.isin(_TRUE | _FALSE | _UNCERTAIN)
    if not ok.all() or blank.all():
        return None
    out = pd.Series(np.nan, index=series.index, dtype=np.float32)
    out[text.isin(_TRUE)] = 1.0
    out[text.isin(_FALSE)] = 0.0
    out[text.isin(_UNCERTAIN)] = -1.0
    return out


def read_csv(root: Path, path_column: str | None = None, labels: list[str] | None = None,
             check_files: bool = True) -> DatasetIndex:
    """A folder with images and ONE CSV: a path column, label columns (1 / 0 / -1 / blank or True / False),
    optionally patient, sex, age and view columns. Other columns are ignored."""
    root = Path(root)
    files = _csv_files(root)
    if not files:
        raise DataError(f"No CSV file in {root}. A generic dataset folder holds one CSV with a path column "
                        "and label columns.")
    if len(files) > 1:
        raise DataError(f"{len(files)} CSV files in {root} ({', '.join(p.name for p in files[:5])}); a generic "
                        "dataset folder must hold exactly one.")
    table_path = files[0]
    try:
        table = pd.read_csv(table_path, dtype=str, keep_default_na=True)
    except Exception as exc:
        raise DataError(f"Could not read {table_path.name}: {exc}. Is it a CSV file?") from exc
    columns = list(table.columns)
    if path_column is not None:
        if path_column not in columns:
            raise DataError(f"{table_path.name} has no column {path_column!r}; its columns are: {', '.join(columns)}.")
        pcol = path_column
    else:
        pcol = _find_column(columns, PATH_COLUMNS)
        if pcol is None:
            raise DataError(f"{table_path.name} has no path column (one of {', '.join(PATH_COLUMNS)}); its columns "
                            f"are: {', '.join(columns)}. Rename the column or pass path_column.")
    patient = _find_column(columns, PATIENT_COLUMNS)
    sex = _find_column(columns, SEX_COLUMNS)
    age = _find_column(columns, AGE_COLUMNS)
    view = _find_column(columns, VIEW_COLUMNS)
    meta = {pcol, patient, sex, age, view} - {None}
    label_cols: dict[str, pd.Series] = {}
    if labels is not None:
        missing = [c for c in labels if c not in columns]
        if missing:
            raise DataError(f"{table_path.name} lacks the label column(s) {missing}; its columns are: "
                            f"{', '.join(columns)}.")
        for c in labels:
            vals = _label_values(table[c])
            if vals is None:
                raise DataError(f"Column {c!r} of {table_path.name} is not a label column: values must be "
                                "1, 0, -1, blank, True or False.")
            label_cols[c] = vals
    else:
        for c in columns:
            if c in meta:
                continue
            vals = _label_values(table[c])
            if vals is not None:
                label_cols[c] = vals
    if not label_cols:
        raise DataError(f"{table_path.name} has no label columns (values 1, 0, -1, blank, True or False); "
                        f"its columns are: {', '.join(columns)}.")
    notes: list[str] = []
    paths = table[pcol].fillna("").astype(str).str.strip()
    empty = paths.eq("")
    if empty.any():
        notes.append(f"Dropped {int(empty.sum())} rows with an empty {pcol!r}.")
    frame = pd.DataFrame({"image_id": paths})
    frame["patient_id"] = table[patient].astype(object) if patient else np.nan
    frame["study_id"] = frame["patient_id"]
    if sex:
        sx = table[sex].astype(str).str.strip().str.upper().str[:1]
        frame["sex"] = sx.where(sx.isin(["M", "F"]))
    else:
        frame["sex"] = np.nan
    frame["age"] = table[age].map(_parse_age).astype(float) if age else np.nan
    frame["view"] = table[view].where(table[view].notna()) if view else np.nan
    frame["frontal"] = ~frame["view"].astype(str).str.upper().isin(["LL", "LATERAL", "LAT", "RL"])
    for c, vals in label_cols.items():
        frame[c] = vals.to_numpy()
    frame = frame[~empty].reset_index(drop=True)
    dups = frame["image_id"].duplicated()
    if dups.any():
        notes.append(f"Dropped {int(dups.sum())} duplicate rows (same {pcol!r}).")
        frame = frame[~dups].reset_index(drop=True)
    frame["path"] = frame["image_id"].map(lambda p: _resolve_generic_path(root, p))
    if check_files:
        found = frame["path"].notna()
        if not found.any():
            raise DataError(f"None of the {len(frame)} images listed in {table_path.name} were found under {root}; "
                            f"the {pcol!r} column must hold paths relative to the folder (or absolute paths).")
        if not found.all():
            notes.append(f"{int((~found).sum())} of {len(frame)} images listed in {table_path.name} were not "
                         f"found on disk; using the {int(found.sum())} found.")
            frame = frame[found].reset_index(drop=True)
    label_names = list(label_cols)
    return DatasetIndex(root, "csv", frame[_column_order(frame, label_names)], label_names,
                        pd.DataFrame(columns=BOX_COLUMNS), notes)


def _resolve_generic_path(root: Path, rel: str) -> str | None:
    p = Path(rel).expanduser()
    for cand in ((p,) if p.is_absolute() else (root / p, root / "images" / p)):
        if cand.is_file():
            return str(cand)
    return None


# --------------------------------------------------------------------------- shared

LABELS_ONLY = "labels_only"


def _keep_found(frame: pd.DataFrame, root: Path, notes: list[str], check_files: bool | str) -> pd.DataFrame:
    if not check_files:
        return frame
    found = frame["path"].notna()
    n, k = len(frame), int(found.sum())
    if k == 0 and check_files == LABELS_ONLY:
        notes.append(f"No images found under {root} (the label table lists {n:,}): these are the table's label "
                     "statistics only. Download the images beside the table to see them, train or evaluate.")
        return frame
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
    import importlib.util

    # Locate the package without importing it: importing torchxrayvision (torch, skimage, ...) costs
    # seconds on a cold page, and only its data folder is needed here.
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.origin:
        raise DataError("torchxrayvision is not installed; the builtin label tables ship inside it.")
    path = Path(spec.origin).parent / "data" / name
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
