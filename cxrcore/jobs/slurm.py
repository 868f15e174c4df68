"""The Slurm backend: a job is a ``sbatch`` script that runs ``python -m cxrcore.jobs.runner``.

The runner runs inside the allocation and updates the same job table as a local runner (the
SQLite file must be on a file system the compute node shares with this machine; SQLite's WAL
mode wants a local one, which holds for a single-node cluster or a login node that is also the
compute node). The job's output is appended to ``run_dir/log.txt``, so logs read the same as for
local jobs. Slurm's own job id is stored in the row (``backend_id``).

    job = submit({"data": "/data/nih", "epochs": 3, "slurm": {"partition": "gpu", "time": "2:00:00"}})
    job = cxrcore.jobs.refresh(job)  # squeue / scontrol show job: PENDING -> queued, ended in Slurm -> reconciled
    cxrcore.jobs.cancel(job.id)      # scancel: SIGTERM to the runner first, so it stops cleanly

:class:`SlurmBackend` is what the dispatcher (:mod:`cxrcore.jobs.dispatch`) calls for rows whose
``backend`` is ``slurm``.

``cluster`` (or the slurm option ``conf``) names the cluster's ``slurm.conf``; by default the
Slurm commands use ``$SLURM_CONF`` or their built-in default. ``sacct`` is never used: a cluster
without accounting storage works.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .. import workspace
from ..errors import ConfigError, JobError
from .environment import job_environ
from .config import SLURM_OPTIONS, check_config, check_slurm_options, slurm_tokens
from .logfiles import LOG_NAME, tail_log, write_config
from .scoring import SCORE, job_label, secrets_needed, task_of
from .store import ACTIVE, Job, JobStore

SBATCH_NAME = "job.sbatch"
RDZV_PORT = 29500
COMMAND_TIMEOUT_S = 30.0

PENDING_STATES = ("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD",
                  "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING", "STAGE_OUT")
RUNNING_STATES = ("RUNNING", "COMPLETING")
ENDED_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
                "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT")

_NOT_REACHABLE_HELP = ("Start the cluster's slurmctld (and munged), point SLURM_CONF at the cluster's slurm.conf, "
                       "or use the local backend (--backend local).")


# --------------------------------------------------------------------------- talking to Slurm

def _env(conf: str | None, needs: tuple[str, ...] = ()) -> dict:
    """The Slurm commands' environment: the server's without its secrets (:mod:`.environment`) but those the
    job's task ``needs``; ``sbatch`` exports its own environment to the job (``--export=ALL``), so the job never
    sees the others either."""
    env = job_environ(needs=needs)
    if conf:
        env["SLURM_CONF"] = str(conf)
    return env


def _conf_of(job_or_config) -> str | None:
    config = job_or_config.config if isinstance(job_or_config, Job) else job_or_config
    return ((config or {}).get("slurm") or {}).get("conf") or None


def _run(args: list[str], conf: str | None, timeout: float = COMMAND_TIMEOUT_S,
         stdin: str | None = None, needs: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run a Slurm command; a missing binary or a hang becomes JobError."""
    try:
        return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=timeout,
                              env=_env(conf, needs))
    except FileNotFoundError as exc:
        raise JobError(f"Slurm is not reachable: `{args[0]}` is not on PATH. {_NOT_REACHABLE_HELP}") from exc
    except subprocess.TimeoutExpired as exc:
        raise JobError(f"Slurm is not reachable: `{' '.join(args[:2])}` did not answer within {timeout:.0f}s. "
                       f"{_NOT_REACHABLE_HELP}") from exc


def _said(proc: subprocess.CompletedProcess) -> str:
    return " ".join((proc.stderr or proc.stdout or "").split())[:500]


def check_reachable(cluster: str | None = None) -> None:
    """JobError unless ``sbatch`` is on PATH and the controller answers (``scontrol ping``, else ``sinfo``)."""
    for tool in ("sbatch", "squeue", "scancel", "scontrol"):
        if shutil.which(tool) is None:
            raise JobError(f"Slurm is not reachable: `{tool}` is not on PATH. Install the Slurm client commands "
                           f"(Debian: slurm-client) or add them to PATH; {_NOT_REACHABLE_HELP}")
    conf = cluster or os.environ.get("SLURM_CONF")
    if conf and not Path(conf).is_file():
        # Slurm's commands would retry a missing slurm.conf for a minute.
        raise JobError(f"Slurm is not reachable: the Slurm configuration {conf} does not exist. {_NOT_REACHABLE_HELP}")
    ping = _run(["scontrol", "ping"], cluster, timeout=20)
    if re.search(r"\bis UP\b", ping.stdout or ""):
        return
    info = _run(["sinfo", "-h", "-o", "%P"], cluster, timeout=20)
    if info.returncode == 0:
        return
    raise JobError(f"Slurm is not reachable: its controller does not answer ({_said(ping) or _said(info)}). "
                   f"{_NOT_REACHABLE_HELP}")


