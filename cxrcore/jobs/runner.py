"""The process that runs one job, a training or a scoring (:mod:`.scoring`):
``python -m cxrcore.jobs.runner JOB_ID [--db PATH]``.

Started detached by the local backend (:mod:`cxrcore.jobs.local`; its own session, stdout/stderr
to ``run_dir/log.txt``) or by a Slurm batch script (:mod:`cxrcore.jobs.slurm`). It marks the job
running, trains, and marks the end itself from how the run ended (:func:`final_state`), the same on every
backend: ``succeeded`` (every epoch run; or stopped early by early stopping or the sweep's pruner, which the
row's ``note`` says), ``cancelled`` (a stop request reached the training: SIGTERM to the runner, to a
data-parallel rank or to torchrun, the STOP file; training stops at the next step and the best checkpoint so
far is kept; ``error`` says so) or ``failed`` (with the error message; the full traceback goes to the log).
If it is killed outright (SIGKILL, out of memory) the row still says running; ``cxrcore.jobs.refresh``
notices the missing process and marks the job failed.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from ..errors import CXRError, JobError
from ..train.progress import Cancelled, ProgressPrinter
from ..train.progress import clock as _clock
from .local import start_queued
from .logfiles import EVENTS_NAME, LOG_NAME
from .lensjobs import run_lens
from .scoring import LENS_TASKS, SCORE, WATCH, run_scoring, run_watch, task_of
from .store import JobStore

EXIT_FAILED = 1
EXIT_CANCELLED = 128 + signal.SIGTERM  # 143, what a SIGTERM-ed process conventionally returns


class _Stop:
    """The SIGTERM/SIGINT flag; callable, so it can be passed as ``should_stop``."""

    def __init__(self):
        self.asked = False
        self.signal: int | None = None
        # While True (setting up: importing torch, reading the config) a signal aborts at once;
        # inside train() it only sets the flag, so the run stops cleanly at the next step.
        self.interruptible = False

    def __call__(self) -> bool:
        return self.asked

    def handler(self, signum, frame) -> None:
        if not self.asked:
            # os.write, not print: a handler that prints can hit a reentrant buffered write.
            msg = f"[{_clock()}] received {signal.Signals(signum).name}: stopping at the next step\n"
            try:
                os.write(1, msg.encode())
            except OSError:
                pass
        self.asked = True
        self.signal = signum
        if self.interruptible:
            self.interruptible = False
            raise Cancelled("Stopped before training started.")


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _route_output(log_path: Path) -> None:
    """Make fds 1 and 2 append to the log (the launcher already does this) and line-buffer them."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if not (_same_file(1, log_path) and _same_file(2, log_path)):
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)
        except (AttributeError, ValueError):
            pass


