"""The training loop: ``train(config, out_dir)``.

Reads the dataset (filters, uncertainty policy, patient-level hash or stratified split), builds or
reuses the uint8 cache, builds the model (any timm / torchvision / torchxrayvision backbone, or a
checkpoint with its head swapped), trains it (full, head-only or LoRA; BCE or focal loss, optional
pos_weight, weighted sampling, oversampling, hierarchy penalty or two-stage gate, augmentation,
warmup + cosine / plateau / constant schedule, accumulation, autocast, DDP under torchrun),
validates every epoch (AUROC per label), keeps the best checkpoint in ``out_dir/checkpoint`` and the
resumable state in ``out_dir/last``, and appends events to ``out_dir/events.jsonl``. Progress goes
through callbacks, so the CLI shows a tqdm bar and a job writes events. The options are
:class:`cxrcore.train.config.TrainConfig`.
"""
from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..checkpoint import (Card, combine_trained_on, dataset_trained_on, infer_trained_on, load_checkpoint,
                          read_card, save_checkpoint)
from ..data.cache import build_cache
from ..data.filters import apply_filters
from ..data.index import DatasetIndex
from ..data.splits import assign_split, balance_report, balance_warnings
from ..data.preprocess import Preprocess, to_unit
from ..data.readers import read_dataset
from ..errors import ConfigError, DataError
from ..eval.metrics import best_f1_thresholds, confusion_at, mean_ignoring_nan, per_label_auprc, per_label_auroc
from ..labels import canonical, resolve_label_space
from ..models.heads import combine
from ..models.registry import (build_model, count_parameters, model_from_spec, preprocess_for, spec_for,
                               swap_head)
from . import dist as dist_
from .augment import Augment, random_affine  # noqa: F401 - random_affine re-exported for bench/cache.py
from .checks import check_training
from .events import EventLog, read_events  # noqa: F401 - re-exported: cxrcore.train.trainer.read_events
from .lora import apply_lora, base_model, merged_state_dict
from .losses import GATE_LABEL, Criterion, gate_targets, masked_bce, pos_weight_from, two_stage_targets  # noqa: F401
from .config import TrainConfig, timm_channels  # noqa: F401 - re-exported: cxrcore.train.trainer.TrainConfig
from .sampling import epoch_order, epoch_size
from .state import load_state, rng_state, save_state, set_rng_state

# TrainConfig lives in train/config.py (declared once; the CLI flags, the form and the checks derive from it)

# A per-epoch report: ``report(epoch, value)`` of the monitored validation metric; returns a reason to stop the
# run (a sweep's pruner: cxrcore.jobs.sweep.trial_reporter) or None.
Report = Callable[[int, float], "str | None"]

# Tests only: a file path; while that file exists, the run waits at the end of each epoch (after the epoch's
# state is saved), so a test can act on a run at a known point (signal it, cancel it) and then let it go on.
HOLD_ENV = "CXR_TRAIN_HOLD"


def _nan_to_none(values) -> list:
    return [None if (v is None or (isinstance(v, float) and math.isnan(v))) else float(v) for v in values]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Prepared:
    index: DatasetIndex
    split: np.ndarray
    targets: np.ndarray
    images: np.ndarray  # (N, S, S) uint8 memmap
    labels: list[str]
    filters: dict = field(default_factory=dict)   # rows each filter removed
    balance: object = None                        # balance_report DataFrame (per-label rate per split)
    relabel: dict | None = None                   # the relabel table applied (cxrcore.data.relabel.Relabel)


def prepare_data(cfg: TrainConfig, prep: Preprocess, progress=None) -> Prepared:
    labels = resolve_label_space(cfg.labels)
    index = read_dataset(cfg.data)
    index, filters = apply_filters(index, frontal_only=cfg.frontal_only, views=cfg.views,
                                   first_n_studies=cfg.first_n_studies, age_min=cfg.age_min, age_max=cfg.age_max,
                                   sex=cfg.sex, sample_n=cfg.max_images or None, seed=cfg.seed)
    shared = index.shared_labels(labels)
    if not shared:
        raise DataError(f"The dataset at {cfg.data} has none of the labels {labels}; its labels are {index.labels}.")
    cache = build_cache(index, prep, progress=progress, workers=cfg.workers)
    ok = np.ones(len(index), dtype=bool)
    ok[list(cache.failed)] = False
    targets = index.targets(labels, cfg.policy)
    relabel = None
    if cfg.relabel:
        from ..data.relabel import apply_relabel

        targets, relabel = apply_relabel(cfg.relabel, index.frame["image_id"], index.labels, labels, targets)
    if cfg.crossfit:
        from ..data.index import crossfit_split

        split = crossfit_split(index.frame["patient_id"], cfg.crossfit["folds"], cfg.crossfit["fold"], cfg.seed,
                               cfg.val_fraction)
    else:
        split = assign_split(index.frame, targets, cfg.split_method, cfg.seed, cfg.val_fraction, cfg.test_fraction)
    for name in ("train", "val"):
        if not ((split == name) & ok).any():
            raise DataError(f"The {name} split is empty: the dataset has too few patients ({index.frame['patient_id'].nunique()}).")
    split = np.where(ok, split, "unreadable").astype(object)
    balance = balance_report(targets, split, labels)
    return Prepared(index, split, targets, cache.array, labels, filters, balance,
                    relabel.to_dict() if relabel else None)


def write_split_files(data: Prepared, out: Path) -> None:
    """``splits.csv`` (image_id, split) and ``balance.csv`` (per-label positive rate per split) in the run folder."""
    import pandas as pd

    pd.DataFrame({"image_id": data.index.frame["image_id"].astype(str), "split": data.split}).to_csv(
        out / "splits.csv", index=False)
    if data.balance is not None:
        data.balance.to_csv(out / "balance.csv", index=False)


