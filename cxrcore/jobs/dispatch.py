"""The one entry point of the job layer: submit, refresh, cancel, resume and read jobs on any backend.

A job row names its backend (``local`` or ``slurm``); every function here takes a job (or its id),
checks what holds for every backend, and hands the rest to that backend (:mod:`cxrcore.jobs.backend`).
``cxrcore.jobs`` re-exports these functions; the app and the CLI call them, never a backend's own.

    job = submit({"data": "/data/nih", "epochs": 3}, name="nih-3ep")               # local
    job = submit(config, backend="slurm", cluster="/etc/slurm/slurm.conf")           # Slurm
    job = refresh(job)          # reconcile a job whose runner died without reporting
    cancel(job.id); resume(job.id); print(logs(job))

Who may launch, cancel and resume is the operator's setting (:mod:`cxrcore.hosting`): the app passes
the visitor as ``user`` (and its settings) and these functions refuse with AccessError before
anything happens. ``user=None`` is the operator's own tool (the CLI, Python on this machine): every
right. Jobs record who launched them (``Job.owner``); a cap on queued + running jobs per person is
checked atomically with the insert. The data roots apply to every caller (``check_config``).
"""
from __future__ import annotations

from pathlib import Path

from .. import hosting
from ..errors import JobError
from .backend import Backend
from .config import check_config, check_job_resources, check_slurm_rights
from .local import BACKEND as LOCAL
from .local import start_queued
from .scoring import is_training
from .slurm import BACKEND as SLURM
from .store import ACTIVE, CapReached, Job, JobStore
from .store import BACKENDS as BACKEND_NAMES  # the declaration of the backends' names

# The implementation of each declared backend, in the declared order (KeyError at import for one without).
BACKENDS: dict[str, Backend] = {name: {b.name: b for b in (LOCAL, SLURM)}[name] for name in BACKEND_NAMES}


def backend_for(job_or_name: Job | str) -> Backend:
    """The backend of a job row (or by name); JobError for one this version does not know."""
    name = job_or_name.backend if isinstance(job_or_name, Job) else job_or_name
    try:
        return BACKENDS[name]
    except KeyError:
        raise JobError(f"Unknown job backend {name!r}; use {' or '.join(BACKENDS)}.") from None


def submit(config: dict, name: str = "", store: JobStore | None = None, run_dir: str | Path | None = None,
           backend: str = "local", user: hosting.User | None = None, settings: hosting.Settings | None = None,
           **backend_options) -> Job:
    """Validate ``config``, create the job and start it on ``backend``; returns the queued job.

    Bad input raises (ConfigError / DataError / CheckpointError / JobError) before any row or
    folder is created. ``backend_options``: the backend's own (slurm: ``cluster``, its slurm.conf).
    ``user``: who launches (default: the operator); AccessError when the operator's settings do not
    let them, when ``data`` / ``init`` lie outside the folders they may open, or when a visitor of a
    shared server sets a slurm option (or ``cluster``) the operator keeps (``CXR_SLURM_VISITOR_OPTIONS``);
    JobError at their cap.
    """
    backend_impl = backend_for(backend)
    s = settings or hosting.settings()
    user = user or hosting.operator_user()
    hosting.check_may(user, "launch", None, s)
    hosting.check_job_paths(config, s)
    check_slurm_rights(config, user, s, cluster=backend_options.get("cluster"))
    if not user.operator and isinstance(config, dict):  # a visitor's init / arch: listed names, folders inside
        hosting.check_model_ref(config.get("init"), s)
        hosting.check_model_ref(config.get("arch"), s, arch=True)
    check_job_resources(config, user, s)  # a visitor's processes, workers, batch and image size: the ceilings
    if not is_training(config):
        check_config(config, s, user)   # a scoring job's or a watch's own checks as this user (AccessError)
    if run_dir is not None and not user.operator:
        raise hosting.AccessError("Only the operator chooses a job's run folder; the app's jobs go under the workspace.")
    store = (store or JobStore()).launching_as(user.id, hosting.cap_for(user, s),
                                               lambda owner: hosting.same_person(owner, user))
    return backend_impl.submit(config, name=name, store=store, run_dir=run_dir, **backend_options)


def refresh(job: Job | str, store: JobStore | None = None) -> Job:
    """Re-read a job and reconcile it with its backend (a runner gone without reporting: failed, last log lines)."""
    store = store or JobStore()
    job = store.get(job.id if isinstance(job, Job) else job)
    return backend_for(job).refresh(job, store)


