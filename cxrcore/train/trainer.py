"""Fine-tuning: a timm backbone with a multi-label head, BCE with logits, AUROC every epoch.

``train(config, out_dir)`` reads the dataset, splits it by patient, builds (or reuses) the uint8
cache, trains, validates every epoch, keeps the best checkpoint (mean validation AUROC) in
``out_dir/checkpoint`` and appends events to ``out_dir/events.jsonl``. Progress goes through
callbacks, so the CLI shows a tqdm bar and a job writes events.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import Card, load_checkpoint, save_checkpoint
from ..data.cache import build_cache
from ..data.filters import apply_filters
from ..data.index import POLICIES, DatasetIndex, parse_policy, patient_split
from ..data.splits import balance_report, balance_warnings, stratified_patient_split
from ..data.preprocess import Preprocess, to_unit
from ..data.readers import read_dataset
from ..errors import ConfigError, DataError
from ..eval.metrics import best_f1_thresholds, mean_ignoring_nan, per_label_auroc
from ..labels import resolve_label_space
from ..models.registry import build_model, count_parameters, model_from_spec, preprocess_for, spec_for, swap_head

MODES = ("full", "head")
SPLIT_METHODS = ("hash", "stratified")


@dataclass
class TrainConfig:
    data: str
    labels: str | list = "nih14"
    arch: str = "regnetx_002"
    arch_kwargs: dict = field(default_factory=dict)  # e.g. {"output_stride": 16} for finer heatmaps
    pretrained: str = "none"          # none | timm
    init: str | None = None           # start from this checkpoint (head swapped to `labels`)
    mode: str = "full"                # full | head
    epochs: int = 5
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    image_size: int = 160
    fit: str = "pad"
    policy: str | dict = "zeros"      # CheXpert -1 / blank: zeros | ones | ignore, or a mix "ones:Edema;zeros"
    frontal_only: bool = True
    views: list | None = None         # keep only these view positions, e.g. ["PA"]
    first_n_studies: int | None = None  # per patient, by study order
    age_min: float | None = None
    age_max: float | None = None
    sex: str | None = None            # M | F
    max_images: int | None = None     # random sample of this many images after the other filters
    split_method: str = "hash"        # hash (patient_split) | stratified (patient-level, multi-label)
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    augment: bool = True
    seed: int = 0
    workers: int = 2
    threads: int = 0                  # torch CPU threads; 0 = all cores
    device: str = "auto"
    name: str = ""
    # Where the job runs (read by the job backends, not by train()).
    gpus: int = 0                     # GPUs this job needs (local: assigned via CUDA_VISIBLE_DEVICES; slurm: --gpus)
    share_gpus: bool = False          # local: allow running on GPUs another job holds
    nproc: int = 1                    # processes per node (torchrun DDP when > 1)
    nodes: int = 1                    # slurm only: nodes (srun torchrun)
    slurm: dict = field(default_factory=dict)  # partition, cpus, mem, time, account, extra sbatch lines

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, not {self.mode!r}.")
        if not (isinstance(self.policy, str) and self.policy in POLICIES):
            try:
                per, _ = parse_policy(self.policy)
            except DataError as exc:
                raise ConfigError(str(exc)) from exc
            from ..labels import canonical

            known = {canonical(x) for x in resolve_label_space(self.labels)}
            unknown = sorted(set(per) - known)
            if unknown:
                raise ConfigError(f"policy names label(s) {', '.join(unknown)} that are not in the label space {self.labels!r}.")
        if self.split_method not in SPLIT_METHODS:
            raise ConfigError(f"split_method must be one of {', '.join(SPLIT_METHODS)}, not {self.split_method!r}.")
        if self.sex is not None and str(self.sex).upper() not in ("M", "F"):
            raise ConfigError(f"sex must be M or F, not {self.sex!r}.")
        if self.views is not None and (not isinstance(self.views, list) or not self.views):
            raise ConfigError(f"views must be a non-empty list of view positions such as ['PA'], not {self.views!r}.")
        if self.first_n_studies is not None and self.first_n_studies < 1:
            raise ConfigError("first_n_studies must be at least 1.")
        if self.age_min is not None and self.age_max is not None and self.age_min > self.age_max:
            raise ConfigError(f"age_min ({self.age_min}) is above age_max ({self.age_max}).")
        for name, lo in (("epochs", 1), ("batch_size", 1), ("image_size", 32)):
            if int(getattr(self, name)) < lo:
                raise ConfigError(f"{name} must be at least {lo}.")
        if not self.lr > 0:
            raise ConfigError("lr must be positive.")
        if self.max_images is not None and self.max_images < 10:
            raise ConfigError("max_images must be at least 10.")
        resolve_label_space(self.labels)
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda[:N], not {self.device!r}.")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("A GPU was asked for (device=cuda) but none is available here; use device=cpu or auto.")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"Unknown training option(s): {', '.join(sorted(unknown))}.")
        return cls(**d)


class EventLog:
    """Append-only JSON lines: what the Training page and `cxr jobs` read."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, kind: str, **payload) -> dict:
        event = {"type": kind, "time": time.time(), **payload}
        with open(self.path, "a") as f:
            f.write(json.dumps(event, default=_jsonable) + "\n")
        return event


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        v = o.item()
        return None if isinstance(v, float) and math.isnan(v) else v
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def read_events(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written right now
    return out


def _nan_to_none(values) -> list:
    return [None if (v is None or (isinstance(v, float) and math.isnan(v))) else float(v) for v in values]


def masked_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    mask = ~torch.isnan(targets)
    if not mask.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[mask], targets[mask])


