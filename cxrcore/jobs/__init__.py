"""Background training jobs: a SQLite job table and a detached local process per job.

``submit`` validates a training config and starts ``python -m cxrcore.jobs.runner`` in its own
session; the job keeps running when the app or the submitting process goes away. Jobs that need
GPUs wait in a queue until enough are free (``gpus``); ``slurm.submit`` hands a job to a Slurm
cluster instead, and refresh/cancel dispatch on the row's backend. Importing this package does
not import torch.
"""
from .local import (cancel, check_config, events, process_alive, progress_summary, refresh, refresh_all, resume, start_queued,
                    submit, tail_log)
from .store import ACTIVE, ENDED, STATUSES, Job, JobStore, new_job_id

__all__ = ["ACTIVE", "ENDED", "STATUSES", "Job", "JobStore", "cancel", "check_config", "events", "new_job_id",
           "process_alive", "progress_summary", "refresh", "refresh_all", "resume", "start_queued", "submit", "tail_log"]
