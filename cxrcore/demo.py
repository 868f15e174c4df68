"""The embedded default: phantom datasets and the two shipped demo checkpoints.

``cxr demo build`` makes both checkpoints from nothing but this package:
1. a phantom dataset in the NIH layout (clean PA domain) and one in the CheXpert layout
   (portable AP domain), in the workspace, plus two *fresh* phantom sets from seeds the training
   never used (``EVAL_DATA``), for the report;
2. *baseline*: regnetx_002 (timm, output stride 16: a 12 x 12 heatmap at 192 px) trained from random
   initialisation on the NIH phantom with the NIH-14 labels;
3. *fine-tuned*: the baseline with its head swapped to the CheXpert-14 labels (rows of shared
   labels copied) and trained further on the CheXpert phantom;
4. both evaluated on the CheXpert phantom's test split, on the labels both models have;
5. both evaluated on the fresh sets: AUROC per label (every image; certain labels, and with uncertain
   counted as absent / present) and the pointing game
   of their heatmaps against the phantom's ground-truth boxes (``cxr localize --split all``), with
   the machine the build ran on;
6. each model's change thresholds (``cxr prior``) tuned on phantom follow-up pairs of its layout
   (``CHANGE_TUNE``; ``cxr demo tune-change`` runs this step alone on built checkpoints).
Everything lands in ``BUILD.json``.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from . import workspace
from .data import phantom
if TYPE_CHECKING:  # annotations only
    from .predictor import Predictor
    from .train.trainer import TrainConfig

# Heavy imports (torch, the trainer, the predictor) happen inside the functions that need them: the home
# page and every page's data check import this module for the phantom datasets' paths.

DEMO_DATA = {
    "nih": {"n": 6000, "seed": 0},
    "chexpert": {"n": 8000, "seed": 0},
}
# Fresh phantom sets for the build report: seeds the training data never used (image i of a
# phantom depends on (seed, domain, i) only, so these share no image with DEMO_DATA).
EVAL_DATA = {
    "chexpert": {"n": 2000, "seed": 12345},
    "nih": {"n": 3000, "seed": 54321},
}
IMAGE_SIZE = 192          # 12 x 12 feature map (and heatmap) at output stride 16
OUTPUT_STRIDE = 16
BASELINE_EPOCHS = 12
FINETUNE_EPOCHS = 12
# Box supervision weight (train/boxes.py) of both demo models: the phantoms give a box for every sign, and the
# term teaches each label's class activation map, the heatmap the app shows, to peak on its finding.
BOX_LOSS = 1.0
# U-Ones for the fine-tune: the CheXpert phantom draws a finding labelled -1 (uncertain) as a fainter
# sign with its box, so "uncertain" means "there, but faint" (as Irvin et al. found U-Ones best for
# Atelectasis and Edema); U-Zeros would teach the model not to see (and not to point at) a drawn sign.
FINETUNE_POLICY = "ones"
# How the fresh sets are scored: the headline leaves each label's uncertain rows out of that label's
# AUROC (certain labels only, as on CheXpert's radiologist-labelled test set); the report also gives
# the figures with uncertain counted as absent (U-Zeros) and as present (U-Ones).
FRESH_POLICIES = ("ignore", "zeros", "ones")
# The app generates this prefix of the demo data when it is not there yet: about 330 validation
# images per domain (hash split by patient, seed 0), enough to tune thresholds on.
APP_DATA_N = 3500
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
    elif domain == "nih":
        from .data.phantom.writing import add_missing_nih_lists

        add_missing_nih_lists(out)  # a workspace made before the generator wrote NIH's official lists
    return out


def eval_dir(domain: str) -> Path:
    spec = EVAL_DATA[domain]
    return workspace.datasets() / f"phantom-{domain}-seed{spec['seed']}-n{spec['n']}"


def ensure_eval_phantom(domain: str) -> Path:
    """The fresh phantom set of the build report (a seed the demo training never used), generated once."""
    out = eval_dir(domain)
    if not (out / "PHANTOM.json").exists():
        spec = EVAL_DATA[domain]
        phantom.generate(out, spec["n"], domain=domain, size=256, seed=spec["seed"])
    return out


# Follow-up pairs with a known change (cxr phantom --pairs), for the Follow-up page; seeds no model trained on.
PAIRS_DATA = {"n": 40, "seed": 2500, "domain": "nih"}


def pairs_dir() -> Path:
    return workspace.datasets() / f"phantom-pairs-{PAIRS_DATA['domain']}-seed{PAIRS_DATA['seed']}-n{PAIRS_DATA['n']}"


def ensure_pairs(progress: Callable[[int, int], None] | None = None) -> Path:
    """The built-in follow-up pairs (a patient's prior and current film, the change of each finding known),
    generated once in the workspace's datasets."""
    from .data.phantom.pairs import generate_pairs

    from .errors import ConfigError

    out = pairs_dir()
    if not (out / "PHANTOM.json").exists():
        try:
            generate_pairs(out, PAIRS_DATA["n"], PAIRS_DATA["domain"], 256, PAIRS_DATA["seed"], workers=1,
                           progress=progress)
        except ConfigError:
            if not (out / "PHANTOM.json").exists():   # not another visitor's generation, finished meanwhile
                raise
    return out


def app_data(progress: Callable[[int, int], None] | None = None) -> dict[str, Path]:
    """Datasets the app works on by default: a prefix of the demo's phantom data."""
    return {d: ensure_phantom(d, APP_DATA_N, progress) for d in DEMO_DATA}


def baseline_config(data: Path, epochs: int = BASELINE_EPOCHS) -> TrainConfig:
    from .train.trainer import TrainConfig

    return TrainConfig(data=str(data), labels="nih14", arch="regnetx_002", arch_kwargs={"output_stride": OUTPUT_STRIDE},
                       pretrained="none", epochs=epochs, batch_size=32, lr=3e-3, image_size=IMAGE_SIZE,
                       pos_weight=True, channels_last=True, box_loss=BOX_LOSS, name="baseline (NIH phantom, NIH-14)")


def finetune_config(data: Path, init: Path, epochs: int = FINETUNE_EPOCHS) -> TrainConfig:
    from .train.trainer import TrainConfig

    return TrainConfig(data=str(data), labels="chexpert14", init=str(init), epochs=epochs, batch_size=32, lr=2e-3,
                       policy=FINETUNE_POLICY, pos_weight=True, channels_last=True, box_loss=BOX_LOSS,
                       name="fine-tuned (CheXpert phantom, CheXpert-14)")


def compare_on(data: Path, checkpoints: dict[str, Path], split: str = "test", policy: str = "zeros") -> dict:
    """Mean AUROC of each checkpoint on ``split`` of ``data``, over the labels all checkpoints share
    (uncertain labels turned into targets by ``policy``)."""
    from .eval.metrics import mean_ignoring_nan, per_label_auroc
    from .eval.predictions import align_to, predict_split
    from .predictor import Predictor

    preds = {name: predict_split(Predictor(c), data, split, policy=policy) for name, c in checkpoints.items()}
    first = next(iter(preds.values()))
    shared = list(first.labels)
    for p in preds.values():
        shared = [x for x in shared if x in align_to(p, shared)[2]]
    out = {"split": split, "policy": policy, "shared_labels": shared, "models": {}}
    for name, p in preds.items():
        t, s, labels = align_to(p, shared)
        au = per_label_auroc(t, s)
        all_au = per_label_auroc(p.targets, p.probs)
        out["models"][name] = {
            "shared_mean_auroc": mean_ignoring_nan(au),
            "shared_auroc": {x: (None if np.isnan(v) else float(v)) for x, v in zip(labels, au)},
            "own_mean_auroc": mean_ignoring_nan(all_au),
            "own_auroc": {x: (None if np.isnan(v) else float(v)) for x, v in zip(p.labels, all_au)},
            "n": int(len(p.image_ids)),
        }
    return out


def _auroc_table(pred) -> dict:
    from .eval.metrics import mean_ignoring_nan, per_label_auroc

    au = per_label_auroc(pred.targets, pred.probs)
    pos = np.nansum(pred.targets == 1, axis=0)
    neg = np.nansum(pred.targets == 0, axis=0)
    return {"mean_auroc": mean_ignoring_nan(au), "n_images": int(len(pred.image_ids)),
            "auroc": {x: (None if np.isnan(v) else float(v)) for x, v in zip(pred.labels, au)},
            "positives": {x: int(k) for x, k in zip(pred.labels, pos)},
            "negatives": {x: int(k) for x, k in zip(pred.labels, neg)}}


def _auroc_tables(predictor: Predictor, index) -> dict:
    """The AUROC table under each of ``FRESH_POLICIES`` (the first is the headline); one model pass."""
    from .eval.predictions import predict_split

    out = {}
    for k, policy in enumerate(FRESH_POLICIES):
        pred = predict_split(predictor, index, "all", policy=policy, use_cache=k > 0)
        out[policy] = _auroc_table(pred)
    return out


def _pointing_table(report) -> dict:
    """The pointing game of a LocalizationReport: all boxes, label mean, and per label n / hit rate / chance."""
    d = report.to_dict(boxes=False)
    keep = ("n", "pointing", "pointing_box", "chance", "iou_acc", "iobb_acc")
    return {"overall": {k: d["overall"].get(k) for k in keep},
            "label_mean": {k: d["macro"].get(k) for k in ("n_labels", "pointing", "pointing_box", "chance")},
            "labels": {x: {"model_label": s["model_label"], **{k: s.get(k) for k in keep}}
                       for x, s in d["labels"].items()},
            "n_images": d["n_images"], "skipped_labels": d["skipped_labels"], "seconds": d["seconds"]}


def evaluate_fresh(checkpoints: dict[str, Path], log: Log = print) -> dict:
    """Both models on the fresh phantom sets (``EVAL_DATA``): AUROC per label over every image (under each
    of ``FRESH_POLICIES``, the headline first; as ``cxr eval --split all``) and the pointing game over every ground-truth box (``cxr localize --split all``).

    The fine-tuned model is measured on the fresh CheXpert set (where it is also compared with the baseline
    on the labels both have); the baseline on the fresh NIH set (its own domain) and on the CheXpert set.
    """
    from .predictor import Predictor
    from .data.readers import read_dataset
    from .eval.localize import localize

    chex, nih = ensure_eval_phantom("chexpert"), ensure_eval_phantom("nih")
    out = {"data": {d: {"name": eval_dir(d).name, **EVAL_DATA[d]} for d in EVAL_DATA}, "models": {}}
    index = {"chexpert": read_dataset(chex), "nih": read_dataset(nih)}
    runs = {"finetuned": ["chexpert"], "baseline": ["nih", "chexpert"]}
    for name, domains in runs.items():
        p = Predictor(checkpoints[name])
        out["models"][name] = {}
        for dom in domains:
            tables = _auroc_tables(p, index[dom])
            loc = localize(p, index[dom], "all", seed=0)
            m = {"auroc": {**tables[FRESH_POLICIES[0]], "policy": FRESH_POLICIES[0],
                           "by_policy": {k: {"mean_auroc": v["mean_auroc"], "auroc": v["auroc"]}
                                         for k, v in tables.items()}},
                 "pointing": _pointing_table(loc)}
            out["models"][name][dom] = m
            log(f"{name:>10} on fresh {dom} (seed {EVAL_DATA[dom]['seed']}, n={m['auroc']['n_images']}): "
                f"mean AUROC {m['auroc']['mean_auroc']:.3f}; pointing game {m['pointing']['overall']['pointing']:.3f} "
                f"over {m['pointing']['overall']['n']} boxes (chance {m['pointing']['overall']['chance']:.3f}), "
                f"label mean {m['pointing']['label_mean']['pointing']:.3f}")
    # the fine-tuned model against the baseline on the labels both have, fresh CheXpert set
    ft = out["models"]["finetuned"]["chexpert"]["auroc"]["auroc"]
    base = out["models"]["baseline"]["chexpert"]["auroc"]["auroc"]
    from .labels import find_label

    pairs = {}
    for x, v in ft.items():
        j = find_label(x, list(base))
        if j is not None:
            b = base[list(base)[j]]
            pairs[x] = {"finetuned": v, "baseline": b, "finetuned_better": (v is not None and b is not None and v > b)}
    out["shared_labels_chexpert"] = pairs
    return out


# What the build is meant to reach on the fresh sets (issue 10, section 3).
TARGETS = {"auroc": 0.90, "pointing": 0.6, "min_boxes": 20, "build_minutes": 60}


def target_checks(report: dict) -> dict:
    """Each target of ``TARGETS`` against the figures of a build report (``BUILD.json``): value, bound and
    whether it holds. Computed from the report's own per-label tables, so a test can recheck the claims."""
    fresh = report["fresh"]["models"]
    out = {}

    def check(name, value, bound, holds=None):
        out[name] = {"value": value, "bound": bound, "holds": bool(value >= bound) if holds is None else bool(holds)}

    ft = fresh["finetuned"]["chexpert"]
    check("finetuned_chexpert_mean_auroc", ft["auroc"]["mean_auroc"], TARGETS["auroc"])
    pairs = report["fresh"]["shared_labels_chexpert"]
    worse = sorted(x for x, v in pairs.items() if not v["finetuned_better"])
    out["finetuned_beats_baseline_every_shared_label"] = {"value": len(pairs) - len(worse), "bound": len(pairs),
                                                          "holds": not worse, "not_better": worse}
    check("baseline_nih_mean_auroc", fresh["baseline"]["nih"]["auroc"]["mean_auroc"], TARGETS["auroc"])
    for model, dom in (("finetuned", "chexpert"), ("baseline", "nih")):
        pg = fresh[model][dom]["pointing"]
        check(f"{model}_{dom}_pointing_all_boxes", pg["overall"]["pointing"], TARGETS["pointing"])
        check(f"{model}_{dom}_pointing_label_mean", pg["label_mean"]["pointing"], TARGETS["pointing"])
        big = {x: s for x, s in pg["labels"].items() if s["n"] >= TARGETS["min_boxes"]}
        below = sorted(x for x, s in big.items() if not s["pointing"] > s["chance"])
        out[f"{model}_{dom}_pointing_above_chance_every_label_with_{TARGETS['min_boxes']}_boxes"] = {
            "value": len(big) - len(below), "bound": len(big), "holds": not below, "not_above": below}
    minutes = report["timings"]["total_s"] / 60
    out["build_minutes"] = {"value": minutes, "bound": TARGETS["build_minutes"], "holds": minutes <= TARGETS["build_minutes"]}
    return out


def report_tables(report: dict) -> str:
    """The per-label tables of a build report (``BUILD.json``) as Markdown, as checkpoints/README.md shows
    them (``python -m cxrcore.demo tables`` prints them; a test checks the README carries them)."""
    fresh = report["fresh"]
    out = []

    def num(v, d=3):
        return "" if v is None else f"{v:.{d}f}"

    ft = fresh["models"]["finetuned"]["chexpert"]["auroc"]
    base = fresh["models"]["baseline"]["chexpert"]["auroc"]
    pol = fresh["models"]["finetuned"]["chexpert"]["auroc"].get("policy", "zeros")
    spec = fresh["data"]["chexpert"]
    out.append(f"#### AUROC per label, fresh CheXpert phantom (seed {spec['seed']}, n = {spec['n']}, every image)\n")
    out.append("Headline: uncertain labels left out of their label's AUROC (certain labels only). Beside it the "
               "fine-tuned model with uncertain counted as absent (U-Zeros) and as present (U-Ones).\n")
    out.append("| label | positives | negatives | fine-tuned | baseline | fine-tuned, U-Zeros | fine-tuned, U-Ones |")
    out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    by = ft.get("by_policy", {})
    for x, v in ft["auroc"].items():
        b = fresh["shared_labels_chexpert"].get(x, {}).get("baseline")  # the same finding, synonyms matched
        out.append(f"| {x} | {ft['positives'][x]} | {ft.get('negatives', {}).get(x, '')} | {num(v)} | {num(b)} | "
                   f"{num(by.get('zeros', {}).get('auroc', {}).get(x))} | {num(by.get('ones', {}).get('auroc', {}).get(x))} |")
    shared = [v["finetuned"] for v in fresh["shared_labels_chexpert"].values() if v["finetuned"] is not None]
    out.append(f"| **mean** ({len(ft['auroc'])} / {len(fresh['shared_labels_chexpert'])} shared) | | | "
               f"**{num(ft['mean_auroc'])}** (shared: {num(sum(shared) / len(shared) if shared else None)}) | "
               f"{num(base['mean_auroc'])} | {num(by.get('zeros', {}).get('mean_auroc'))} | "
               f"{num(by.get('ones', {}).get('mean_auroc'))} |")
    out.append(f"\n(headline policy: {pol})\n")
    nih = fresh["models"]["baseline"]["nih"]["auroc"]
    spec = fresh["data"]["nih"]
    out.append(f"#### AUROC per label, baseline on a fresh NIH phantom (seed {spec['seed']}, n = {spec['n']})\n")
    out.append("| label | positives | baseline |")
    out.append("| --- | ---: | ---: |")
    for x, v in nih["auroc"].items():
        out.append(f"| {x} | {nih['positives'][x]} | {num(v)} |")
    out.append(f"| **mean** | | **{num(nih['mean_auroc'])}** |\n")
    for model, dom in (("finetuned", "chexpert"), ("baseline", "nih"), ("baseline", "chexpert")):
        pg = fresh["models"][model][dom]["pointing"]
        out.append(f"#### Pointing game, {model} on the fresh {dom} set (`cxr localize --split all`)\n")
        out.append("| label | n boxes | pointing game | chance | per-box variant |")
        out.append("| --- | ---: | ---: | ---: | ---: |")
        for x, v in pg["labels"].items():
            out.append(f"| {x} | {v['n']} | {num(v['pointing'])} | {num(v['chance'])} | {num(v['pointing_box'])} |")
        o, m = pg["overall"], pg["label_mean"]
        out.append(f"| **all boxes** | {o['n']} | **{num(o['pointing'])}** | {num(o['chance'])} | {num(o['pointing_box'])} |")
        out.append(f"| **label mean** | {m['n_labels']} labels | **{num(m['pointing'])}** | {num(m['chance'])} | "
                   f"{num(m['pointing_box'])} |\n")
    out.append("#### Targets\n")
    out.append("| target | value | bound | holds |")
    out.append("| --- | ---: | ---: | --- |")
    for name, t in report.get("targets", target_checks(report)).items():
        extra = t.get("not_better") or t.get("not_above") or ""
        value = t["value"] if isinstance(t["value"], int) else num(t["value"])
        out.append(f"| {name} | {value} | {t['bound']} | {'yes' if t['holds'] else 'no'} {extra or ''} |")
    return "\n".join(out) + "\n"


def machine() -> dict:
    """Where the build ran: CPU model, cores, torch threads, load."""
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "loadavg_start": [round(x, 2) for x in load] if load else None}


