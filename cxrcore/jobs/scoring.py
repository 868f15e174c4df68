"""Scoring jobs: ``cxr score`` (:mod:`cxrcore.score`) as a job of the same queue as the training jobs, on this
machine or on Slurm, watched, cancelled and resumed the same way (issue 22 §4).

A job's config names its task under :data:`TASK_KEY`; a config without one is a training config (what every job
was before). A scoring config::

    {"task": "score", "input": "/archive/2024" | "/lists/cr.csv" | "http://pacs/dicom-web/studies?...",
     "checkpoint": "/runs/r1/checkpoint" | "xrv:densenet121-res224-all",
     "out": "/results/2024.parquet",          # optional: RUN_DIR/scores.parquet
     "workers": 2, "batch_size": 32, "threads": 1,
     "runtime": "onnx",                      # or "torch" (cxrcore.runtime)
     "shards": 1}                            # > 1: a Slurm array job, one task per shard

The runner scores in parts, so a cancel (SIGTERM: stop after the part being scored)

The runner (:mod:`cxrcore.jobs.runner`) scores in parts, so a cancel (SIGTERM: stop after the part being scored)
or a kill (SIGKILL, a lost node) loses at most one part, and **Resume** runs the same scoring again: it reads the
parts, skips every image already in them and scores the rest (each image once in the table). Progress goes to the
run folder's ``events.jsonl`` as ``score_start`` / ``score_progress`` / ``score_done`` events
(:func:`cxrcore.jobs.progress.score_summary` folds them); the end's summary to ``score.json``.

**Shards** (Slurm only): with ``shards`` = N the job is one Slurm array of N tasks; task K scores the images of
shard K (:func:`cxrcore.score.shard_of`: by a digest of the path, so the split does not depend on the listing's
order) into its own resumable table in ``OUT.shards/``, and the task that finishes last merges the N tables into
``OUT`` in the input's order and marks the job succeeded. A cancel stops every task; Resume submits the array again
and each task goes on from its own parts (a finished shard ends at once).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import AccessError, ConfigError, DataError
from ..runtime import RUNTIMES
from .logfiles import EVENTS_NAME

TASK_KEY = "task"
TRAIN, SCORE, WATCH = "train", "score", "pacs-watch"
INDEX, ISSUES = "index", "label-issues"   # the dataset through a model's eyes (cxrcore.jobs.lensjobs)
TASKS = (TRAIN, SCORE, WATCH, INDEX, ISSUES)   # the declaration of the job kinds; a config without TASK_KEY trains
LENS_TASKS = (INDEX, ISSUES)
# what Resume does, per task: the words the page, the CLI and the log use
RESUMES = {TRAIN: "from the last complete epoch", SCORE: "with the images not in its table yet",
           WATCH: "watching again (a study already scored is not scored again)",
           INDEX: "embedding only the films not in the index yet",
           ISSUES: "with the folds not finished yet (a stopped fold from its last complete epoch)"}
OUT_NAME = "scores.parquet"
SUMMARY_NAME = "score.json"
# option: (default, least) for the whole-number options; the others are checked by name below
NUMBERS = {"workers": (2, 1), "batch_size": (32, 1), "threads": (0, 0), "shards": (1, 1)}
OPTIONS = (TASK_KEY, "input", "checkpoint", "out", "name", "slurm", "runtime", "site", *NUMBERS)


def task_of(config) -> str:
    """The task a job's config asks for (``train`` when it names none); ConfigError for an unknown one."""
    task = (config or {}).get(TASK_KEY, TRAIN) if isinstance(config, dict) else TRAIN
    if task not in TASKS:
        raise ConfigError(f"Unknown job task {task!r}; use {' or '.join(TASKS)}.")
    return task


def is_scoring(config) -> bool:
    return isinstance(config, dict) and config.get(TASK_KEY) == SCORE


def is_training(config) -> bool:
    return task_of(config) == TRAIN


def resume_words(config) -> str:
    return RESUMES[task_of(config)]


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def secrets_needed(config) -> tuple[str, ...]:
    """The server's credentials a job of ``config`` must inherit (:func:`cxrcore.jobs.environment.job_environ`
    withholds every other): the PACS's, for a watch and for a scoring of a DICOMweb query; none for the rest."""
    from ..pacs.dicomweb import ENV_PASSWORD, ENV_TOKEN

    task = task_of(config)
    if task == WATCH or (task == SCORE and is_url(str(config.get("input") or ""))):
        return (ENV_TOKEN, ENV_PASSWORD)
    return ()


