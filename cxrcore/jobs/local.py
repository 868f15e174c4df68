"""The local backend: each job is a detached ``python -m cxrcore.jobs.runner`` process on this machine.

A job runs in its own session (``start_new_session``), so it keeps running when the Streamlit
tab closes, the session ends or the app restarts; the app only reads the job table, the log and
``events.jsonl``. Jobs with ``gpus`` > 0 wait in a queue (no process) until enough GPUs are free
(:func:`start_queued`). Nothing here imports torch at module load: ``cxr jobs list`` stays fast.

The app and the CLI go through :mod:`cxrcore.jobs` (the dispatcher), which picks this backend
for rows whose ``backend`` is ``local``:

    job = submit({"data": "/data/nih", "epochs": 3}, name="nih-3ep")   # cxrcore.jobs.submit
    job = refresh(job)                    # reconcile a job whose process died without reporting
    cancel(job.id)
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .. import workspace
from ..errors import ConfigError, JobError
from ..train.progress import clock
from . import gpus
from .config import check_config
from .environment import job_environ
from .logfiles import LOG_NAME, append_log, tail_log, write_config
from .scoring import job_label, resume_words, secrets_needed
from .store import ACTIVE, Job, JobStore

QUEUED_GRACE_S = 120.0  # a queued row with no process for this long never started

# Runner processes started by this process, kept so they can be reaped (no zombies, no
# "still running" ResourceWarning when a Popen object is dropped).
_children: dict[int, subprocess.Popen] = {}
_exit_codes: dict[int, int] = {}  # pid -> return code of runners reaped here, until a row records it


# --------------------------------------------------------------------------- starting runners

def _runner_env(gpu_ids: list[int], needs: tuple[str, ...] = ()) -> dict:
    """The environment of a local runner: the server's without its secrets (:mod:`.environment`) but those its
    task ``needs``, this cxrcore importable, its GPUs (none: CPU only)."""
    env = job_environ(needs=needs)  # not the server's secrets (LLM key, API token): a job needs none of them
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
            env=_runner_env(gpu_ids, secrets_needed(job.config)), start_new_session=True, close_fds=True)
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
    store = store or JobStore()
    try:
        universe = gpus.list_gpus()
    except ConfigError:
        universe = []
    started = store.place_waiting(universe, lambda job, ids: _start_process(job, store, ids).pid)
    return [store.get(i) for i in started]


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


def _group_exists(pgid: int) -> bool:
    """Whether processes of group ``pgid`` survive their leader (e.g. orphaned data workers)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


# --------------------------------------------------------------------------- the backend

class LocalBackend:
    """Jobs as detached runner processes on this machine (see the module docstring)."""

    name = "local"

    def submit(self, config: dict, name: str = "", store: JobStore | None = None, run_dir: str | Path | None = None,
               **options) -> Job:
        """Validate ``config``, create the job and start its runner detached; returns the queued job (with pid).

        Bad input raises (ConfigError / DataError / CheckpointError / JobError) before any row or
        folder is created. A job with ``gpus`` > 0 gets that many GPUs no other active local job
        holds (any GPUs with ``share_gpus``), as its ``CUDA_VISIBLE_DEVICES``; when not enough are
        free it stays queued without a process (``note`` says what it waits for) and starts when
        GPUs free up (:func:`start_queued`, run by ``refresh_all`` and by every runner that ends).
        """
        if options:
            raise JobError(f"Option(s) {', '.join(sorted(options))} apply to the slurm backend only.")
        config = check_config(config)
        if int(config.get("shards") or 1) > 1:
            raise ConfigError(f"shards={config['shards']} splits the archive over a Slurm array job: submit with the "
                              "slurm backend, or use shards=1 on this machine.")
        if config.get("nodes", 1) > 1:
            raise ConfigError(f"nodes={config['nodes']} needs a cluster: submit with the slurm backend, or use "
                              "nodes=1 on this machine.")
        need = int(config.get("gpus") or 0)
        if need > 0:
            have = gpus.list_gpus()
            if need > len(have):
                why = gpus.nvml_problem() if not have and gpus.ENV not in os.environ else None
                raise ConfigError(f"The job asked for {need} GPU(s), this machine has {len(have)}"
                                  + (f" ({', '.join(map(str, have))})" if have else "")
                                  + (f" ({why})" if why else "")
                                  + "; use gpus=0 for CPU" + (f" or gpus<={len(have)}." if have else "."))
        if name and not config.get("name"):
            config["name"] = name  # the checkpoint card carries the job's name
        if not config.get("threads"):
            # Leave a core to the app: two processes each running all-core OpenMP on a small machine thrash.
            config["threads"] = max(1, (os.cpu_count() or 2) - 1)
        name = name or config.get("name") or job_label(config)
        store = store or JobStore()
        _reap_children()

        job = store.create(config, name=name, backend=self.name, run_dir=run_dir)
        try:
            write_config(Path(job.run_dir), config)
            if need > 0:
                store.update_active(job.id, note=f"waiting for {need} GPU(s)")
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

    def refresh(self, job: Job, store: JobStore) -> Job:
        """A queued/running job whose process is gone is marked failed with the log's last lines."""
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

    def cancel(self, job: Job, store: JobStore, timeout: float = 5.0) -> Job:
        """SIGTERM to the runner (it stops at the next training step and reports), SIGKILL to its process
        group if it has not exited after ``timeout`` seconds; marks the job cancelled."""
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
        store.transition(job.id, ACTIVE, "cancelled", note=None, **fields)  # no-op if the runner reported its end
        if job.pid:
            _exit_codes.pop(job.pid, None)
        start_queued(store)  # its GPUs are free now
        return store.get(job.id)

    def resume(self, job: Job, store: JobStore) -> Job:
        """The same row and run folder again: back to ``queued``, a new runner (or a place in the GPU queue)."""
        if not store.transition(job.id, ("cancelled", "failed"), "queued", pid=None, error=None, exit_code=None,
                                finished=None, started=None, gpu_ids=None, note=None):
            raise JobError(f"Job {job.id} changed state meanwhile ({store.get(job.id).status}); try again.")
        append_log(job, f"[{clock()}] resume requested: continuing {resume_words(job.config)}")
        _reap_children()
        need = int(job.config.get("gpus") or 0)
        try:
            if need > 0:
                store.update_active(job.id, note=f"waiting for {need} GPU(s)")
                start_queued(store)
                return store.get(job.id)
            proc = _start_process(store.get(job.id), store, [])
        except (OSError, subprocess.SubprocessError) as exc:
            store.mark(job.id, "failed", error=f"The job's process could not be started: {exc}")
            raise JobError(f"Could not start the training process for job {job.id}: {exc}") from exc
        return store.update(job.id, pid=proc.pid, gpu_ids=[])

    def logs(self, job: Job, n: int = 50) -> str:
        return tail_log(job, n)


BACKEND = LocalBackend()


def submit(config: dict, name: str = "", store: JobStore | None = None, run_dir: str | Path | None = None) -> Job:
    """Submit a job to this machine (``cxrcore.jobs.submit(..., backend="local")``)."""
    return BACKEND.submit(config, name=name, store=store, run_dir=run_dir)


__all__ = ["BACKEND", "QUEUED_GRACE_S", "LocalBackend", "check_config", "process_alive", "start_queued", "submit"]
