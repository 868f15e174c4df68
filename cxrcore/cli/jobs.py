"""``cxr jobs``: background jobs (trainings and scorings)."""
from __future__ import annotations

import json

from ..errors import CXRError
from .common import Command


def cmd_jobs(a) -> int:
    from .. import jobs
    from ..hosting import owner_display
    from ..jobs.scoring import resume_words
    from ..jobs.store import JobStore

    store = JobStore()
    if a.action == "list":
        jobs.refresh_all(store)
        rows = store.list()
        if not rows:
            print("no jobs yet; start one with `cxr train ... --background` or from the Training page")
        for j in rows:
            where = f"{j.backend}:{j.backend_id}" if j.backend_id else j.backend
            print(f"{j.id}  {j.status:<10} {where:<14} {j.name}" + (f"  ({j.note})" if j.note and j.active else "")
                  + (f"  [by {owner_display(j.owner)}]" if j.owner else ""))
        return 0
    if not a.job:
        raise CXRError(f"`cxr jobs {a.action}` needs a job id; `cxr jobs list` shows them.")
    job = jobs.refresh(store.get(a.job), store)
    if a.action == "show":
        s = jobs.job_summary(job.config, jobs.events(job))
        print(json.dumps({"id": job.id, "name": job.name, "status": job.status, "backend": job.backend,
                          "slurm_id": job.backend_id, "gpu_ids": job.gpu_ids, "note": job.note, "owner": job.owner,
                          "run_dir": str(job.run_dir), "error": job.error, "progress": {k: v for k, v in s.items()
                                                                   if not k.endswith(("curve", "curves", "auroc_history"))}},
                         indent=1, default=str))
    elif a.action == "logs":
        print(jobs.logs(job, a.lines))
    elif a.action == "cancel":
        done = jobs.cancel(job.id, store)  # the job's backend: a signal to a local runner, scancel for Slurm
        print(f"cancelled {job.id}" + (f" (Slurm job {done.backend_id})" if done.backend_id else ""))
    elif a.action == "resume":
        again = jobs.resume(job.id, store)
        print(f"resumed {again.id} {resume_words(again.config)} ({again.status}); `cxr jobs show {again.id}`")
    return 0


def _jobs_flags(s) -> None:
    s.add_argument("action", choices=["list", "show", "logs", "cancel", "resume"])
    s.add_argument("job", nargs="?")
    s.add_argument("--lines", type=int, default=40)
    s.set_defaults(func=cmd_jobs)


JOBS = Command("jobs", "list, inspect, cancel and resume background jobs (trainings and scorings)", _jobs_flags)
