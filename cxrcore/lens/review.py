"""A reviewer's verdicts on suspected label errors (issue 24 §3): "label wrong", "label right" or "unsure" per (image,
label) of a dataset, kept in ``label_reviews.sqlite`` in the workspace the moment they are given (several reviewers
at once: one transaction each; a later verdict on the same pair by anyone replaces the earlier one, and says who and
when). :func:`relabel_table` is the export: one row per reviewed pair with the label as given and as corrected
(flipped where the reviewer said the label is wrong), the dataset's own files untouched: the relabel table
training reads (:mod:`cxrcore.data.relabel`, the ``relabel`` training option).
"""
from __future__ import annotations

import time
from pathlib import Path

from ..data.relabel import COLUMNS
from ..errors import DataError
from ..sqlitedb import Database

DB_NAME = "label_reviews.sqlite"
VERDICTS = ("label wrong", "label right", "unsure")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reviews (
    dataset TEXT NOT NULL,
    image_id TEXT NOT NULL,
    label TEXT NOT NULL,
    given INTEGER NOT NULL,
    verdict TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (dataset, image_id, label)
)"""


def dataset_key(root: str | Path) -> str:
    """Reviews belong to a dataset folder (resolved)."""
    return str(Path(root).resolve())


class ReviewStore:
    def __init__(self, path: str | Path | None = None):
        if path is None:
            from .. import workspace

            path = workspace.root() / DB_NAME
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = Database(self.path, synchronous="FULL")
        with self._db.write() as con:
            con.execute(_SCHEMA)

    def mark(self, root: str | Path, image_id: str, label: str, given: int, verdict: str, reviewer: str) -> None:
        if verdict not in VERDICTS:
            raise DataError(f"A verdict is one of {', '.join(VERDICTS)}, not {verdict!r}.")
        if int(given) not in (0, 1):
            raise DataError(f"The given label is 0 or 1, not {given!r}.")
        with self._db.write() as con:
            con.execute("INSERT OR REPLACE INTO reviews VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (dataset_key(root), str(image_id), str(label), int(given), verdict, str(reviewer)[:200],
                         time.time()))

    def unmark(self, root: str | Path, image_id: str, label: str) -> None:
        with self._db.write() as con:
            con.execute("DELETE FROM reviews WHERE dataset = ? AND image_id = ? AND label = ?",
                        (dataset_key(root), str(image_id), str(label)))

    def verdicts(self, root: str | Path) -> dict[tuple[str, str], dict]:
        """(image id, label) -> {"verdict", "given", "reviewer", "at"} of one dataset."""
        rows = self._db.read("SELECT * FROM reviews WHERE dataset = ?", (dataset_key(root),))
        return {(r["image_id"], r["label"]): {"verdict": r["verdict"], "given": r["given"], "reviewer": r["reviewer"],
                                              "at": r["at"]} for r in rows}


def relabel_table(store: ReviewStore, root: str | Path):
    """The export: ``image_id, label, given, corrected, verdict, reviewer, reviewed_at`` per reviewed pair
    (``corrected``: the other value where the verdict is "label wrong", else the given one)."""
    import datetime as dt

    import pandas as pd

    rows = [{"image_id": k[0], "label": k[1], "given": v["given"],
             "corrected": 1 - v["given"] if v["verdict"] == "label wrong" else v["given"], "verdict": v["verdict"],
             "reviewer": v["reviewer"],
             "reviewed_at": dt.datetime.fromtimestamp(v["at"], dt.timezone.utc).isoformat(timespec="seconds")}
            for k, v in sorted(store.verdicts(root).items())]
    return pd.DataFrame(rows, columns=list(COLUMNS))
