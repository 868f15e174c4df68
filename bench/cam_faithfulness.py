"""Benchmark: each CAM method's time per heatmap and faithfulness on the phantom, with the shipped fine-tuned model.

For n (image, label) pairs of the CheXpert phantom's test split (the model's own patient-level split), each with a
ground-truth box of that label (one pair per label, the labels with the most boxes first, then again round the
labels), every CAM method of the app computes that label's heatmap, and each map is scored:

- time to compute the map (the single-pass GradCAM computes every label's map in one forward pass; its time is
  that pass; the pytorch-grad-cam methods run for the one label);
- pointing game on the pair (the map's peak inside one of the label's boxes on the image);
- ROAD MoRF / LeRF / combined and deletion / insertion AUC (:mod:`cxrcore.explain.faithfulness`, seed 0).

Every method sees the same pairs in the same run, so the columns compare side by side; time ratios are to the
single-pass GradCAM.

Usage::

    python bench/cam_faithfulness.py                    # n = 3 pairs, every method
    python bench/cam_faithfulness.py --n 10 --methods GradCAM,HiResCAM --json /tmp/faith.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cxrcore.explain.boxes import Box  # noqa: E402
from cxrcore.explain.faithfulness import faithfulness, input_and_cam  # noqa: E402
from cxrcore.eval.localize import clip_box, inside, peak_point  # noqa: E402
from cxrcore.labels import find_label  # noqa: E402


def pick_pairs(predictor, index, n: int) -> list[tuple[str, str, str, list[Box]]]:
    """n (image id, path, model label, boxes) pairs of the model's test split, one per label round-robin."""
    from cxrcore.eval.predictions import model_split_rows

    rows = model_split_rows(predictor, index, "test")
    sub = index.subset(np.isin(np.arange(len(index)), rows))
    paths = dict(zip(sub.frame["image_id"].astype(str), sub.frame["path"]))
    gt = sub.boxes[sub.boxes["image_id"].astype(str).isin(paths)]
    by_label: dict[str, dict[str, list[Box]]] = {}
    for r in gt.itertuples(index=False):
        j = find_label(str(r.label), predictor.labels)
        if j is None:
            continue
        by_label.setdefault(predictor.labels[j], {}).setdefault(str(r.image_id), []).append(
            clip_box(Box(float(r.x), float(r.y), float(r.w), float(r.h), 1.0)))
    order = sorted(by_label, key=lambda k: -sum(len(v) for v in by_label[k].values()))
    queues = {k: sorted(by_label[k]) for k in order}
    out, used = [], set()
    while len(out) < n and any(queues.values()):
        for label in order:
            if queues[label] and len(out) < n:
                fresh = [i for i in queues[label] if i not in used]   # a new image where the label has one
                image_id = fresh[0] if fresh else queues[label][0]
                queues[label].remove(image_id)
                used.add(image_id)
                out.append((image_id, paths[image_id], label, by_label[label][image_id]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "finetuned"))
    ap.add_argument("--data", default=None, help="default: the app's CheXpert phantom (generated on first use)")
    ap.add_argument("--n", type=int, default=3, help="(image, label) pairs (each costs every method's map and "
                                                       "faithfulness: ~10 s per method on 2 busy CPU cores)")
    ap.add_argument("--methods", default="all")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from cxrcore.data.imageio import read_image
    from cxrcore.data.readers import read_dataset
    from cxrcore.eval.localize import parse_methods
    from cxrcore.predictor import Predictor

    t_start = time.perf_counter()
    if a.data is None:
        from cxrcore.demo import app_data

        a.data = str(app_data()["chexpert"])
    predictor = Predictor(a.checkpoint)
    index = read_dataset(Path(a.data))
    methods = parse_methods(a.methods)
    pairs = pick_pairs(predictor, index, a.n)
    print(f"{len(pairs)} pairs from {index.name} (test split of {Path(a.checkpoint).name}): "
          + ", ".join(f"{lab} ({iid.split('/')[-3]})" for iid, _, lab, _ in pairs))
    model = predictor.model
    res: dict[str, list[dict]] = {m: [] for m in methods}
    for image_id, path, label, boxes in pairs:
        loaded = read_image(path)
        h, w = loaded.pixels.shape
        for m in methods:
            if not res[m]:
                input_and_cam(predictor, loaded, label, m)        # warm-up once per method (hooks, allocations)
            t0 = time.perf_counter()
            x, cam, j = input_and_cam(predictor, loaded, label, m)
            t_cam = time.perf_counter() - t0
            heat = predictor.prep.unsquare(cam, h, w)
            hit = any(inside(peak_point(heat), b) for b in boxes)
            f = faithfulness(model, x, j, cam, label=label, method=m, seed=0)
            res[m].append({"image_id": image_id, "label": label, "cam_seconds": t_cam, "pointing": bool(hit),
                           "prob": f.prob, **f.scores(), "faith_seconds": f.seconds})
            print(f"    {m:<16} map {1000 * t_cam:7.0f} ms  ROAD combined {f.road_combined:+.3f}  "
                  f"deletion {f.deletion_auc:.3f}  insertion {f.insertion_auc:.3f}  ({f.seconds:.1f} s)", flush=True)
        print(f"  {label:<28} {image_id.split('/')[-3]}  p={res[methods[0]][-1]['prob']:.3f}  "
              + "  ".join(f"{m} {res[m][-1]['road_combined']:+.3f}" for m in methods), flush=True)

    def med(m, k):
        return statistics.median(r[k] for r in res[m])

    def mean(m, k):
        return float(np.mean([r[k] for r in res[m]]))

    base = med(methods[0], "cam_seconds")
    print()
    head = (f"{'method':<16}{'map ms':>9}{'x GradCAM':>10}{'pointing':>9}{'ROAD comb':>10}{'MoRF':>8}{'LeRF':>8}"
            f"{'del AUC':>9}{'ins AUC':>9}{'wins':>6}")
    print(head)
    summary = {}
    for m in methods:
        wins = sum(1 for k in range(len(pairs))
                   if res[m][k]["road_combined"] >= max(res[o][k]["road_combined"] for o in methods) - 1e-9)
        s = {"map_ms_median": 1000 * med(m, "cam_seconds"), "time_ratio_to_first": med(m, "cam_seconds") / base,
             "pointing": mean(m, "pointing"), **{k: mean(m, k) for k in
                                                  ("road_combined", "road_morf", "road_lerf", "deletion_auc",
                                                   "insertion_auc")},
             "road_combined_sd": float(np.std([r["road_combined"] for r in res[m]])), "best_road_on_pairs": wins}
        summary[m] = s
        print(f"{m:<16}{s['map_ms_median']:>9.0f}{s['time_ratio_to_first']:>10.1f}{s['pointing']:>9.2f}"
              f"{s['road_combined']:>+10.3f}{s['road_morf']:>+8.3f}{s['road_lerf']:>+8.3f}{s['deletion_auc']:>9.3f}"
              f"{s['insertion_auc']:>9.3f}{wins:>6}")
    best = max(methods, key=lambda m: summary[m]["road_combined"])
    print(f"\nn = {len(pairs)} pairs; 'wins' = pairs where the method's ROAD combined is the highest (ties count for all). "
          f"Highest mean ROAD combined: {best} ({summary[best]['road_combined']:+.3f}); "
          f"map time is the median over pairs, after one warm-up per method.")
    wall = time.perf_counter() - t_start
    print(f"wall {wall:.0f} s; torch {torch.__version__}, {a.threads} threads, {platform.machine()}, "
          f"{os.cpu_count()} CPUs")
    if a.json:
        Path(a.json).write_text(json.dumps({"pairs": [p[:3][0::2] for p in pairs], "methods": methods, "summary": summary,
                                            "per_pair": res, "wall_s": wall}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
