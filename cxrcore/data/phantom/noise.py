"""Known label noise in an NIH-layout phantom: a share of its (film, finding) pairs flipped, seeded, and the truth
kept beside them (issue 24 §3: measuring how well label errors are found; ``cxr phantom --label-noise``).

A flipped pair has its finding added where the film does not carry it, or removed where it does, in
``Data_Entry_2017.csv`` (``No Finding`` where none is left); the images are untouched. ``label_noise.csv`` beside the
table lists every flipped pair: ``image_id``, ``label``, ``given`` (the value now in the table) and ``true`` (the
phantom's). The flips depend only on the table and ``seed``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import DataError

NOISE_FILE = "label_noise.csv"
TABLE = "Data_Entry_2017.csv"


def add_label_noise(folder: str | Path, share: float, seed: int = 0, labels: list[str] | None = None) -> set[tuple]:
    """Flip ``share`` of the (film, finding) pairs of ``labels`` (default: the 14 NIH findings) in the NIH-layout
    folder ``folder``; returns the flipped (image id, label) pairs (also written to :data:`NOISE_FILE`)."""
    import pandas as pd

    from ...labels import NIH14

    folder = Path(folder)
    if not (folder / TABLE).is_file():
        raise DataError(f"Label noise is written into an NIH-layout folder ({TABLE}); {folder} has none.")
    if not 0 < share < 1:
        raise DataError(f"The share of labels to flip is between 0 and 1, not {share}.")
    if (folder / NOISE_FILE).exists():
        raise DataError(f"{folder} already has flipped labels ({NOISE_FILE}); write a fresh phantom.")
    labels = list(labels or NIH14)
    table = pd.read_csv(folder / TABLE)
    rng = np.random.default_rng(seed)
    pairs = [(i, x) for i in range(len(table)) for x in labels]
    rows = []
    for k in sorted(rng.choice(len(pairs), int(round(share * len(pairs))), replace=False)):
        i, x = pairs[k]
        found = [f for f in str(table.at[i, "Finding Labels"]).split("|") if f != "No Finding"]
        had = x in found
        found = [f for f in found if f != x] if had else found + [x]
        table.at[i, "Finding Labels"] = "|".join(found) or "No Finding"
        rows.append({"image_id": str(table.at[i, "Image Index"]), "label": x, "given": int(not had),
                     "true": int(had)})
    table.to_csv(folder / TABLE, index=False)
    pd.DataFrame(rows, columns=["image_id", "label", "given", "true"]).to_csv(folder / NOISE_FILE, index=False)
    return {(r["image_id"], r["label"]) for r in rows}
