"""Out-of-sample probabilities for every image of a dataset by k-fold cross-fitting, and the label errors they point
to (issue 24 §3; ``cxr label-issues --folds K``, the Dataset page's cross-fitting job).

A model's probability for an image it trained on says little about that image's label (it has learnt the label,
right or wrong). Without cross-fitting only the images a model never trained on can be judged
(:func:`cxrcore.lens.issues.find_issues`). Cross-fitting judges all of them: the dataset's patients are cut into K
folds (:func:`cxrcore.data.index.crossfit_folds`, by a hash of the patient, so all of a patient's films share one);
K models are trained, model k on the other folds (a share of them for validation) and never on fold k; each predicts
its own fold. Every film's probability then comes from a model that did not see it (Northcutt et al., JAIR 2021,
§ 4: cleanlab's out-of-sample probabilities come from cross-validation).

**What the K models are.** The checkpoint ``C`` names the recipe. When ``C`` did not train on this dataset, each fold
model is ``C`` fine-tuned on the other folds (``mode`` full, head or LoRA). When ``C`` did train on it, starting
from ``C`` would let every fold model carry what ``C`` learnt from the very images it is asked to judge, so each fold
model is trained as ``C`` was (its card's training config: architecture, pretrained weights or starting checkpoint,
image size, loss, …) from ``C``'s own starting point instead. Fine-tuning uses :data:`FINE_TUNE` (full network,
learning rate 1e-4, 3 epochs); ``epochs``, ``mode`` and ``lr`` override it or the recipe.

**Kept and resumed.** Each fold is a training run in its own folder under the cross-fit folder (``fold-1`` …
``fold-K``) with its out-of-sample probabilities in ``oos.npz`` once done. Run again, a finished fold is read back;
a stopped one resumes from its last complete epoch. The default folder is in the workspace's cache, keyed by the
checkpoint's weights, the dataset's fingerprint and the options, so the same question is not trained twice.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..train.config import MODES
from .issues import LabelIssues, rank_issues, seen_by

OOS_NAME = "oos.npz"
SUMMARY_NAME = "crossfit.json"
DEFAULT_FOLDS = 5
FOLD_MODES = MODES   # what a fold model trains: the training's modes
# A fold model fine-tuned from a checkpoint that never saw the dataset: a fine-tuning rate, a few epochs (on the
# noised phantom of tests/evaluation/test_index.py, full at 1e-4 ranked as many flipped labels first as the
# checkpoint itself, head-only fewer; the recipe's own rate, 3e-3, a sixth of them)
FINE_TUNE = {"mode": "full", "lr": 1e-4, "epochs": 3}


@dataclass
class CrossFit:
    labels: list[str]
    image_ids: list[str]
    paths: list[str]
    targets: np.ndarray          # (N, L) the dataset's labels (uncertain: NaN)
    probs: np.ndarray            # (N, L) each from the fold model that never saw the image
    fold: np.ndarray             # (N,) which fold
    folds: int
    start: str                   # what each fold model started from (a checkpoint, or the recipe's own start)
    complete: bool = True        # False: stopped before every fold was done (the rest is None)
    fold_cards: list[dict] = field(default_factory=list)   # per fold: its run folder, epochs, validation AUROC


def default_folder(checkpoint: str, data: str | Path, folds: int, options: dict) -> Path:
    """The workspace's cross-fit folder for these inputs (the checkpoint's weights, the dataset's fingerprint, the
    folds and the options)."""
    from .. import workspace
    from ..checkpoint import read_card
    from ..data.readers import read_dataset

    card = read_card(checkpoint)
    fp = read_dataset(data, check_files=False).fingerprint()
    key = hashlib.sha256(json.dumps([card.weights_sha256 or str(checkpoint), fp, folds, options],
                                    sort_keys=True).encode()).hexdigest()[:16]
    return workspace.sub("crossfit") / f"{Path(data).name}-{key}"


def fold_config(checkpoint: str, data: str | Path, folds: int, fold: int, *, epochs: int | None = None,
                mode: str | None = None, lr: float | None = None, seed: int = 0, threads: int = 0, workers: int = 1):
    """The TrainConfig of fold ``fold``'s model (see the module's text: fine-tuned from the checkpoint, or trained
    as the checkpoint was when it trained on this dataset)."""
    from ..checkpoint import read_card
    from ..data.readers import read_dataset
    from ..models.library import library_ref
    from ..train.config import INTERNAL_FIELDS, TrainConfig

    if mode is not None and mode not in FOLD_MODES:
        raise ConfigError(f"A fold model trains {' / '.join(FOLD_MODES)}, not {mode!r}.")
    card = read_card(checkpoint)
    dataset = read_dataset(data, check_files=False)
    recipe = dict((card.training or {}).get("config") or {})
    names = {f.name for f in dataclasses.fields(TrainConfig)} - set(INTERNAL_FIELDS)
    base = {k: v for k, v in recipe.items() if k in names}
    if seen_by(card, dataset) and recipe:
        start = base.get("init") or f"{base.get('arch')} ({base.get('pretrained', 'auto')} weights)"
    else:
        ref = library_ref(str(checkpoint))
        base = {k: base[k] for k in ("policy", "batch_size", "frontal_only", "loss", "pos_weight", "augment")
                if k in base}
        base.update(FINE_TUNE, init=ref or str(Path(checkpoint).expanduser().resolve()))
        start = base["init"]
    base.update(data=str(Path(data).expanduser().resolve()), labels=list(card.labels), seed=seed,
                name=f"cross-fit fold {fold + 1} of {folds}", crossfit={"fold": fold, "folds": folds},
                max_images=None, split_method="hash", early_stopping=base.get("early_stopping", 0),
                threads=threads, workers=workers, device="cpu" if not _cuda() else base.get("device", "auto"),
                nproc=1, nodes=1, gpus=0, slurm={}, relabel=None)
    for key, value in (("epochs", epochs), ("mode", mode), ("lr", lr)):
        if value is not None:
            base[key] = value
    cfg = TrainConfig(**base)
    return cfg, start


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def crossfit(checkpoint: str, data: str | Path, folds: int = DEFAULT_FOLDS, *, folder: str | Path | None = None,
             epochs: int | None = None, mode: str | None = None, lr: float | None = None, seed: int = 0,
             threads: int = 0, should_stop=lambda: False, log=lambda text: None, progress=None) -> CrossFit:
    """Train the ``folds`` fold models (see the module's text) and gather every image's out-of-sample probabilities.
    ``log(text)``: a line per step; ``progress(phase, done, total, info)``: the trainer's, per fold."""
    from ..data.index import crossfit_folds
    from ..data.readers import read_dataset
    from ..eval.predictions import predict_split
    from ..predictor import Predictor
    from ..train.checks import check_training
    from ..train.trainer import train

    options = {"epochs": epochs, "mode": mode, "lr": lr, "seed": seed}
    folder = Path(folder) if folder else default_folder(checkpoint, data, folds, options)
    folder.mkdir(parents=True, exist_ok=True)
    configs = [fold_config(checkpoint, data, folds, k, epochs=epochs, mode=mode, lr=lr, seed=seed, threads=threads)
               for k in range(folds)]
    configs = [(check_training(c), start) for c, start in configs]   # every fold's config checked before training
    start = configs[0][1]
    index = read_dataset(data)
    index = index.subset(index.frame["path"].notna().to_numpy())
    fold_of = dict(zip(index.frame["image_id"].astype(str), crossfit_folds(index.frame["patient_id"], folds, seed)))
    parts, cards, complete = [], [], True
    for k, (cfg, _) in enumerate(configs):
        run = folder / f"fold-{k + 1}"
        done = run / OOS_NAME
        if not done.is_file():
            if should_stop():
                complete = False
                break
            resume = (run / "last").exists()
            log(f"fold {k + 1} of {folds}: training on the other folds" + (" (resumed)" if resume else ""))
            t0 = time.monotonic()
            card = train(cfg, run, progress=progress, should_stop=should_stop, resume=resume)
            if card.training.get("ended") == "stopped":
                complete = False
                log(f"fold {k + 1} of {folds}: stopped; run again to resume it")
                break
            predictor = Predictor(run / "checkpoint")
            preds = predict_split(predictor, index, "test", policy="ignore")
            np.savez(done, image_ids=np.asarray(preds.image_ids, dtype=str), probs=preds.probs.astype(np.float32),
                     labels=np.asarray(preds.labels, dtype=str))
            log(f"fold {k + 1} of {folds}: {len(preds.image_ids)} films predicted out of sample "
                f"({time.monotonic() - t0:.0f} s)")
        with np.load(done) as z:   # plain arrays of numbers and strings: no pickle
            parts.append((list(z["image_ids"]), z["probs"], list(z["labels"])))
        from ..checkpoint import read_card

        fc = read_card(run / "checkpoint")
        cards.append({"fold": k + 1, "run": str(run), "epochs": fc.training.get("epochs_run"),
                      "val_mean_auroc": (fc.metrics.get("val") or {}).get("mean_auroc"),
                      "test_mean_auroc": (fc.metrics.get("test") or {}).get("mean_auroc")})
    labels = parts[0][2] if parts else list(configs[0][0].labels)
    ids = [i for p in parts for i in p[0]]
    if len(ids) != len(set(ids)):
        raise DataError("Two fold models predicted the same film; the cross-fit folder holds runs of another split. "
                        f"Delete {folder} and run again.")
    probs = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, len(labels)), np.float32)
    frame = index.frame.set_index(index.frame["image_id"].astype(str))
    sub = index.subset(frame.index.isin(ids))
    order = {x: i for i, x in enumerate(sub.frame["image_id"].astype(str))}
    rows = np.array([order[x] for x in ids], dtype=int)
    targets = sub.targets(labels, "ignore")[rows] if len(ids) else np.zeros((0, len(labels)), np.float32)
    paths = frame["path"].reindex(ids).astype(str).tolist()
    out = CrossFit(labels, ids, paths, targets, probs, np.array([fold_of.get(x, -1) for x in ids]), folds, start,
                   complete, cards)
    (folder / SUMMARY_NAME).write_text(json.dumps({
        "checkpoint": str(checkpoint), "data": str(data), "folds": folds, "start": start, "complete": complete,
        "images": len(ids), "fold_runs": cards, "options": options}, indent=1))
    return out