def available(cluster: str | None = None) -> str | None:
    """None when Slurm can take jobs, else the reason it cannot (for a UI that offers the backend)."""
    try:
        check_reachable(cluster)
    except JobError as exc:
        return str(exc)
    return None


# --------------------------------------------------------------------------- the batch script

def _sbatch_value(value) -> str:
    return shlex.quote(str(value))


_PLAIN_PATH = re.compile(r"[A-Za-z0-9_./+,:@=-]+")
JOB_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _path_directive(option: str, path: str | Path, pattern: bool = False) -> str:
    """``#SBATCH --option=PATH`` as one sbatch argument: a path with a space, ``#`` or quote is written in
    double quotes (sbatch's own quoting for ``#SBATCH`` lines); ``pattern``: the option expands ``%``
    (``--output``), so a ``%`` of the path is written ``%%``. A path with a newline, a control character
    or a backslash cannot be written: ConfigError."""
    text = str(path)
    if re.search(r"[\x00-\x1f\x7f\\]", text):
        raise ConfigError(f"The path {text!r} cannot be written into an sbatch script (a control character or a "
                          "backslash in it). Choose a run folder and a workspace (CXR_HOME) without them.")
    if pattern:
        text = text.replace("%", "%%")
    if not _PLAIN_PATH.fullmatch(text):
        text = '"' + text.replace('"', '\\"') + '"'
    return f"#SBATCH --{option}={text}"


def _whole(config: dict, key: str, default: int, least: int) -> int:
    """A whole-number training option as the script writes it (check_config has checked it; render_script
    may be called directly)."""
    value = config.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"Training option {key} must be a whole number of at least {least}, not {value!r}.")
    return value


