"""A 2-D map of a dataset's embeddings (issue 24 §4; the Dataset page's "Embedding map"): t-SNE (scikit-learn's
Barnes-Hut, PCA initialisation, perplexity 30, seeded) of the vectors of an index (:mod:`cxrcore.lens.index`), at
most :data:`MAX_POINTS` films (a seeded sample beyond, said so). Kept beside the index (``map-<n>-<seed>.npz``, the
index's update time inside: a rebuilt index gets a new map), so a page draws it again without recomputing."""
from __future__ import annotations

import numpy as np

MAX_POINTS = 5000


def embedding_map(index, max_points: int = MAX_POINTS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rows of the index mapped, their 2-D coordinates (n, 2))."""
    from sklearn.manifold import TSNE

    n = len(index)
    rows = np.arange(n) if n <= max_points else np.sort(np.random.default_rng(seed).choice(n, max_points, False))
    path = index.folder / f"map-{len(rows)}-{seed}.npz"
    stamp = str(index.meta.get("updated", ""))
    if path.is_file():
        held = np.load(path, allow_pickle=False)
        if str(held["stamp"]) == stamp and len(held["rows"]) == len(rows) and (held["rows"] == rows).all():
            return held["rows"], held["xy"]
    if len(rows) < 5:
        return rows, np.zeros((len(rows), 2))
    xy = TSNE(n_components=2, perplexity=min(30.0, (len(rows) - 1) / 3), init="pca", random_state=seed,
              metric="cosine").fit_transform(index.vectors[rows]).astype(np.float32)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, rows=rows, xy=xy, stamp=np.array(stamp))
    tmp.replace(path)
    return rows, xy
