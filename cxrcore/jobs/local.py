"""The local backend: each job is a detached ``python -m cxrcore.jobs.runner`` process on this machine.

A job runs in its own session (``start_new_session``), so it keeps running when the Streamlit
tab closes, the session ends or the app restarts; the app only reads the job table, the log and
``events.jsonl``. Nothing here imports torch at module load: ``cxr jobs list`` stays fast.

    job = submit({"data": "/data/nih", "epochs": 3}, name="nih-3ep")
    job = refresh(job)                    # reconcile a job whose process died without reporting
    summary = progress_summary(events(job))
    cancel(job.id)
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path

from .. import workspace
from ..errors import ConfigError, JobError
from .store import ACTIVE, Job, JobStore

LOG_NAME = "log.txt"
EVENTS_NAME = "events.jsonl"
CONFIG_NAME = "config.json"
QUEUED_GRACE_S = 120.0  # a queued row with no process for this long never started

# Runner processes started by this process, kept so they can be reaped (no zombies, no
# "still running" ResourceWarning when a Popen object is dropped).
_children: dict[int, subprocess.Popen] = {}
_exit_codes: dict[int, int] = {}  # pid -> return code of runners reaped here, until a row records it


# --------------------------------------------------------------------------- submit

def check_config(config: dict) -> dict:
    """Validate a training config without starting anything; returns it normalised.

    Normalised: every option present (defaults filled in), ``data`` and ``init`` as absolute
    paths (the runner's working directory is the run folder). Raises ConfigError for bad
    options (unknown option, epochs < 1, unknown labels, mode, policy, device, architecture,
    pretrained), DataError for a data folder that is missing or holds no label table, and
    CheckpointError for an ``init`` that is not a checkpoint.
    """
    from ..train.trainer import TrainConfig  # imports torch

    if not isinstance(config, dict):
        raise ConfigError(f"A training config is a dict of options, not {type(config).__name__}.")
    if not config.get("data"):
        raise ConfigError("The training config needs `data`: the dataset folder to train on.")
    try:
        cfg = TrainConfig.from_dict(dict(config))
    except TypeError as exc:
        raise ConfigError(f"Invalid training options: {exc}.") from exc
    _check_types(cfg)
    _check_placement(cfg)
    try:
        cfg.validate()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Invalid training option value: {exc}.") from exc

    from ..data.readers import detect_format

    data = Path(cfg.data).expanduser().resolve()
    detect_format(data)  # DataError: missing folder, a file, or no label table
    cfg.data = str(data)
    if cfg.init:
        from ..checkpoint import read_card

        init = Path(cfg.init).expanduser().resolve()
        read_card(init)  # CheckpointError when it is not a checkpoint
        cfg.init = str(init)
    else:
        from ..data.preprocess import Preprocess

        Preprocess(size=cfg.image_size, fit=cfg.fit)  # ConfigError: fit, image size out of range
        from ..models.registry import check_architecture

        if not isinstance(cfg.arch, str):
            raise ConfigError(f"arch must be a timm architecture name, not {cfg.arch!r}.")
        check_architecture(cfg.arch, cfg.pretrained, cfg.arch_kwargs)  # unknown name, options it refuses
    out = asdict(cfg)
    try:
        json.dumps(out)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"The training config must be plain JSON values: {exc}.") from exc
    return out


_TYPE_NAMES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "list": (list,),
               "dict": (dict,), "None": (type(None),)}


def _check_types(cfg) -> None:
    """Option values of the declared types (validate() would let epochs="3" through to fail mid-run)."""
    from dataclasses import fields

    for f in fields(cfg):
        ann = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        names = [t.strip() for t in ann.split("|")]
        if not names or any(n not in _TYPE_NAMES for n in names):
            continue  # a type this check does not know: leave it to validate()
        value = getattr(cfg, f.name)
        allowed = tuple(t for n in names for t in _TYPE_NAMES[n])
        if isinstance(value, bool) and bool not in allowed:
            ok = False  # True is an int to Python, not to a training option
        else:
            ok = isinstance(value, allowed)
        if not ok:
            raise ConfigError(f"Training option {f.name} must be {' or '.join(names)}, not {value!r}.")


# slurm options: name -> (allowed types, what it is)
SLURM_OPTIONS = {
    "partition": ((str,), "partition name"),
    "cpus": ((int,), "CPUs per task (also the job's torch/OpenMP threads)"),
    "mem": ((str, int), "memory per node, e.g. '16G' (a number is MiB)"),
    "time": ((str, int), "time limit, e.g. '2:00:00' (a number is minutes)"),
    "account": ((str,), "account to charge"),
    "extra": ((list, str), "extra sbatch options, e.g. ['--qos=high']"),
    "conf": ((str,), "the cluster's slurm.conf (default: $SLURM_CONF or Slurm's own default)"),
}


def _check_placement(cfg) -> None:
    """gpus, share_gpus, nproc, nodes and the slurm options (types were checked by _check_types)."""
    if cfg.gpus < 0:
        raise ConfigError(f"gpus must be 0 (CPU) or more, not {cfg.gpus}.")
    if cfg.nproc < 1:
        raise ConfigError(f"nproc (processes per node) must be at least 1, not {cfg.nproc}.")
    if cfg.nodes < 1:
        raise ConfigError(f"nodes must be at least 1, not {cfg.nodes}.")
    unknown = sorted(set(cfg.slurm) - set(SLURM_OPTIONS))
    if unknown:
        known = ", ".join(SLURM_OPTIONS)
        raise ConfigError(f"Unknown slurm option(s): {', '.join(map(str, unknown))}. Known: {known}.")
    for key, value in cfg.slurm.items():
        types, what = SLURM_OPTIONS[key]
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            names = " or ".join("a list of strings" if t is list else t.__name__ for t in types)
            raise ConfigError(f"slurm option {key} ({what}) must be {names}, not {value!r}.")
        items = value if isinstance(value, list) else [value]
        for item in items:
            if key == "extra" and not isinstance(item, str):
                raise ConfigError(f"slurm option extra must be a list of strings, not {value!r}.")
            if isinstance(item, str) and ("\n" in item or "\r" in item or "\0" in item):
                raise ConfigError(f"slurm option {key} must be a single line, not {item!r}.")
            if isinstance(item, str) and key != "extra" and not item.strip():
                raise ConfigError(f"slurm option {key} must not be empty.")
        if key == "cpus" and value < 1:
            raise ConfigError(f"slurm option cpus must be at least 1, not {value}.")
        if key in ("mem", "time") and isinstance(value, int) and value < 1:
            raise ConfigError(f"slurm option {key} must be positive, not {value}.")
    if str(cfg.device).startswith("cuda") and cfg.gpus == 0:
        raise ConfigError(f"device={cfg.device} needs a GPU: set gpus to 1 or more (gpus=0 runs on the CPU).")


def _runner_env(gpu_ids: list[int]) -> dict:
    """The environment of a local runner: this cxrcore importable, its GPUs (none: CPU only)."""
    from . import gpus

    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["CXR_HOME"] = str(workspace.root())
    # The runner's cwd is the run folder: make sure it imports this very cxrcore.
    pkg_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_ids)  # "" for a CPU job: never grabs a GPU
    if gpus.ENV not in env:
        # The runner starts waiting jobs when it ends: it must see the GPUs this process sees,
        # not the ones its own CUDA_VISIBLE_DEVICES leaves it.
        try:
            env[gpus.ENV] = ",".join(str(i) for i in gpus.list_gpus())
        except ConfigError:
            pass
    return env


def _start_process(job: Job, store: JobStore, gpu_ids: list[int]) -> subprocess.Popen:
    """Start ``job``'s runner detached (its own session), output appended to its log."""
    folder = Path(job.run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOG_NAME, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cxrcore.jobs.runner", job.id, "--db", str(store.path.resolve())],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=str(folder),
            env=_runner_env(gpu_ids), start_new_session=True, close_fds=True)
    _children[proc.pid] = proc
    return proc


def _waiting_for_gpus(job: Job) -> bool:
    """A local job queued for GPUs that has not got them yet (no process on purpose)."""
    try:
        need = int(job.config.get("gpus") or 0)
    except (TypeError, ValueError):
        need = 0
    return (job.backend == "local" and job.status == "queued" and job.pid is None and job.gpu_ids is None
            and need > 0)


def start_queued(store: JobStore | None = None) -> list[Job]:
    """Start local jobs waiting for GPUs, in creation order, on GPUs no other active job holds
    (any GPUs for ``share_gpus`` jobs); returns the jobs started. Safe to call from several
    processes at once (the placement happens under the job table's write lock).
    """
    from . import gpus

    store = _store_for(store)
    try:
        universe = gpus.list_gpus()
    except ConfigError:
        universe = []
    started = store.place_waiting(universe, lambda job, ids: _start_process(job, store, ids).pid)
    return [store.get(i) for i in started]


def submit(config: dict, name: str = "", store: JobStore | None = None, run_dir: str | Path | None = None,
           backend: str = "local", **backend_options) -> Job:
    """Validate ``config``, create the job and start its runner detached; returns the queued job (with pid).

    Bad input raises (ConfigError / DataError / CheckpointError / JobError) before any row or
    folder is created. ``backend="slurm"`` hands the job to :func:`cxrcore.jobs.slurm.submit`.

    A job with ``gpus`` > 0 gets that many GPUs no other active local job holds (any GPUs with
    ``share_gpus``), as its ``CUDA_VISIBLE_DEVICES``; when not enough are free it stays queued
    without a process (``note`` says what it waits for) and starts when GPUs free up
    (:func:`start_queued`, run by ``refresh_all`` and by every runner that ends).
    """
    if backend == "slurm":
        from . import slurm

        return slurm.submit(config, name=name, store=store, run_dir=run_dir, **backend_options)
    if backend != "local":
        raise JobError(f"Unknown job backend {backend!r}; use local or slurm.")
    if backend_options:
        raise JobError(f"Option(s) {', '.join(sorted(backend_options))} apply to the slurm backend only.")
    config = check_config(config)
    if config.get("nodes", 1) > 1:
        raise ConfigError(f"nodes={config['nodes']} needs a cluster: submit with the slurm backend, or use nodes=1 "
                          "on this machine.")
    need = int(config.get("gpus") or 0)
    if need > 0:
        from . import gpus

        have = gpus.list_gpus()
        if need > len(have):
            raise ConfigError(f"The job asked for {need} GPU(s), this machine has {len(have)}"
                              + (f" ({', '.join(map(str, have))})" if have else "")
                              + "; use gpus=0 for CPU" + (f" or gpus<={len(have)}." if have else "."))
    if name and not config.get("name"):
        config["name"] = name  # the checkpoint card carries the job's name
    if not config.get("threads"):
        # Leave a core to the app: two processes each running all-core OpenMP on a small machine thrash.
        config["threads"] = max(1, (os.cpu_count() or 2) - 1)
    name = name or config.get("name") or Path(config["data"]).name
    store = store or JobStore()
    _reap_children()

    job = store.create(config, name=name, backend="local", run_dir=run_dir)
    folder = Path(job.run_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        if need > 0:
            store.update(job.id, note=f"waiting for {need} GPU(s)")
        else:
            proc = _start_process(job, store, [])
    except (OSError, subprocess.SubprocessError) as exc:
        store.mark(job.id, "failed", error=f"The job's process could not be started: {exc}")
        raise JobError(f"Could not start the training process for job {job.id}: {exc}") from exc
    if need > 0:
        start_queued(store)  # earlier waiting jobs first; this one starts now if GPUs are free
        job = store.get(job.id)
        if job.status == "failed":
            raise JobError(f"Could not start the training process for job {job.id}: {job.error}")
        return job
    # The runner may already have marked itself running; only fill in the pid.
    return store.update(job.id, pid=proc.pid, gpu_ids=[])


# --------------------------------------------------------------------------- processes

def _reap_children() -> None:
    for pid, proc in list(_children.items()):
        if proc.poll() is not None:
            _children.pop(pid, None)
    while len(_exit_codes) > 1000:
        _exit_codes.pop(next(iter(_exit_codes)))


def _reap(pid: int, wait: float = 0.0) -> int | None:
    """Collect an exited child of ours; returns its Popen-style return code (negative: killed by
    that signal), also when it was reaped earlier, or None (running, or not our child).

    ``wait``: seconds to wait for a child of ours that is still exiting (killed, not yet a zombie).
    """
    proc = _children.get(pid)
    if proc is not None:
        code = proc.poll()
        if code is None and wait > 0:
            try:
                code = proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                code = None
        if code is not None:
            _children.pop(pid, None)
            _exit_codes[pid] = code
    elif pid not in _exit_codes:
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None  # not our child (submitted by another process): init reaps it
        if got == 0:
            return None
        _exit_codes[pid] = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return _exit_codes.get(pid)


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is the state), or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def process_alive(pid: int | None, job_id: str | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie), and - where /proc exists - runs job ``job_id``'s runner.

    Checking the command line guards against pid reuse after the runner died.
    """
    if not pid or pid <= 0:
        return False
    if not Path("/proc/self/stat").exists():  # not Linux: signal 0 is the best we have
        _reap(pid)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    stat = _proc_stat(pid)
    if stat is None:
        _reap(pid)
        return False
    if stat[0] in ("Z", "X", "x"):
        _reap(pid)
        return False
    if job_id is not None:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        if job_id.encode() not in argv:
            return False
    return True


def _kill_group(pid: int, sig: int) -> None:
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    try:
        if pgid == pid:  # the runner leads its own session/group: take its children (pool workers) too
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------- refresh / cancel

def _store_for(store: JobStore | None) -> JobStore:
    return store or JobStore()


def refresh(job: Job | str, store: JobStore | None = None) -> Job:
    """Re-read a job; a queued/running job whose process is gone is marked failed with the log's last lines."""
    store = _store_for(store)
    job = store.get(job.id if isinstance(job, Job) else job)
    if job.backend == "slurm":
        from . import slurm

        return slurm.refresh(job, store)  # the pid is on a compute node: no process checks here
    if job.ended:
        if job.pid in _children:
            _reap(job.pid)  # the runner reported and exited: collect the zombie
        _exit_codes.pop(job.pid, None)
        return job
    if job.pid is None:
        if _waiting_for_gpus(job):
            return job  # no process on purpose: start_queued starts it when GPUs free up
        if job.status == "queued" and time.time() - job.created > QUEUED_GRACE_S:
            store.transition(job.id, "queued", "failed",
                             error="The job never started: no process was recorded for it.")
            return store.get(job.id)
        return job
    if process_alive(job.pid, job.id):
        return job
    code = _reap(job.pid, wait=2.0)  # a killed child of ours may still be exiting
    last = tail_log(job, 5).strip()
    error = ("The job's process ended without reporting (killed, e.g. out of memory or SIGKILL). "
             f"Last log lines:\n{last or '(the log is empty)'}")
    fields = {"error": error}
    if code is not None:
        fields["exit_code"] = code
    store.transition(job.id, ACTIVE, "failed", **fields)  # no-op if the runner reported meanwhile
    _exit_codes.pop(job.pid, None)
    return store.get(job.id)


def refresh_all(store: JobStore | None = None, limit: int | None = None) -> list[Job]:
    """Refresh every queued/running job; returns the jobs that were active before the refresh, refreshed."""
    store = _store_for(store)
    _reap_children()
    jobs = [refresh(j, store) for j in store.list(limit=limit, status=ACTIVE)]
    if start_queued(store):
        jobs = [store.get(j.id) for j in jobs]
    return jobs


def cancel(job_id: str, store: JobStore | None = None, timeout: float = 5.0) -> Job:
    """Stop a job: SIGTERM to its runner (it stops at the next training step and reports),
    SIGKILL to its process group if it has not exited after ``timeout`` seconds; marks it cancelled.

    A job that already ended raises JobError.
    """
    store = _store_for(store)
    job = refresh(job_id, store)
    if job.backend == "slurm":
        from . import slurm

        return slurm.cancel(job.id, store=store, timeout=timeout)
    if job.ended:
        raise JobError(f"Job {job.id} already ended with status {job.status}; there is nothing to cancel.")
    code = None
    if job.pid and process_alive(job.pid, job.id):
        # SIGTERM to the leader only: pool workers killed by SIGTERM would hang the cache build.
        try:
            os.kill(job.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + max(0.0, float(timeout))
        while time.monotonic() < deadline and process_alive(job.pid, job.id):
            time.sleep(0.1)
        if process_alive(job.pid, job.id):
            _kill_group(job.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline and process_alive(job.pid, job.id):
                time.sleep(0.05)
        elif _group_exists(job.pid):
            _kill_group(job.pid, signal.SIGKILL)  # leftovers of the runner's group (data workers)
        code = _reap(job.pid, wait=2.0)
    fields = {"error": "Cancelled." if job.status == "queued" else "Cancelled; the process was stopped."}
    if code is not None:
        fields["exit_code"] = code
    store.transition(job.id, ACTIVE, "cancelled", note=None, **fields)  # no-op if the runner reported its own end
    if job.pid:
        _exit_codes.pop(job.pid, None)
    start_queued(store)  # its GPUs are free now
    return store.get(job.id)


def _group_exists(pgid: int) -> bool:
    """Whether processes of group ``pgid`` survive their leader (e.g. orphaned data workers)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


# --------------------------------------------------------------------------- reading a job

def tail_log(job: Job, n: int = 50) -> str:
    """The last ``n`` lines of the job's log.txt ('' before it exists)."""
    path = Path(job.run_dir) / LOG_NAME
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            chunk = min(size, max(8192, 400 * max(1, n)))
            f.seek(size - chunk)
            data = f.read()
    except FileNotFoundError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    if chunk < size and lines:
        lines = lines[1:]  # first line may be cut
    return "\n".join(deque(lines, maxlen=max(0, n)))


def events(job: Job) -> list[dict]:
    """The job's training events (``events.jsonl``), oldest first."""
    from ..train.trainer import read_events

    return read_events(Path(job.run_dir) / EVENTS_NAME)


def _num(v) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) or math.isinf(f) else f


def progress_summary(events: list[dict]) -> dict:
    """What a progress view needs, from a job's events.

    Keys: phase (waiting | preparing | training | stopped | done), epoch, epochs, step, total_steps,
    fraction (0..1), last_loss, images_per_s, eta_seconds, elapsed_seconds, best_val_mean_auroc,
    best_epoch, test_mean_auroc, loss_curve [(step, loss)], auroc_curve [(epoch, val_mean_auroc)],
    epoch_loss_curve [(epoch, train_loss)], per_label_auroc (the last epoch's {label: auroc|None}),
    labels, n_images, stopped.
    """
    s: dict = {"phase": "waiting", "epoch": 0, "epochs": None, "step": 0, "total_steps": None, "fraction": 0.0,
               "last_loss": None, "images_per_s": None, "eta_seconds": None, "elapsed_seconds": None,
               "best_val_mean_auroc": None, "best_epoch": None, "test_mean_auroc": None,
               "loss_curve": [], "auroc_curve": [], "epoch_loss_curve": [], "per_label_auroc": {},
               "labels": [], "n_images": None, "stopped": False}
    t_start = t_train = t_last = None
    for e in events or []:
        kind, t = e.get("type"), _num(e.get("time"))
        if t is not None:
            t_last = t
        if kind == "start":
            s["phase"] = "preparing"
            t_start = t
            cfg = e.get("config") or {}
            s["epochs"] = cfg.get("epochs")
        elif kind == "data":
            s["phase"] = "training"
            t_train = t
            s["labels"] = list(e.get("labels") or [])
            s["n_images"] = e.get("n_images")
            if e.get("steps_per_epoch") is not None and s["epochs"]:
                s["total_steps"] = int(e["steps_per_epoch"]) * int(s["epochs"])
        elif kind == "step":
            s["phase"] = "training"
            s["epoch"] = e.get("epoch", s["epoch"])
            s["step"] = int(e.get("step") or 0)
            s["total_steps"] = e.get("total_steps", s["total_steps"])
            s["last_loss"] = _num(e.get("loss"))
            s["images_per_s"] = _num(e.get("images_per_s"))
            if s["last_loss"] is not None:
                s["loss_curve"].append((s["step"], s["last_loss"]))
        elif kind == "epoch":
            ep = e.get("epoch")
            s["epoch"] = ep
            auroc = _num(e.get("val_mean_auroc"))
            s["auroc_curve"].append((ep, auroc))
            loss = _num(e.get("train_loss"))
            if loss is not None:
                s["epoch_loss_curve"].append((ep, loss))
            s["per_label_auroc"] = {k: _num(v) for k, v in (e.get("val_auroc") or {}).items()}
            if auroc is not None and (s["best_val_mean_auroc"] is None or auroc > s["best_val_mean_auroc"]):
                s["best_val_mean_auroc"], s["best_epoch"] = auroc, ep
        elif kind == "stopped":
            s["phase"] = "stopped"
            s["stopped"] = True
        elif kind == "done":
            s["phase"] = "stopped" if e.get("stopped") else "done"
            s["stopped"] = bool(e.get("stopped")) or s["stopped"]
            s["test_mean_auroc"] = _num(e.get("test_mean_auroc"))
            if e.get("best_epoch") is not None:
                s["best_epoch"] = e.get("best_epoch")
    total = s["total_steps"]
    if s["phase"] == "done":
        s["fraction"] = 1.0
    elif total:
        s["fraction"] = min(1.0, max(0.0, s["step"] / total))
    if t_start is not None and t_last is not None:
        s["elapsed_seconds"] = max(0.0, t_last - t_start)
    if s["phase"] == "training" and total and s["step"] and t_train is not None and t_last is not None:
        # Seconds per step so far, validation included after the first epoch.
        per_step = (t_last - t_train) / s["step"]
        s["eta_seconds"] = max(0.0, per_step * (total - s["step"]))
    elif s["phase"] in ("done", "stopped"):
        s["eta_seconds"] = 0.0
    return s


__all__ = ["submit", "check_config", "refresh", "refresh_all", "cancel", "start_queued", "tail_log", "events",
           "progress_summary", "process_alive"]
