"""Change calls against the prior on phantom pairs with known change (issue 25 §3).

For each shipped model, on pairs in its own layout (baseline: NIH; fine-tuned: CheXpert):

1. ``--pairs`` tuning pairs (seed ``--tune-seed``) and ``--pairs`` fresh pairs (seed ``--seed``), neither seen by any
   model (``cxr phantom --pairs``);
2. each label's change threshold τ tuned on the tuning pairs (``cxrcore.prior.evaluate.tune``: best balanced
   accuracy of the calls);
3. on the fresh pairs, per label: accuracy of the change call (the default τ 0.1 and the tuned τ), balanced accuracy,
   the AUROC of |Δp| for changed vs unchanged with its patient-bootstrap 95 % interval; the share of no-change pairs
   set aside as unchanged at 90 % sensitivity for change (DetNochange's operating point);
4. registration on ``--register`` fresh pairs, with and without the deformable step: NCC over the lung fields and the
   landmark error (target registration error) before and after, in pixels and mm.

Writes everything measured to ``--out`` and the tuned τ of each model to ``--tuned-out`` (JSON, in the temporary
folder by default); ``cxr demo tune-change`` tunes the shipped cards' τ on the same pairs (``cxrcore.demo.CHANGE_TUNE``)
the same way. Run: ``python bench/change.py [--pairs 1000] [--register 100]``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser()
    from cxrcore.demo import CHANGE_TUNE

    p.add_argument("--pairs", type=int, default=CHANGE_TUNE["n"])
    p.add_argument("--seed", type=int, default=2502)
    p.add_argument("--tune-seed", type=int, default=CHANGE_TUNE["seed"], help="the shipped cards' τ: these pairs")
    p.add_argument("--register", type=int, default=100)
    p.add_argument("--size", type=int, default=CHANGE_TUNE["size"])
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "cxr-bench-change.json"))
    p.add_argument("--tuned-out", default=str(Path(tempfile.gettempdir()) / "cxr-bench-change-thresholds.json"))
    a = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    import torch

    from cxrcore.data.phantom.pairs import generate_pairs
    from cxrcore.predictor import Predictor
    from cxrcore.prior.change import DEFAULT_CHANGE_THRESHOLD
    from cxrcore.prior.evaluate import evaluate, registration_quality, score_pairs, tune

    torch.set_num_threads(2)
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "command": "python bench/change.py " + " ".join(sys.argv[1:]), "models": {}}
    tuned_all = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model, domain in (("baseline", "nih"), ("finetuned", "chexpert")):
            t0 = time.perf_counter()
            tune_dir, fresh_dir = Path(tmp) / f"{domain}-tune", Path(tmp) / f"{domain}-fresh"
            generate_pairs(tune_dir, a.pairs, domain, a.size, a.tune_seed, workers=2)
            generate_pairs(fresh_dir, a.pairs, domain, a.size, a.seed, workers=2)
            pred = Predictor(REPO / "checkpoints" / model)
            s_tune = score_pairs(tune_dir, pred)
            tuned = tune(s_tune)
            tuned_all[model] = {"thresholds": tuned, "tuned_on": f"{a.pairs} phantom pairs ({domain} layout, seed "
                                f"{a.tune_seed}, {a.size} px; bench/change.py)", "pairs": a.pairs}
            s = score_pairs(fresh_dir, pred)
            default = evaluate(s, np.full(len(s.labels), DEFAULT_CHANGE_THRESHOLD), a.n_boot)
            tau = np.array([tuned.get(x, DEFAULT_CHANGE_THRESHOLD) for x in s.labels])
            at_tuned = evaluate(s, tau, a.n_boot)
            reg = {name: registration_quality(fresh_dir, s.pairs, a.register, deformable)
                   for name, deformable in (("similarity + affine", False), ("+ B-spline", True))}
            results["models"][model] = {"domain": domain, "default": default, "tuned": at_tuned, "tau": tuned,
                                        "registration": reg, "seconds": time.perf_counter() - t0}
            print(f"\n## {model} on {a.pairs} fresh {domain} pairs (seed {a.seed}); τ tuned on seed {a.tune_seed}")
            print("| label | pairs changed | accuracy (τ 0.1) | accuracy (tuned τ) | tuned τ | balanced acc. (tuned) "
                  "| AUROC of abs Δp [95 % CI] |")
            print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
            for x in s.labels:
                d, t = default["labels"][x], at_tuned["labels"][x]
                auc = ("–" if t["change_auroc"] is None else
                       f"{t['change_auroc']:.3f} [{t['change_auroc_ci'][0]:.3f}, {t['change_auroc_ci'][1]:.3f}]")
                print(f"| {x} | {t['n_changed']} | {d['accuracy']:.3f} | {t['accuracy']:.3f} | "
                      f"{t['change_threshold']:.2f} | {(t['balanced_accuracy'] or 0):.3f} | {auc} |")
            md, mt = default["mean"], at_tuned["mean"]
            print(f"| **mean** | | {md['accuracy']:.3f} | {mt['accuracy']:.3f} | | "
                  f"{mt['balanced_accuracy']:.3f} | {mt['change_auroc']:.3f} |")
            tr = at_tuned["triage"]
            print(f"\ntriage: {tr['changed']} of {tr['pairs']} pairs changed; at {tr['sensitivity']:.1%} sensitivity "
                  f"for change, {tr['no_change_triaged']:.1%} of {tr['no_change_pairs']} no-change pairs set aside")
            for name, r in reg.items():
                e, mm = r["landmark_error_px"], r.get("landmark_error_mm")
                mm = f" ({mm['before']:.2f} -> {mm['after']:.2f} mm)" if mm else ""
                print(f"registration {name} ({r['pairs']} pairs): NCC {r['ncc_before']:.3f} -> {r['ncc_after']:.3f}; "
                      f"landmark error {e['before']['mean']:.2f} -> {e['after']['mean']:.2f} px mean{mm}, median "
                      f"{e['after']['median']:.2f}, p95 {e['after']['p95']:.2f}; warnings {r['warnings']}; "
                      f"{r['seconds_per_pair']:.2f} s per pair")
            print(f"({time.perf_counter() - t0:.0f} s)")
    Path(a.out).write_text(json.dumps(results, indent=1, default=float))
    Path(a.tuned_out).write_text(json.dumps(tuned_all, indent=1))
    print(f"\nwrote {a.out} and {a.tuned_out}; {results['machine']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