def predict_array(model, images: np.ndarray, rows: np.ndarray, prep: Preprocess, device, batch_size=64,
                  spec: dict | None = None, autocast=None) -> np.ndarray:
    """Probabilities (combined for two-stage models, see models.heads) for ``images[rows]``."""
    return validation_pass(model, images, rows, prep, device, spec=spec, autocast=autocast, batch_size=batch_size)[0]


def dataset_normalization(prep: Preprocess, images: np.ndarray, rows: np.ndarray, seed: int = 0,
                          sample: int = 2000) -> Preprocess:
    """``prep`` normalised with the pixel mean and sd of the training images (up to ``sample`` of them,
    drawn with ``seed``), as the [0, 1] gray values the network sees before normalisation."""
    import dataclasses

    rows = np.asarray(rows)
    if len(rows) > sample:
        rows = np.sort(np.random.default_rng(seed).choice(rows, sample, replace=False))
    total, total_sq, n = 0.0, 0.0, 0
    for k in range(0, len(rows), 256):
        x = np.asarray(images[rows[k:k + 256]], dtype=np.float64) / 255.0
        total += float(x.sum())
        total_sq += float((x * x).sum())
        n += x.size
    if not n:
        raise DataError("No training images to compute the dataset's mean and sd from.")
    mean = total / n
    std = max(1e-3, (total_sq / n - mean * mean) ** 0.5)
    return dataclasses.replace(prep, norm="stats", mean=(mean,), std=(std,), stats_from="dataset")


def validation_pass(model, images: np.ndarray, rows: np.ndarray, prep: Preprocess, device,
                    targets: np.ndarray | None = None, criterion=None, spec: dict | None = None, autocast=None,
                    batch_size: int = 64) -> tuple[np.ndarray, float]:
    """Probabilities (combined for two-stage models) for ``images[rows]`` and, with ``targets`` and
    ``criterion``, the validation loss: the training criterion on the same targets (masked the same way),
    averaged over batches weighted by their size (NaN without them). No augmentation, no gradient."""
    model.eval()
    out, total, n = [], 0.0, 0
    with torch.no_grad():
        for k in range(0, len(rows), batch_size):
            idx = rows[k:k + batch_size]
            x = prep.normalize(torch.from_numpy(np.asarray(images[idx])).to(device))
            with autocast() if autocast else nullcontext():
                logits = model(x)
            logits = logits.float()
            if criterion is not None:
                y = torch.from_numpy(targets[idx]).to(device)
                total += float(criterion(logits, y)) * len(idx)
                n += len(idx)
            out.append(torch.sigmoid(logits).cpu().numpy())
    probs = np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)
    return (combine(probs, spec) if len(probs) else probs), (total / n if n else float("nan"))


def validation_metrics(targets: np.ndarray, probs: np.ndarray, two_stage: bool) -> dict:
    """Per-label AUROC and their means, mean average precision, and macro F1 / accuracy at the per-label
    thresholds the checkpoint would carry (max F1 on this validation split: optimistic by construction)."""
    auroc = per_label_auroc(targets, probs)
    ap = per_label_auprc(targets, probs)
    thresholds = best_f1_thresholds(targets, probs)
    c = confusion_at(targets, probs, thresholds)
    known = c["tp"] + c["fp"] + c["fn"] + c["tn"]
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.where(known > 0, (c["tp"] + c["tn"]) / np.maximum(known, 1), np.nan)
    has_pos = (c["tp"] + c["fn"]) > 0
    f1 = np.where(has_pos, c["f1"], np.nan)
    if two_stage and len(auroc) > 1:  # the gate is reported per label, not averaged with the diseases
        auroc_m, ap_m, f1_m, acc_m = auroc[:-1], ap[:-1], f1[:-1], acc[:-1]
    else:
        auroc_m, ap_m, f1_m, acc_m = auroc, ap, f1, acc
    return {"auroc": auroc, "thresholds": thresholds, "mean_auroc": mean_ignoring_nan(auroc_m),
            "mean_ap": mean_ignoring_nan(ap_m), "f1": mean_ignoring_nan(f1_m), "accuracy": mean_ignoring_nan(acc_m)}


def _better(value: float, best: float, monitor: str, first: bool) -> bool:
    if first:
        return True
    if math.isnan(value):
        return False
    return value < best if monitor == "loss" else value > best


def set_classifier_dropout(model, p: float) -> None:
    """Dropout with rate ``p`` before the classifier of a timm model (its ``drop_rate``): the head's
    ``drop`` module (ClassifierHead), ``head_drop`` (ViTs) or the ``drop_rate`` attribute the model's
    ``forward_head`` reads. ConfigError for a model with none of them."""
    import torch.nn as nn

    done = False
    for m in [model, *model.modules()]:
        if isinstance(getattr(m, "drop", None), nn.Dropout) and hasattr(m, "fc"):
            m.drop = nn.Dropout(p)
            done = True
        if isinstance(getattr(m, "head_drop", None), nn.Dropout):
            m.head_drop = nn.Dropout(p)
            done = True
    if not done and isinstance(getattr(model, "drop_rate", None), float):
        model.drop_rate = float(p)
        done = True
    if not done:
        raise ConfigError(f"Classifier dropout needs a timm model with a drop_rate ({type(model).__name__} has none); "
                          "set drop_rate to 0.")


def _mean_auroc(auroc: np.ndarray, two_stage: bool) -> float:
    """Mean validation AUROC over disease labels (a two-stage model's gate is reported, not averaged)."""
    return mean_ignoring_nan(auroc[:-1] if two_stage and len(auroc) > 1 else auroc)