def crossfit_issues(checkpoint: str, data: str | Path, folds: int = DEFAULT_FOLDS, **kw) -> LabelIssues:
    """:func:`cxrcore.lens.issues.rank_issues` on the cross-fitted probabilities of every image (:func:`crossfit`)."""
    return issues_of(crossfit(checkpoint, data, folds, **kw), data)


def issues_of(fit: CrossFit, data: str | Path) -> LabelIssues:
    """The ranked label issues of a finished cross-fitting ``fit`` of the dataset ``data``."""
    from ..data.readers import read_dataset

    folds = fit.folds
    if not fit.complete:
        raise DataError(f"Cross-fitting stopped after {len(fit.fold_cards)} of {folds} folds; run it again to go on "
                        "(finished folds are kept).")
    dataset = read_dataset(data, check_files=False)
    shared = dataset.shared_labels(fit.labels)
    cols = [fit.labels.index(x) for x in shared]
    if len(fit.image_ids) < 10:
        raise DataError(f"Only {len(fit.image_ids)} films were predicted; too few to look for label errors.")
    issues = rank_issues(fit.targets[:, cols], fit.probs[:, cols], shared, fit.image_ids, fit.paths)
    note = (f"Cross-fitted over {folds} patient-level folds: every film's probabilities come from a model trained "
            f"without its patient (each fold model started from {fit.start}).")
    return LabelIssues(issues, len(fit.image_ids), 0, shared, note)
