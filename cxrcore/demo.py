"""The embedded default: phantom datasets and the two shipped demo checkpoints.

``cxr demo build`` makes both checkpoints from nothing but this package:
1. a phantom dataset in the NIH layout (clean PA domain) and one in the CheXpert layout
   (portable AP domain), in the workspace;
2. *baseline*: regnetx_002 (timm) trained from random initialisation on the NIH phantom with the
   NIH-14 labels;
3. *fine-tuned*: the baseline with its head swapped to the CheXpert-14 labels (rows of shared
   labels copied) and trained further on the CheXpert phantom;
4. both evaluated on the CheXpert phantom's test split, on the labels both models have.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import workspace
from .data import phantom
from .eval.metrics import mean_ignoring_nan, per_label_auroc
from .eval.predictions import align_to, predict_split
from .predictor import Predictor
from .train.trainer import TrainConfig, train

DEMO_DATA = {
    "nih": {"n": 1600, "seed": 0},
    "chexpert": {"n": 1200, "seed": 0},
}
APP_DATA_N = 500  # the app generates this prefix of the demo data when it is not there yet
Log = Callable[[str], None]


def phantom_dir(domain: str, n: int | None = None) -> Path:
    spec = DEMO_DATA[domain]
    return workspace.datasets() / f"phantom-{domain}-seed{spec['seed']}-n{n or spec['n']}"


def ensure_phantom(domain: str, n: int | None = None, progress: Callable[[int, int], None] | None = None) -> Path:
    """The phantom dataset of the demo build (or its first ``n`` images), generated once."""
    out = phantom_dir(domain, n)
    if not (out / "PHANTOM.json").exists():
        phantom.generate(out, n or DEMO_DATA[domain]["n"], domain=domain, size=256,
                         seed=DEMO_DATA[domain]["seed"], progress=progress)
    return out


def app_data(progress: Callable[[int, int], None] | None = None) -> dict[str, Path]:
    """Datasets the app works on by default: a prefix of the demo's phantom data."""
    return {d: ensure_phantom(d, APP_DATA_N, progress) for d in DEMO_DATA}


def baseline_config(data: Path, epochs: int = 10) -> TrainConfig:
    return TrainConfig(data=str(data), labels="nih14", arch="regnetx_002", arch_kwargs={"output_stride": 16},
                       pretrained="none", epochs=epochs, batch_size=32, lr=3e-3, image_size=160,
                       name="baseline (NIH phantom, NIH-14)")


def finetune_config(data: Path, init: Path, epochs: int = 8) -> TrainConfig:
    return TrainConfig(data=str(data), labels="chexpert14", init=str(init), epochs=epochs, batch_size=32, lr=1.5e-3,
                       policy="zeros", name="fine-tuned (CheXpert phantom, CheXpert-14)")


def compare_on(data: Path, checkpoints: dict[str, Path], split: str = "test") -> dict:
    """Mean AUROC of each checkpoint on ``split`` of ``data``, over the labels all checkpoints share."""
    preds = {name: predict_split(Predictor(c), data, split) for name, c in checkpoints.items()}
    first = next(iter(preds.values()))
    shared = list(first.labels)
    for p in preds.values():
        shared = [x for x in shared if x in align_to(p, shared)[2]]
    out = {"split": split, "shared_labels": shared, "models": {}}
    for name, p in preds.items():
        t, s, labels = align_to(p, shared)
        au = per_label_auroc(t, s)
        all_au = per_label_auroc(p.targets, p.probs)
        out["models"][name] = {
            "shared_mean_auroc": mean_ignoring_nan(au),
            "shared_auroc": {x: (None if np.isnan(v) else float(v)) for x, v in zip(labels, au)},
            "own_mean_auroc": mean_ignoring_nan(all_au),
            "n": int(len(p.image_ids)),
        }
    return out


def build(out: Path | None = None, baseline_epochs: int = 10, finetune_epochs: int = 8, log: Log = print,
          progress=None) -> dict:
    """Build both demo checkpoints into ``out`` (default: the repository's checkpoints/)."""
    out = Path(out or workspace.shipped_checkpoints())
    t0 = time.time()
    timings = {}
    log("1/4 phantom datasets")
    nih = ensure_phantom("nih")
    chex = ensure_phantom("chexpert")
    timings["phantom_s"] = time.time() - t0

    runs = workspace.runs() / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    log(f"2/4 baseline on {nih.name} ({baseline_epochs} epochs)")
    t = time.time()
    train(baseline_config(nih, baseline_epochs), runs / "baseline", progress=progress)
    timings["baseline_s"] = time.time() - t

    log(f"3/4 fine-tune on {chex.name} ({finetune_epochs} epochs)")
    t = time.time()
    train(finetune_config(chex, runs / "baseline" / "checkpoint", finetune_epochs), runs / "finetuned", progress=progress)
    timings["finetune_s"] = time.time() - t

    log("4/4 both models on the CheXpert phantom test split")
    t = time.time()
    report = compare_on(chex, {"baseline": runs / "baseline" / "checkpoint", "finetuned": runs / "finetuned" / "checkpoint"})
    timings["evaluate_s"] = time.time() - t
    timings["total_s"] = time.time() - t0
    report["timings"] = timings
    report["data"] = {"nih": nih.name, "chexpert": chex.name}

    out.mkdir(parents=True, exist_ok=True)
    for name in ("baseline", "finetuned"):
        tmp = out / f".{name}.new"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(runs / name / "checkpoint", tmp)
        shutil.rmtree(out / name, ignore_errors=True)
        tmp.rename(out / name)
    (out / "BUILD.json").write_text(json.dumps(report, indent=2))
    for name, m in report["models"].items():
        log(f"{name:>10}: mean AUROC {m['shared_mean_auroc']:.3f} on the {len(report['shared_labels'])} shared labels "
            f"(own labels: {m['own_mean_auroc']:.3f}), CheXpert phantom test split, n={m['n']}")
    log(f"built in {timings['total_s'] / 60:.1f} min -> {out}")
    return report


def sample_cases(domain: str = "chexpert", split: str = "test", limit: int = 30) -> list[dict]:
    """Held-out phantom images with their ground-truth labels, for demos and the Compare page."""
    from .data.readers import read_dataset
    from .eval.predictions import split_rows

    index = read_dataset(ensure_phantom(domain, APP_DATA_N))
    rows = split_rows(index, split, DEMO_DATA[domain]["seed"])[:limit]
    out = []
    for r in rows:
        row = index.frame.iloc[r]
        truth = [x for x in index.labels if row[x] == 1 and x != "No Finding"]
        out.append({"path": row["path"], "image_id": row["image_id"], "truth": truth})
    return out
