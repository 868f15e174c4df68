"""Tests for cxrcore.jobs: the SQLite job store and the detached local backend, with real runs.

Training jobs use the real NIH sample (60 images at 64 px, one thread) so a job takes seconds;
deadlines are generous and nothing asserts on speed. Every test has its own workspace
(CXR_HOME = tmp_path); a finalizer kills any runner process group still alive.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from conftest import NIH_SAMPLE, job_workspace, kill_jobs, phantom_job_config, wait_for  # noqa: F401
from cxrcore.errors import CXRError, ConfigError, JobError
from cxrcore.jobs import (ACTIVE, Job, JobStore, cancel, events, process_alive, progress_summary, refresh, submit,
                          tail_log)

REPO = Path(__file__).resolve().parents[2]

DEADLINE_S = 180.0


def small_config(**over) -> dict:
    cfg = phantom_job_config(NIH_SAMPLE)
    cfg.update(over)
    return cfg


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """An isolated workspace; kills the process groups of runners still alive at the end."""
    yield job_workspace(tmp_path, monkeypatch)
    kill_jobs(tmp_path)


def wait_ended(job: Job, store: JobStore) -> Job:
    def ended():
        j = refresh(job, store)
        return j if j.ended else None
    try:
        return wait_for(ended, what=f"job {job.id} to end")
    except AssertionError:
        raise AssertionError(f"job {job.id} did not end; log:\n{tail_log(job, 40)}") from None


def wait_for_step(job: Job, store: JobStore) -> None:
    def stepping():
        j = refresh(job, store)
        assert not j.ended, f"job ended early ({j.status}: {j.error}); log:\n{tail_log(j, 40)}"
        return any(e.get("type") == "step" for e in events(j))
    wait_for(stepping, what=f"job {job.id} to reach a training step")


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # Still in the table: only acceptable as a zombie of someone else's (not ours to reap).
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


# --------------------------------------------------------------------------- store

def test_store_round_trip_and_wal(ws):
    store = JobStore()
    assert store.path == ws / "jobs.sqlite"
    assert store.journal_mode == "wal"
    with sqlite3.connect(store.path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    job = store.create({"data": "/x", "epochs": 2, "labels": ["A", "B"]}, name="first")
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", job.id)
    assert job.status == "queued" and job.backend == "local" and job.name == "first"
    assert Path(job.run_dir) == (ws / "runs" / job.id).resolve()
    assert job.config == {"data": "/x", "epochs": 2, "labels": ["A", "B"]}
    assert job.pid is None and job.started is None and job.finished is None and job.created > 0
    assert store.get(job.id) == job

    running = store.mark(job.id, "running", pid=4242)
    assert running.status == "running" and running.pid == 4242 and running.started >= job.created
    assert running.active and not running.ended
    done = store.mark(job.id, "failed", error="boom", exit_code=1)
    assert (done.status, done.error, done.exit_code) == ("failed", "boom", 1)
    assert done.finished >= done.started and done.ended
    assert store.update(job.id, name="renamed", config={"k": 1}).config == {"k": 1}

    # Compare-and-set only changes a row in one of the expected statuses.
    assert not store.transition(job.id, ACTIVE, "cancelled")
    assert store.get(job.id).status == "failed"

    # A watcher's live note ("Slurm: RUNNING") lands only on an active row, and an end clears it:
    # the runner may mark the end between the watcher reading Slurm and writing the note.
    live = store.create({}, name="live")
    assert store.update_active(live.id, note="Slurm: RUNNING") and store.get(live.id).note == "Slurm: RUNNING"
    assert store.mark(live.id, "succeeded", exit_code=0).note is None
    assert not store.update_active(live.id, note="Slurm: RUNNING")
    assert store.get(live.id).note is None and store.get(live.id).status == "succeeded"
    with pytest.raises(JobError):
        store.update_active("20000101-000000-dead", note="x")

    second = store.create({}, name="second")
    third = store.create({}, name="third")
    assert [j.id for j in store.list()] == [third.id, second.id, live.id, job.id]
    assert [j.id for j in store.list(limit=2)] == [third.id, second.id]
    assert [j.id for j in store.list(status="failed")] == [job.id]
    assert len({j.id for j in store.list()}) == 4

    # A second store object (another process would do the same) sees the same rows.
    assert JobStore(ws / "jobs.sqlite").get(second.id).name == "second"

    with pytest.raises(JobError, match="cxr jobs list"):
        store.get("20000101-000000-dead")
    with pytest.raises(JobError):
        store.update("20000101-000000-dead", name="x")
    with pytest.raises(JobError, match="status"):
        store.mark(job.id, "exploded")
    with pytest.raises(JobError, match="field"):
        store.update(job.id, colour="red")


def test_store_refuses_nonempty_run_dir(ws):
    store = JobStore()
    taken = ws / "elsewhere"
    taken.mkdir()
    (taken / "weights.bin").write_bytes(b"x")
    with pytest.raises(JobError, match="not empty"):
        store.create({}, name="x", run_dir=taken)
    assert store.list() == []
    empty = ws / "empty"
    empty.mkdir()
    job = store.create({}, name="y", run_dir=empty)
    assert Path(job.run_dir) == empty.resolve()


WRITER = textwrap.dedent("""
    import sys
    from cxrcore.jobs.store import JobStore
    store = JobStore(sys.argv[1])
    for i in range(int(sys.argv[3])):
        job = store.create({"writer": sys.argv[2], "i": i}, name=f"{sys.argv[2]}-{i}")
        store.mark(job.id, "running", pid=i + 1)
        store.update(job.id, error=None)
        store.mark(job.id, "succeeded", exit_code=0)
        store.list(limit=10)