def refresh_all(store: JobStore | None = None, limit: int | None = None) -> list[Job]:
    """Refresh every queued/running job and start local jobs waiting for GPUs that are free now; returns the
    jobs that were active before the refresh, refreshed."""
    store = store or JobStore()
    jobs = [refresh(j, store) for j in store.list(limit=limit, status=ACTIVE)]
    if start_queued(store):
        jobs = [store.get(j.id) for j in jobs]
    return jobs


def _check_right(user: hosting.User | None, action: str, job_id, store: JobStore,
                 settings: hosting.Settings | None) -> None:
    """AccessError when ``user`` may not ``action`` this job; no user (the CLI, Python on this machine): allowed."""
    if user is not None:
        hosting.check_may(user, action, store.get(job_id.id if isinstance(job_id, Job) else job_id), settings)


def cancel(job_id: str, store: JobStore | None = None, timeout: float = 5.0, user: hosting.User | None = None,
           settings: hosting.Settings | None = None) -> Job:
    """Stop a job: SIGTERM to its runner first (it stops at the next training step, keeps its best
    checkpoint and reports), harder after ``timeout`` seconds; marks it cancelled. An ended job raises JobError.
    ``user`` without the right to cancel this job (see :mod:`cxrcore.hosting`): AccessError, nothing stopped."""
    store = store or JobStore()
    _check_right(user, "cancel", job_id, store, settings)
    job = refresh(job_id, store)
    if job.ended:
        raise JobError(f"Job {job.id} already ended with status {job.status}; there is nothing to cancel.")
    return backend_for(job).cancel(job, store, timeout=timeout)


def resume(job_id: str, store: JobStore | None = None, user: hosting.User | None = None,
           settings: hosting.Settings | None = None) -> Job:
    """Start a cancelled or failed job again from its last complete epoch (``run_dir/last``); a scoring job from
    the rows it has scored (:mod:`cxrcore.jobs.scoring`).

    The same row and run folder are reused: the job goes back to ``queued``, a new runner restores
    model, optimizer, scheduler, sampler and RNG state and trains the remaining epochs (the events
    and log continue). Raises JobError for a job that is still active, succeeded, or never finished
    an epoch (clone it instead). ``user`` without the right to resume it: AccessError, nothing started.

    A resumed job is queued or running again, so it counts against the per-person cap like a launch
    (:class:`~cxrcore.jobs.store.CapReached`, nothing started): the cap of the one resuming (none for the
    operator, as for their launches), counted over the jobs of the job's owner, whose row it stays.
    """
    from ..train.state import state_path  # imports torch

    store = store or JobStore()
    s = settings or hosting.settings()
    _check_right(user, "resume", job_id, store, s)
    job = refresh(job_id, store)
    if job.active:
        raise JobError(f"Job {job.id} is still {job.status}; only a cancelled or failed job can be resumed.")
    if job.status == "succeeded":
        raise JobError(f"Job {job.id} already succeeded; clone it to train again with other options.")
    if is_training(job.config) and state_path(job.run_dir) is None:   # a scoring job goes on from its parts
        raise JobError(f"Job {job.id} never finished an epoch, so there is nothing to resume from; "
                       "clone it to start again.")
    who = user or hosting.operator_user()
    owner = hosting.User(id=job.owner) if job.owner else who  # a row from before owners: the one resuming
    launching = store.launching_as(owner.id, hosting.cap_for(who, s), lambda o: hosting.same_person(o, owner))
    try:
        return backend_for(job).resume(job, launching)
    except CapReached as exc:
        whose = "You have" if hosting.same_person(owner.id, who) else f"{owner.display} has"
        raise CapReached(f"Job {job.id} was not resumed: {whose} {exc.count} job(s) queued or running and this "
                         f"server allows {exc.cap} per person at once; a resumed job counts as one. Wait for one "
                         "to end or cancel one, then resume it.", exc.count, exc.cap) from None


def logs(job: Job | str, n: int = 50, store: JobStore | None = None) -> str:
    """The last ``n`` lines of a job's output."""
    if not isinstance(job, Job):
        job = (store or JobStore()).get(job)
    return backend_for(job).logs(job, n)


__all__ = ["BACKENDS", "backend_for", "cancel", "logs", "refresh", "refresh_all", "resume", "submit"]
