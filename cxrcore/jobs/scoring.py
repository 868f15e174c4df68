"""Scoring jobs: ``cxr score`` (:mod:`cxrcore.score`) as a job of the same queue as the training jobs, on this
machine or on Slurm, watched, cancelled and resumed the same way (issue 22 §4).

A job's config names its task under :data:`TASK_KEY`; a config without one is a training config (what every job
was before). A scoring config::

    {"task": "score", "input": "/archive/2024" | "/lists/cr.csv" | "http://pacs/dicom-web/studies?...",
     "checkpoint": "/runs/r1/checkpoint" | "xrv:densenet121-res224-all",
     "out": "/results/2024.parquet",          # optional: RUN_DIR/scores.parquet
     "workers": 2, "batch_size": 32, "threads": 1,
     "runtime": "onnx"}                      # or "torch" (cxrcore.runtime)

The runner (:mod:`cxrcore.jobs.runner`) scores in parts, so a cancel (SIGTERM: stop after the part being scored)
or a kill (SIGKILL, a lost node) loses at most one part, and **Resume** runs the same scoring again: it reads the
parts, skips every image already in them and scores the rest (each image once in the table). Progress goes to the
run folder's ``events.jsonl`` as ``score_start`` / ``score_progress`` / ``score_done`` events
(:func:`cxrcore.jobs.progress.score_summary` folds them); the end's summary to ``score.json``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import AccessError, ConfigError, DataError
from ..runtime import RUNTIMES
from .logfiles import EVENTS_NAME

TASK_KEY = "task"
TRAIN, SCORE = "train", "score"
TASKS = (TRAIN, SCORE)   # the declaration of the job kinds; a config without TASK_KEY is a training
OUT_NAME = "scores.parquet"
SUMMARY_NAME = "score.json"
# option: (default, least) for the whole-number options; the others are checked by name below
NUMBERS = {"workers": (2, 1), "batch_size": (32, 1), "threads": (0, 0)}
OPTIONS = (TASK_KEY, "input", "checkpoint", "out", "name", "slurm", "runtime", *NUMBERS)


def task_of(config) -> str:
    """The task a job's config asks for (``train`` when it names none); ConfigError for an unknown one."""
    task = (config or {}).get(TASK_KEY, TRAIN) if isinstance(config, dict) else TRAIN
    if task not in TASKS:
        raise ConfigError(f"Unknown job task {task!r}; use {' or '.join(TASKS)}.")
    return task


def is_scoring(config) -> bool:
    return isinstance(config, dict) and config.get(TASK_KEY) == SCORE


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def job_label(config: dict) -> str:
    """A job's default name: its dataset folder's (training) or its input's (scoring)."""
    spec = str(config.get("input") or config.get("data") or "job")
    return "score " + (spec.split("?")[0].rstrip("/").rsplit("/", 1)[-1] or spec) if is_scoring(config) \
        else Path(spec).name


def out_path(config: dict, run_dir: str | Path) -> Path:
    """Where a scoring job's table goes: its ``out``, else the run folder's ``scores.parquet``."""
    return Path(config.get("out") or Path(run_dir) / OUT_NAME)