def render_script(job_id: str, config: dict, run_dir: str | Path, db: str | Path, name: str = "",
                  python: str | None = None, cxr_home: str | Path | None = None) -> str:
    """The ``sbatch`` script of a job (text only: nothing is submitted).

    Every ``#SBATCH`` line holds one argument: the slurm options are checked against their declared
    forms here too (:func:`cxrcore.jobs.config.slurm_tokens`; ConfigError naming the option), so a
    script is never written with a value that would add options, lines or commands, whoever calls.
    The job's name appears only as the ``--job-name`` token (letters, digits, ``. _ -``).
    """
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        raise ConfigError(f"A job id is letters, digits, '.', '_' and '-' (at most 64), not {job_id!r}.")
    opts = config.get("slurm") or {}
    if not isinstance(opts, dict):
        raise ConfigError(f"Training option slurm must be a dict of slurm options, not {opts!r}.")
    unknown = sorted(map(str, set(opts) - set(SLURM_OPTIONS)))
    if unknown:
        raise ConfigError(f"Unknown slurm option(s): {', '.join(unknown)}. Known: {', '.join(SLURM_OPTIONS)}.")
    tokens = {key: slurm_tokens(key, opts.get(key)) for key in SLURM_OPTIONS}  # ConfigError for a bad value
    run_dir = Path(run_dir)
    gpus = _whole(config, "gpus", 0, 0)
    nodes = _whole(config, "nodes", 1, 1)
    cpus = opts.get("cpus")
    threads = _whole(config, "threads", 0, 0) or int(cpus or 1)
    python = python or sys.executable
    pkg_parent = str(Path(__file__).resolve().parents[2])
    cxr_home = str(cxr_home or workspace.root())
    job_name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"cxr-{name or job_id}")[:60]

    lines = ["#!/bin/bash",
             f"# cxr training job {job_id}, written by cxrcore.jobs.slurm",  # never the name: it is free text
             f"#SBATCH --job-name={job_name}",
             _path_directive("output", run_dir / LOG_NAME, pattern=True),
             _path_directive("error", run_dir / LOG_NAME, pattern=True),
             "#SBATCH --open-mode=append",
             _path_directive("chdir", run_dir),
             f"#SBATCH --nodes={nodes}",
             "#SBATCH --ntasks-per-node=1"]
    if gpus > 0:
        lines.append(f"#SBATCH --gres=gpu:{gpus}")  # per node
    shards = _whole(config, "shards", 1, 1) if task_of(config) == SCORE else 1
    if shards > 1:   # a sharded scoring: one array task per shard (cxrcore.jobs.scoring)
        lines.append(f"#SBATCH --array=0-{shards - 1}")
    lines += [f"#SBATCH {token}" for key in SLURM_OPTIONS for token in tokens[key]]
    lines += ["",
              "set -u",
              f"export PYTHONPATH={_sbatch_value(pkg_parent)}${{PYTHONPATH:+:$PYTHONPATH}}",
              f"export CXR_HOME={_sbatch_value(cxr_home)}",
              "export PYTHONUNBUFFERED=1",
              f"export OMP_NUM_THREADS={threads}",
              f"export MKL_NUM_THREADS={threads}",
              'echo "[$(date +%H:%M:%S)] slurm job $SLURM_JOB_ID on $(hostname) (nodes: $SLURM_JOB_NODELIST)"',
              ""]
    runner_args = f"-m cxrcore.jobs.runner {shlex.quote(job_id)} --db {_sbatch_value(db)}"
    if shards > 1:
        runner_args += " --shard ${SLURM_ARRAY_TASK_ID}"
    if nodes > 1:
        # The runner runs once, in the batch step on the first node, and owns the job's row; it starts
        # one torchrun per node with `srun --ntasks-per-node=1 ... torchrun --nnodes N` (train.worker).
        lines += [f"export CXR_RDZV_PORT={RDZV_PORT}",
                  'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)']
    # exec: the runner is the batch step's process, so `scancel --batch --signal=TERM` reaches it.
    lines.append(f"exec {_sbatch_value(python)} {runner_args}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- state

def slurm_state(job: Job) -> tuple[str | None, str]:
    """(Slurm state, detail) of a job: ``squeue``, else ``scontrol show job``.

    State None with detail "purged": the controller no longer knows the job. Raises JobError when
    the controller cannot be asked.
    """
    conf = _conf_of(job)
    sid = str(job.backend_id)
    q = _run(["squeue", "-h", "-j", sid, "-o", "%T|%r"], conf)
    if q.returncode == 0 and q.stdout.strip():
        state, _, reason = q.stdout.strip().splitlines()[0].partition("|")
        return state.strip().upper(), reason.strip()
    s = _run(["scontrol", "show", "job", sid], conf)
    if s.returncode == 0:
        state = re.search(r"\bJobState=(\S+)", s.stdout)
        reason = re.search(r"\bReason=(\S+)", s.stdout)
        code = re.search(r"\bExitCode=(\S+)", s.stdout)
        detail = (reason.group(1) if reason else "") + (f", exit code {code.group(1)}" if code else "")
        return (state.group(1).upper() if state else None), detail
    said = _said(s)
    if "invalid job id" in said.lower():
        return None, "purged"
    raise JobError(f"Slurm is not reachable: {said or 'scontrol show job failed'}")


def _exit_code(detail: str) -> int | None:
    m = re.search(r"exit code (\d+):(\d+)", detail)
    if not m:
        return None
    code, sig = int(m.group(1)), int(m.group(2))
    return -sig if sig else code


# --------------------------------------------------------------------------- the backend

class SlurmBackend:
    """Jobs as ``sbatch`` scripts on a Slurm cluster (see the module docstring)."""

    name = "slurm"

    def submit(self, config: dict, name: str = "", store: JobStore | None = None, run_dir: str | Path | None = None,
               cluster: str | None = None) -> Job:
        """Validate ``config``, write ``run_dir/job.sbatch`` and submit it with ``sbatch``; returns the queued job.

        ``cluster``: the cluster's slurm.conf (stored as the slurm option ``conf``, used by refresh
        and cancel). Bad options, an unreachable Slurm, a run folder that already exists or a script
        Slurm refuses (``sbatch --test-only``: unknown partition, more GPUs than any node has) raise
        before any row or folder is created.
        """
        config = check_config(config)
        slurm_opts = dict(config.get("slurm") or {})
        if cluster:
            slurm_opts["conf"] = str(Path(cluster).expanduser().resolve())
            check_slurm_options(slurm_opts)  # ConfigError for a path SLURM_CONF cannot hold
        conf = slurm_opts.get("conf") or None
        config["slurm"] = slurm_opts
        if name and not config.get("name"):
            config["name"] = name
        if not config.get("threads"):
            config["threads"] = int(slurm_opts.get("cpus") or 1)
        name = name or config.get("name") or job_label(config)
        check_reachable(conf)
        if run_dir is not None and Path(run_dir).expanduser().exists():
            raise JobError(f"The run folder {Path(run_dir).expanduser()} already exists. Choose another run folder, so "
                           "an earlier run is not overwritten.")
        store = store or JobStore()
        db = store.path.resolve()

        # Let Slurm judge the script before anything is created (partition, gres, time, account).
        probe_dir = Path(run_dir).expanduser().resolve() if run_dir is not None else workspace.runs() / "probe"
        probe = render_script("probe", config, probe_dir, db, name=name)
        test = _run(["sbatch", "--test-only"], conf, stdin=probe)
        if test.returncode != 0:
            raise JobError(f"Slurm refuses the job: {_said(test)}")

        job = store.create(config, name=name, backend=self.name, run_dir=run_dir)
        folder = Path(job.run_dir)
        try:
            write_config(folder, config)
            script = folder / SBATCH_NAME
            script.write_text(render_script(job.id, config, folder, db, name=name))
            out = _run(["sbatch", "--parsable", str(script)], conf, needs=secrets_needed(config))
        except (OSError, JobError) as exc:
            store.mark(job.id, "failed", error=f"The job could not be submitted to Slurm: {exc}")
            raise JobError(f"Could not submit job {job.id} to Slurm: {exc}") from exc
        slurm_id = (out.stdout or "").strip().split(";")[0].strip()
        if out.returncode != 0 or not slurm_id.isdigit():
            message = _said(out) or f"sbatch exited with {out.returncode}"
            store.mark(job.id, "failed", error=f"sbatch refused the job: {message}")
            raise JobError(f"sbatch refused job {job.id}: {message}")
        store.update(job.id, backend_id=slurm_id)
        store.update_active(job.id, note="submitted to Slurm")  # not onto a row its runner has already ended
        return store.get(job.id)

    def resume(self, job: Job, store: JobStore) -> Job:
        """Submit a cancelled or failed Slurm job's script again (written anew from the job's config, so an
        option this version no longer accepts raises ConfigError); its runner resumes from the last complete epoch.

        The dispatcher (:func:`cxrcore.jobs.resume`) has checked that the job ended and saved an epoch.
        """
        conf = _conf_of(job)
        check_reachable(conf)
        script = Path(job.run_dir) / SBATCH_NAME
        if not script.is_file():
            raise JobError(f"Job {job.id}'s batch script {script} is missing; clone the job to submit it again.")
        # Written again from the row's config: a script from an earlier version is not trusted as it is,
        # and options no longer accepted raise ConfigError here, before anything is submitted.
        script.write_text(render_script(job.id, job.config, Path(job.run_dir), store.path.resolve(), name=job.name))
        if not store.transition(job.id, ("cancelled", "failed"), "queued", pid=None, error=None, exit_code=None,
                                finished=None, started=None, note="resubmitted to Slurm"):
            raise JobError(f"Job {job.id} changed state meanwhile ({store.get(job.id).status}); try again.")
        out = _run(["sbatch", "--parsable", str(script)], conf, needs=secrets_needed(job.config))
        slurm_id = (out.stdout or "").strip().split(";")[0].strip()
        if out.returncode != 0 or not slurm_id.isdigit():
            message = _said(out) or f"sbatch exited with {out.returncode}"
            store.mark(job.id, "failed", error=f"sbatch refused the resumed job: {message}")
            raise JobError(f"sbatch refused job {job.id}: {message}")
        return store.update(job.id, backend_id=slurm_id)

    def refresh(self, job: Job, store: JobStore) -> Job:
        """Re-read a Slurm job and reconcile its row with what Slurm says.

        The runner marks running/succeeded/failed/cancelled itself; here a job that Slurm says ended
        while its row is still queued/running (killed, timed out, out of memory, cancelled outside
        the app, never started) is marked failed or cancelled with Slurm's state and the last log
        lines, and a job Slurm no longer knows at all is marked failed. While Slurm cannot be asked
        the row is left as it is (its note says so).
        """
        if job.ended:
            return job  # its note, if any, is the runner's word on its end (e.g. stopped early)
        if not job.backend_id:
            # Row created, sbatch not answered yet (or the submitting process died in between).
            if time.time() - job.created > 120:
                store.transition(job.id, ACTIVE, "failed", error="The job was never submitted to Slurm (no Slurm job id).")
            return store.get(job.id)
        try:
            state, detail = slurm_state(job)
        except JobError as exc:
            if job.note != str(exc):
                store.update_active(job.id, note=str(exc))
            return store.get(job.id)
        if state is None:
            last = tail_log(job, 5).strip()
            store.transition(job.id, ACTIVE, "failed",
                             error=(f"Slurm no longer knows job {job.backend_id} (purged from the controller) and it "
                                    f"never reported its end. Last log lines:\n{last or '(the log is empty)'}"))
            return store.get(job.id)
        base = state.split("+")[0].split()[0]
        if base in ENDED_STATES:
            job = store.get(job.id)  # the runner may have reported just now
            if job.ended:
                return job
            last = tail_log(job, 5).strip()
            fields = {"note": None}
            code = _exit_code(detail)
            if code is not None:
                fields["exit_code"] = code
            if base == "CANCELLED":
                store.transition(job.id, ACTIVE, "cancelled",
                                 error=f"Cancelled in Slurm (scancel, {detail}). Last log lines:\n{last or '(the log is empty)'}",
                                 **fields)
            else:
                store.transition(job.id, ACTIVE, "failed",
                                 error=(f"Slurm reports the job {base} ({detail}) but it never reported its end. "
                                        f"Last log lines:\n{last or '(the log is empty)'}"), **fields)
            return store.get(job.id)
        note = f"Slurm: {base}" + (f" ({detail})" if detail and detail not in ("None", "(null)") else "")
        if base in RUNNING_STATES and job.status == "queued":
            note = f"Slurm: {base}; the runner is starting"
        if note != job.note:
            store.update_active(job.id, note=note)  # not onto a row the runner has just marked ended
        # PENDING stays queued; RUNNING becomes running when the runner marks it (it records its pid).
        return store.get(job.id)

    def cancel(self, job: Job, store: JobStore, timeout: float = 5.0) -> Job:
        """Stop a Slurm job: SIGTERM to the runner (``scancel --batch --signal=TERM``; it stops at the next
        step and reports), a full ``scancel`` when it has not ended after ``timeout`` seconds (or when it
        is still pending); marks it cancelled.
        """
        conf = _conf_of(job)
        sid = str(job.backend_id or "")
        gone = True
        if sid:
            try:
                state, _ = slurm_state(job)
            except JobError:
                state = "UNKNOWN"
            gone = state is None  # purged: nothing left to stop in Slurm
            if state in RUNNING_STATES:
                _run(["scancel", "--batch", "--signal=TERM", sid], conf)  # the runner stops cleanly and reports
                gone = _wait_gone(job, store, timeout)
            if not gone:
                out = _run(["scancel", sid], conf)
                if out.returncode != 0 and "completed" not in _said(out).lower():
                    raise JobError(f"scancel {sid} failed: {_said(out)}")
                gone = _wait_gone(job, store, 5.0)
        error = "Cancelled." if job.status == "queued" else "Cancelled; the Slurm job was stopped."
        if not gone:
            error += f" Slurm had not confirmed the end of job {sid} yet."
        store.transition(job.id, ACTIVE, "cancelled", error=error, note=None)  # no-op if the runner reported
        return store.get(job.id)

    def logs(self, job: Job, n: int = 50) -> str:
        """The batch script's output: Slurm appends it to ``run_dir/log.txt`` like a local runner's."""
        return tail_log(job, n)


def _wait_gone(job: Job, store: JobStore, timeout: float) -> bool:
    """Wait until Slurm reports the job ended or forgot it; False after ``timeout`` seconds."""
    deadline = time.monotonic() + max(0.0, timeout)
    while True:
        try:
            state, _ = slurm_state(job)
        except JobError:
            state = "UNKNOWN"
        if state is None or state.split("+")[0] in ENDED_STATES:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


BACKEND = SlurmBackend()


def submit(config: dict, name: str = "", store: JobStore | None = None, run_dir: str | Path | None = None,
           cluster: str | None = None) -> Job:
    """Submit a job to Slurm (``cxrcore.jobs.submit(..., backend="slurm", cluster=...)``)."""
    return BACKEND.submit(config, name=name, store=store, run_dir=run_dir, cluster=cluster)


__all__ = ["BACKEND", "SBATCH_NAME", "SlurmBackend", "available", "check_reachable", "render_script", "slurm_state",
           "submit"]
