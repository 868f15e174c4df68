"""Every image of a dataset embedded by a model, and a nearest-neighbour index over the embeddings (issue 24 §1, §2;
``cxr index``, ``cxr similar``).

**The embedding** is the model's penultimate layer: the pooled features its classifier reads
(:meth:`cxrcore.predictor.Predictor.embed_squares`), L2-normalised, so neighbours are found by cosine similarity
and a **distance** is 1 − cosine (0: the same direction, 2: opposite). The model's probabilities for each image are
kept beside, so a neighbour shows what the model said of it.

**The index** is faiss's: exact (``IndexFlatIP``, every vector compared) below :data:`ANN_FROM` images, an HNSW
graph (``IndexHNSWFlat``, approximate, M = 32) from there on; both take new vectors without a rebuild. Written as
faiss's own binary file (``faiss.write_index``, nothing pickled), with the vectors (``embeddings.npy``), the
probabilities (``probs.npy``), one row per image (``items.parquet``: path, image id, patient, the model's split,
the dataset's positive labels) and ``meta.json`` (the model, its network's digest, the dataset). Default folder:
the workspace's cache, ``index/<dataset>-<network digest>``.

**Incremental.** Built again over the same dataset with the same network, only the images not yet in it are
embedded; images gone from the dataset are dropped. An index of another network is refused, not mixed.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import DataError

ANN_FROM = 20_000        # from this many images on, an HNSW graph instead of the exact index
HNSW_M = 32
HNSW_EF_SEARCH = 128
FILES = ("embeddings.npy", "probs.npy", "items.parquet", "index.faiss", "meta.json")


@dataclass
class EmbeddingIndex:
    folder: Path
    meta: dict
    items: "object"          # pandas DataFrame, a row per vector
    vectors: np.ndarray      # (N, C) float32, L2-normalised
    probs: np.ndarray        # (N, L) the model's probabilities
    index: "object"          # faiss.Index

    def __len__(self) -> int:
        return len(self.vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances 1 - cosine, row numbers), each (Q, k), nearest first."""
        q = normalised(np.asarray(queries, dtype=np.float32))
        k = max(1, min(int(k), len(self)))
        sims, ids = self.index.search(q, k)
        return 1.0 - sims, ids


