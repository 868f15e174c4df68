"""Shared fixtures: paths to the real data in ../shared/data, the shipped checkpoints, and a
session-wide workspace holding the app's built-in phantom data (generated once per run)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
NIH_SAMPLE = SHARED_DATA / "nih-sample"
FORMATS = SHARED_DATA / "formats"
CHECKPOINTS = REPO / "checkpoints"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def pytest_configure(config):
    # One math thread per process: tests, app and job processes share 2 cores; 2 OpenMP threads
    # per process on a busy 2-core machine thrash.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def app_home(tmp_path_factory) -> Path:
    """A workspace with the app's built-in phantom datasets, generated once for the whole run."""
    home = tmp_path_factory.mktemp("cxr_home")
    old = os.environ.get("CXR_HOME")
    os.environ["CXR_HOME"] = str(home)
    from cxrcore.demo import app_data

    app_data()
    if old is None:
        os.environ.pop("CXR_HOME", None)
    else:
        os.environ["CXR_HOME"] = old
    return home


@pytest.fixture
def app_env(app_home, monkeypatch) -> Path:
    """Use the shared app workspace in this test (it may write thresholds / predictions there)."""
    monkeypatch.setenv("CXR_HOME", str(app_home))
    return app_home


@pytest.fixture(scope="session")
def shipped() -> dict[str, Path]:
    out = {name: CHECKPOINTS / name for name in ("baseline", "finetuned")}
    missing = [str(p) for p in out.values() if not (p / "card.json").exists()]
    if missing:
        pytest.fail(f"shipped checkpoints missing: {missing}; run `cxr demo build`")
    return out


def job_workspace(tmp_path: Path, monkeypatch) -> Path:
    """Point the workspace (its own job table) at ``tmp_path``; one math thread per job process
    (on 2 busy cores, 2 OpenMP threads per process make steps ~50x slower)."""
    monkeypatch.setenv("CXR_HOME", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    return tmp_path


def wait_for(predicate, deadline_s: float = 180.0, interval: float = 0.25, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy (returned), or fail after ``deadline_s``."""
    import time

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {deadline_s:.0f}s waiting for {what}")


def phantom_job_config(data: Path, **over) -> dict:
    """A tiny real training config (1 epoch, 60 images at 64 px) for job tests."""
    cfg = dict(data=str(data), labels="nih14", epochs=1, batch_size=16, image_size=64, max_images=60, workers=1)
    cfg.update(over)
    return cfg


@pytest.fixture(scope="session")
def phantom(app_home) -> Path:
    """The built-in NIH phantom of the session workspace."""
    return app_home / "datasets" / "phantom-nih-seed0-n500"


def kill_jobs(home: Path) -> None:
    """Kill the process group of every job of the workspace ``home`` still alive, and reap it."""
    import signal

    from cxrcore.jobs import JobStore, process_alive, refresh

    db = home / "jobs.sqlite"
    if not db.exists():
        return
    store = JobStore(db)
    for job in store.list(limit=None):
        if job.pid and process_alive(job.pid, job.id):
            try:
                os.killpg(job.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if job.pid:
            refresh(job, store)  # reaps runners started by this process
