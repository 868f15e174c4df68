"""What a job backend does: the one interface the dispatcher (:mod:`cxrcore.jobs.dispatch`) calls.

A backend runs a job's runner (``python -m cxrcore.jobs.runner JOB_ID``) somewhere and answers for
the jobs whose row names it (``Job.backend``). Two exist: ``local`` (a detached process on this
machine, :class:`cxrcore.jobs.local.LocalBackend`) and ``slurm`` (an ``sbatch`` script,
:class:`cxrcore.jobs.slurm.SlurmBackend`). The dispatcher checks what is common to every backend
(the job exists, an ended job is not cancelled, only a cancelled or failed job that saved an epoch
is resumed) before it calls one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from .store import Job, JobStore


@runtime_checkable
class Backend(Protocol):
    name: str

    def submit(self, config: dict, name: str, store: JobStore, run_dir: str | Path | None = None,
               **options) -> Job:
        """Validate ``config`` (raising before any row or folder is created), create the job and start it."""
        ...

    def refresh(self, job: Job, store: JobStore) -> Job:
        """Reconcile the row with what the backend sees (a runner that died without reporting is marked failed)."""
        ...

    def cancel(self, job: Job, store: JobStore, timeout: float = 5.0) -> Job:
        """Stop an active job (SIGTERM to the runner first, so it keeps its best checkpoint); marks it cancelled."""
        ...

    def resume(self, job: Job, store: JobStore) -> Job:
        """Start a cancelled or failed job again from ``run_dir/last`` (the dispatcher has checked it may)."""
        ...

    def logs(self, job: Job, n: int = 50) -> str:
        """The last ``n`` lines of the job's output."""
        ...


__all__ = ["Backend"]