""")


def test_store_concurrent_processes_and_threads(ws):
    db = ws / "jobs.sqlite"
    store = JobStore(db)
    n = 15
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), f"p{k}", str(n)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for k in range(3)]
    errors: list[BaseException] = []

    def thread_writer(tag: str):
        try:
            local = JobStore(db)
            for i in range(n):
                job = local.create({"writer": tag}, name=f"{tag}-{i}")
                local.mark(job.id, "running", pid=1)
                local.mark(job.id, "succeeded", exit_code=0)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=thread_writer, args=(f"t{k}",)) for k in range(2)]
    for t in threads:
        t.start()
    while any(p.poll() is None for p in procs) or any(t.is_alive() for t in threads):
        for job in store.list(limit=20):  # reads concurrently with the writers
            assert job.status in ("queued", "running", "succeeded")
        time.sleep(0.01)
    for t in threads:
        t.join()
    for p in procs:
        out, err = p.communicate()
        assert p.returncode == 0, err.decode()
    assert not errors, errors
    jobs = store.list(limit=None)
    assert len(jobs) == 5 * n
    assert len({j.id for j in jobs}) == 5 * n
    assert all(j.status == "succeeded" and j.exit_code == 0 for j in jobs)
    assert not [p for p in (ws / "runs").iterdir()]  # the store never creates run folders itself


# --------------------------------------------------------------------------- validation

BAD_CONFIGS = {
    "unknown option": (small_config(learning_rate=0.1), ConfigError, "learning_rate"),
    "epochs 0": (small_config(epochs=0), ConfigError, "epochs"),
    "epochs as text": (small_config(epochs="3"), ConfigError, "epochs"),
    "lr as text": (small_config(lr="fast"), ConfigError, "lr"),
    "batch size 0": (small_config(batch_size=0), ConfigError, "batch_size"),
    "unknown labels": (small_config(labels="nih15"), ConfigError, "nih15"),
    "bad mode": (small_config(mode="partial"), ConfigError, "mode"),
    "bad fit": (small_config(fit="stretch"), ConfigError, "fit"),
    "no data option": ({"epochs": 1}, ConfigError, "data"),
    "missing data folder": (small_config(data="/nonexistent/cxr-data"), CXRError, "does not exist"),
    "folder without a label table": (small_config(data=str(REPO / "tests")), CXRError, "label table"),
    "unknown architecture": (small_config(arch="resnet_nonexistent_9000"), ConfigError, "architecture"),
    "init not a checkpoint": (small_config(init="/nonexistent/checkpoint"), CXRError, "checkpoint"),
    "labels the data does not have": (small_config(labels="Foo Bar,Baz"), CXRError, "has none of the labels"),
    "LoRA rank 0": (small_config(mode="lora", lora_r=0), ConfigError, "lora_r"),
    "focal with pos_weight": (small_config(loss="focal", pos_weight=True), ConfigError, "pos_weight"),
    "fp16 without a GPU": (small_config(precision="fp16"), ConfigError, "fp16"),
    "GPU asked for, none here": (small_config(device="cuda"), ConfigError, "GPU"),
    "more GPUs than the machine has": (small_config(gpus=1), ConfigError, "GPU"),
    "several nodes on the local backend": (small_config(nodes=2), ConfigError, "nodes"),
    "bad augmentation option": (small_config(augment_options={"rotate": 3}), ConfigError, "augmentation"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_creates_no_job(ws, case):
    config, error, match = BAD_CONFIGS[case]
    store = JobStore()
    store.create({}, name="existing")  # an unrelated row that must stay the only one
    runs_before = sorted(p.name for p in (ws / "runs").iterdir())
    with pytest.raises(error, match=match):
        submit(config, name="bad", store=store)
    assert [j.name for j in store.list()] == ["existing"]
    assert sorted(p.name for p in (ws / "runs").iterdir()) == runs_before


def test_submit_refuses_nonempty_run_dir(ws):
    store = JobStore()
    taken = ws / "taken"
    taken.mkdir()
    (taken / "log.txt").write_text("an earlier run\n")
    with pytest.raises(JobError, match="not empty"):
        submit(small_config(), store=store, run_dir=taken)
    assert store.list() == []
    assert (taken / "log.txt").read_text() == "an earlier run\n"


# --------------------------------------------------------------------------- real runs

SUBMITTER = textwrap.dedent("""
    import json, sys
    from cxrcore.jobs import submit
    job = submit(json.loads(sys.argv[1]), name="from-a-session")
    print(json.dumps({"id": job.id, "pid": job.pid}))
