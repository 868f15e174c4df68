"""Likely label errors on a phantom with known noise, and what correcting them buys (issue 24 §3).

1. A fresh NIH-style phantom (``--n`` films, seed ``--seed``: the shipped models never saw it) is copied; in the copy,
   ``--share`` of all (film, finding) pairs of its 14 findings are flipped (seeded): a finding added where absent,
   removed where present. The phantom's own labels are the truth.
2. Suspected label errors of the noised copy (cleanlab, ``cxrcore.lens``), ranked, from
   a. the shipped baseline's probabilities (it never trained on these films: all out of sample), and
   b. cross-fitting over ``--folds`` patient-level folds (``cxr label-issues --folds``: each fold model the baseline
      fine-tuned on the other folds).
   Precision and recall of the flipped pairs among the top N (N = the number of flips) and among all pairs cleanlab
   flags.
3. Three trainings of the baseline's recipe from scratch (regnetx_002, 192 px, no pretrained weights) on the copy:
   its noisy labels; the noisy labels with a relabel table (``relabel`` option) from a review of the cross-fitted top
   N (the reviewer is the truth: "label wrong" where the pair was flipped, "label right" elsewhere); the true labels.
   Each is scored on its test split (the same patients in all three) against the **true** labels: mean AUROC over
   the findings with positives, with a patient-bootstrap 95 % interval of the difference to the noisy run.

Run: ``python bench/label_errors.py [--n 2000] [--share 0.05] [--folds 5] [--epochs 8]``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def scores(issues: list[dict], flipped: set) -> dict:
    top = issues[:len(flipped)]
    hit_top = sum((r["image"], r["label"]) in flipped for r in top)
    hit_all = sum((r["image"], r["label"]) in flipped for r in issues)
    return {"flagged": len(issues), "top_n": len(top), "precision_top_n": hit_top / max(1, len(top)),
            "recall_top_n": hit_top / len(flipped), "precision_flagged": hit_all / max(1, len(issues)),
            "recall_flagged": hit_all / len(flipped)}


def train_and_score(name: str, noisy: Path, clean: Path, out: Path, epochs: int, relabel: str | None = None,
                    data: Path | None = None) -> dict:
    from cxrcore.eval.metrics import per_label_auroc
    from cxrcore.eval.predictions import predict_split
    from cxrcore.predictor import Predictor
    from cxrcore.train.trainer import TrainConfig, train

    cfg = TrainConfig(data=str(data or noisy), labels="nih14", arch="regnetx_002", pretrained="none",
                      image_size=192, epochs=epochs, lr=3e-3, batch_size=32, workers=2, relabel=relabel,
                      name=name, seed=0)
    t0 = time.monotonic()
    train(cfg, out / name)
    seconds = time.monotonic() - t0
    preds = predict_split(Predictor(out / name / "checkpoint"), clean, "test", use_cache=False)
    return {"name": name, "seconds": round(seconds), "targets": preds.targets, "probs": preds.probs,
            "ids": preds.image_ids, "auroc": per_label_auroc(preds.targets, preds.probs), "labels": preds.labels}


def boot_diff(a: dict, b: dict, patients: pd.Series, n: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Mean AUROC of ``a`` minus ``b`` on the same test films, with a patient-bootstrap 95 % interval."""
    from cxrcore.eval.metrics import mean_ignoring_nan, per_label_auroc

    assert a["ids"] == b["ids"]
    pid = patients.reindex(a["ids"]).astype(str).to_numpy()
    groups = pd.Series(np.arange(len(pid))).groupby(pid).apply(list).tolist()
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        rows = np.concatenate([groups[g] for g in rng.integers(0, len(groups), len(groups))])
        diffs.append(mean_ignoring_nan(per_label_auroc(a["targets"][rows], a["probs"][rows]))
                     - mean_ignoring_nan(per_label_auroc(b["targets"][rows], b["probs"][rows])))
    point = mean_ignoring_nan(a["auroc"]) - mean_ignoring_nan(b["auroc"])
    lo, hi = np.nanpercentile(diffs, [2.5, 97.5])
    return point, float(lo), float(hi)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=41)
    ap.add_argument("--share", type=float, default=0.05)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--keep", default=None, help="a folder to keep the data and runs in (default: a temporary one)")
    a = ap.parse_args()
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="cxr-label-errors-"))
    os.environ["CXR_HOME"] = str(work / "home")
    from cxrcore.data.phantom import generate
    from cxrcore.data.phantom.noise import add_label_noise
    from cxrcore.data.readers import read_dataset
    from cxrcore.eval.metrics import mean_ignoring_nan
    from cxrcore.lens.crossfit import crossfit_issues
    from cxrcore.lens.issues import find_issues

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; work in {work}", flush=True)
    clean, noisy = work / "clean", work / "noisy"
    t0 = time.monotonic()
    if not clean.exists():
        generate(clean, n=a.n, domain="nih", seed=a.seed)
    if noisy.exists():
        shutil.rmtree(noisy)
    shutil.copytree(clean, noisy)
    flipped = add_label_noise(noisy, a.share, a.seed)
    print(f"{a.n} films, {len(flipped)} of {a.n * 14} (film, finding) pairs flipped ({time.monotonic() - t0:.0f} s)",
          flush=True)
    baseline = REPO / "checkpoints" / "baseline"
    results = {}
    t0 = time.monotonic()
    plain = find_issues(baseline, noisy)
    results["baseline, out of sample"] = (scores(plain.issues, flipped), time.monotonic() - t0)
    t0 = time.monotonic()
    fitted = crossfit_issues(baseline, noisy, a.folds, folder=work / "crossfit",
                             log=lambda s: print(f"  {s}", flush=True))
    results[f"cross-fitted, {a.folds} folds"] = (scores(fitted.issues, flipped), time.monotonic() - t0)
    print("\n| ranking from | films judged | flagged by cleanlab | precision top N | recall top N | precision "
          "flagged | recall flagged | seconds |\n|---|---|---|---|---|---|---|---|")
    for name, (s, sec) in results.items():
        judged = plain.images if name.startswith("baseline") else fitted.images
        print(f"| {name} | {judged} | {s['flagged']} | {s['precision_top_n']:.3f} | {s['recall_top_n']:.3f} | "
              f"{s['precision_flagged']:.3f} | {s['recall_flagged']:.3f} | {sec:.0f} |")
    print(f"(N = {len(flipped)} flipped pairs; random ranking: precision {len(flipped) / (a.n * 14):.3f})", flush=True)

    # the review: the cross-fitted top N, each judged by the truth
    rows = [{"image_id": r["image"], "label": r["label"], "given": r["given"],
             "corrected": 1 - r["given"] if (r["image"], r["label"]) in flipped else r["given"],
             "verdict": "label wrong" if (r["image"], r["label"]) in flipped else "label right",
             "reviewer": "truth", "reviewed_at": ""} for r in fitted.issues[:len(flipped)]]
    relabel = work / "relabel.csv"
    pd.DataFrame(rows).to_csv(relabel, index=False)
    wrong = sum(r["verdict"] == "label wrong" for r in rows)
    print(f"\nrelabel table: {len(rows)} reviewed pairs, {wrong} marked wrong; {len(flipped) - wrong} flips remain",
          flush=True)
    runs = work / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    trained = [train_and_score("noisy labels", noisy, clean, runs, a.epochs),
               train_and_score("noisy + relabel table", noisy, clean, runs, a.epochs, relabel=str(relabel)),
               train_and_score("true labels", noisy, clean, runs, a.epochs, data=clean)]
    patients = read_dataset(clean).frame.set_index("image_id")["patient_id"]
    labels = trained[0]["labels"]
    print(f"\nTest split ({len(trained[0]['ids'])} films), AUROC against the true labels; {a.epochs} epochs each\n")
    print("| trained on | mean AUROC | Δ vs noisy (95 % CI, patient bootstrap) | seconds |\n|---|---|---|---|")
    for t in trained:
        d = "—" if t is trained[0] else "{:+.4f} ({:+.4f} to {:+.4f})".format(*boot_diff(t, trained[0], patients))
        print(f"| {t['name']} | {mean_ignoring_nan(t['auroc']):.4f} | {d} | {t['seconds']} |")
    print("\n| finding | positives in test | " + " | ".join(t["name"] for t in trained) + " |\n|---|---|"
          + "---|" * len(trained))
    for j, x in enumerate(labels):
        pos = int(np.nansum(trained[0]["targets"][:, j] == 1))
        print(f"| {x} | {pos} | " + " | ".join(f"{t['auroc'][j]:.3f}" for t in trained) + " |")
    (work / "label_errors.json").write_text(json.dumps({k: v[0] for k, v in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