def random_affine(x: torch.Tensor, gen: torch.Generator, degrees=7.0, translate=0.06, scale=(0.92, 1.08)) -> torch.Tensor:
    """Per-sample small rotation / translation / scale on a float batch (B, C, H, W)."""
    b = x.shape[0]
    u = torch.rand(b, 4, generator=gen)
    ang = (u[:, 0] * 2 - 1) * math.radians(degrees)
    s = scale[0] + u[:, 1] * (scale[1] - scale[0])
    tx, ty = (u[:, 2] * 2 - 1) * translate * 2, (u[:, 3] * 2 - 1) * translate * 2
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


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
    if cfg.split_method == "stratified":
        split = stratified_patient_split(index.frame, targets, cfg.seed, cfg.val_fraction, cfg.test_fraction)
    else:
        split = patient_split(index.frame["patient_id"], cfg.seed, cfg.val_fraction, cfg.test_fraction)
    for name in ("train", "val"):
        if not ((split == name) & ok).any():
            raise DataError(f"The {name} split is empty: the dataset has too few patients ({index.frame['patient_id'].nunique()}).")
    split = np.where(ok, split, "unreadable").astype(object)
    balance = balance_report(targets, split, labels)
    return Prepared(index, split, targets, cache.array, labels, filters, balance)


def write_split_files(data: Prepared, out: Path) -> None:
    """``splits.csv`` (image_id, split) and ``balance.csv`` (per-label positive rate per split) in the run folder."""
    import pandas as pd

    pd.DataFrame({"image_id": data.index.frame["image_id"].astype(str), "split": data.split}).to_csv(
        out / "splits.csv", index=False)
    if data.balance is not None:
        data.balance.to_csv(out / "balance.csv", index=False)


