"""A one-time uint8 cache of preprocessed images at training size, memory-mapped.

The cache key hashes the image list and the preprocessing, so a change of either builds a new
cache. Building is resumable: filled rows are recorded as the build goes, and an interrupted
build continues where it stopped. Unreadable images are recorded and reported, not fatal.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import numpy as np

from .. import workspace
from ..errors import CXRError, DataError
from .imageio import read_image
from .index import DatasetIndex
from .preprocess import Preprocess

Progress = Callable[[int, int], None]


def cache_key(paths: list[str], prep: Preprocess) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(prep.to_dict(), sort_keys=True).encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{int(st.st_mtime)}\n".encode())
    return h.hexdigest()[:20]


def _load_one(args) -> tuple[int, np.ndarray | None, str | None]:
    i, path, prep_dict = args
    try:
        img = read_image(path)
        return i, Preprocess.from_dict(prep_dict).square(img.pixels), None
    except CXRError as exc:
        return i, None, str(exc)


class ImageCache:
    """(N, S, S) uint8 memmap over a dataset's images in index order."""

    def __init__(self, folder: Path, n: int, size: int):
        self.folder = folder
        self.array = np.memmap(folder / "images.u8", dtype=np.uint8, mode="r", shape=(n, size, size))
        meta = json.loads((folder / "meta.json").read_text())
        self.failed: dict[int, str] = {int(k): v for k, v in meta.get("failed", {}).items()}

    def __len__(self) -> int:
        return self.array.shape[0]


def build_cache(index: DatasetIndex, prep: Preprocess, progress: Progress | None = None,
                workers: int = 2, root: Path | None = None) -> ImageCache:
    paths = [str(p) for p in index.frame["path"]]
    if not paths:
        raise DataError("The dataset has no images to cache.")
    key = cache_key(paths, prep)
    folder = (root or workspace.cache()) / key
    folder.mkdir(parents=True, exist_ok=True)
    n, s = len(paths), prep.size
    # One builder at a time per cache: a second job on the same data waits, then reuses the result.
    with open(folder / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "meta.json").exists():
            _build(folder, paths, prep, progress, workers)
    if progress:
        progress(n, n)
    return ImageCache(folder, n, s)


def _build(folder: Path, paths: list[str], prep: Preprocess, progress: Progress | None, workers: int) -> None:
    n, s = len(paths), prep.size
    data_path, filled_path = folder / "images.u8", folder / "filled.npy"
    mode = "r+" if data_path.exists() and data_path.stat().st_size == n * s * s else "w+"
    array = np.memmap(data_path, dtype=np.uint8, mode=mode, shape=(n, s, s))
    failed_path = folder / "failed.json"
    resuming = mode == "r+" and filled_path.exists()
    filled = np.load(filled_path) if resuming else np.zeros(n, dtype=bool)
    failed: dict[int, str] = ({int(k): v for k, v in json.loads(failed_path.read_text()).items()}
                              if resuming and failed_path.exists() else {})
    todo = [(i, paths[i], prep.to_dict()) for i in np.flatnonzero(~filled)]
    done = n - len(todo)
    if progress:
        progress(done, n)

    def record(i, square, error):
        nonlocal done
        if error is None:
            array[i] = square
        else:
            array[i] = 0
            failed[i] = error
        filled[i] = True
        done += 1
        if done % 256 == 0:  # checkpoint progress so an interrupted build resumes here
            array.flush()
            np.save(filled_path, filled)
            failed_path.write_text(json.dumps({str(k): v for k, v in failed.items()}))
        if progress:
            progress(done, n)

    try:
        if workers > 1 and len(todo) > 64:
            # spawn, not fork: the caller may be a threaded server (Streamlit) with torch loaded.
            # A dying worker raises BrokenProcessPool instead of hanging the build.
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                for result in pool.map(_load_one, todo, chunksize=16):
                    record(*result)
        else:
            for args in todo:
                record(*_load_one(args))
    except BaseException:
        # interrupted (cancel, Ctrl-C, a crash in a worker): keep what is done for the next build
        array.flush()
        np.save(filled_path, filled)
        failed_path.write_text(json.dumps({str(k): v for k, v in failed.items()}))
        raise
    array.flush()
    (folder / "meta.json").write_text(json.dumps({"n": n, "size": s, "preprocess": prep.to_dict(),
                                                 "failed": {str(k): v for k, v in failed.items()}}))
    filled_path.unlink(missing_ok=True)
    failed_path.unlink(missing_ok=True)
