"""The local GPU queue: jobs with ``gpus`` > 0 get GPUs no other active job holds, as their
CUDA_VISIBLE_DEVICES, or wait queued until enough are free.

``CXR_GPUS=0,1`` simulates two GPUs on this CPU-only machine (the runners train on the CPU: torch
sees no CUDA). Jobs train on the app's phantom NIH data (60 images at 64 px, one thread) and the
long ones are cancelled, so the file stays short.
"""
from __future__ import annotations

import re
import sqlite3
import time

import pytest

from conftest import job_workspace, kill_jobs, phantom_job_config, wait_for
from cxrcore.errors import ConfigError
from cxrcore.jobs import JobStore, cancel, gpus, refresh, refresh_all, start_queued, submit, tail_log
from cxrcore.jobs import local


@pytest.fixture
def ws(tmp_path, monkeypatch):
    job_workspace(tmp_path, monkeypatch)
    monkeypatch.setenv("CXR_GPUS", "0,1")
    yield tmp_path
    kill_jobs(tmp_path)


def visible_devices(job) -> str:
    """The CUDA_VISIBLE_DEVICES the runner printed at its start."""
    def line():
        m = re.search(r"CUDA_VISIBLE_DEVICES=(\S*)", tail_log(job, 400))
        return m
    return wait_for(line, deadline_s=60, what=f"job {job.id}'s runner to start").group(1)


# --------------------------------------------------------------------------- no processes

def test_list_gpus_and_utilisation(monkeypatch):
    monkeypatch.setenv("CXR_GPUS", "1, 0,1")
    assert gpus.list_gpus() == [0, 1]
    monkeypatch.setenv("CXR_GPUS", "")
    assert gpus.list_gpus() == []
    monkeypatch.setenv("CXR_GPUS", "zero")
    with pytest.raises(ConfigError, match="CXR_GPUS"):
        gpus.list_gpus()
    monkeypatch.delenv("CXR_GPUS")
    assert isinstance(gpus.list_gpus(), list)  # NVML, or torch's count, or []: this machine has none
    rows = gpus.utilisation()
    assert isinstance(rows, list)
    for r in rows:
        assert set(r) == {"index", "name", "util_percent", "mem_used_mib", "mem_total_mib"}


def test_no_gpus_from_nvml_says_why_and_logs_it(ws, phantom, monkeypatch, caplog):
    """Whatever this machine has: either NVML answers (no reason) or the reason is a sentence naming NVML,
    logged once (not every time the GPU panel asks), and a job asking for a GPU is told it."""
    import logging

    monkeypatch.delenv("CXR_GPUS")
    monkeypatch.setattr(gpus, "_logged", set())  # forget reasons logged by earlier tests in this process
    with caplog.at_level(logging.INFO, logger=gpus.__name__):
        reason = gpus.nvml_problem()
        again = gpus.nvml_problem()
        rows = gpus.utilisation()
    if reason is None:
        assert again is None
        return  # NVML answers here (a GPU machine): nothing to explain
    assert "NVML" in reason and again == reason and rows == []
    logged = [r.getMessage() for r in caplog.records if r.name == gpus.__name__]
    assert logged == [f"GPU detection: {reason}"]
    if not gpus.list_gpus():
        with pytest.raises(ConfigError, match=r"this machine has 0 \(.*NVML"):
            submit(phantom_job_config(phantom, gpus=1), store=JobStore())


def test_too_many_gpus_is_a_config_error_without_a_row(ws, phantom, monkeypatch):
    store = JobStore()
    with pytest.raises(ConfigError, match=r"asked for 3 GPU\(s\), this machine has 2"):
        submit(phantom_job_config(phantom, gpus=3), store=store)
    monkeypatch.setenv("CXR_GPUS", "")
    with pytest.raises(ConfigError, match=r"asked for 2 GPU\(s\), this machine has 0; use gpus=0 for CPU"):
        submit(phantom_job_config(phantom, gpus=2), store=store)
    with pytest.raises(ConfigError, match="slurm backend"):
        submit(phantom_job_config(phantom, nodes=2), store=store)
    assert store.list() == []
    assert not (ws / "runs").exists() or not any((ws / "runs").iterdir())