def job_label(config: dict) -> str:
    """A job's default name: its dataset folder's (training), its input's (scoring), the PACS's (a watch)."""
    if task_of(config) == WATCH:
        from ..pacs.dicomweb import ENV_URL

        return "watch " + (os.environ.get(ENV_URL, "").split("//")[-1].split("/")[0] or "the PACS")
    if task_of(config) in LENS_TASKS:
        return f"{config[TASK_KEY]} " + Path(str(config.get("data") or "dataset")).name
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
    out["site"] = str(out.get("site") or "")
    if not library_ref(out["checkpoint"]):
        read_card(out["checkpoint"]).with_site(out["site"])   # CheckpointError naming what is missing
    if not is_url(out["input"]):
        source_of(out["input"])   # DataError: no images, no path column
    return out


def run_scoring(config: dict, run_dir: Path, should_stop, log=print, shard: int | None = None):
    """Score ``config``'s input into its table (resuming from the parts a cancelled or killed attempt left);
    returns :class:`cxrcore.score.Summary` (``complete`` False when ``should_stop`` ended it early). ``shard``: this
    task's shard of a sharded job (``shards`` > 1); the summary's ``complete`` is then True only for the task that
    merged every shard's table (the others' ``pending_shards`` says how many were not done when they ended)."""
    import time

    import torch

    from ..compare import model_name
    from .. import workspace
    from ..predictor import Predictor
    from ..runtime import scorer
    from ..score import merge_shards, score, shard_source, shard_table, source_of
    from ..train.events import EventLog

    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    events = EventLog(Path(run_dir) / EVENTS_NAME)
    source = source_of(config["input"])
    predictor = Predictor(config["checkpoint"])
    predictor.set_card(predictor.card.with_site(config.get("site")))
    model = model_name(config["checkpoint"], predictor)
    network, runtime, why_not = scorer(predictor, config.get("runtime") or RUNTIMES[0], config.get("threads") or 0)
    log(f"the network runs on {runtime}" + (f" ({why_not})" if why_not else ""))
    out = out_path(config, run_dir)
    shards = int(config.get("shards") or 1)
    whole, target = source, out
    if shards > 1:
        if shard is None or not 0 <= shard < shards:
            raise ConfigError(f"A job of {shards} shards runs as a Slurm array, one task per shard (0 to {shards - 1}); "
                              f"this process was given shard {shard}.")
        source, target = shard_source(source, shard, shards), shard_table(out.with_name(out.name + ".shards"), shard)
    total = len(source.paths)
    tag = {"shard": shard, "shards": shards} if shards > 1 else {}
    events("score_start", total=total, input_total=len(whole.paths), input=source.describe, model=model,
           out=str(out), runtime=runtime, runtime_note=why_not, **tag)
    log(f"scoring {total} image(s) of {source.describe} with {model} into {target}")
    t0, last = time.monotonic(), [0.0]

    def progress(done: int, todo: int, errors: int) -> None:
        events("score_progress", done=done, todo=todo, errors=errors, seconds=round(time.monotonic() - t0, 3), **tag)
        if time.monotonic() - last[0] > 10 or done >= todo:
            last[0] = time.monotonic()
            log(f"{done} of {todo} image(s) scored this attempt ({errors} unreadable)")

    summary = score(source, network, target, model, workers=config["workers"], batch=config["batch_size"],
                    progress=progress, should_stop=should_stop)
    summary.runtime_note = why_not
    if summary.resumed:
        log(f"{summary.resumed} row(s) were already scored by an earlier attempt")
    if not summary.complete:
        events("score_stopped", **summary.to_dict(), **tag)
        return summary
    if shards > 1:   # this shard is done: the last one to end merges them all
        folder = target.parent
        (folder / f"done-{shard:05d}").write_text(f"{summary.rows} rows\n")
        with workspace.file_lock(folder.with_name(folder.name + ".lock")):
            done = [k for k in range(shards) if (folder / f"done-{k:05d}").exists()]
            if len(done) < shards or not folder.exists():
                summary.complete, summary.pending_shards = False, shards - len(done)
                log(f"shard {shard + 1} of {shards} done ({summary.rows} rows); {shards - len(done)} shard(s) to go")
                events("score_shard_done", rows=summary.rows, errors=summary.errors, **tag)
                return summary
            import pandas as pd

            columns = list(pd.read_parquet(target).columns)
            summary = merge_shards(whole, folder, shards, out, columns, summary)
            log(f"shard {shard + 1} of {shards} done, the last: {shards} tables merged into {out}")
        events("score_shard_done", rows=summary.rows, errors=summary.errors, **tag)
    events("score_done", **summary.to_dict())
    (Path(run_dir) / SUMMARY_NAME).write_text(json.dumps(summary.to_dict(), indent=1))
    return summary


