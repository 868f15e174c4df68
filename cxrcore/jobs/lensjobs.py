"""The dataset seen through a model's eyes, as jobs of the same queue as training and scoring (issue 24): ``index``
(``cxr index``: every film embedded into a nearest-neighbour index, :mod:`cxrcore.lens.index`) and
``label-issues`` (``cxr label-issues --folds K``: K fold models cross-fitted, then cleanlab's ranking,
:mod:`cxrcore.lens.crossfit`). Started from the Dataset page, watched and cancelled on the Training page.

Configs::

    {"task": "index", "data": "/data/nih", "checkpoint": "/runs/r1/checkpoint" | "xrv:…", "batch_size": 64}
    {"task": "label-issues", "data": "/data/nih", "checkpoint": …, "folds": 5,
     "epochs": null, "mode": null, "lr": null, "seed": 0, "threads": 0}

**Resume.** An index job built again embeds only the films not in the index yet. A cross-fitting job keeps each
fold's run in its run folder (``crossfit/fold-k``): finished folds are read back, a stopped one resumes from its last
complete epoch. Progress goes to ``events.jsonl`` as ``lens_step`` events ({done, total, text}); the result to
``lens.json`` (the index's summary, or the label issues: :meth:`cxrcore.lens.issues.LabelIssues.to_dict`).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError
from .logfiles import EVENTS_NAME
from .scoring import INDEX, ISSUES, TASK_KEY
RESULT_NAME = "lens.json"
STEP, DONE = "lens_step", "lens_done"
OPTIONS = {INDEX: ("task", "data", "checkpoint", "name", "batch_size", "slurm"),
           ISSUES: ("task", "data", "checkpoint", "name", "folds", "epochs", "mode", "lr", "seed", "threads", "slurm")}


def _whole(config: dict, key: str, default, least: int, most: int | None = None, optional: bool = False):
    value = config.get(key, default)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < least or (most is not None and value > most):
        raise ConfigError(f"{key} must be a whole number from {least}" + (f" to {most}" if most else "")
                          + f", not {value!r}.")
    return value


def check_lens_config(config: dict, settings=None, user=None) -> dict:
    """An index or cross-fitting job's config checked and normalised before anything is created: ConfigError for an
    unknown option or a bad number, DataError for a data folder that is no dataset, CheckpointError for a model
    that is not one, AccessError (``user``, a visitor) for a folder or model outside what the server offers."""
    from .. import hosting
    from ..checkpoint import read_card
    from ..data.index import MAX_FOLDS
    from ..data.readers import detect_format
    from ..models.library import library_ref

    task = config.get(TASK_KEY)
    unknown = sorted(set(config) - set(OPTIONS[task]))
    if unknown:
        raise ConfigError(f"Unknown {task} option(s): {', '.join(unknown)}. Known: {', '.join(OPTIONS[task])}.")
    out = dict(config)
    for key in ("data", "checkpoint"):
        if not isinstance(out.get(key), str) or not out[key].strip():
            raise ConfigError(f"A {task} job needs `{key}`: " + ("the dataset folder." if key == "data" else
                                                                 "the model (a checkpoint folder or library name)."))
    out["data"] = str(Path(out["data"]).expanduser().resolve())
    if not library_ref(out["checkpoint"]):
        out["checkpoint"] = str(Path(out["checkpoint"]).expanduser().resolve())
    settings = settings or hosting.settings()
    hosting.check_job_paths(out, settings)
    if user is not None and not user.operator:
        hosting.check_model_ref(out["checkpoint"], settings)
    detect_format(Path(out["data"]))   # DataError: missing, or no label table
    read_card(out["checkpoint"])     # CheckpointError
    if task == INDEX:
        out["batch_size"] = _whole(out, "batch_size", 64, 1, 4096)
        return out
    from ..lens.crossfit import DEFAULT_FOLDS, FOLD_MODES

    out["folds"] = _whole(out, "folds", DEFAULT_FOLDS, 2, MAX_FOLDS)
    out["epochs"] = _whole(out, "epochs", None, 1, 1000, optional=True)
    out["seed"] = _whole(out, "seed", 0, 0)
    out["threads"] = _whole(out, "threads", 0, 0, 1024)
    if out.get("mode") is not None and out["mode"] not in FOLD_MODES:
        raise ConfigError(f"mode is one of {', '.join(FOLD_MODES)}, not {out['mode']!r}.")
    lr = out.get("lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr <= 1):
        raise ConfigError(f"lr is a learning rate in (0, 1], not {lr!r}.")
    return out


def run_lens(config: dict, run_dir: Path, should_stop, log=print) -> tuple[bool, dict]:
    """Run an index or cross-fitting job; (complete, its result), the result also in ``lens.json``."""
    from ..train.events import EventLog

    events = EventLog(Path(run_dir) / EVENTS_NAME)
    task = config[TASK_KEY]
    if task == INDEX:
        from ..lens.index import build_index

        def progress(done: int, total: int) -> None:
            events(STEP, done=done, total=total, text=f"{done:,} of {total:,} films embedded")

        _, result = build_index(config["checkpoint"], config["data"], batch=int(config.get("batch_size") or 64),
                                progress=progress)
        log(f"{result['images']} films in {result['index']}: {result['embedded']} embedded now, {result['kept']} kept, "
            f"{result['dropped']} dropped")
        complete = True
    else:
        from ..lens.crossfit import crossfit, issues_of
        from ..lens.issues import LabelIssues

        folds = int(config["folds"])
        done = [0]

        def step(text: str) -> None:
            log(text)
            if "films predicted out of sample" in text:
                done[0] += 1
            events(STEP, done=done[0], total=folds + 1, text=text)

        kw = dict(folder=Path(run_dir) / "crossfit", epochs=config.get("epochs"), mode=config.get("mode"),
                  lr=config.get("lr"), seed=int(config.get("seed") or 0), threads=int(config.get("threads") or 0),
                  should_stop=should_stop, log=step)
        events(STEP, done=0, total=folds + 1, text=f"cross-fitting {folds} folds")
        fit = crossfit(config["checkpoint"], config["data"], folds, **kw)
        complete = fit.complete
        if not complete:
            return False, {"folds_done": len(fit.fold_cards), "folds": folds}
        found: LabelIssues = issues_of(fit, config["data"])   # the folds just gathered, not read again
        result = found.to_dict() | {"folds": folds, "fold_runs": fit.fold_cards, "checkpoint": config["checkpoint"],
                                    "data": config["data"]}
        log(f"{len(found.issues)} likely label error(s) among {found.images} films")
    (Path(run_dir) / RESULT_NAME).write_text(json.dumps(result, indent=1))
    events(DONE, text="done")
    return complete, result


def read_result(run_dir: str | Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / RESULT_NAME).read_text())
    except (OSError, ValueError):
        return None


def lens_summary(events: list[dict], base: dict) -> dict:
    """A progress summary (``base``: an empty training summary, for the keys every view reads) of a lens job."""
    s = dict(base, phase="waiting", step_text=None)
    for e in events:
        if e.get("type") == STEP:
            s["phase"] = "running"
            s["fraction"] = min(1.0, e.get("done", 0) / max(1, e.get("total", 1)))
            s["step_text"] = e.get("text")
        elif e.get("type") == DONE:
            s["phase"], s["fraction"] = "done", 1.0
    return s
