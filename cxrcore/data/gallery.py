"""What the Dataset page's gallery shows, and the change stamp of a dataset folder."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .index import DatasetIndex


def folder_stamp(root: str | Path) -> tuple:
    """Changes when a folder's label tables or image folders change (names, mtimes, sizes of its
    CSVs and sub-folders), so a cache keyed on it re-reads the dataset. ``("missing",)`` if absent."""
    root = Path(root)
    if not root.is_dir():
        return ("missing",)
    out = []
    for p in sorted(root.iterdir()):
        if p.is_dir() or p.name.lower().endswith((".csv", ".csv.gz")):
            try:
                s = p.stat()
            except OSError:
                continue
            out.append((p.name, s.st_mtime_ns, s.st_size))
    return tuple(out)


def gallery_items(index: DatasetIndex, label: str, n: int = 12) -> list[dict]:
    """Up to ``n`` images on disk positive for ``label``, those with a ground-truth box first:
    ``{"path", "caption", "boxes": [(x, y, w, h) fractions]}``."""
    f = index.frame
    if label not in f.columns:
        return []
    boxes = index.boxes[index.boxes["label"] == label] if len(index.boxes) else index.boxes
    rows = f[(f[label] == 1) & f["path"].notna()]
    boxed = rows["image_id"].isin(set(boxes["image_id"])) if len(boxes) else pd.Series(False, index=rows.index)
    rows = pd.concat([rows[boxed], rows[~boxed]]).head(n)
    items = []
    for _, r in rows.iterrows():
        pos = [x for x in index.labels if r[x] == 1]
        b = boxes[boxes["image_id"] == r["image_id"]] if len(boxes) else boxes
        items.append({"path": str(r["path"]), "caption": f"{Path(str(r['image_id'])).name}: {', '.join(pos)}",
                      "boxes": [tuple(float(v) for v in t) for t in b[["x", "y", "w", "h"]].itertuples(index=False)]
                      if len(b) else []})
    return items