@torch.no_grad()
def predict_array(model, images: np.ndarray, rows: np.ndarray, prep: Preprocess, device, batch_size=64) -> np.ndarray:
    model.eval()
    out = []
    for k in range(0, len(rows), batch_size):
        x = prep.normalize(torch.from_numpy(np.asarray(images[rows[k:k + batch_size]])).to(device))
        out.append(torch.sigmoid(model(x)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def train(cfg: TrainConfig, out_dir: str | os.PathLike, progress: Callable[[str, int, int, dict], None] | None = None,
          should_stop: Callable[[], bool] = lambda: False) -> Card:
    """Run a training. ``progress(phase, done, total, info)`` reports cache building and steps."""
    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = EventLog(out / "events.jsonl")
    t_start = time.time()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)

    init_card, init_state = (None, None)
    if cfg.init:
        init_card, init_state = load_checkpoint(cfg.init)
        prep = init_card.prep
    else:
        prep = Preprocess(size=cfg.image_size, fit=cfg.fit, **preprocess_for(cfg.arch))

    log("start", config=asdict(cfg), device=str(device))
    data = prepare_data(cfg, prep, progress=(lambda d, n: progress("cache", d, n, {})) if progress else None)
    labels = data.labels
    write_split_files(data, out)
    if data.balance is not None:
        warns = balance_warnings(data.balance)
        if warns:
            log("balance_warning", warnings=warns)

    if init_card is not None:
        model = model_from_spec(init_card.model, len(init_card.labels))
        model.load_state_dict(init_state)
        swap = swap_head(model, init_card.labels, labels)
        model_spec = dict(init_card.model)
        log("head_swap", **swap.to_dict())
    else:
        model = build_model(cfg.arch, len(labels), cfg.pretrained, cfg.arch_kwargs)
        swap = None
        model_spec = spec_for(cfg.arch, cfg.pretrained, cfg.arch_kwargs)
    if cfg.mode == "head":
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.get_classifier().parameters():
            p.requires_grad_(True)
    model.to(device)
    trainable, total = count_parameters(model)

    train_rows = np.flatnonzero(data.split == "train")
    val_rows = np.flatnonzero(data.split == "val")
    test_rows = np.flatnonzero(data.split == "test")
    steps_per_epoch = math.ceil(len(train_rows) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = min(cfg.warmup_steps, max(1, total_steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total_steps - warm))))
    log("data", n_images=len(data.index), train=len(train_rows), val=len(val_rows), test=len(test_rows),
        labels=labels, trainable_params=trainable, total_params=total, steps_per_epoch=steps_per_epoch,
        head_swap=swap.to_dict() if swap else None)

    gen = torch.Generator().manual_seed(cfg.seed)
    best = (-1.0, 0)
    history = []
    step = 0
    stopped = False
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = train_rows[torch.randperm(len(train_rows), generator=gen).numpy()]
        t_epoch, seen, losses = time.time(), 0, []
        for k in range(0, len(order), cfg.batch_size):
            if should_stop():
                stopped = True
                break
            rows = np.sort(order[k:k + cfg.batch_size])
            x = to_unit(torch.from_numpy(np.asarray(data.images[rows])))
            if cfg.augment:
                x = random_affine(x, gen)
            x = prep.standardize(x.to(device))
            y = torch.from_numpy(data.targets[rows]).to(device)
            loss = masked_bce(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            seen += len(rows)
            losses.append(loss.item())
            ips = seen / max(1e-6, time.time() - t_epoch)
            log("step", epoch=epoch, step=step, total_steps=total_steps, loss=loss.item(),
                lr=sched.get_last_lr()[0], images_per_s=ips)
            if progress:
                progress("train", step, total_steps, {"epoch": epoch, "loss": loss.item(), "images_per_s": ips})
        if stopped:
            log("stopped", epoch=epoch, step=step)
            break
        val_probs = predict_array(model, data.images, val_rows, prep, device)
        auroc = per_label_auroc(data.targets[val_rows], val_probs)
        mean_auroc = mean_ignoring_nan(auroc)
        record = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else None,
                  "val_auroc": dict(zip(labels, _nan_to_none(auroc))), "val_mean_auroc": mean_auroc,
                  "seconds": time.time() - t_epoch}
        history.append(record)
        log("epoch", **record)
        if mean_auroc > best[0] or best[1] == 0:
            best = (mean_auroc, epoch)
            thresholds = best_f1_thresholds(data.targets[val_rows], val_probs)
            card = _card(cfg, labels, model_spec, prep, data, record, thresholds, swap, history,
                         trainable, total, time.time() - t_start)
            save_checkpoint(out / "checkpoint", model.state_dict(), card)
            log("checkpoint", epoch=epoch, val_mean_auroc=mean_auroc)

    if best[1] == 0:
        raise ConfigError("Training stopped before the first epoch finished; no checkpoint was written.")
    # Test metrics of the best checkpoint.
    card, state = load_checkpoint(out / "checkpoint")
    model.load_state_dict(state)
    if len(test_rows):
        test_probs = predict_array(model, data.images, test_rows, prep, device)
        auroc = per_label_auroc(data.targets[test_rows], test_probs)
        card.metrics["test"] = {"auroc": dict(zip(labels, _nan_to_none(auroc))), "mean_auroc": mean_ignoring_nan(auroc),
                                "n": int(len(test_rows))}
    card.training["seconds"] = time.time() - t_start
    card.training["stopped_early"] = stopped
    save_checkpoint(out / "checkpoint", state, card)
    log("done", best_epoch=best[1], val_mean_auroc=best[0], test_mean_auroc=card.metrics.get("test", {}).get("mean_auroc"),
        seconds=time.time() - t_start, stopped=stopped)
    return card


def _card(cfg, labels, model_spec, prep, data: Prepared, record, thresholds, swap, history, trainable, total, seconds) -> Card:
    counts = {s: int((data.split == s).sum()) for s in ("train", "val", "test")}
    return Card(
        labels=list(labels),
        model=model_spec,
        preprocess=prep.to_dict(),
        thresholds={x: float(t) for x, t in zip(labels, thresholds)},
        metrics={"val": {"auroc": record["val_auroc"], "mean_auroc": record["val_mean_auroc"], "epoch": record["epoch"],
                         "n": counts["val"]}},
        training={"config": asdict(cfg), "history": history, "best_epoch": record["epoch"], "seconds": seconds,
                  "trainable_params": trainable, "total_params": total,
                  "head_swap": swap.to_dict() if swap else None,
                  "init_from": cfg.init},
        data={"root": str(data.index.root), "name": data.index.name, "format": data.index.format,
              "fingerprint": data.index.fingerprint(), "n_images": len(data.index), "splits": counts,
              "split_seed": cfg.seed, "policy": cfg.policy, "split_method": cfg.split_method,
              "filters": dict(data.filters), "splits_file": "../splits.csv",  # relative to the checkpoint folder
              "balance_warnings": balance_warnings(data.balance) if data.balance is not None else []},
        name=cfg.name or Path(cfg.data).name,
    )