""")


def test_job_survives_its_submitting_process_and_succeeds(ws):
    """Submit from a process that exits at once (a closed tab / restarted app): the job still completes."""
    out = subprocess.run([sys.executable, "-c", SUBMITTER, json.dumps(small_config())], cwd=REPO,
                         capture_output=True, text=True, timeout=DEADLINE_S)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    store = JobStore()
    job = store.get(info["id"])
    assert job.pid == info["pid"] and job.name == "from-a-session"
    assert job.config["data"] == str(NIH_SAMPLE.resolve()) and job.config["epochs"] == 1
    run_dir = Path(job.run_dir)
    assert run_dir.parent == (ws / "runs").resolve()
    assert json.loads((run_dir / "config.json").read_text())["max_images"] == 60

    job = wait_ended(job, store)
    assert job.status == "succeeded", f"{job.error}\n{tail_log(job, 40)}"
    assert job.exit_code == 0 and job.error is None and job.note is None and job.finished >= job.started
    assert (run_dir / "checkpoint" / "card.json").exists()
    assert (run_dir / "events.jsonl").exists()
    # The row is written just before the runner exits; its interpreter shutdown follows.
    wait_for(lambda: not process_alive(job.pid, job.id), deadline_s=60, what="the runner to exit")

    log = tail_log(job, 200)
    assert "train" in log and "succeeded" in log
    assert tail_log(job, 2).count("\n") == 1

    assert [e["ended"] for e in events(job) if e["type"] == "done"] == ["completed"]   # a run to its last epoch
    summary = progress_summary(events(job))
    assert summary["phase"] == "done" and summary["fraction"] == 1.0
    assert summary["epochs"] == 1 and summary["epoch"] == 1
    assert summary["step"] == summary["total_steps"] > 0
    assert len(summary["loss_curve"]) == summary["step"]
    assert [e for e, _ in summary["auroc_curve"]] == [1]
    assert summary["per_label_auroc"] and set(summary["per_label_auroc"]) == set(summary["labels"])
    assert summary["last_loss"] is not None and summary["images_per_s"] > 0
    assert summary["eta_seconds"] == 0.0
    card = json.loads((run_dir / "checkpoint" / "card.json").read_text())
    assert card["name"] == "from-a-session"


def test_cancel_stops_a_running_job(ws):
    store = JobStore()
    job = submit(small_config(epochs=40), name="long", store=store)
    assert job.pid and job.status in ACTIVE
    assert os.getsid(job.pid) == job.pid  # detached: its own session
    wait_for_step(job, store)
    assert refresh(job, store).status == "running"

    cancelled = cancel(job.id, store=store, timeout=60)
    assert cancelled.status == "cancelled"
    assert cancelled.finished is not None
    assert pid_gone(job.pid)
    assert not process_alive(job.pid, job.id)
    summary = progress_summary(events(cancelled))
    assert summary["step"] < summary["total_steps"]
    assert "SIGTERM" in tail_log(cancelled)

    with pytest.raises(JobError, match="already ended with status cancelled"):
        cancel(job.id, store=store)
    assert refresh(job, store).status == "cancelled"


def test_cancel_right_after_submit(ws):
    store = JobStore()
    job = submit(small_config(epochs=40), name="short-lived", store=store)
    cancelled = cancel(job.id, store=store, timeout=30)
    assert cancelled.status == "cancelled"
    assert pid_gone(job.pid)
    assert not (Path(job.run_dir) / "checkpoint" / "card.json").exists()


def test_killed_process_is_marked_failed_with_log_lines(ws):
    """SIGKILL (what the out-of-memory killer sends) to a running job's process group: nothing reports, so
    ``refresh`` notices the missing process and marks the job failed with the log's last lines. The kill comes as
    soon as the runner has marked itself running and logged (while it still imports torch); how refresh handles
    a vanished runner does not depend on how far its training got."""
    store = JobStore()
    job = submit(small_config(epochs=40), name="doomed", store=store)

    def running_and_logged():
        j = refresh(job, store)
        assert not j.ended, f"job ended early ({j.status}: {j.error}); log:\n{tail_log(j, 40)}"
        return j.status == "running" and tail_log(j, 5).strip()
    wait_for(running_and_logged, what=f"job {job.id}'s runner to start")
    os.killpg(job.pid, signal.SIGKILL)

    def failed():
        j = refresh(job, store)
        return j if j.status != "running" else None
    job = wait_for(failed, deadline_s=60, what="refresh to notice the killed process")
    assert job.status == "failed"
    assert "ended without reporting" in job.error and "Last log lines" in job.error
    last_lines = tail_log(job, 5).strip()
    assert last_lines and last_lines in job.error
    assert job.exit_code == -signal.SIGKILL  # our child: reaped, its signal recorded
    assert pid_gone(job.pid)
    with pytest.raises(JobError, match="already ended with status failed"):
        cancel(job.id, store=store)


def test_error_at_train_time_marks_failed(ws):
    """An error only training-time data reading reveals fails the job with the CXRError's message, not a traceback line."""
    store = JobStore()
    # options the architecture refuses are caught at submit (the model is built on the meta device)
    with pytest.raises(ConfigError, match="does not accept the options"):
        submit(small_config(arch_kwargs={"no_such_option": 3}), name="bad-kwargs", store=store)
    assert store.list() == []
    # labels the data lacks are caught at submit too (the label table is read, not the images) ...
    with pytest.raises(CXRError, match="has none of the labels"):
        submit(small_config(labels="Fracture,Support Devices"), name="labels-not-in-data", store=store)
    assert store.list() == []
    # ... while a filter that leaves no image is only found when the training reads the data.
    job = submit(small_config(age_min=119), name="filter-empties-data", store=store)
    job = wait_ended(job, store)
    assert job.status == "failed"
    assert job.exit_code == 1
    assert "The filter age_min removed every image" in job.error
    log = tail_log(job, 200)
    assert "Traceback" in log and "failed after" in log


