"""Thresholds page: cost of one slider move over 10,000 cached cases x 14 labels.

After a slider move the page recomputes, for all labels: TP / FP / FN / TN, sensitivity,
specificity, PPV, NPV, F1, the table, and the focus label's operating point (ROC and PR marker).
Threshold-independent work is cached once per (model, data, split) and is timed separately:
per label the sorted scores of its labelled positives and of its negatives (``ThresholdSweep``),
AUROC, and the ROC / PR curves.

Three ways to recompute after a move, each over the same 200 random moves (one label's
threshold changes per move, as with a slider), interleaved move by move:

- ``sweep``:  what the page does: ``ThresholdSweep.at`` (2 x 14 ``searchsorted`` on the cached
              sorted scores) + ``operating_table`` + the operating point;
- ``vector``: ``confusion_at`` (one vectorised pass over the 10,000 x 14 scores; the page's
              previous path) + the same table and operating point;
- ``naive``:  per label, mask the labelled rows and call sklearn ``confusion_matrix`` on
              ``score >= t`` (the reference), then the same rates, table and operating point.

    OMP_NUM_THREADS=1 python bench/thresholds.py [--n 10000] [--labels 14] [--moves 200]
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_curve, roc_curve

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxrcore.eval.metrics import confusion_at, per_label_auroc  # noqa: E402
from cxrcore.eval.thresholds import ThresholdSweep, operating_table  # noqa: E402


def fake_predictions(n: int, L: int, seed: int = 0):
    """Cached-prediction-like data: prevalences 1-40 %, 10 % unlabelled, float32 probabilities."""
    rng = np.random.default_rng(seed)
    prev = rng.uniform(0.01, 0.4, L)
    y = (rng.random((n, L)) < prev).astype(np.float64)
    logit = rng.normal(-1.0, 1.0, (n, L)) + 1.5 * y
    p = (1 / (1 + np.exp(-logit))).astype(np.float32)
    y[rng.random((n, L)) < 0.1] = np.nan
    return y, p


def naive_confusion(y, p, thr):
    L = y.shape[1]
    out = {k: np.zeros(L, np.int64) for k in ("tp", "fp", "fn", "tn")}
    for j in range(L):
        m = ~np.isnan(y[:, j])
        tn, fp, fn, tp = confusion_matrix(y[m, j], p[m, j] >= thr[j], labels=[0, 1]).ravel()
        out["tp"][j], out["fp"][j], out["fn"][j], out["tn"][j] = tp, fp, fn, tn
    tp, fp, fn, tn = out["tp"], out["fp"], out["fn"], out["tn"]
    with np.errstate(divide="ignore", invalid="ignore"):
        out.update(sensitivity=tp / (tp + fn), specificity=tn / (tn + fp), ppv=tp / (tp + fp), npv=tn / (tn + fn),
                   f1=2 * tp / (2 * tp + fp + fn))
    return out


def page_update(conf_fn, labels, thr, auroc, focus):
    m = conf_fn(thr)
    table = operating_table(labels, thr, m, auroc)
    point = (1 - m["specificity"][focus], m["sensitivity"][focus], m["ppv"][focus])  # ROC + PR markers
    return m, table, point


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--labels", type=int, default=14)
    ap.add_argument("--moves", type=int, default=200)
    args = ap.parse_args()
    y, p = fake_predictions(args.n, args.labels)
    labels = [f"label{j}" for j in range(args.labels)]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, python {platform.python_version()}")
    print("uptime before:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())

    t0 = time.perf_counter()
    sweep = ThresholdSweep(y, p)
    t_sweep = time.perf_counter() - t0
    t0 = time.perf_counter()
    auroc = per_label_auroc(y, p)
    t_auroc = time.perf_counter() - t0
    t0 = time.perf_counter()
    for j in range(args.labels):
        m = ~np.isnan(y[:, j])
        roc_curve(y[m, j], p[m, j]), precision_recall_curve(y[m, j], p[m, j])
    t_curves = time.perf_counter() - t0
    print(f"cached once per (model, data, split): ThresholdSweep {1e3 * t_sweep:.1f} ms, AUROC {1e3 * t_auroc:.1f} ms, "
          f"ROC+PR curves {1e3 * t_curves:.1f} ms")

    ways = {"sweep": sweep.at, "vector": lambda t: confusion_at(y, p, t), "naive": lambda t: naive_confusion(y, p, t)}
    rng = np.random.default_rng(1)
    thr = np.full(args.labels, 0.5)
    for f in ways.values():  # warm-up
        page_update(f, labels, thr, auroc, 0)
    times = {k: [] for k in ways}
    for _ in range(args.moves):
        j = int(rng.integers(args.labels))
        thr = thr.copy()
        thr[j] = round(float(rng.uniform(0, 1)), 2)
        res = {}
        for k, f in ways.items():
            t0 = time.perf_counter()
            res[k] = page_update(f, labels, thr, auroc, j)
            times[k].append(time.perf_counter() - t0)
        for k in ("sweep", "vector"):  # identical results
            for c in ("tp", "fp", "fn", "tn"):
                assert np.array_equal(res[k][0][c], res["naive"][0][c]), (k, c)
            assert res[k][1].equals(res["naive"][1])
    med = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
    p90 = {k: 1e3 * float(np.percentile(v, 90)) for k, v in times.items()}
    print(f"\nslider move, {args.n} cases x {args.labels} labels, median (p90) over {args.moves} moves:")
    for k in ways:
        print(f"  {k:7s} {med[k]:8.3f} ms  ({p90[k]:.3f})   naive/{k} = {med['naive'] / med[k]:.1f}x")
    print("results identical across the three: yes (asserted every move)")
    print("target < 100 ms:", "met" if med["sweep"] < 100 else "NOT met")
    print("uptime after:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
