"""Training input pipeline: the uint8 memory-mapped cache vs decoding and resizing the PNGs every epoch.

Both sides produce the same thing per step as the trainer: a normalised float batch
(B, 3, S, S) with the training augmentation (random affine on the gray image) applied, in random order, for EPOCHS epochs over the same images. The
decode side is what chest X-ray notebooks usually do: a torch Dataset that opens each PNG
with PIL, converts to grayscale and resizes it, fed by a DataLoader with 2 worker processes.

    python bench/cache.py [--size 160] [--epochs 3] [--batch 32]

Uses the 1024x1024 originals in ../shared/data/nih-sample/images (never copied).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxrcore.data.cache import build_cache  # noqa: E402
from cxrcore.data.preprocess import Preprocess, to_unit  # noqa: E402
from cxrcore.data.readers import read_dataset  # noqa: E402
from cxrcore.train.trainer import random_affine  # noqa: E402

SAMPLE = REPO.parent / "shared" / "data" / "nih-sample"


class DecodeEveryEpoch(torch.utils.data.Dataset):
    def __init__(self, paths, prep):
        self.paths, self.prep = paths, prep

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as im:
            pixels = np.asarray(im.convert("L"))
        return torch.from_numpy(self.prep.square(pixels))


def run_decode(paths, prep, epochs, batch, gen):
    loader = torch.utils.data.DataLoader(DecodeEveryEpoch(paths, prep), batch_size=batch, shuffle=True,
                                         num_workers=2, persistent_workers=False, generator=gen)
    n = 0
    t = time.perf_counter()
    for _ in range(epochs):
        for squares in loader:
            x = prep.standardize(random_affine(to_unit(squares), gen))
            n += x.shape[0]
    return n / (time.perf_counter() - t)


def run_cache(array, prep, epochs, batch, gen):
    n = 0
    t = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(array), generator=gen).numpy()
        for k in range(0, len(order), batch):
            rows = np.sort(order[k:k + batch])
            x = prep.standardize(random_affine(to_unit(torch.from_numpy(np.asarray(array[rows]))), gen))
            n += x.shape[0]
    return n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args()
    torch.set_num_threads(2)
    ix = read_dataset(SAMPLE)
    full = [p for p in ix.frame["path"] if Image.open(p).size == (1024, 1024)]
    ix = ix.subset(ix.frame["path"].isin(full).to_numpy())
    prep = Preprocess(size=a.size)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        cache = build_cache(ix, prep, workers=2, root=Path(tmp))
        build_s = time.perf_counter() - t
        gen = torch.Generator().manual_seed(0)
        # one warm-up pass each (page cache, worker start-up paid on both sides)
        run_cache(cache.array, prep, 1, a.batch, gen)
        run_decode(full, prep, 1, a.batch, gen)
        cached = run_cache(cache.array, prep, a.epochs, a.batch, gen)
        decoded = run_decode(full, prep, a.epochs, a.batch, gen)
    load = os.getloadavg()[0]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"load average {load:.2f}")
    print(f"images: {len(full)} NIH originals at 1024x1024 -> {a.size} px, batch {a.batch}, {a.epochs} epochs")
    print(f"one-time cache build: {build_s:.1f} s ({len(full) / build_s:.0f} images/s, 2 processes)")
    print(f"decode + resize every epoch (DataLoader, 2 workers): {decoded:8.0f} images/s")
    print(f"from the uint8 memmap cache (main process):          {cached:8.0f} images/s")
    print(f"ratio cache / decode: {cached / decoded:.1f}x (target >= 10x)")


if __name__ == "__main__":
    main()