def normalised(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def _faiss_index(vectors: np.ndarray):
    import faiss

    d = vectors.shape[1]
    if len(vectors) >= ANN_FROM:
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        index = faiss.IndexFlatIP(d)
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def default_folder(index_name: str, network: str) -> Path:
    from .. import workspace

    return workspace.cache() / "index" / f"{index_name}-{network[:16]}"


def workspace_indexes() -> list[tuple[Path, dict]]:
    """(folder, meta) of every index in the workspace's cache (where :func:`build_index` puts one by default), in
    folder order; a folder whose meta cannot be read is left out."""
    from .. import workspace

    root = workspace.cache() / "index"
    out = []
    for meta in sorted(root.glob("*/meta.json")) if root.is_dir() else []:
        try:
            out.append((meta.parent, json.loads(meta.read_text())))
        except (OSError, ValueError):
            continue
    return out


def build_index(checkpoint, data, out: str | Path | None = None, *, batch: int = 64, progress=None,
                limits=None) -> tuple[EmbeddingIndex, dict]:
    """Embed every image of the dataset ``data`` with ``checkpoint``'s model into the index folder ``out`` (see the
    module's text); (the index, a summary: images, embedded now, kept, dropped, seconds, kind). ``limits``: a
    visitor's ceilings (the images predicted)."""
    import pandas as pd

    from ..data.cache import build_cache
    from ..data.readers import read_dataset
    from ..eval.predictions import model_split_rows
    from ..predictor import Predictor
    from ..runtime import network_digest

    t0 = time.perf_counter()
    predictor = Predictor(checkpoint)
    network = network_digest(predictor.card)
    dataset = read_dataset(data)
    dataset = dataset.subset(dataset.frame["path"].notna().to_numpy())
    if not len(dataset):
        raise DataError(f"{dataset.name} has no image file to index.")
    folder = Path(out) if out is not None else default_folder(dataset.name, network)
    old = load_index(folder) if (folder / "meta.json").is_file() else None
    if old is not None and old.meta.get("network") != network:
        raise DataError(f"{folder} holds the index of another model ({old.meta.get('model')}): give another --out.")
    paths = dataset.frame["path"].astype(str)
    have = set(old.items["path"]) if old is not None else set()
    new_mask = ~paths.isin(have).to_numpy()
    if limits:
        limits.check("eval_images", int(new_mask.sum()), f"Images to embed ({dataset.name})",
                     "Choose a smaller dataset.")
    split = np.full(len(dataset), "", dtype=object)
    for name in ("train", "val", "test"):
        try:
            split[model_split_rows(predictor, dataset, name)] = name
        except DataError:
            pass
    positives = [";".join(x for x, v in zip(dataset.labels, row) if v == 1)
                 for row in dataset.label_matrix()]
    frame = pd.DataFrame({"path": paths.to_numpy(), "image_id": dataset.frame["image_id"].astype(str).to_numpy(),
                          "patient_id": dataset.frame["patient_id"].astype(str).to_numpy(), "split": split,
                          "labels": positives})
    vectors = np.zeros((0, 0), np.float32)
    probs = np.zeros((0, len(predictor.labels)), np.float32)
    if new_mask.any():
        sub = dataset.subset(new_mask)
        cache = build_cache(sub, predictor.prep, workers=1 if len(sub) < 400 else 2)
        probs, pooled = predictor.embed_squares(cache.array, batch_size=batch, progress=progress)
        if pooled is None:
            raise DataError(f"{predictor.name} has no penultimate layer to embed with (a model without a split head).")
        vectors = normalised(pooled)
    kept = dropped = 0
    if old is not None:
        keep = old.items["path"].isin(set(paths)).to_numpy()
        kept, dropped = int(keep.sum()), int((~keep).sum())
        new_items = frame[new_mask]
        items = pd.concat([old.items[keep], new_items], ignore_index=True)
        # labels and splits as the dataset says now (a relabelled image keeps its vector)
        items = items.drop(columns=["labels", "split"]).merge(frame[["path", "labels", "split"]], on="path",
                                                             how="left")
        vectors = np.concatenate([old.vectors[keep], vectors]) if len(vectors) else old.vectors[keep]
        probs = np.concatenate([old.probs[keep], probs]) if new_mask.any() else old.probs[keep]
    else:
        items = frame[new_mask].reset_index(drop=True)
    index = _faiss_index(vectors)
    meta = {"model": predictor.name, "checkpoint": str(checkpoint), "network": network,
            "card_sha256": predictor.card.sha256(), "labels": list(predictor.labels), "data": str(dataset.root),
            "dataset": dataset.name, "images": int(len(vectors)), "dim": int(vectors.shape[1]),
            "kind": "hnsw" if len(vectors) >= ANN_FROM else "exact", "metric": "cosine",
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    _write(folder, items, vectors, probs, index, meta)
    built = EmbeddingIndex(folder, meta, items, vectors, probs, index)
    summary = {"index": str(folder), "images": len(built), "embedded": int(new_mask.sum()), "kept": kept,
               "dropped": dropped, "kind": meta["kind"], "dim": meta["dim"],
               "seconds": round(time.perf_counter() - t0, 2)}
    return built, summary


def _write(folder: Path, items, vectors, probs, index, meta: dict) -> None:
    """Each file written whole then renamed into place; ``meta.json`` last (a reader sees the old or the new)."""
    import faiss

    folder.mkdir(parents=True, exist_ok=True)
    tag = f".tmp{os.getpid()}"
    np.save(folder / f"embeddings.npy{tag}.npy", vectors)
    os.replace(folder / f"embeddings.npy{tag}.npy", folder / "embeddings.npy")
    np.save(folder / f"probs.npy{tag}.npy", probs)
    os.replace(folder / f"probs.npy{tag}.npy", folder / "probs.npy")
    items.to_parquet(folder / f"items.parquet{tag}", index=False)
    os.replace(folder / f"items.parquet{tag}", folder / "items.parquet")
    faiss.write_index(index, str(folder / f"index.faiss{tag}"))
    os.replace(folder / f"index.faiss{tag}", folder / "index.faiss")
    (folder / f"meta.json{tag}").write_text(json.dumps(meta, indent=1))
    os.replace(folder / f"meta.json{tag}", folder / "meta.json")


def load_index(folder: str | Path) -> EmbeddingIndex:
    """An index folder written by :func:`build_index` (faiss's binary format and NumPy arrays read without
    pickle). DataError when it is not one."""
    import faiss
    import pandas as pd

    folder = Path(folder)
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise DataError(f"{folder} is not an index (no {', '.join(missing)}): build one with `cxr index`.")
    try:
        meta = json.loads((folder / "meta.json").read_text())
        vectors = np.load(folder / "embeddings.npy", allow_pickle=False)
        probs = np.load(folder / "probs.npy", allow_pickle=False)
        items = pd.read_parquet(folder / "items.parquet")
        index = faiss.read_index(str(folder / "index.faiss"))
    except (OSError, ValueError, RuntimeError) as exc:
        raise DataError(f"{folder} could not be read as an index ({type(exc).__name__}); build it again.") from None
    if not (len(vectors) == len(items) == len(probs) == index.ntotal):
        raise DataError(f"{folder} is inconsistent (its files disagree on the number of images); build it again.")
    return EmbeddingIndex(folder, meta, items, vectors, probs, index)


def similar(index: EmbeddingIndex, image, k: int = 8, predictor=None) -> dict:
    """The ``k`` images of ``index`` nearest to ``image`` (a path, bytes or a :class:`LoadedImage`) in the index's
    model's eyes: ``{"neighbours": [{"path", "image_id", "distance", "labels", "split", "probabilities"}],
    "query": {"probabilities", "called"}, "agreement": {label the model calls: how many of the k carry it},
    "k", "index"}``. ``predictor``: the index's model, already loaded (else loaded from the index's meta)."""
    from ..data.imageio import LoadedImage, read_image
    from ..labels import canonical
    from ..predictor import Predictor
    from ..runtime import network_digest

    if predictor is None:
        predictor = Predictor(index.meta["checkpoint"])
    if network_digest(predictor.card) != index.meta.get("network"):
        raise DataError("The index was built by another model; search it with the model that built it "
                        f"({index.meta.get('model')}).")
    loaded = image if isinstance(image, LoadedImage) else read_image(image)
    probs, pooled = predictor.embed_squares(predictor.prep.square(loaded.pixels)[None])
    dist, ids = index.search(pooled, k)
    labels = list(predictor.labels)
    thresholds = predictor.thresholds
    called = [x for x, p, t in zip(labels, probs[0], thresholds) if p >= t]
    neighbours = []
    for d, i in zip(dist[0], ids[0]):
        if i < 0:
            continue
        row = index.items.iloc[int(i)]
        neighbours.append({"path": str(row["path"]), "image_id": str(row["image_id"]),
                           "distance": round(float(max(d, 0.0)), 6),
                           "labels": [x for x in str(row["labels"]).split(";") if x],
                           "split": str(row["split"]),
                           "probabilities": {x: round(float(p), 4) for x, p in zip(labels, index.probs[int(i)])}})
    agreement = {x: sum(canonical(x) in {canonical(y) for y in n["labels"]} for n in neighbours) for x in called}
    return {"neighbours": neighbours, "query": {"probabilities": {x: round(float(p), 4) for x, p in
                                                                  zip(labels, probs[0])}, "called": called},
            "agreement": agreement, "k": len(neighbours), "index": str(index.folder)}


DUPLICATE_RATIO = 0.15   # a pair nearer than this share of the dataset's median nearest-other distance


def near_duplicates(index: EmbeddingIndex, ratio: float = DUPLICATE_RATIO, k: int = 5,
                    splits: dict[str, str] | None = None) -> dict:
    """Films whose embeddings nearly coincide: every pair nearer than ``ratio`` × the median distance from a film
    to its nearest other film in this index (scale-free: each model's embedding has its own scale; on the phantom
    the shipped baseline puts distinct films at ≥ 0.31 × that median and a JPEG re-encode or a resize of a film at
    ≤ 0.09 ×). A pair in two different splits is a **leak** (``splits``: image id → split, default the model's own
    split of the index's films). ``{"threshold", "median_nearest", "ratio", "pairs": [{"a", "b", "path_a", "path_b",
    "distance", "split_a", "split_b", "same_patient", "leak"}], "leaks"}``, nearest first."""
    if not 0 < ratio < 1:
        raise DataError(f"The ratio is between 0 and 1, not {ratio}.")
    if len(index) < 3:
        return {"threshold": None, "median_nearest": None, "ratio": ratio, "pairs": [], "leaks": 0}
    dist, ids = index.search(index.vectors, min(k + 1, len(index)))
    rows = np.arange(len(index))
    nearest_other = np.where(ids[:, 0] == rows, dist[:, 1], dist[:, 0])
    median = float(np.median(np.maximum(nearest_other, 0.0)))
    threshold = ratio * median
    items = index.items
    split_of = (lambda i: splits.get(str(items["image_id"].iloc[i]), "")) if splits is not None else (
        lambda i: str(items["split"].iloc[i]))
    seen, pairs = set(), []
    for i in range(len(index)):
        for d, j in zip(dist[i], ids[i]):
            if j < 0 or j == i or d >= threshold:
                continue
            a, b = sorted((i, int(j)))
            if (a, b) in seen:
                continue
            seen.add((a, b))
            sa, sb = split_of(a), split_of(b)
            pairs.append({"a": str(items["image_id"].iloc[a]), "b": str(items["image_id"].iloc[b]),
                          "path_a": str(items["path"].iloc[a]), "path_b": str(items["path"].iloc[b]),
                          "distance": round(float(max(d, 0.0)), 8), "split_a": sa, "split_b": sb,
                          "same_patient": bool(items["patient_id"].iloc[a] == items["patient_id"].iloc[b]),
                          "leak": bool(sa and sb and sa != sb)})
    pairs.sort(key=lambda p: p["distance"])
    return {"threshold": round(threshold, 8), "median_nearest": round(median, 8), "ratio": ratio, "pairs": pairs,
            "leaks": sum(p["leak"] for p in pairs)}
