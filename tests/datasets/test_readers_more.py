"""Generic CSV dataset folders, the official NIH split lists, and the Dataset page's Gallery tab."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrcore.data.readers import detect_format, official_test_mask, read_dataset
from cxrcore.errors import DataError

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "views" / "dataset.py"
from conftest import NIH_SAMPLE as SAMPLE  # noqa: E402
FOLDER = "A folder on this machine…"


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(path)


def _generic(root: Path, rows: list[dict] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = rows or [
        {"filename": "imgs/a.png", "Patient ID": "p1", "Sex": "Male", "Age": "41", "Edema": "1", "Mass": "0",
         "Effusion": "True", "note": "hello"},
        {"filename": "imgs/b.png", "Patient ID": "p1", "Sex": "Female", "Age": "52", "Edema": "-1", "Mass": "",
         "Effusion": "False", "note": "x"},
        {"filename": "imgs/c.png", "Patient ID": "p2", "Sex": "", "Age": "", "Edema": "0", "Mass": "1",
         "Effusion": "", "note": "y"},
    ]
    for i, r in enumerate(rows):
        _png(root / r["filename"], i)
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def test_generic_csv_reader(tmp_path):
    root = _generic(tmp_path / "g")
    assert detect_format(root) == "csv"
    ix = read_dataset(root)
    assert ix.format == "csv" and len(ix) == 3
    assert ix.labels == ["Edema", "Mass", "Effusion"]  # "note" is not a label column; meta columns are not
    raw = ix.label_matrix()
    np.testing.assert_array_equal(raw[:, 0], [1, -1, 0])
    assert raw[0, 2] == 1 and raw[1, 2] == 0 and np.isnan(raw[2, 2]) and np.isnan(raw[1, 1])
    f = ix.frame
    assert list(f["patient_id"]) == ["p1", "p1", "p2"]
    assert list(f["sex"][:2]) == ["M", "F"] and pd.isna(f["sex"][2])
    assert f["age"][0] == 41 and np.isnan(f["age"][2])
    assert all(Path(p).is_file() for p in f["path"])
    # explicit label list and path column
    ix2 = read_dataset(root, format="csv", path_column="filename", labels=["Mass"])
    assert ix2.labels == ["Mass"]
    # the statistics run on it
    from cxrcore.data import stats

    out = stats.all_statistics(ix)
    assert out["summary"]["patients"] == 2 and out["summary"]["images_on_disk"] == 3


def test_generic_csv_errors(tmp_path):
    # no path column: the columns found are listed
    bad = tmp_path / "nopath"
    bad.mkdir()
    (bad / "t.csv").write_text("file,Edema\na.png,1\n")
    with pytest.raises(DataError, match="No label table"):
        detect_format(bad)
    with pytest.raises(DataError, match=r"no path column.*file, Edema"):
        read_dataset(bad, format="csv")
    with pytest.raises(DataError, match="no column 'zz'"):
        read_dataset(bad, format="csv", path_column="zz")
    assert read_dataset(bad, format="csv", path_column="file", check_files=False).labels == ["Edema"]
    # no label columns
    nolab = tmp_path / "nolab"
    nolab.mkdir()
    _png(nolab / "a.png", 0)
    (nolab / "t.csv").write_text("path,comment,score\na.png,hi,0.73\n")
    with pytest.raises(DataError, match="no label columns"):
        read_dataset(nolab)
    with pytest.raises(DataError, match="not a label column"):
        read_dataset(nolab, labels=["comment"])
    with pytest.raises(DataError, match="lacks the label column"):
        read_dataset(nolab, labels=["Edema"])
    # paths not found: all -> error with the count, some -> note
    missing = tmp_path / "missing"
    missing.mkdir()
    (missing / "t.csv").write_text("path,Edema\nx.png,1\ny.png,0\n")
    with pytest.raises(DataError, match="None of the 2 images"):
        read_dataset(missing)
    _png(missing / "x.png", 1)
    ix = read_dataset(missing)
    assert len(ix) == 1 and any("1 of 2 images" in n for n in ix.notes)
    # duplicate rows are dropped with a note
    dup = tmp_path / "dup"
    dup.mkdir()
    _png(dup / "images" / "a.png", 0)  # found under images/ too
    (dup / "t.csv").write_text("image,Edema\na.png,1\na.png,1\n")
    ix = read_dataset(dup)
    assert len(ix) == 1 and any("Dropped 1 duplicate" in n for n in ix.notes)
    # two CSVs: not a generic folder
    (dup / "other.csv").write_text("image,Edema\na.png,1\n")
    with pytest.raises(DataError, match="No label table"):
        detect_format(dup)
    with pytest.raises(DataError, match="exactly one"):
        read_dataset(dup, format="csv")


def test_detection_prefers_nih_and_chexpert(tmp_path):
    nih = tmp_path / "nih"
    nih.mkdir()
    (nih / "Data_Entry_2017.csv").write_text("Image Index,Finding Labels,Patient ID\nx.png,Edema,1\n")
    assert detect_format(nih) == "nih"
    chex = tmp_path / "chex"
    chex.mkdir()
    (chex / "train.csv").write_text("Path,Edema\nx.png,1\n")
    assert detect_format(chex) == "chexpert"


def _nih_copy(tmp_path: Path, n: int = 8, lists: bool = True) -> tuple[Path, list[str]]:
    root = tmp_path / "nih"
    (root / "images").mkdir(parents=True)
    table = pd.read_csv(SAMPLE / "Data_Entry_2017_sample.csv")
    names = list(table["Image Index"][:n])
    table[table["Image Index"].isin(names)].to_csv(root / "Data_Entry_2017.csv", index=False)
    for name in names:
        shutil.copy(SAMPLE / "images" / name, root / "images" / name)
    if lists:
        (root / "test_list.txt").write_text("\n".join(names[:3]) + "\n")
        (root / "train_val_list.txt").write_text("\n".join(names[3:-1]) + "\n")
    return root, names


def test_official_nih_split(tmp_path):
    root, names = _nih_copy(tmp_path)
    ix = read_dataset(root)
    split = ix.frame.set_index("image_id")["official_split"]
    assert list(split[names[:3]]) == ["test"] * 3
    assert list(split[names[3:-1]]) == ["train_val"] * (len(names) - 4)
    assert pd.isna(split[names[-1]])
    assert any("Official NIH split" in n and "1 images are in neither" in n for n in ix.notes)
    mask = official_test_mask(ix)
    assert mask.dtype == bool and mask.sum() == 3
    assert set(ix.frame["image_id"][mask]) == set(names[:3])
    assert "official_split" in ix.subset(mask).frame.columns


def test_no_official_split(tmp_path):
    root, _ = _nih_copy(tmp_path, n=3, lists=False)
    ix = read_dataset(root)
    assert "official_split" not in ix.frame.columns
    with pytest.raises(DataError, match="no official split"):
        official_test_mask(ix)


def test_gallery_tab_nih_sample(app_env, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    # the workspace of the whole run (app_env), whose built-in phantoms the real ensure_app_data finds generated
    at = AppTest.from_file(str(PAGE), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert {"phantom nih (built-in)", "phantom chexpert (built-in)"} <= set(at.selectbox(key="dataset_source").options)
    assert "Gallery" not in [t.label for t in at.tabs]  # the builtin table has no images ...
    assert any("label table only" in c.value for c in at.caption)  # ... and the page says so
    at.selectbox(key="dataset_source").set_value(FOLDER).run()
    at.text_input(key="dataset_folder").input(str(SAMPLE)).run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Gallery" in [t.label for t in at.tabs]
    at.session_state["dataset_section"] = "Gallery"  # the page's tabs are lazy: open the Gallery tab
    at.run()
    at.selectbox(key="gallery_label").set_value("Pneumonia").run()
    assert not at.exception, [e.value for e in at.exception]
    captions = [c for el in at.get("image") for c in el.captions]
    assert 1 <= len(captions) <= 12
    assert all("Pneumonia" in c for c in captions)
    # the sample has Pneumonia boxes: images with a box come first and their boxes are drawn
    assert any("ground-truth box(es) for Pneumonia" in c.value and "has no" not in c.value for c in at.caption)


def test_a_label_table_without_images_gives_statistics_with_a_note(tmp_path):
    """How people start with NIH and CheXpert: the table first, images later (issue 13 §5)."""
    import shutil
    import subprocess
    import sys

    from cxrcore.data import stats
    from cxrcore.data.readers import LABELS_ONLY
    from cxrcore.errors import DataError

    src = Path(__file__).parents[1] / "data" / "nih-sample"
    table = next(src.glob("Data_Entry_2017*.csv"))
    shutil.copy(table, tmp_path / table.name)
    with pytest.raises(DataError, match="None of the"):
        read_dataset(tmp_path)                                   # training and evaluation still need images
    ix = read_dataset(tmp_path, check_files=LABELS_ONLY)
    assert len(ix) == len(read_dataset(src, check_files=False)) and ix.frame["path"].isna().all()
    assert any("No images found" in n for n in ix.notes)
    prev = stats.prevalence(ix)
    assert prev.loc["Effusion"].iloc[0] > 0
    out = subprocess.run([sys.executable, "-m", "cxrcore.cli", "stats", str(tmp_path)], capture_output=True, text=True,
                         cwd=Path(__file__).parents[2], timeout=300)
    assert out.returncode == 0, out.stderr
    assert "No images found" in out.stdout and "Effusion" in out.stdout
