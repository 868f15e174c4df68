"""A few hundred images of the app's built-in phantom as a dataset folder of its own, for tests that run a model
over a split where the number of images is not the point (the whole phantom's test split is ~700 images).

The folder holds the phantom's own label tables cut to their first rows and links to its image folders (no image is
copied or rendered): the same images and labels in the same layout, and each image in the split it has in the whole
phantom (a patient's hash split does not depend on the other patients: cxrcore.data.index.patient_split)."""
from __future__ import annotations

from pathlib import Path


def _head(src: Path, dest: Path, n: int) -> list[str]:
    """The header and the first ``n`` rows of the CSV ``src`` written to ``dest``; returns those rows."""
    lines = src.read_text().splitlines()
    dest.write_text("\n".join(lines[:n + 1]) + "\n")
    return lines[1:n + 1]


def _rows_of(src: Path, dest: Path, ids: set[str]) -> None:
    """The header and the rows of the CSV ``src`` whose first field is one of ``ids``, written to ``dest``."""
    lines = src.read_text().splitlines()
    dest.write_text("\n".join([lines[0]] + [x for x in lines[1:] if x.split(",", 1)[0] in ids]) + "\n")


def phantom_subset(src: Path, dest: Path, n: int) -> Path:
    """``dest`` made a dataset of the first ``n`` rows of each label table of the phantom ``src`` (NIH layout:
    Data_Entry_2017.csv, its test / train_val lists and boxes cut to those images; CheXpert layout: train.csv and
    valid.csv, n rows each). Returns ``dest``."""
    src, dest = Path(src), Path(dest)
    dest.mkdir(parents=True)
    if (src / "Data_Entry_2017.csv").exists():
        ids = {x.split(",", 1)[0] for x in _head(src / "Data_Entry_2017.csv", dest / "Data_Entry_2017.csv", n)}
        for name in ("test_list.txt", "train_val_list.txt"):
            (dest / name).write_text("".join(f"{x}\n" for x in (src / name).read_text().split() if x in ids))
        _rows_of(src / "BBox_List_2017.csv", dest / "BBox_List_2017.csv", ids)
        (dest / "images").symlink_to(src / "images", target_is_directory=True)
    else:
        ids = set()
        for name in ("train", "valid"):
            ids |= {x.split(",", 1)[0] for x in _head(src / f"{name}.csv", dest / f"{name}.csv", n)}
            (dest / name).symlink_to(src / name, target_is_directory=True)
        _rows_of(src / "phantom_boxes.csv", dest / "phantom_boxes.csv", ids)
    return dest
