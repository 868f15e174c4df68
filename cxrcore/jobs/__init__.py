"""Background jobs (trainings, and scorings of whole archives: :mod:`.scoring`): a SQLite job table and backends
that run each job's runner.

The entry point is :mod:`.dispatch` (re-exported here): ``submit`` validates a training config
(:mod:`.config`) and starts ``python -m cxrcore.jobs.runner`` on a backend (:mod:`.backend`):
``local``, a detached process on this machine that keeps running when the app or the submitting
process goes away (jobs that need GPUs wait in a queue until enough are free), or ``slurm``, an
``sbatch`` script. ``refresh`` / ``cancel`` / ``resume`` / ``logs`` dispatch on the row's backend.
A job's files are read with :mod:`.logfiles`, its events folded for a progress view by
:mod:`.progress`. Importing this package does not import torch.

Modules: ``store`` (the table), ``backend`` (the interface), ``dispatch`` (the entry point),
``local`` and ``slurm`` (the backends), ``config`` (config checks), ``logfiles`` (log, events,
config files of a run folder), ``gpus`` (this machine's GPUs), ``progress`` (events -> summary),
``runner`` (the process that runs one job).
"""
from . import gpus, local, slurm  # noqa: F401 - cxrcore.jobs.gpus / .local / .slurm for callers
from .backend import Backend
from .config import check_config
from .dispatch import BACKENDS, backend_for, cancel, logs, refresh, refresh_all, resume, submit
from .local import process_alive, start_queued
from .logfiles import events, tail_log
from .progress import job_summary, progress_summary
from .store import ACTIVE, ENDED, STATUSES, Job, JobStore, new_job_id

__all__ = ["ACTIVE", "BACKENDS", "ENDED", "STATUSES", "Backend", "Job", "JobStore", "backend_for", "cancel",
           "check_config", "events", "gpus", "local", "logs", "job_summary", "new_job_id", "process_alive", "progress_summary",
           "refresh", "refresh_all", "resume", "slurm", "start_queued", "submit", "tail_log"]