def _last_traceback_line(exc: BaseException) -> str:
    lines = traceback.format_exception_only(type(exc), exc)
    text = "".join(lines).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def _run_training(cfg, run_dir: Path, stop: "_Stop", job_id: str):
    """Train in this process, or data-parallel through torchrun when the job asks for several processes;
    returns the checkpoint card. A sweep trial reports each epoch to its study (:func:`.sweep.trial_reporter`).

    Resumes from ``run_dir/last`` when a complete epoch was saved there (a resumed or requeued job). Raises
    Cancelled when a stop request ended the run before it saved a checkpoint.
    """
    from ..checkpoint import read_card
    from ..train.events import read_events, stopped_since
    from ..train.state import state_path
    from ..train.trainer import train
    from ..train.worker import STOP_FILE, launch_command
    from .sweep import trial_reporter

    resume = state_path(run_dir) is not None
    if resume:
        print(f"[{_clock()}] resuming from the last complete epoch in {run_dir / 'last'}", flush=True)
    if int(cfg.nproc) <= 1 and int(cfg.nodes) <= 1:
        return train(cfg, run_dir, progress=ProgressPrinter(stop), should_stop=stop, resume=resume,
                     report=trial_reporter(cfg))
    (run_dir / STOP_FILE).unlink(missing_ok=True)
    seen = len(read_events(run_dir / EVENTS_NAME))  # this attempt's events come after these
    argv = launch_command(cfg, run_dir, resume=resume, job_id=job_id, module="cxrcore.jobs.rank")
    print(f"[{_clock()}] data-parallel: {' '.join(argv)}", flush=True)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, cwd=str(run_dir))
    stop_written = False
    while proc.poll() is None:
        if stop() and not stop_written:
            (run_dir / STOP_FILE).write_text("stop\n")  # every rank stops at the same step
            stop_written = True
        time.sleep(0.5)
    (run_dir / STOP_FILE).unlink(missing_ok=True)
    if proc.returncode != 0:
        events = read_events(run_dir / EVENTS_NAME)[seen:]
        if stop() or stopped_since(events):
            # Stopped from inside (the runner's SIGTERM) or outside (SIGTERM to torchrun or to a rank): a run
            # that got to write its end kept its best checkpoint; else nothing was kept.
            if any(e.get("type") == "done" for e in events):
                print(f"[{_clock()}] the data-parallel processes were stopped (exit code {proc.returncode}) after "
                      "saving the run's end", flush=True)
                return read_card(run_dir / "checkpoint")
            raise Cancelled(f"the data-parallel processes stopped (exit code {proc.returncode})")
        raise JobError(f"The data-parallel training failed (torchrun exit code {proc.returncode}); "
                       "the log above has each rank's error.")
    return read_card(run_dir / "checkpoint")


def final_state(card, signalled: int | None = None) -> tuple[str, dict]:
    """(status, row fields) of a job whose training returned ``card``, from how the run ended
    (:func:`cxrcore.train.events.ending_of`), whatever asked it to stop: ``cancelled`` with an ``error``
    saying so when a stop request ended it (``signalled``: the signal the runner itself received, if any),
    else ``succeeded``, with a ``note`` when early stopping or the sweep's pruner ended it before its last
    epoch."""
    from ..train.events import ending_of

    training = card.training or {}
    ended = ending_of(training)
    best = training.get("best_epoch") or (card.metrics.get("val") or {}).get("epoch")
    if ended == "stopped":
        how = (f"the runner received {signal.Signals(signalled).name}" if signalled
               else "a stop request reached the training processes (SIGTERM to a rank or to torchrun, or the "
                    "STOP file)")
        return "cancelled", {"exit_code": EXIT_CANCELLED,
                             "error": f"Cancelled before its last epoch: {how}. The best checkpoint so far "
                                      f"(epoch {best}, {training.get('epochs_run')} epoch(s) run) was kept."}
    note = None
    if ended == "pruned":
        note = f"Stopped early: {training.get('pruned') or 'pruned by the sweep'}."
    elif ended == "early_stopping":
        monitor = (card.metrics.get("val") or {}).get("monitor")
        watched = "validation loss" if monitor == "loss" else "validation mean AUROC"
        patience = (training.get("config") or {}).get("early_stopping")
        note = (f"Stopped early (early stopping): no better {watched} in {patience} validation(s) after epoch "
                f"{best}; {training.get('epochs_run')} epoch(s) run.")
    return "succeeded", {"exit_code": 0, "error": None, "note": note}


def _end_scoring(store: JobStore, job, summary, stop: "_Stop", seconds: float) -> int:
    """Mark a scoring job's end from its summary: ``cancelled`` when a stop request ended it before the last
    image (the rows so far are kept; Resume goes on from them), else ``succeeded`` with the table's figures."""
    if not summary.complete and summary.pending_shards:   # this shard is done; the last one marks the job
        return 0
    if not summary.complete:
        how = f"the runner received {signal.Signals(stop.signal).name}" if stop.signal else "a stop request"
        error = (f"Cancelled ({how}) after {summary.rows} row(s); they are kept, and Resume scores the rest "
                 "(each image once).")
        print(f"[{_clock()}] {error}", flush=True)
        store.mark(job.id, "cancelled", exit_code=EXIT_CANCELLED, error=error)
        return EXIT_CANCELLED
    note = (f"{summary.rows} image(s) scored into {summary.out}" + (f", {summary.errors} unreadable (listed in "
            f"{summary.errors_csv})" if summary.errors else "") + ".")
    print(f"[{_clock()}] succeeded in {seconds:.0f}s: {note}", flush=True)
    store.mark(job.id, "succeeded", exit_code=0, error=None, note=note)
    return 0


