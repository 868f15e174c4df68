"""Prevalence shift without labels, on the phantom, where the truth is known (issue 23 §2).

The shipped baseline (trained on NIH-style phantoms) meets sites of the same style whose prevalence of one finding
is changed by a known factor. A labelled reference (a fresh NIH phantom, 2,000 images) stands for the model's
validation split; a pool (another 8,000) is scored once. For each finding, each factor (x0.5, x2) and each of 20
seeds, a site of 1,000 images is drawn from the pool with the finding's positives weighted by the factor (its
images given the label unchanged: the label-shift assumption holds for it); the site's true prevalence is that of
the drawn images. `cxrcore.eval.prevalence.estimate_prevalence` (BBSE and EM, 200 bootstrap replicates) then gives
its estimates: the table reports their mean absolute error and how often the 95 % interval held the truth.

Run: ``python bench/prevalence.py [--seeds 20] [--n 1000]`` (generates the phantoms in a temporary folder).
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
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--n", type=int, default=1000, help="images per site")
    parser.add_argument("--reference", type=int, default=2000)
    parser.add_argument("--pool", type=int, default=8000)
    parser.add_argument("--n-boot", type=int, default=200)
    args = parser.parse_args()

    from cxrcore.data.phantom import generate
    from cxrcore.eval.predictions import predict_split
    from cxrcore.eval.prevalence import estimate_prevalence
    from cxrcore.predictor import Predictor

    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-prevalence-"))
    os.environ["CXR_HOME"] = str(tmp / "home")
    try:
        generate(tmp / "reference", n=args.reference, domain="nih", seed=101)
        generate(tmp / "pool", n=args.pool, domain="nih", seed=102)
        predictor = Predictor(REPO / "checkpoints" / "baseline")
        ref = predict_split(predictor, tmp / "reference", "all")
        pool = predict_split(predictor, tmp / "pool", "all")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    t_data = time.perf_counter() - t0
    thresholds = predictor.card.threshold_list()
    rows = []
    for j, label in enumerate(pool.labels):
        y_ref, y_pool = ref.targets[:, j], pool.targets[:, j]
        if np.nansum(y_ref) < 20 or np.nansum(y_pool) < 50:
            continue
        for factor in (0.5, 2.0):
            err = {"bbse": [], "em": []}
            held = {"bbse": 0, "em": 0}
            truths = []
            for seed in range(args.seeds):
                rng = np.random.default_rng(seed)
                w = np.where(y_pool == 1, factor, 1.0)
                pick = rng.choice(len(y_pool), args.n, replace=False, p=w / w.sum())
                truth = float(y_pool[pick].mean())
                truths.append(truth)
                est = estimate_prevalence([label], y_ref[:, None], ref.probs[:, [j]], pool.probs[pick][:, [j]],
                                          [thresholds[j]], n_boot=args.n_boot, seed=seed).labels[label]
                for k in err:
                    if est[k] is not None:
                        err[k].append(abs(est[k] - truth))
                        held[k] += est[f"{k}_ci"][0] <= truth <= est[f"{k}_ci"][1]
            rows.append((label, float(np.nanmean(y_ref)), factor, float(np.mean(truths)),
                         np.mean(err["bbse"]) if err["bbse"] else np.nan, held["bbse"],
                         np.mean(err["em"]) if err["em"] else np.nan, held["em"]))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; baseline model; reference {args.reference} NIH "
          f"phantom images (seed 101), pool {args.pool} (seed 102); sites of {args.n} images, {args.seeds} seeds, "
          f"{args.n_boot} bootstrap replicates; phantoms and predictions {t_data:.0f} s, total "
          f"{time.perf_counter() - t0:.0f} s")
    print("\n| finding | reference prevalence | factor | site prevalence (mean) | BBSE mean abs error | BBSE CI held "
          "| EM mean abs error | EM CI held |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, p_ref, f, truth, eb, hb, ee, he in rows:
        print(f"| {label} | {p_ref:.3f} | x{f:g} | {truth:.3f} | {eb:.3f} | {hb}/{args.seeds} | {ee:.3f} | "
              f"{he}/{args.seeds} |")
    eb_all = np.nanmean([r[4] for r in rows])
    ee_all = np.nanmean([r[6] for r in rows])
    hb_all = sum(r[5] for r in rows) / (len(rows) * args.seeds)
    he_all = sum(r[7] for r in rows) / (len(rows) * args.seeds)
    print(f"\nall findings and factors: BBSE mean abs error {eb_all:.3f}, intervals held the truth {100 * hb_all:.0f} %; "
          f"EM {ee_all:.3f}, {100 * he_all:.0f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