def build(out: Path | None = None, baseline_epochs: int | None = None, finetune_epochs: int | None = None,
          log: Log = print, progress=None, evaluate: bool = True) -> dict:
    """Build both demo checkpoints into ``out`` (default: the repository's checkpoints/)."""
    from .train.trainer import train

    baseline_epochs = baseline_epochs or BASELINE_EPOCHS
    finetune_epochs = finetune_epochs or FINETUNE_EPOCHS
    out = Path(out or workspace.shipped_checkpoints())
    host = machine()
    t0 = time.time()
    timings = {}
    log("1/6 phantom datasets")
    nih = ensure_phantom("nih")
    chex = ensure_phantom("chexpert")
    if evaluate:
        for d in EVAL_DATA:
            ensure_eval_phantom(d)
    timings["phantom_s"] = time.time() - t0

    runs = workspace.runs() / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    log(f"2/6 baseline on {nih.name} ({baseline_epochs} epochs)")
    t = time.time()
    train(baseline_config(nih, baseline_epochs), runs / "baseline", progress=progress)
    timings["baseline_s"] = time.time() - t

    log(f"3/6 fine-tune on {chex.name} ({finetune_epochs} epochs)")
    t = time.time()
    train(finetune_config(chex, runs / "baseline" / "checkpoint", finetune_epochs), runs / "finetuned", progress=progress)
    timings["finetune_s"] = time.time() - t

    log("4/6 both models on the CheXpert phantom test split")
    t = time.time()
    checkpoints = {"baseline": runs / "baseline" / "checkpoint", "finetuned": runs / "finetuned" / "checkpoint"}
    report = compare_on(chex, checkpoints, policy=FINETUNE_POLICY)
    timings["evaluate_s"] = time.time() - t
    if evaluate:
        log("5/6 both models on fresh phantom sets (AUROC per label, pointing game)")
        t = time.time()
        report["fresh"] = evaluate_fresh(checkpoints, log)
        timings["fresh_s"] = time.time() - t
    log("6/6 change thresholds on phantom follow-up pairs")
    t = time.time()
    report["change"] = tune_change(checkpoints, log)
    timings["change_s"] = time.time() - t
    timings["total_s"] = time.time() - t0
    report["timings"] = timings
    report["data"] = {"nih": nih.name, "chexpert": chex.name}
    report["config"] = {"image_size": IMAGE_SIZE, "output_stride": OUTPUT_STRIDE, "baseline_epochs": baseline_epochs,
                        "finetune_epochs": finetune_epochs, "demo_data": DEMO_DATA, "app_data_n": APP_DATA_N,
                        "finetune_policy": FINETUNE_POLICY, "fresh_policies": list(FRESH_POLICIES),
                        "box_loss": BOX_LOSS}
    report["machine"] = host
    if evaluate:
        report["targets"] = target_checks(report)

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