def run_job(job_id: str, db: str | os.PathLike | None = None, shard: int | None = None) -> int:
    """Run one queued job in this process; returns the exit code. ``shard``: this process is one task of a sharded
    scoring job's Slurm array (:mod:`.scoring`): the job is running once its first task starts."""
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop.handler)
    signal.signal(signal.SIGINT, stop.handler)

    store = JobStore(db)
    job = store.get(job_id)
    run_dir = Path(job.run_dir)
    _route_output(run_dir / LOG_NAME)
    print(f"[{_clock()}] job {job.id} ({job.name or 'unnamed'}) pid {os.getpid()} python {sys.executable}", flush=True)
    print(f"[{_clock()}] CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}", flush=True)
    if not store.transition(job.id, ("queued", "running") if shard is not None else "queued", "running",
                            pid=os.getpid(), error=None, exit_code=None):
        status = store.get(job.id).status
        print(f"[{_clock()}] job {job.id} is {status}, not queued; not starting it.", flush=True)
        return 0 if status == "cancelled" else EXIT_FAILED

    t0 = time.time()
    task = task_of(job.config)
    try:
        stop.interruptible = True
        if stop():
            raise Cancelled("Stopped before training started.")
        print(f"[{_clock()}] config {json.dumps(job.config, sort_keys=True)}", flush=True)
        log = lambda m: print(f"[{_clock()}] {m}", flush=True)  # noqa: E731
        if task == SCORE:
            stop.interruptible = False
            summary = run_scoring(job.config, run_dir, stop, log=log, shard=shard)
            return _end_scoring(store, job, summary, stop, time.time() - t0)
        if task in LENS_TASKS:
            stop.interruptible = task == LENS_TASKS[0]   # an index is one pass: a cancel ends it at once
            complete, result = run_lens(job.config, run_dir, stop, log=log)
            stop.interruptible = False
            if not complete:
                error = (f"Cancelled after {result.get('folds_done', 0)} of {result.get('folds')} folds; they are kept "
                         "and Resume goes on with the rest.")
                log(error)
                store.mark(job.id, "cancelled", exit_code=EXIT_CANCELLED, error=error)
                return EXIT_CANCELLED
            note = (f"{result['images']} films in the index {result['index']}" if task == LENS_TASKS[0] else
                    f"{len(result['issues'])} likely label errors among {result['images']} films, cross-fitted over "
                    f"{result['folds']} folds")
            log(f"succeeded in {time.time() - t0:.0f}s: {note}")
            store.mark(job.id, "succeeded", exit_code=0, error=None, note=note + ".")
            return 0
        if task == WATCH:
            stop.interruptible = False
            scored = run_watch(job.config, stop, log=log)
            error = (f"Stopped on request after {time.time() - t0:.0f} s; {scored} new study(ies) scored while it "
                     "watched. Resume watches again; a study already scored is not scored again.")
            log(error)
            store.mark(job.id, "cancelled", exit_code=EXIT_CANCELLED, error=error)
            return EXIT_CANCELLED
        from ..train.trainer import TrainConfig  # heavy import (torch) after the signal handler is in

        cfg = TrainConfig.from_dict(job.config)
        stop.interruptible = False
        if stop():
            raise Cancelled("Stopped before training started.")
        card = _run_training(cfg, run_dir, stop, job.id)
    except BaseException as exc:  # noqa: BLE001 - every end must be reported in the row
        stop.interruptible = False
        if stop() or isinstance(exc, Cancelled):
            print(f"[{_clock()}] cancelled after {time.time() - t0:.0f}s ({exc})", flush=True)
            store.mark(job.id, "cancelled", exit_code=EXIT_CANCELLED,
                       error="Cancelled before scoring started." if task in (SCORE, WATCH) else
                       "Cancelled before it finished; Resume starts it again." if task in LENS_TASKS else
                       "Cancelled before the first epoch finished; no checkpoint was written.")
            return EXIT_CANCELLED
        traceback.print_exc()
        message = str(exc) if isinstance(exc, CXRError) and str(exc) else _last_traceback_line(exc)
        print(f"[{_clock()}] failed after {time.time() - t0:.0f}s: {message}", flush=True)
        store.mark(job.id, "failed", exit_code=EXIT_FAILED, error=message)
        return EXIT_FAILED

    best = card.metrics.get("val", {})
    summary = f"best epoch {best.get('epoch')}, val mean AUROC {best.get('mean_auroc')}"
    status, fields = final_state(card, stop.signal)
    if status == "cancelled":
        print(f"[{_clock()}] cancelled after {time.time() - t0:.0f}s; kept the checkpoint ({summary})", flush=True)
    else:
        print(f"[{_clock()}] succeeded in {time.time() - t0:.0f}s ({summary})"
              + (f"; {fields['note']}" if fields.get("note") else ""), flush=True)
    store.mark(job.id, status, **fields)
    return fields["exit_code"]


