"""A relabel table: corrections to a dataset's labels kept beside it, the dataset's own files untouched (issue 24
§3). The Dataset page's label review exports one (:func:`cxrcore.lens.review.relabel_table`); training reads one
(``relabel`` option: the corrected values replace the dataset's for the images and labels it names, in every split
the training uses).

The format, declared here once: a CSV with at least :data:`REQUIRED` columns — ``image_id`` (as the dataset's index
names the image), ``label`` (a label of the dataset, matched through synonyms) and ``corrected`` (1 present, 0
absent). The export adds ``given``, ``verdict``, ``reviewer`` and ``reviewed_at``; they are read for nothing but the
record.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError

REQUIRED = ("image_id", "label", "corrected")
COLUMNS = ("image_id", "label", "given", "corrected", "verdict", "reviewer", "reviewed_at")   # the export's order
MAX_BYTES = 64 * 1024 * 1024


@dataclass
class Relabel:
    path: str
    sha256: str
    rows: int          # rows of the table
    applied: int       # (image, label) values it changed or confirmed in the training's targets
    changed: int       # of those, values that differ from the dataset's
    unmatched: int     # rows naming an image or label the training's data does not have (filtered out, another set)

    def to_dict(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "rows": self.rows, "applied": self.applied,
                "changed": self.changed, "unmatched": self.unmatched}


def read_relabel(path: str | Path):
    """The table at ``path`` checked: DataError (what is wrong, what to do) for a missing or oversized file, a
    missing column, a ``corrected`` other than 0 / 1, or one (image, label) corrected twice."""
    import pandas as pd

    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"The relabel table {p} is not a file. Export one from the Dataset page's Label errors tab "
                        "(Download the relabel table) and give its path.")
    if p.stat().st_size > MAX_BYTES:
        raise DataError(f"The relabel table {p} is over {MAX_BYTES // 2**20} MB; it holds corrections, not a dataset.")
    try:
        table = pd.read_csv(p, dtype={"image_id": str, "label": str})
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"The relabel table {p} is not a readable CSV ({str(exc)[:200]}).") from exc
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise DataError(f"The relabel table {p} has no column {', '.join(missing)}; it needs "
                        f"{', '.join(REQUIRED)} (the Dataset page's export has them).")
    corrected = pd.to_numeric(table["corrected"], errors="coerce")
    bad = ~corrected.isin([0, 1])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"The relabel table {p}: corrected is 0 or 1; row {row + 2} has {table['corrected'].iloc[row]!r}.")
    table = table.assign(corrected=corrected.astype(int))
    twice = table.duplicated(["image_id", "label"], keep=False)
    if twice.any():
        r = table[twice].iloc[0]
        raise DataError(f"The relabel table {p} corrects {r['image_id']} / {r['label']} more than once; keep one row "
                        "per image and label.")
    return table


def apply_relabel(path: str | Path, image_ids, dataset_labels: list[str], label_space: list[str],
                  targets: np.ndarray) -> tuple[np.ndarray, Relabel]:
    """``targets`` (N, len(label_space), as :meth:`DatasetIndex.targets` gives them for images ``image_ids``) with
    the table's corrections in place (a copy), and what was applied. A label is matched through synonyms; a row
    whose image or label is not among these is counted as unmatched, not an error (a filtered training set)."""
    from ..labels import canonical

    table = read_relabel(path)
    p = Path(path).expanduser().resolve()
    out = np.array(targets, dtype=np.float32, copy=True)
    row_of = {str(x): i for i, x in enumerate(image_ids)}
    col_of = {canonical(x): j for j, x in enumerate(label_space)}
    known = {canonical(x) for x in dataset_labels}
    applied = changed = unmatched = 0
    for image_id, label, value in zip(table["image_id"].astype(str), table["label"].astype(str), table["corrected"]):
        i, j = row_of.get(image_id), col_of.get(canonical(label))
        if i is None or j is None or canonical(label) not in known:
            unmatched += 1
            continue
        applied += 1
        changed += int(out[i, j] != value)
        out[i, j] = float(value)
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    return out, Relabel(str(p), digest, len(table), applied, changed, unmatched)