def _schedule(cfg: TrainConfig, opt, total_steps: int, steps_per_epoch: int = 1):
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min" if cfg.monitor == "loss" else "max",
                                                          factor=cfg.plateau_factor, patience=cfg.plateau_patience)
    if cfg.schedule == "step":  # StepLR, stepped per optimizer step: a drop every step_epochs epochs
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, cfg.step_epochs * steps_per_epoch),
                                               gamma=cfg.step_gamma)
    warm = min(cfg.warmup_steps, max(1, total_steps // 10))
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total_steps - warm))))


def _current_lr(opt) -> float:
    return float(opt.param_groups[0]["lr"])


def train(cfg: TrainConfig, out_dir: str | os.PathLike, progress: Callable[[str, int, int, dict], None] | None = None,
          should_stop: Callable[[], bool] = lambda: False, resume: bool = False, report: Report | None = None) -> Card:
    """Run a training. ``progress(phase, done, total, info)`` reports cache building and steps.

    ``resume``: continue from ``out_dir/last`` (the state saved at the end of the last complete epoch):
    model, optimizer, scheduler, grad scaler, RNG and data order are restored, so the run ends where an
    uninterrupted one would. Under ``torchrun`` (WORLD_SIZE > 1) it trains data-parallel (see dist.py).
    ``report(epoch, value)``: called with the monitored validation metric after each epoch (rank 0); a
    reason it returns stops the run as pruned (a sweep's trial). The config is checked first, as every way
    of starting a training checks it (:func:`cxrcore.train.checks.check_training`). How the run ended is
    the card's ``training.ended`` (:data:`cxrcore.train.events.ENDINGS`).
    """
    check_training(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    d = dist_.setup(cfg.device)
    try:
        if cfg.hierarchy == "two_network":
            return _train_two_networks(cfg, out, progress if d.main else None, should_stop, resume, d, report)
        return _train(cfg, out, progress if d.main else None, should_stop, resume, d, report=report)
    except torch.cuda.OutOfMemoryError as exc:
        raise ConfigError(f"Batch size {cfg.batch_size} at {cfg.image_size} px does not fit in the GPU's memory. Use a "
                          "smaller batch_size (with accum_steps to keep the effective batch), a smaller image_size, "
                          "precision bf16, or a GPU with more memory. The last complete epoch (if any) can be "
                          "resumed.") from exc
    except (MemoryError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "can't allocate memory" not in str(exc):
            raise
        raise ConfigError(f"Batch size {cfg.batch_size} at {cfg.image_size} px does not fit in this machine's memory "
                          f"({type(exc).__name__}). Use a smaller batch_size or image_size.") from exc
    finally:
        d.close()


NETWORKS = ("gate", "disease")  # the two networks of hierarchy two_network, in training order


def _train_two_networks(cfg: TrainConfig, out: Path, progress, should_stop, resume: bool, d: dist_.Dist,
                        report: Report | None = None) -> Card:
    """hierarchy two_network: the gate network ("Any finding", every image) in ``out/gate``, then the disease
    network (diseases on abnormal images) in ``out/disease``, each an ordinary run with its own optimiser,
    events and checkpoint; then the combined checkpoint in ``out/checkpoint`` with the gate threshold and the
    other thresholds tuned on validation, and test metrics of the combination. Events of both runs are also
    written to ``out/events.jsonl`` tagged with ``network``. Resume continues the unfinished network."""
    from ..models.two_network import combine_checkpoints

    log = EventLog(out / "events.jsonl") if d.main else (lambda kind, **payload: None)
    if not resume:
        log("two_network", networks=list(NETWORKS), config=asdict(cfg))
    cards = {}
    for k, role in enumerate(NETWORKS):
        sub = out / role
        ended = [e for e in read_events(sub / "events.jsonl") if e.get("type") == "done"] if resume else []
        if ended and not ended[-1].get("stopped"):
            cards[role] = read_card(sub / "checkpoint")
            continue
        sub_progress = None if progress is None else (
            lambda phase, done, total, info, role=role, k=k: progress(phase, done, total,
                                                                     {**info, "network": f"{role} ({k + 1}/2)"}))
        card = _train(cfg, sub, sub_progress, should_stop, resume and (sub / "events.jsonl").exists(), d,
                      network=role, parent_log=log, report=report)
        if not d.main:
            continue
        cards[role] = card
        if card.training.get("stopped_early"):
            log("stopped", network=role)
            return card
    if not d.main:
        return None
    mode = cfg.gate_mode
    combine_checkpoints(out / "disease" / "checkpoint", out / "gate" / "checkpoint", out / "checkpoint",
                        mode=mode, name=cfg.name or Path(cfg.data).name)
    # Thresholds of the combination, and its validation / test metrics, on the run's own splits.
    device = resolve_device(cfg.device)
    card, state = load_checkpoint(out / "checkpoint")
    model = model_from_spec(card.model, len(card.labels))
    model.load_state_dict(state)
    model.to(device).eval()
    prep = card.prep
    data = prepare_data(cfg, prep)
    targets = np.concatenate([data.targets, gate_targets(data.targets, data.labels)[:, None]], axis=1)
    val_rows = np.flatnonzero(data.split == "val")
    test_rows = np.flatnonzero(data.split == "test")
    if len(val_rows):
        card = _tune_gate(card, model, data, val_rows, targets, prep, device)
        card.model["two_stage"]["tuned_on"] = "val (max F1 of the gate network)"
        probs = predict_array(model, data.images, val_rows, prep, device, spec=card.model)
        m = validation_metrics(targets[val_rows], probs, True)
        card.metrics["val"] = {"auroc": dict(zip(card.labels, _nan_to_none(m["auroc"]))), "mean_auroc": m["mean_auroc"],
                               "mean_ap": m["mean_ap"], "n": int(len(val_rows)), "of": "the combined networks"}
    if len(test_rows):
        probs = predict_array(model, data.images, test_rows, prep, device, spec=card.model)
        auroc = per_label_auroc(targets[test_rows], probs)
        card.metrics["test"] = {"auroc": dict(zip(card.labels, _nan_to_none(auroc))),
                                "mean_auroc": _mean_auroc(auroc, True), "n": int(len(test_rows))}
    card.training["config"] = asdict(cfg)
    card.training["seconds"] = sum(float(c.training.get("seconds") or 0) for c in cards.values())
    card.training["networks"] = {role: {"best_epoch": c.training.get("best_epoch"),
                                        "epochs_run": c.training.get("epochs_run"),
                                        "val_mean_auroc": c.metrics.get("val", {}).get("mean_auroc")}
                                 for role, c in cards.items()}
    card.training["ended"] = "completed"
    card.data["splits_file"] = "../splits.csv"
    write_split_files(data, out)
    save_checkpoint(out / "checkpoint", state, card)
    log("checkpoint", network="combined", val_mean_auroc=card.metrics.get("val", {}).get("mean_auroc"))
    log("done", network="combined", val_mean_auroc=card.metrics.get("val", {}).get("mean_auroc"),
        test_mean_auroc=card.metrics.get("test", {}).get("mean_auroc"), seconds=card.training["seconds"],
        stopped=False, early_stopped=False, ended="completed")
    return card


@dataclass
class _Run:
    """One training run: what :func:`_setup` and :func:`_optimisation` build, and the state the epoch loop
    (:func:`_epochs`) updates and :func:`_finish` reads."""

    cfg: TrainConfig
    out: Path
    d: dist_.Dist
    log: Callable
    progress: Callable | None
    should_stop: Callable[[], bool]
    report: Report | None
    network: str | None
    t_start: float
    device: torch.device
    saved: dict | None
    prep: Preprocess
    data: Prepared
    two_stage: bool
    labels: list
    targets: np.ndarray
    scored: np.ndarray        # what metrics and thresholds are scored against (see _setup)
    model: object
    model_spec: dict
    swap: object
    init_trained_on: dict | None
    trainable: int
    total: int
    # _optimisation
    train_rows: np.ndarray = None
    val_rows: np.ndarray = None
    test_rows: np.ndarray = None
    gen: torch.Generator = None
    per_rank: int = 0
    steps_per_epoch: int = 0
    total_steps: int = 0
    opt: object = None
    sched: object = None
    autocast: Callable | None = None
    scaler: object = None
    criterion: Criterion = None
    augment: Augment | None = None
    boxes: object = None
    fwd: object = None
    # the loop's state (restored on resume)
    best: tuple = (-1.0, 0)
    history: list = field(default_factory=list)
    step: int = 0
    first_epoch: int = 1
    since_best: int = 0
    stopped: bool = False      # a stop request ended the loop
    early: bool = False        # early stopping or the sweep's pruner ended it
    pruned: str | None = None  # a sweep trial's reason to stop (report's answer)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def _train(cfg: TrainConfig, out: Path, progress, should_stop, resume: bool, d: dist_.Dist,
           network: str | None = None, parent_log=None, report: Report | None = None) -> Card:
    """One training run. ``network`` (gate | disease): one of hierarchy two_network's networks, whose events
    also go to ``parent_log`` tagged with it."""
    run = _setup(cfg, out, progress, should_stop, resume, d, network, parent_log, report)
    _optimisation(run)
    _epochs(run)
    return _finish(run)


def _setup(cfg: TrainConfig, out: Path, progress, should_stop, resume: bool, d: dist_.Dist, network: str | None,
           parent_log, report: Report | None) -> _Run:
    """Seeds, device, the saved state (resume), preprocessing, data, targets and the model on its device."""
    own = EventLog(out / "events.jsonl") if d.main else (lambda kind, **payload: None)
    if parent_log is not None and d.main:
        def log(kind, **payload):
            parent_log(kind, network=network, **payload)
            return own(kind, **payload)
    else:
        log = own
    t_start = time.time()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda", d.local_rank) if d.backend == "nccl" else resolve_device(cfg.device)
    if d.enabled and d.backend == "gloo":
        device = torch.device("cpu")
    saved = None
    if resume:
        saved = load_state(out)
        if {**_comparable_defaults(), **saved["config"]} != _comparable(cfg):
            raise ConfigError("The run folder's saved state was made with different options; resume needs the same "
                              "config (clone the job to change options).")

    init_card, init_state = (None, None)
    if cfg.init:
        init_card, init_state = load_checkpoint(cfg.init)
        prep = init_card.prep
    else:
        prep = Preprocess(size=cfg.image_size, fit=cfg.fit, **preprocess_for(cfg.arch, timm_channels(cfg)))

    if saved is None:
        log("start", config=asdict(cfg), device=str(device), world_size=d.world)
    else:
        log("resume", epoch=int(saved["epoch"]), step=int(saved["step"]), device=str(device), world_size=d.world)
    # Rank 0 builds the cache first; the other ranks then find it complete.
    if d.main:
        data = prepare_data(cfg, prep, progress=(lambda k, n: progress("cache", k, n, {})) if progress else None)
    d.barrier()
    if not d.main:
        data = prepare_data(cfg, prep)
    if cfg.normalize == "dataset" and init_card is None and prep.norm != "xrv":
        prep = dataset_normalization(prep, data.images, np.flatnonzero(data.split == "train"), cfg.seed)
        if saved is None:
            log("normalization", mean=list(prep.mean), std=list(prep.std), source="training split")
    two_stage = cfg.hierarchy == "two_stage"
    labels = list(data.labels) + ([GATE_LABEL] if two_stage else [])
    targets = two_stage_targets(data.targets, data.labels) if two_stage else data.targets
    if network == "gate":  # two_network's binary gate: "Any finding" on every image
        labels, targets = [GATE_LABEL], gate_targets(data.targets, data.labels)[:, None].astype(np.float32)
    elif network == "disease":  # two_network's disease model: findings on abnormal images only
        targets = two_stage_targets(data.targets, data.labels)[:, :-1]
    # What the metrics and thresholds are scored against. A two-stage model trains its disease outputs on
    # abnormal images only (``targets`` masks the rest), but what it outputs and the app shows is the
    # combination P(gate) x P(finding | abnormal) for every image: scored against every image's findings
    # (a normal film is a negative for each), as `cxr eval` and the two-network combination are.
    scored = (np.concatenate([data.targets, gate_targets(data.targets, data.labels)[:, None]], axis=1)
              if two_stage else targets)
    if d.main:
        write_split_files(data, out)
        if data.balance is not None and saved is None:
            warns = balance_warnings(data.balance)
            if warns:
                log("balance_warning", warnings=warns)

    if init_card is not None:
        model = model_from_spec(init_card.model, len(init_card.labels))
        model.load_state_dict(init_state)
        swap = swap_head(model, init_card.labels, labels)
        model_spec = {k: v for k, v in init_card.model.items() if k != "two_stage"}
        init_trained_on = init_card.trained_on or infer_trained_on(init_card)
    else:
        kwargs = {**cfg.arch_kwargs, **({"in_chans": 1} if timm_channels(cfg) == 1 else {})}
        model = build_model(cfg.arch, len(labels), cfg.pretrained, kwargs, labels=labels)
        swap = getattr(model, "head_swap_report", None)  # library heads (e.g. torchxrayvision's) mapped to ours
        model_spec = spec_for(cfg.arch, cfg.pretrained, kwargs)
        init_trained_on = getattr(model, "trained_on", None)  # library chest X-ray weights say what they saw
    if model_spec.get("library") == "open_clip" and (model_spec.get("kwargs") or {}).get("scoring", "softmax") != "softmax":
        # a min-max zero-shot model (a ranking within the image) is fine-tuned as log-odds: softmax-pair scoring
        model_spec = {**model_spec, "kwargs": {**model_spec["kwargs"], "scoring": "softmax"}}
        model.scoring = "softmax"
    if two_stage:
        model_spec["two_stage"] = {"gate_threshold": cfg.gate_threshold, "gate_label": GATE_LABEL, "mode": cfg.gate_mode,
                                   "exempt": [j for j, x in enumerate(labels) if canonical(x) == "no finding"]}
    if swap is not None and saved is None:
        log("head_swap", **swap.to_dict())
    if cfg.drop_rate:
        set_classifier_dropout(model, cfg.drop_rate)
    if cfg.mode == "head":
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.get_classifier().parameters():
            p.requires_grad_(True)
    elif cfg.mode == "lora":
        model = apply_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    trainable, total = count_parameters(model)
    return _Run(cfg=cfg, out=out, d=d, log=log, progress=progress, should_stop=should_stop, report=report,
                network=network, t_start=t_start, device=device, saved=saved, prep=prep, data=data,
                two_stage=two_stage, labels=labels, targets=targets, scored=scored, model=model,
                model_spec=model_spec, swap=swap, init_trained_on=init_trained_on, trainable=trainable, total=total)


def _optimisation(run: _Run) -> None:
    """Splits, sampling generator, steps, optimiser and schedule, precision, loss, augmentation, box targets, the
    wrapped forward (maps, compile, DDP); then the saved state of a resumed run."""
    cfg, d, data, targets, model, log = run.cfg, run.d, run.data, run.targets, run.model, run.log
    run.train_rows = np.flatnonzero(data.split == "train")
    run.val_rows = np.flatnonzero(data.split == "val")
    run.test_rows = np.flatnonzero(data.split == "test")
    run.gen = torch.Generator().manual_seed(cfg.seed)
    epoch_rows = epoch_size(run.train_rows, targets, cfg.oversample_min)
    run.per_rank = epoch_rows // d.world
    run.steps_per_epoch = math.ceil(run.per_rank / cfg.batch_size)
    opt_steps_per_epoch = math.ceil(run.steps_per_epoch / cfg.accum_steps)
    run.total_steps = run.steps_per_epoch * cfg.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    run.opt = optim(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    run.sched = _schedule(cfg, run.opt, opt_steps_per_epoch * cfg.epochs, opt_steps_per_epoch)
    use_amp = cfg.precision != "fp32"
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    device = run.device
    run.autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if use_amp else None
    run.scaler = torch.amp.GradScaler(device.type, enabled=(cfg.precision == "fp16"))
    run.criterion = Criterion(cfg.loss, run.labels,
                              pos_weight_from(targets[run.train_rows]) if cfg.pos_weight else None,
                              cfg.focal_gamma, "none" if run.network else cfg.hierarchy, cfg.hierarchy_weight,
                              cfg.loss_reduction)
    run.augment = Augment.from_dict(cfg.augment_options) if cfg.augment else None
    if cfg.box_loss > 0 and run.network != "gate":   # the gate's "Any finding" has no boxes of its own
        from .boxes import box_targets, check_model

        check_model(model)
        run.boxes = box_targets(data.index, run.labels, targets, run.prep)
        boxed = np.intersect1d(run.boxes.rows_with_boxes(), run.train_rows)
        if run.saved is None:
            log("box_supervision", weight=cfg.box_loss, train_images_with_boxes=int(len(boxed)),
                pairs=int(run.boxes.n_pairs), skipped=run.boxes.skipped)
    if run.boxes is None:
        fwd = model
    else:
        from .boxes import WithMaps

        fwd = WithMaps(model)  # with boxes, forward gives (logits, maps); DDP / compile wrap it
    if cfg.compile:
        fwd = torch.compile(fwd)
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        fwd = DDP(fwd, device_ids=[device.index] if device.type == "cuda" else None)
    run.fwd = fwd
    criterion = run.criterion
    log("data", n_images=len(data.index), train=len(run.train_rows), val=len(run.val_rows), test=len(run.test_rows),
        labels=run.labels, trainable_params=run.trainable, total_params=run.total,
        steps_per_epoch=run.steps_per_epoch, epoch_rows=epoch_rows, head_swap=run.swap.to_dict() if run.swap else None,
        mode=cfg.mode, world_size=d.world,
        pos_weight=criterion.pos_weight.tolist() if criterion.pos_weight is not None else None)

    saved = run.saved
    if saved is not None:
        model.load_state_dict(saved["model"])
        run.opt.load_state_dict(saved["optimizer"])
        run.sched.load_state_dict(saved["scheduler"])
        if saved.get("scaler"):
            run.scaler.load_state_dict(saved["scaler"])
        set_rng_state(run.gen, saved["rng"])
        run.best = (float(saved["best"][0]), int(saved["best"][1]))
        run.history, run.step, run.since_best = list(saved["history"]), int(saved["step"]), int(saved["since_best"])
        run.first_epoch = int(saved["epoch"]) + 1
        if d.main and run.progress:
            run.progress("train", run.step, run.total_steps, {"epoch": run.first_epoch - 1, "resumed": True})


def _validate(run: _Run, epoch: int, losses: list, t_epoch: float, seen: int, end_of_epoch: bool) -> float:
    """Validate on rank 0: record the metrics (an ``epoch`` event at an epoch's end, a ``validation`` event in
    between), checkpoint when the monitored metric improved, report an epoch's metric; returns that metric."""
    cfg, d, log, step = run.cfg, run.d, run.log, run.step
    if not d.main:
        return float("nan")
    t_val = time.time()
    val_probs, val_loss = validation_pass(run.model, run.data.images, run.val_rows, run.prep, run.device, run.targets,
                                          run.criterion, spec=run.model_spec, autocast=run.autocast)
    m = validation_metrics(run.scored[run.val_rows], val_probs, run.two_stage)
    spe = run.steps_per_epoch
    record = {"epoch": epoch, "step": step, "epochs_done": round((step - (epoch - 1) * spe) / spe + epoch - 1, 4),
              "train_loss": float(np.mean(losses)) if losses else None,
              "val_loss": val_loss, "val_auroc": dict(zip(run.labels, _nan_to_none(m["auroc"]))),
              "val_mean_auroc": m["mean_auroc"], "val_mean_ap": m["mean_ap"], "val_f1": m["f1"],
              "val_accuracy": m["accuracy"], "lr": _current_lr(run.opt), "seconds": time.time() - t_epoch,
              "val_seconds": time.time() - t_val, "images_per_s": seen / max(1e-6, t_val - t_epoch)}
    if run.cuda:
        record["gpu_mem_mib"] = torch.cuda.max_memory_allocated(run.device) / 2**20
    run.history.append(record)
    log("epoch" if end_of_epoch else "validation", **record)
    metric = val_loss if cfg.monitor == "loss" else m["mean_auroc"]
    if _better(metric, run.best[0], cfg.monitor, first=run.best[1] == 0):  # no checkpoint yet: any result is best
        run.best = (metric, epoch)
        run.since_best = 0
        card = _card(cfg, run.labels, run.model_spec, run.prep, run.data, record, m["thresholds"], run.swap,
                     run.history, run.trainable, run.total, time.time() - run.t_start, d.world, run.init_trained_on,
                     run.network)
        save_checkpoint(run.out / "checkpoint", merged_state_dict(run.model), card)
        log("checkpoint", epoch=epoch, step=step, val_mean_auroc=m["mean_auroc"], val_loss=val_loss,
            monitor=cfg.monitor)
    else:
        run.since_best += 1
    if run.report is not None and end_of_epoch:
        try:
            run.pruned = run.report(epoch, metric)
        except Exception as exc:  # noqa: BLE001 - the sweep's database must not end the training
            log("sweep_report_failed", epoch=epoch, error=f"{type(exc).__name__}: {str(exc)[:300]}")
    return metric


def _train_step(run: _Run, rows: np.ndarray, boundary: bool) -> float:
    """Forward and backward of one batch (the box term with boxes); an optimiser step at an accumulation
    ``boundary``; returns the batch's loss."""
    cfg, d, boxes = run.cfg, run.d, run.boxes
    x = to_unit(torch.from_numpy(np.asarray(run.data.images[rows])))
    x = x.to(run.device, non_blocking=True)
    masks = boxes.masks(rows, len(run.labels)) if boxes is not None else None
    if run.augment is not None:
        if masks is not None:
            x, warped = run.augment(x, run.gen, masks[0])
            masks = (warped, masks[1])
        else:
            x = run.augment(x, run.gen)
    x = run.prep.standardize(x)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(run.targets[rows]).to(run.device)
    sync = (run.fwd.no_sync() if d.enabled and not boundary else nullcontext())
    with sync:
        with run.autocast() if run.autocast else nullcontext():
            out_ = run.fwd(x)
        logits, maps = out_ if boxes is not None else (out_, None)
        loss = run.criterion(logits.float(), y)
        if boxes is not None:
            from .boxes import box_loss

            part = box_loss(maps, *masks) if masks is not None else maps.sum() * 0.0
            run.criterion.parts["box"] = float(part.detach())
            loss = loss + cfg.box_loss * part
        run.scaler.scale(loss / cfg.accum_steps).backward()
    if boundary:
        run.scaler.step(run.opt)
        run.scaler.update()
        run.opt.zero_grad(set_to_none=True)
        if cfg.schedule != "plateau":
            run.sched.step()
    return float(loss.detach())


def _epochs(run: _Run) -> None:
    """The epoch loop: train steps (a stop request ends it at the next step, on every rank at the same one),
    validation, the plateau schedule, early stopping and the sweep's pruner, the resumable state per epoch."""
    cfg, d, log = run.cfg, run.d, run.log
    for epoch in range(run.first_epoch, cfg.epochs + 1):
        if run.early:
            break
        run.fwd.train()
        order = epoch_order(run.train_rows, run.targets, cfg.sampler, run.gen, cfg.oversample_min)
        mine = order[: run.per_rank * d.world][d.rank::d.world]
        t_epoch, seen, losses = time.time(), 0, []
        if run.cuda:
            torch.cuda.reset_peak_memory_stats(run.device)
        run.opt.zero_grad(set_to_none=True)
        n_batches = math.ceil(len(mine) / cfg.batch_size)
        for bi, k in enumerate(range(0, len(mine), cfg.batch_size)):
            if d.any(run.should_stop()):
                run.stopped = True
                break
            rows = mine[k:k + cfg.batch_size]
            loss_v = _train_step(run, rows, boundary=(bi + 1) % cfg.accum_steps == 0 or bi + 1 == n_batches)
            run.step += 1
            seen += len(rows) * d.world
            losses.append(loss_v)
            ips = seen / max(1e-6, time.time() - t_epoch)
            extra = {"gpu_mem_mib": torch.cuda.max_memory_allocated(run.device) / 2**20} if run.cuda else {}
            if len(run.criterion.parts) > 1:
                extra["loss_parts"] = dict(run.criterion.parts)
            log("step", epoch=epoch, step=run.step, total_steps=run.total_steps, loss=loss_v, lr=_current_lr(run.opt),
                images_per_s=ips, **extra)
            if run.progress:
                run.progress("train", run.step, run.total_steps, {"epoch": epoch, "loss": loss_v, "images_per_s": ips})
            if cfg.val_every and run.step % cfg.val_every == 0 and bi + 1 < n_batches:
                _validate(run, epoch, losses, t_epoch, seen, end_of_epoch=False)
                run.since_best = int(d.broadcast(run.since_best))
                run.fwd.train()
        if run.stopped:
            log("stopped", epoch=epoch, step=run.step)
            break
        metric = _validate(run, epoch, losses, t_epoch, seen, end_of_epoch=True)
        metric = d.broadcast(metric)
        if cfg.schedule == "plateau" and not math.isnan(metric):
            run.sched.step(metric)
        run.since_best = int(d.broadcast(run.since_best))
        if cfg.early_stopping and run.since_best >= cfg.early_stopping and epoch < cfg.epochs:
            run.early = True
            log("early_stop", epoch=epoch, best_epoch=run.best[1], patience=cfg.early_stopping)
        if d.broadcast(1.0 if run.pruned else 0.0) and epoch < cfg.epochs:
            run.early = True
            log("pruned", epoch=epoch, best_epoch=run.best[1], reason=run.pruned)
        if d.main:
            save_state(run.out, {"config": _comparable(cfg), "epoch": epoch, "step": run.step,
                                 "model": run.model.state_dict(), "optimizer": run.opt.state_dict(),
                                 "scheduler": run.sched.state_dict(),
                                 "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else {},
                                 "rng": rng_state(run.gen), "best": [run.best[0], run.best[1]],
                                 "history": run.history, "since_best": run.since_best})
        d.barrier()
        _hold(run, epoch)


def _hold(run: _Run, epoch: int) -> None:
    """Tests only (:data:`HOLD_ENV`): wait while the hold file exists, at the end of ``epoch``; rank 0 logs
    a ``hold`` event first. Every rank waits on the file itself (no collective) and leaves as soon as a stop
    is asked of it (a cancel while held stops the run at the next step, as it would have unheld); the ranks
    then agree on the stop at that step."""
    path = os.environ.get(HOLD_ENV)
    if not path or not os.path.exists(path):
        return
    run.log("hold", epoch=epoch, file=path)
    while os.path.exists(path) and not run.should_stop():
        time.sleep(0.02)


def _ending(run: _Run) -> str:
    """How the loop ended: one of :data:`cxrcore.train.events.ENDINGS`."""
    if run.stopped:
        return "stopped"
    if run.early:
        return "pruned" if run.pruned else "early_stopping"
    return "completed"


def _finish(run: _Run) -> Card | None:
    """Rank 0: test metrics of the best checkpoint (a two-stage model's gate tuned first), how the run ended on
    its card and in the ``done`` event; the other ranks return None."""
    cfg, d, log, best = run.cfg, run.d, run.log, run.best
    if not d.main:
        return None
    if best[1] == 0:
        raise ConfigError("Training stopped before the first epoch finished; no checkpoint was written.")
    # Test metrics of the best checkpoint.
    card, state = load_checkpoint(run.out / "checkpoint")
    plain = base_model(run.model) if cfg.mode != "lora" else model_from_spec(card.model, len(card.labels)).to(run.device)
    plain.load_state_dict(state)
    if run.two_stage and len(run.val_rows):
        card = _tune_gate(card, plain, run.data, run.val_rows, run.scored, run.prep, run.device)
    if len(run.test_rows):
        test_probs = predict_array(plain, run.data.images, run.test_rows, run.prep, run.device, spec=card.model)
        auroc = per_label_auroc(run.scored[run.test_rows], test_probs)
        card.metrics["test"] = {"auroc": dict(zip(run.labels, _nan_to_none(auroc))),
                                "mean_auroc": _mean_auroc(auroc, run.two_stage), "n": int(len(run.test_rows))}
    ended = _ending(run)
    card.training["seconds"] = time.time() - run.t_start
    card.training["stopped_early"] = run.stopped
    card.training["early_stopping"] = {"triggered": run.early, "best_epoch": best[1]} if cfg.early_stopping else None
    card.training["epochs_run"] = len(run.history)
    card.training["ended"] = ended
    if run.pruned and run.early:
        card.training["pruned"] = run.pruned
    save_checkpoint(run.out / "checkpoint", state, card)
    log("done", best_epoch=best[1], val_mean_auroc=card.metrics.get("val", {}).get("mean_auroc"),
        val_loss=card.metrics.get("val", {}).get("loss"), monitor=cfg.monitor,
        test_mean_auroc=card.metrics.get("test", {}).get("mean_auroc"), seconds=time.time() - run.t_start,
        stopped=run.stopped, early_stopped=run.early, pruned=run.pruned if run.early else None, ended=ended)
    return card


_RUNTIME_OPTIONS = ("name", "threads", "workers", "device", "gpus", "share_gpus", "nproc", "nodes", "slurm")


def _tune_gate(card: Card, model, data, val_rows, targets, prep: Preprocess, device) -> Card:
    """A two-stage model's one gate threshold: max F1 of "Any finding" on the validation split, stored as
    the gate label's threshold and in the spec; then the other labels' thresholds are tuned again on the
    probabilities combined with it (they depend on the gate)."""
    raw = predict_array(model, data.images, val_rows, prep, device)  # no spec: raw sigmoid outputs
    gate = best_f1_thresholds(targets[val_rows][:, -1:], raw[:, -1:])[0]
    card.model["two_stage"]["gate_threshold"] = float(gate)
    card.model["two_stage"]["tuned_on"] = "val (max F1 of the gate)"
    combined = combine(raw, card.model, t=float(gate))
    thr = best_f1_thresholds(targets[val_rows], combined)
    card.thresholds = {x: float(t) for x, t in zip(card.labels, thr)}
    card.thresholds[card.labels[-1]] = float(gate)
    return card


def _comparable_defaults() -> dict:
    """Every result-deciding option at its default: a state saved before an option existed resumes as if
    it had been set to its default."""
    from .config import options

    return {o.name: o.default for o in options() if o.name not in _RUNTIME_OPTIONS and o.name != "data"}


def _comparable(cfg: TrainConfig) -> dict:
    """The options that decide the result (a resumed run may run elsewhere, with other threads or name)."""
    return {k: v for k, v in asdict(cfg).items() if k not in _RUNTIME_OPTIONS}


def _card(cfg, labels, model_spec, prep, data: Prepared, record, thresholds, swap, history, trainable, total, seconds,
          world: int = 1, init_trained_on: dict | None = None, network: str | None = None) -> Card:
    counts = {s: int((data.split == s).sum()) for s in ("train", "val", "test")}
    return Card(
        labels=list(labels),
        model=dict(model_spec),
        preprocess=prep.to_dict(),
        thresholds={x: float(t) for x, t in zip(labels, thresholds)},
        metrics={"val": {"auroc": record["val_auroc"], "mean_auroc": record["val_mean_auroc"], "epoch": record["epoch"],
                         "step": record.get("step"), "loss": record.get("val_loss"),
                         "mean_ap": record.get("val_mean_ap"), "f1": record.get("val_f1"),
                         "accuracy": record.get("val_accuracy"), "monitor": cfg.monitor, "n": counts["val"]}},
        training={"config": asdict(cfg), "history": history, "best_epoch": record["epoch"], "seconds": seconds,
                  "trainable_params": trainable, "total_params": total, "world_size": world,
                  "head_swap": swap.to_dict() if swap else None,
                  "init_from": cfg.init},
        data={"root": str(data.index.root), "name": data.index.name, "format": data.index.format,
              "fingerprint": data.index.fingerprint(), "n_images": len(data.index), "splits": counts,
              "split_seed": cfg.seed, "policy": cfg.policy, "split_method": cfg.split_method,
              "filters": dict(data.filters), "splits_file": "../splits.csv",  # relative to the checkpoint folder
              "balance_warnings": balance_warnings(data.balance) if data.balance is not None else [],
              **({"crossfit": dict(cfg.crossfit)} if cfg.crossfit else {}),
              **({"relabel": data.relabel} if data.relabel else {})},
        name=(cfg.name or Path(cfg.data).name) + (f" · {network} network" if network else ""),
        notes=[{"gate": "The gate network of a two-network model: 'Any finding' on every image.",
                "disease": "The disease network of a two-network model: trained on abnormal images only, so its "
                           "outputs are P(finding | abnormal); use the combined checkpoint for P(finding)."}[network]]
        if network else [],
        trained_on=combine_trained_on(init_trained_on,
                                      dataset_trained_on(data.index.root, data.index.name, data.index.format)),
    )
