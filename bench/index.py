"""Embedding index: build speed and memory, and retrieval quality (issue 24 §1-§2; cxrcore.lens.index).

For each size in ``--sizes`` a fresh NIH-style phantom is generated and indexed by the shipped baseline with
``cxrcore.lens.index.build_index`` in a child process: seconds, images/s, its own peak resident memory (VmHWM) and
the largest heap (RssAnon) and memory-mapped cache (RssFile) it held (sampled every 0.25 s), the index's kind and
size on disk, and the median time of one ``similar`` query. Then retrieval quality: for every
film with at least one finding, the share of its k nearest films (itself left out) that carry each of its findings,
beside the share among all the other films (what random retrieval gets), per finding; on the phantom (the first
size) and on the real NIH sample of ``tests/data/nih-sample`` (250 films; the shipped models never saw a real film).

Run: ``python bench/index.py [--sizes 2000,10000] [--k 10]``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _status() -> dict[str, float]:
    """This process's memory from /proc/self/status, in MB: VmHWM (its own peak resident memory: a new memory map
    at exec, unlike ru_maxrss, which a child inherits from the parent that started it), RssAnon, RssFile."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out


def _build(data: str, out: str) -> dict:
    import threading

    from cxrcore.lens.index import build_index, load_index, similar
    from cxrcore.predictor import Predictor

    peak = {"RssAnon": 0.0, "RssFile": 0.0}
    done = threading.Event()

    def sample() -> None:   # the largest anonymous (heap) and file-backed (the memory-mapped cache) memory seen
        while not done.wait(0.25):
            now = _status()
            for key in peak:
                peak[key] = max(peak[key], now[key])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, summary = build_index(REPO / "checkpoints" / "baseline", data, out)
    done.set()
    sampler.join()
    index = load_index(out)
    predictor = Predictor(REPO / "checkpoints" / "baseline")
    t = []
    for path in index.items["path"].iloc[:20]:
        t0 = time.perf_counter()
        similar(index, Path(path), k=10, predictor=predictor)   # read, embed, search
        t.append(time.perf_counter() - t0)
    summary["query_ms"] = round(1000 * float(np.median(t[1:])), 1)
    summary["peak_rss_mb"] = round(_status()["VmHWM"], 1)
    summary["peak_anon_mb"] = round(peak["RssAnon"], 1)
    summary["peak_file_mb"] = round(peak["RssFile"], 1)
    summary["disk_mb"] = round(sum(f.stat().st_size for f in Path(out).iterdir()) / 2**20, 1)
    return summary


def precision_at_k(out: str, k: int) -> list[tuple[str, int, float, float]]:
    """(finding, films with it, mean share of their k nearest carrying it, the share among all other films)."""
    from cxrcore.lens.index import load_index

    index = load_index(out)
    labels = [set(x.split(";")) - {""} for x in index.items["labels"]]
    _, ids = index.search(index.vectors, k + 1)
    findings = sorted({x for s in labels for x in s})
    rows = []
    for f in findings:
        have = np.array([f in s for s in labels])
        if have.sum() < 5:
            continue
        near = [np.mean([have[j] for j in row if j != i][:k]) for i, row in enumerate(ids) if have[i]]
        base = (have.sum() - 1) / (len(have) - 1)
        rows.append((f, int(have.sum()), float(np.mean(near)), float(base)))
    return rows


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(_build(sys.argv[2], sys.argv[3])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,10000")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    from cxrcore.data.phantom import generate

    tmp = Path(tempfile.mkdtemp(prefix="bench-index-"))
    env = {**os.environ, "CXR_HOME": str(tmp / "home")}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; the shipped baseline (RegNetX-200MF, 192 px)")
    print("\n| films | generate s | index s | images/s | peak RSS MB (VmHWM) | of it heap / mapped cache MB | kind | "
          "on disk MB | one query ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    first = None
    try:
        for n in (int(x) for x in args.sizes.split(",")):
            t0 = time.perf_counter()
            data = generate(tmp / f"films-{n}", n=n, domain="nih", seed=41)
            t_gen = time.perf_counter() - t0
            out = tmp / f"idx-{n}"
            res = subprocess.run([sys.executable, __file__, "--child", str(data), str(out)], env=env,
                                 capture_output=True, text=True, check=True)
            s = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"| {n} | {t_gen:.0f} | {s['seconds']:.1f} | {n / s['seconds']:.0f} | {s['peak_rss_mb']:.0f} | "
                  f"{s['peak_anon_mb']:.0f} / {s['peak_file_mb']:.0f} | {s['kind']} | {s['disk_mb']:.1f} | "
                  f"{s['query_ms']} |", flush=True)
            first = first or out
        real = tmp / "idx-real"
        subprocess.run([sys.executable, __file__, "--child", str(REPO / "tests" / "data" / "nih-sample"), str(real)],
                       env=env, capture_output=True, text=True, check=True)
        for name, folder in (("phantom", first), ("real NIH sample", real)):
            rows = precision_at_k(str(folder), args.k)
            print(f"\nprecision@{args.k} on the {name} (share of the {args.k} nearest films carrying the query's "
                  "finding, beside random)\n")
            print("| finding | films with it | precision@k | random | ratio |")
            print("| --- | --- | --- | --- | --- |")
            for f, m, p, b in rows:
                print(f"| {f} | {m} | {p:.3f} | {b:.3f} | {p / b:.2f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