def _start_waiting_jobs(store: JobStore, job_id: str) -> None:
    """After a local job ended: start local jobs that were waiting for the GPUs it held."""
    try:
        if store.get(job_id).backend != "local":
            return  # a Slurm job's node is not where local jobs run
        for started in start_queued(store):
            print(f"[{_clock()}] started waiting job {started.id} on GPU(s) {started.gpu_ids}", flush=True)
    except Exception as exc:  # noqa: BLE001 - our own end is already recorded
        print(f"[{_clock()}] could not start waiting jobs: {exc}", flush=True)


def _advance_sweep(store: JobStore, job_id: str) -> None:
    """After a job ended: if it was a sweep trial, record its result in the study and start the sweep's next
    trials; then start trials of its owner's sweeps that waited for one of the owner's job slots. Trials are
    launched as their sweep's owner (:func:`cxrcore.jobs.sweep.advance`), never as this process's user."""
    try:
        job = store.get(job_id)
    except CXRError as exc:
        print(f"[{_clock()}] could not read job {job_id} to advance sweeps: {exc}", flush=True)
        return
    sweep = (job.config or {}).get("sweep")
    if sweep:
        try:
            from .sweep import advance

            started = advance(sweep["id"], store)
            if started:
                print(f"[{_clock()}] sweep {sweep['id']}: started trial job(s) {', '.join(started)}", flush=True)
        except Exception as exc:  # noqa: BLE001 - our own end is already recorded; the page advances it too
            print(f"[{_clock()}] could not advance the sweep: {exc}", flush=True)
    try:
        from .sweep import advance_waiting

        started = advance_waiting(job.owner, store)  # a slot of this job's owner is free now
        if started:
            print(f"[{_clock()}] started waiting sweep trial job(s) {', '.join(started)}", flush=True)
    except Exception as exc:  # noqa: BLE001
        print(f"[{_clock()}] could not advance waiting sweeps: {exc}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxrcore.jobs.runner", description="Run one queued training job.")
    parser.add_argument("job_id")
    parser.add_argument("--db", default=None, help="job database (default: the workspace's jobs.sqlite)")
    parser.add_argument("--shard", type=int, default=None,
                        help="this task's shard of a sharded scoring job (a Slurm array's $SLURM_ARRAY_TASK_ID)")
    args = parser.parse_args(argv)
    try:
        code = run_job(args.job_id, args.db, args.shard)
        _start_waiting_jobs(JobStore(args.db), args.job_id)
        _advance_sweep(JobStore(args.db), args.job_id)
        return code
    except CXRError as exc:  # unknown job, unreadable database: nothing to mark
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