def check_score_config(config: dict, settings=None, user=None) -> dict:
    """A scoring config checked and normalised (paths absolute, defaults filled in), before anything is created.

    ConfigError for an unknown option or a bad number, DataError for an input that is no folder of images, no CSV
    with a ``path`` column and no DICOMweb query, CheckpointError for a checkpoint that is not one. AccessError
    (``user``, a visitor of a shared server) for an input or checkpoint outside the folders jobs may read
    (:func:`cxrcore.hosting.check_job_paths`), a model the server does not list for visitors, a DICOMweb query to
    another server than the operator's PACS, or an ``out`` (only the operator writes outside the run folder)."""
    from .. import hosting
    from ..checkpoint import read_card
    from ..models.library import library_ref
    from ..pacs.dicomweb import ENV_URL
    from ..score import source_of

    unknown = sorted(set(config) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"Unknown scoring option(s): {', '.join(unknown)}. Known: {', '.join(OPTIONS)}.")
    out = dict(config)
    for key in ("input", "checkpoint"):
        if not isinstance(out.get(key), str) or not out[key].strip():
            raise ConfigError(f"A scoring job needs `{key}`: " + (
                "a folder of images, a CSV with a path column, or a DICOMweb query URL." if key == "input" else
                "the model to score with (a checkpoint folder or a library model name)."))
        out[key] = out[key].strip()
    for key, (default, least) in NUMBERS.items():
        value = out.get(key, default)
        if value is None:
            value = default
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"Scoring option {key} must be a whole number of at least {least}, not {value!r}.")
        out[key] = value
    out["runtime"] = out.get("runtime") or RUNTIMES[0]
    if out["runtime"] not in RUNTIMES:
        raise ConfigError(f"Scoring option runtime is one of {', '.join(RUNTIMES)}, not {out['runtime']!r}.")
    settings = settings or hosting.settings()
    visitor = user is not None and not user.operator
    if is_url(out["input"]):
        pacs = (os.environ.get(ENV_URL) or "").rstrip("/")
        if visitor and not (pacs and out["input"].startswith(pacs + "/")):
            raise AccessError("On this server a scoring job's DICOMweb query goes to the operator's PACS only "
                              f"({ENV_URL}); ask the operator to score another archive.")
        if "/studies" not in out["input"]:
            raise DataError("A DICOMweb query is the service's /studies with search parameters, e.g. "
                            "http://pacs:8042/dicom-web/studies?ModalitiesInStudy=CR&StudyDate=20240101-20240131.")
    else:
        out["input"] = str(Path(out["input"]).expanduser().resolve())
    if not library_ref(out["checkpoint"]):
        out["checkpoint"] = str(Path(out["checkpoint"]).expanduser().resolve())
    if out.get("out"):
        if visitor:
            raise AccessError("Only the operator chooses where a scoring job writes; the app's jobs write their "
                              "table into their run folder.")
        target = Path(out["out"]).expanduser().resolve()
        if target.suffix.lower() != ".parquet":
            raise ConfigError(f"A scoring job's out names a .parquet file (the CSV is written beside it), not "
                              f"{target.name}.")
        out["out"] = str(target)
    else:
        out.pop("out", None)
    hosting.check_job_paths(out, settings)   # input and checkpoint inside the folders jobs may read
    if visitor:
        hosting.check_model_ref(out["checkpoint"], settings)
    if not library_ref(out["checkpoint"]):
        read_card(out["checkpoint"])   # CheckpointError naming what is missing
    if not is_url(out["input"]):
        source_of(out["input"])   # DataError: no images, no path column
    return out


def run_scoring(config: dict, run_dir: Path, should_stop, log=print):
    """Score ``config``'s input into its table (resuming from the parts a cancelled or killed attempt left);
    returns :class:`cxrcore.score.Summary` (``complete`` False when ``should_stop`` ended it early)."""
    import time

    import torch

    from ..compare import model_name
    from ..predictor import Predictor
    from ..runtime import scorer
    from ..score import score, source_of
    from ..train.events import EventLog

    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    events = EventLog(Path(run_dir) / EVENTS_NAME)
    source = source_of(config["input"])
    predictor = Predictor(config["checkpoint"])
    model = model_name(config["checkpoint"], predictor)
    network, runtime, why_not = scorer(predictor, config.get("runtime") or RUNTIMES[0], config.get("threads") or 0)
    log(f"the network runs on {runtime}" + (f" ({why_not})" if why_not else ""))
    out = out_path(config, run_dir)
    total = len(source.paths)
    events("score_start", total=total, input=source.describe, model=model, out=str(out), runtime=runtime,
           runtime_note=why_not)
    log(f"scoring {total} image(s) of {source.describe} with {model} into {out}")
    t0, last = time.monotonic(), [0.0]

    def progress(done: int, todo: int, errors: int) -> None:
        events("score_progress", done=done, todo=todo, errors=errors, seconds=round(time.monotonic() - t0, 3))
        if time.monotonic() - last[0] > 10 or done >= todo:
            last[0] = time.monotonic()
            log(f"{done} of {todo} image(s) scored this attempt ({errors} unreadable)")

    summary = score(source, network, out, model, workers=config["workers"], batch=config["batch_size"],
                    progress=progress, should_stop=should_stop)
    summary.runtime_note = why_not
    if summary.resumed:
        log(f"{summary.resumed} row(s) were already scored by an earlier attempt")
    if not summary.complete:
        events("score_stopped", **summary.to_dict())
        return summary
    events("score_done", **summary.to_dict())
    (Path(run_dir) / SUMMARY_NAME).write_text(json.dumps(summary.to_dict(), indent=1))
    return summary


def read_summary(run_dir: str | Path) -> dict | None:
    """The end's summary of a scoring job (rows, errors, seconds, out, csv, errors_csv, ...), or None."""
    path = Path(run_dir) / SUMMARY_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
