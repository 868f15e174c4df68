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
from .progress import progress_summary  # noqa: F401 - re-exported
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
    from ..data.readers import read_dataset
    from ..errors import DataError
    from ..labels import resolve_label_space

    # The label table (not the images): a label space the data does not have is refused now, not mid-run.
    table = read_dataset(data, check_files=False)
    wanted = resolve_label_space(cfg.labels)
    if not table.shared_labels(wanted):
        raise DataError(f"The dataset at {data} has none of the labels {', '.join(wanted)}; its labels are "
                        f"{', '.join(table.labels)}. Choose a label space it has (e.g. nih14 for NIH, chexpert14 "
                        "for CheXpert) or list its labels.")
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


def resume(job_id: str, store: JobStore | None = None) -> Job:
    """Start a cancelled or failed job again from its last complete epoch (``run_dir/last``).

    The same row and run folder are reused: the job goes back to ``queued``, a new runner
    restores model, optimizer, scheduler, sampler and RNG state and trains the remaining epochs
    (the events and log continue). Raises JobError for a job that is still active, succeeded, or
    never finished an epoch (clone it instead).
    """
    from ..train.state import state_path

    store = _store_for(store)
    job = refresh(job_id, store)
    if job.active:
        raise JobError(f"Job {job.id} is still {job.status}; only a cancelled or failed job can be resumed.")
    if job.status == "succeeded":
        raise JobError(f"Job {job.id} already succeeded; clone it to train again with other options.")
    if state_path(job.run_dir) is None:
        raise JobError(f"Job {job.id} never finished an epoch, so there is nothing to resume from; "
                       "clone it to start again.")
    if job.backend == "slurm":
        from . import slurm

        return slurm.resume(job.id, store)
    if not store.transition(job.id, ("cancelled", "failed"), "queued", pid=None, error=None, exit_code=None,
                            finished=None, started=None, gpu_ids=None, note=None):
        raise JobError(f"Job {job.id} changed state meanwhile ({store.get(job.id).status}); try again.")
    with open(Path(job.run_dir) / LOG_NAME, "a") as log:
        log.write(f"[{time.strftime('%H:%M:%S')}] resume requested: continuing from the last complete epoch\n")
    _reap_children()
    need = int(job.config.get("gpus") or 0)
    try:
        if need > 0:
            store.update(job.id, note=f"waiting for {need} GPU(s)")
            start_queued(store)
            return store.get(job.id)
        proc = _start_process(store.get(job.id), store, [])
    except (OSError, subprocess.SubprocessError) as exc:
        store.mark(job.id, "failed", error=f"The job's process could not be started: {exc}")
        raise JobError(f"Could not start the training process for job {job.id}: {exc}") from exc
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


__all__ = ["submit", "resume", "check_config", "refresh", "refresh_all", "cancel", "start_queued", "tail_log", "events",
           "progress_summary", "process_alive"]