def test_progress_summary_partial_events():
    assert progress_summary([])["phase"] == "waiting"
    evs = [
        {"type": "start", "time": 100.0, "config": {"epochs": 2}},
        {"type": "data", "time": 110.0, "steps_per_epoch": 5, "labels": ["A", "B"], "n_images": 70},
        {"type": "step", "time": 112.0, "epoch": 1, "step": 1, "total_steps": 10, "loss": 0.7, "images_per_s": 8.0},
        {"type": "step", "time": 114.0, "epoch": 1, "step": 2, "total_steps": 10, "loss": 0.6, "images_per_s": 9.0},
    ]
    s = progress_summary(evs[:2])
    assert s["phase"] == "training" and s["total_steps"] == 10 and s["fraction"] == 0.0 and s["eta_seconds"] is None
    s = progress_summary(evs)
    assert s["phase"] == "training" and s["step"] == 2 and s["fraction"] == pytest.approx(0.2)
    assert s["eta_seconds"] == pytest.approx(16.0) and s["last_loss"] == 0.6 and s["images_per_s"] == 9.0
    assert s["loss_curve"] == [(1, 0.7), (2, 0.6)] and s["elapsed_seconds"] == pytest.approx(14.0)
    evs += [
        {"type": "epoch", "time": 120.0, "epoch": 1, "train_loss": 0.65, "val_auroc": {"A": 0.7, "B": None},
         "val_mean_auroc": 0.7, "seconds": 10},
        {"type": "checkpoint", "time": 120.5, "epoch": 1, "val_mean_auroc": 0.7},
        {"type": "stopped", "time": 121.0, "epoch": 2, "step": 5},
        {"type": "done", "time": 122.0, "best_epoch": 1, "val_mean_auroc": 0.7, "test_mean_auroc": float("nan"),
         "stopped": True},
    ]
    s = progress_summary(evs)
    assert s["phase"] == "stopped" and s["stopped"] and s["eta_seconds"] == 0.0
    assert s["auroc_curve"] == [(1, 0.7)] and s["best_val_mean_auroc"] == 0.7 and s["best_epoch"] == 1
    assert s["per_label_auroc"] == {"A": 0.7, "B": None} and s["test_mean_auroc"] is None
    assert s["epoch_loss_curve"] == [(1, 0.65)]