def test_old_database_gets_the_new_columns(ws):
    db = ws / "old.sqlite"
    with sqlite3.connect(db) as con:
        con.executescript("""
            CREATE TABLE jobs (id TEXT PRIMARY KEY, name TEXT NOT NULL DEFAULT '', status TEXT NOT NULL,
                backend TEXT NOT NULL DEFAULT 'local', config TEXT NOT NULL DEFAULT '{}', run_dir TEXT NOT NULL,
                pid INTEGER, created REAL NOT NULL, started REAL, finished REAL, error TEXT, exit_code INTEGER);
            INSERT INTO jobs (id, name, status, config, run_dir, created) VALUES ('20200101-000000-aaaa', 'old',
                'succeeded', '{"epochs": 1}', '/tmp/x', 1.0);
        """)
    store = JobStore(db)
    job = store.get("20200101-000000-aaaa")
    assert job.name == "old" and job.backend_id is None and job.gpu_ids is None and job.note is None
    assert store.update(job.id, gpu_ids=[1], backend_id=7).gpu_ids == [1]
    assert store.get(job.id).backend_id == "7"
    JobStore(db)  # opening again: nothing to add


# --------------------------------------------------------------------------- real runners

def test_gpu_queue_assigns_waits_shares_and_starts_on_cancel(ws, phantom):
    store = JobStore()
    a = submit(phantom_job_config(phantom, gpus=1, epochs=40), name="a", store=store)
    b = submit(phantom_job_config(phantom, gpus=1, epochs=40), name="b", store=store)
    assert a.pid and b.pid
    assert {tuple(a.gpu_ids), tuple(b.gpu_ids)} == {(0,), (1,)}

    c = submit(phantom_job_config(phantom, gpus=1), name="c", store=store)
    assert c.status == "queued" and c.pid is None and c.gpu_ids is None
    assert c.note.startswith("waiting for 1 GPU(s)"), c.note
    assert tail_log(c) == ""  # no process, no log
    # The "never started" rule (QUEUED_GRACE_S) leaves a job that waits for GPUs alone.
    store.update(c.id, created=time.time() - 10 * local.QUEUED_GRACE_S)
    assert refresh(c, store).status == "queued"
    assert [j.id for j in refresh_all(store) if j.status == "queued" and j.pid is None] == [c.id]
    assert start_queued(store) == []

    d = submit(phantom_job_config(phantom, gpus=1, share_gpus=True, epochs=40), name="d-shares", store=store)
    assert d.pid and d.gpu_ids in ([0], [1])  # runs alongside, on a GPU another job holds

    assert visible_devices(a) == str(a.gpu_ids[0])
    assert visible_devices(b) == str(b.gpu_ids[0])
    assert visible_devices(d) == str(d.gpu_ids[0])

    # A sharing job does not free a GPU for an exclusive one: c still waits while a and b run.
    assert cancel(d.id, store=store, timeout=30).status == "cancelled"
    assert store.get(c.id).pid is None
    done = cancel(a.id, store=store, timeout=30)
    assert done.status == "cancelled"
    c = store.get(c.id)
    assert c.pid and c.gpu_ids == a.gpu_ids and c.note is None  # started by cancel: a's GPU is free
    assert visible_devices(c) == str(a.gpu_ids[0])
    assert cancel(b.id, store=store, timeout=30).status == "cancelled"
    # That a job started off the queue trains to the end: test_waiting_job_starts_when_a_runner_ends.
    assert cancel(c.id, store=store, timeout=30).status == "cancelled"


def test_waiting_job_starts_when_a_runner_ends(ws, phantom):
    store = JobStore()
    cpu = submit(phantom_job_config(phantom, epochs=40), name="cpu", store=store)
    assert cpu.gpu_ids == [] and visible_devices(cpu) == ""  # gpus=0: CPU, never a GPU
    assert cancel(cpu.id, store=store, timeout=30).status == "cancelled"

    big = submit(phantom_job_config(phantom, gpus=2), name="both-gpus", store=store)
    assert big.pid and big.gpu_ids == [0, 1]
    small = submit(phantom_job_config(phantom, gpus=1), name="waits", store=store)
    assert small.pid is None and "waiting for 1 GPU(s): 0 of 2 free" in small.note
    assert visible_devices(big) == "0,1"

    # Nobody calls refresh_all/start_queued here: the ending runner starts the waiting job itself.
    started = wait_for(lambda: store.get(small.id).pid, what="the ending runner to start the waiting job")
    assert started
    big = store.get(big.id)
    assert big.status == "succeeded", f"{big.error}\n{tail_log(big, 30)}"
    assert f"started waiting job {small.id}" in tail_log(big, 20)
    small = store.get(small.id)
    assert small.gpu_ids == [0] and visible_devices(small) == "0"

    def ended():
        j = refresh(small, store)
        return j if j.ended else None
    assert wait_for(ended, what="the second job to finish").status == "succeeded"