WATCH_OPTIONS = (TASK_KEY, "checkpoint", "since", "interval", "name", "threads", "slurm")


def check_watch_config(config: dict, settings=None, user=None) -> dict:
    """A watch's config (``task`` = ``pacs-watch``: score new studies arriving in the PACS, :mod:`cxrcore.pacs.watch`)
    checked and normalised: the operator's only (AccessError for a visitor of a shared server); the PACS set up
    with storing allowed (PacsError); ``since`` a date ``YYYYMMDD`` or empty; ``interval`` at least 5 seconds."""
    from ..checkpoint import read_card
    from ..models.library import library_ref
    from ..pacs.dicomweb import ENV_STORE, ENV_URL, PacsConfig, PacsError

    from .. import hosting

    if user is not None and not hosting.is_admin(user, settings):
        raise AccessError("Only the operator or an admin (CXR_JOB_ADMINS) turns on the scoring of new PACS studies: "
                          "it stores results in the hospital's PACS.")
    unknown = sorted(set(config) - set(WATCH_OPTIONS))
    if unknown:
        raise ConfigError(f"Unknown watch option(s): {', '.join(unknown)}. Known: {', '.join(WATCH_OPTIONS)}.")
    pacs = PacsConfig.from_env()
    if pacs is None:
        raise PacsError(f"No PACS is set up: the operator sets {ENV_URL} (see docs/pacs.md).")
    if pacs.store == "off":
        raise PacsError(f"Scoring new studies stores results in the PACS, which is off here: the operator allows it "
                        f"with {ENV_STORE}=on-request.")
    out = dict(config)
    if not isinstance(out.get("checkpoint"), str) or not out["checkpoint"].strip():
        raise ConfigError("A watch needs `checkpoint`: the model that scores the new studies.")
    if not library_ref(out["checkpoint"]):
        out["checkpoint"] = str(Path(out["checkpoint"]).expanduser().resolve())
        read_card(out["checkpoint"])
    since = str(out.get("since") or "")
    if since and not (len(since) == 8 and since.isdigit()):
        raise ConfigError(f"since is a study date written YYYYMMDD (e.g. 20240131), not {since!r}.")
    out["since"] = since
    interval = out.get("interval", 60)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval < 5:
        raise ConfigError(f"interval is the seconds between two polls of the PACS, at least 5, not {interval!r}.")
    out["interval"] = interval
    threads = out.get("threads", 0) or 0
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ConfigError(f"threads must be a whole number of at least 0, not {threads!r}.")
    out["threads"] = threads
    return out


def run_watch(config: dict, should_stop, log=print) -> int:
    """Watch the operator's PACS until ``should_stop()`` (a cancel); returns the studies scored."""
    import torch

    from ..compare import model_name
    from ..pacs.dicomweb import PacsConfig
    from ..pacs.watch import WatchTable, watch
    from ..predictor import Predictor

    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    predictor = Predictor(config["checkpoint"])
    return watch(PacsConfig.from_env(), predictor, model_name(config["checkpoint"], predictor), WatchTable(),
                 since=config.get("since") or "", interval=float(config["interval"]), log=log, should_stop=should_stop)


def read_summary(run_dir: str | Path) -> dict | None:
    """The end's summary of a scoring job (rows, errors, seconds, out, csv, errors_csv, ...), or None."""
    path = Path(run_dir) / SUMMARY_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
