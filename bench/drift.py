"""Drift monitoring on phantom streams whose change is known (issue 23 §3; cxrcore.eval.drift).

The shipped baseline (trained on NIH-style phantoms) is deployed; its reference is a fresh NIH-style phantom of
``--reference`` films (all of it, patients kept together), scored like a stream. Streams of ``--windows`` windows of
``--window`` films each, scored by ``cxrcore.score.score`` as a deployment would:

- **no change**: NIH-style films of other patients (``--quiet-runs`` random orders of a pool): the false-alarm rate
  per window;
- **domain switch**: NIH-style films, then from the middle window on CheXpert-style films (other scanner, lower
  contrast, more noise, rotation);
- **contrast drift**: NIH-style films whose contrast falls by 2 % per window (pixel = mean + f * (pixel - mean),
  f = 1 - 0.02 k);
- **noise drift**: NIH-style films with Gaussian noise rising by 0.004 per window (sigma on the [0, 1] scale);
- **prevalence shift**: NIH-style films, then from the middle window on drawn with one finding's positives weighted
  x3 (the images unchanged: only how often the finding occurs).

For each: the windows that alarm, the first after the change (and what it is at then), and the alarms before it.

Run: ``python bench/drift.py [--window 100] [--windows 20]`` (generates the phantoms in a temporary folder).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--windows", type=int, default=20)
    parser.add_argument("--reference", type=int, default=2000)
    parser.add_argument("--pool", type=int, default=4000)
    parser.add_argument("--quiet-runs", type=int, default=10)
    parser.add_argument("--finding", default="Effusion")
    args = parser.parse_args()

    import pandas as pd
    from PIL import Image

    from cxrcore.data.imageio import read_image, to_uint8
    from cxrcore.data.phantom import generate
    from cxrcore.data.readers import read_dataset
    from cxrcore.eval.drift import ALARM_AT, monitor, read_stream, reference_table
    from cxrcore.predictor import Predictor
    from cxrcore.score import score, source_of

    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-drift-"))
    os.environ["CXR_HOME"] = str(tmp / "home")
    w, k = args.window, args.windows
    half = k // 2
    rng = np.random.default_rng(0)
    results = []
    try:
        ref_data = generate(tmp / "reference", n=args.reference, domain="nih", seed=201)
        pool_data = generate(tmp / "pool", n=args.pool, domain="nih", seed=202)
        chex_data = generate(tmp / "chexpert", n=w * half, domain="chexpert", seed=203)
        predictor = Predictor(REPO / "checkpoints" / "baseline")
        ref = read_stream(reference_table(REPO / "checkpoints" / "baseline", ref_data, "all"))
        pool = read_dataset(pool_data)
        paths = [str(p) for p in pool.frame["path"]]
        y = pool.targets([args.finding], "zeros")[:, 0]
        chex = sorted(str(p) for p in Path(chex_data).rglob("*.jpg"))
        t_data = time.perf_counter() - t0

        def scored(name: str, files: list[str]):
            listing = tmp / f"{name}.csv"
            pd.DataFrame({"path": files}).to_csv(listing, index=False)
            out = tmp / f"{name}.parquet"
            score(source_of(str(listing)), predictor, out, "baseline")
            return read_stream(out, labels=ref.labels)

        def transformed(name: str, files: list[str], change) -> list[str]:
            folder = tmp / name
            folder.mkdir()
            out = []
            for i, f in enumerate(files):
                px = read_image(f).pixels.astype(np.float32)
                target = folder / f"{i:05d}.png"
                Image.fromarray(to_uint8(np.clip(change(px, i // w, np.random.default_rng(i)), 0, 1))).save(target)
                out.append(str(target))
            return out

        def run(name: str, stream, change_at: int | None, what):
            report = monitor(stream, ref, w)
            alarms = [x["index"] for x in report.windows if x.get("alarm")]
            before = [a for a in alarms if change_at is None or a < change_at]
            first = next((a for a in alarms if change_at is not None and a >= change_at), None)
            results.append({"stream": name, "windows": len(report.windows), "alarms": alarms,
                            "false": len(before), "first": first,
                            "delay": None if first is None else first - change_at,
                            "at": what(first) if first is not None else "",
                            "score_at_first": None if first is None else report.windows[first]["score"],
                            "why": "" if first is None else "; ".join(report.windows[first]["why"][:2])})
            print(f"{name}: alarms {alarms}", flush=True)

        for r in range(args.quiet_runs):
            order = list(np.random.default_rng(100 + r).permutation(paths)[:w * k])
            run(f"no change (order {r + 1})", scored(f"quiet{r}", order), None, lambda a: "")
        base = list(rng.permutation(paths)[:w * k])
        run("domain switch", scored("switch", base[:w * half] + list(rng.permutation(chex)[:w * half])), half,
            lambda a: "CheXpert-style films")
        run("contrast drift", scored("contrast", transformed(
            "contrast", base, lambda px, j, g: px.mean() + (1 - 0.02 * j) * (px - px.mean()))), 1,
            lambda a: f"contrast x{1 - 0.02 * a:.2f}")
        run("noise drift", scored("noise", transformed(
            "noise", base, lambda px, j, g: px + g.normal(0, 0.004 * j, px.shape))), 1,
            lambda a: f"noise sigma {0.004 * a:.3f}")
        weights = np.where(y == 1, 3.0, 1.0)
        rest = np.array([p not in set(base[:w * half]) for p in paths])   # films the stream has not shown yet
        shifted = list(rng.choice(np.array(paths)[rest], w * half, replace=False,
                                  p=weights[rest] / weights[rest].sum()))
        prev = scored("prevalence", base[:w * half] + shifted)
        run(f"{args.finding} prevalence x3", prev, half, lambda a: (
            f"{args.finding} {float(np.mean(y[[paths.index(p) for p in shifted]])):.3f} vs "
            f"{float(np.mean(y)):.3f}"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    quiet = [r for r in results if r["stream"].startswith("no change")]
    n_quiet = sum(r["windows"] for r in quiet)
    false = sum(r["false"] for r in quiet)
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores; baseline model; reference {args.reference} NIH "
          f"phantom films (seed 201, {len(ref)} scored); windows of {w} films, {k} per stream; alarm at "
          f"{ALARM_AT:g}; phantoms, reference and pool {t_data:.0f} s, total {time.perf_counter() - t0:.0f} s")
    print("\n| stream | windows | change from window | alarming windows | false alarms before the change | first "
          "alarm after it (delay) | what it was at then | drift score | why (first two) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        change = "-" if r["stream"].startswith("no change") else (
            "1 (gradual)" if "drift" in r["stream"] else str(half))
        first = "-" if r["first"] is None else f"{r['first']} ({r['delay']})"
        print(f"| {r['stream']} | {r['windows']} | {change} | {', '.join(map(str, r['alarms'])) or 'none'} | "
              f"{r['false']} | {first} | {r['at']} | {r['score_at_first'] if r['score_at_first'] is not None else ''} "
              f"| {r['why']} |")
    print(f"\nno-change streams: {false} alarm(s) in {n_quiet} windows ({100 * false / max(1, n_quiet):.1f} % per "
          "window)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