# Change thresholds (cxrcore.prior.change): each model's tuned on phantom pairs of its own layout that no model
# trained on (the Follow-up page's built-in pairs and bench/change.py's fresh pairs use other seeds).
CHANGE_TUNE = {"n": 1000, "seed": 2501, "size": 256}
CHANGE_DOMAINS = {"baseline": "nih", "finetuned": "chexpert"}


def tune_change(checkpoints: dict[str, Path], log: Log = print) -> dict:
    """Tune each model's per-label change thresholds on ``CHANGE_TUNE`` pairs of its layout (``CHANGE_DOMAINS``;
    :func:`cxrcore.prior.evaluate.tune`) and store them in its card's ``metrics["change"]``, as the build writes a
    card. Returns {model: what was stored}."""
    from .checkpoint import read_card, write_card
    from .data.phantom.pairs import generate_pairs
    from .predictor import Predictor
    from .prior.evaluate import score_pairs, tune

    out = {}
    for name, folder in checkpoints.items():
        domain = CHANGE_DOMAINS[name]
        data = workspace.datasets() / f"phantom-pairs-{domain}-seed{CHANGE_TUNE['seed']}-n{CHANGE_TUNE['n']}"
        if not (data / "PHANTOM.json").exists():
            log(f"   {CHANGE_TUNE['n']} {domain} phantom pairs for {name}'s change thresholds")
            generate_pairs(data, CHANGE_TUNE["n"], domain, CHANGE_TUNE["size"], CHANGE_TUNE["seed"])
        scores = score_pairs(data, Predictor(folder))
        card = read_card(folder)
        card.metrics["change"] = {"thresholds": tune(scores), "pairs": len(scores.pairs),
                                  "tuned_on": f"{len(scores.pairs)} phantom pairs ({domain} layout, seed "
                                              f"{CHANGE_TUNE['seed']}, {CHANGE_TUNE['size']} px)"}
        write_card(folder, card)
        out[name] = card.metrics["change"]
        log(f"   {name}: change thresholds of {len(out[name]['thresholds'])} labels tuned on {data.name}")
    return out


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


if __name__ == "__main__":  # python -m cxrcore.demo tables [BUILD.json]
    import sys

    if len(sys.argv) >= 2 and sys.argv[1] == "tables":
        path = Path(sys.argv[2]) if len(sys.argv) > 2 else workspace.shipped_checkpoints() / "BUILD.json"
        print(report_tables(json.loads(path.read_text())))
    else:
        print("usage: python -m cxrcore.demo tables [BUILD.json]", file=sys.stderr)
        sys.exit(2)
