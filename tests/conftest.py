"""Shared fixtures: paths to the real test images in ``tests/data`` (see its README for where each
file comes from), the shipped checkpoints, and a session-wide workspace holding the app's built-in
phantom data (generated once per run).

``EXTENDED_DATA``: larger real data for optional extended tests, only when the variable
``CXR_EXTENDED_DATA`` names a folder laid out like the development machine's ``shared/data``
(``nih-sample/`` with 512 / 1024 px originals, ``formats/``). CI leaves it unset, so a green CI
run is what a user's fresh clone gets."""
from __future__ import annotations

import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from filelock import FileLock

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"
NIH_SAMPLE = TEST_DATA / "nih-sample"   # 250 real NIH images (160 px), their label rows and boxes
FORMATS = TEST_DATA / "formats"         # real files in the formats users upload (PNG, JPEG, DICOM)
EXTENDED_DATA = Path(os.environ["CXR_EXTENDED_DATA"]).expanduser() if os.environ.get("CXR_EXTENDED_DATA") else None
needs_extended = pytest.mark.skipif(
    EXTENDED_DATA is None or not (EXTENDED_DATA / "nih-sample" / "images").is_dir(),
    reason="extended test: set CXR_EXTENDED_DATA to a folder holding nih-sample/ (full-size NIH originals)")
CHECKPOINTS = REPO / "checkpoints"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


DEV_SHARED = str(REPO.parent / "shared")  # exists on the development machine only, never on a user's clone


def _refuse_dev_shared(event: str, args: tuple) -> None:
    """Audit hook: a test that opens a file of ``../shared`` fails, so a green run on the development
    machine means a fresh clone with nothing beside it passes too."""
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        if path.startswith(DEV_SHARED + os.sep) or path == DEV_SHARED:
            raise PermissionError(f"a test read {path}: tests must use tests/data (or CXR_EXTENDED_DATA), "
                                  "never ../shared, which a user's clone does not have")


def pytest_configure(config):
    # One math thread per process: tests, app and job processes share 2 cores; 2 OpenMP threads
    # per process on a busy 2-core machine thrash.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    if EXTENDED_DATA is None or not str(EXTENDED_DATA.resolve()).startswith(DEV_SHARED):
        sys.addaudithook(_refuse_dev_shared)


def _file_order(items) -> dict[str, tuple]:
    """A sort key per test file for the two workers (``./test.sh``: one file per worker at a time, handed out in
    collection order): first the longest file that needs the session's phantom workspace (``app_home``), so one
    worker starts generating it at once; then every file that does not need it, longest first, which the other
    worker runs meanwhile instead of waiting on the lock; then the other phantom files, longest first, so the run
    ends with short files on both workers. Lengths come from ``tests/durations.json`` (refreshed with
    ``scripts/test_durations.py``; a file not listed counts as a median one): a scheduling hint only."""
    import json
    import statistics

    seconds = json.loads((REPO / "tests" / "durations.json").read_text())
    default = statistics.median(seconds.values()) if seconds else 1.0
    files: dict[str, bool] = {}
    for item in items:
        name = item.nodeid.split("::")[0]
        files[name] = files.get(name, False) or "app_home" in getattr(item, "fixturenames", ())
    length = {name: seconds.get(name, default) for name in files}
    phantom = sorted((n for n, needs in files.items() if needs), key=lambda n: -length[n])
    order = {n: (0 if phantom and n == phantom[0] else 2 if needs else 1, -length[n]) for n, needs in files.items()}
    return order


def pytest_collection_modifyitems(session, config, items):
    order = _file_order(items)
    items.sort(key=lambda item: order[item.nodeid.split("::")[0]])   # stable: a file's tests keep their order


@contextmanager
def workspace_env(home) -> Iterator[None]:
    """``CXR_HOME`` set to ``home`` for the block, then as it was (for module and session fixtures, which cannot
    use monkeypatch)."""
    old = os.environ.get("CXR_HOME")
    os.environ["CXR_HOME"] = str(home)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CXR_HOME", None)
        else:
            os.environ["CXR_HOME"] = old


def _generate_app_data(home: Path) -> None:
    """Run the app's own first-start generation (``cxrcore.demo.app_data``) with ``home`` as workspace."""
    home.mkdir(parents=True, exist_ok=True)
    with workspace_env(home):
        from cxrcore.demo import app_data

        app_data()


@pytest.fixture(scope="session")
def app_home(tmp_path_factory, worker_id) -> Path:
    """A workspace with the app's built-in phantom datasets, generated once for the whole run.

    Under pytest-xdist (``./test.sh`` runs two workers) the first worker to arrive generates the phantom
    datasets into a folder shared by the run, under a file lock, and every worker gets a workspace of its
    own whose ``datasets/`` are hard links to those files: generated once, and no worker sees what
    another one's tests wrote (thresholds, predictions, runs).

    ``CXR_TEST_APP_HOME`` (a developer's convenience; ``.ci/run`` leaves it unset) names a folder kept
    between runs, so the phantom images are generated once, not at every pytest start; it is shared as
    it is, by every worker."""
    keep = os.environ.get("CXR_TEST_APP_HOME")
    if keep:
        home = Path(keep)
        with FileLock(str(home) + ".lock"):
            _generate_app_data(home)
        return home
    if worker_id == "master":
        home = tmp_path_factory.mktemp("cxr_home")
        _generate_app_data(home)
        return home
    shared = tmp_path_factory.getbasetemp().parent / "cxr_home_shared"
    with FileLock(str(shared) + ".lock"):
        _generate_app_data(shared)
    home = tmp_path_factory.mktemp("cxr_home")
    shutil.copytree(shared / "datasets", home / "datasets", copy_function=os.link, dirs_exist_ok=True)
    _generate_app_data(home)  # finds the datasets in place; makes whatever else a workspace starts with
    return home


def fresh_workspace(app_home: Path, dest: Path) -> Path:
    """A new workspace at ``dest`` holding the session's phantom datasets (hard links, no copy) and nothing
    else: for a test whose result must not depend on what earlier tests saved in ``app_home``."""
    shutil.copytree(app_home / "datasets", dest / "datasets", copy_function=os.link, dirs_exist_ok=True)
    _generate_app_data(dest)
    return dest


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


@pytest.fixture
def hold(tmp_path, monkeypatch) -> Path:
    """The training hold file (``CXR_TRAIN_HOLD``, cxrcore.train.trainer.HOLD_ENV), present: every run started
    now waits at its first epoch's end (after the epoch is saved) until the file is removed or a stop is asked
    of it. A test acts on a job at that known point instead of hoping it is still running."""
    from cxrcore.train.trainer import HOLD_ENV

    path = tmp_path / "hold"
    path.write_text("hold\n")
    monkeypatch.setenv(HOLD_ENV, str(path))
    yield path
    path.unlink(missing_ok=True)


def is_held(run_dir) -> bool:
    """Whether the run in ``run_dir`` has logged that it waits on the hold file."""
    from cxrcore.train.events import read_events

    path = Path(run_dir) / "events.jsonl"
    return path.exists() and any(e.get("type") == "hold" for e in read_events(path))


def cxr_here(capsys, *args) -> tuple[int, str, str]:
    """``cxr ARGS`` through its ``main`` in this process (the environment as the test set it): exit code, stdout,
    stderr. A test that checks the entry point itself runs ``python -m cxrcore.cli`` as a process once; the
    rest of its CLI checks save a Python start and a torch import each this way."""
    from cxrcore.cli import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def app_page(name: str = "home", timeout: float = 300):
    """The real app (``app.py`` with its ``st.navigation``) as a Streamlit ``AppTest``, opened on the page
    ``views/NAME.py`` (``"home"``: the start page); not run yet."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=timeout)
    if name != "home":
        at.switch_page(f"views/{name}.py")
    return at


def no_exception(at) -> None:
    """Fail with the page's exceptions when its last run raised any."""
    assert not at.exception, [e.value for e in at.exception]


def evaluate_on_page(model: str, data: str = "nih-sample", split: str = "test", n_boot: int = 20, timeout: float = 600):
    """The Evaluation page run on ``model`` (its picker label) alone over ``data``'s ``split``, as a user would click
    it; fails on an exception or an error shown. Returns the AppTest."""
    at = app_page("evaluation", timeout).run()
    at.selectbox(key="eval_data").set_value(data).run()
    at.selectbox(key="eval_model").set_value(model).run()
    at.selectbox(key="eval_compare").set_value("(no comparison)").run()
    at.selectbox(key="eval_split").set_value(split).run()
    at.number_input(key="eval_nboot").set_value(n_boot).run()
    at.button(key="eval_run").click().run()
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    return at


def run_listening_on(at, address: str):
    """One AppTest run with the app listening on ``address``: Streamlit's own ``server.address`` option is set
    (as ``--server.address`` from run.sh sets it) for the run and put back afterwards."""
    from streamlit import config as st_config

    old = st_config.get_option("server.address")
    st_config.set_option("server.address", address)
    try:
        at.run()
    finally:
        st_config.set_option("server.address", old)
    assert not at.exception, [e.value for e in at.exception]
    return at


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
    from cxrcore.demo import APP_DATA_N

    return app_home / "datasets" / f"phantom-nih-seed0-n{APP_DATA_N}"


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """Debian's Orthanc with its DICOMweb plugin on 127.0.0.1 for one test module (tests/orthanc_server.py): its
    DICOMweb root and credentials; skipped where it is not installed."""
    import orthanc_server

    if not orthanc_server.available():
        pytest.skip("Debian's orthanc and orthanc-dicomweb are not installed (scripts/setup.sh test)")
    with orthanc_server.orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


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


@pytest.fixture(scope="session")
def two_network_home(app_home, tmp_path_factory) -> Path:
    """A workspace whose runs/ holds a real two-network run (``twonet``: gate, disease, combined), trained tiny."""
    from cxrcore.train.trainer import TrainConfig, train

    home = tmp_path_factory.mktemp("two_network") / "home"
    chex = next((app_home / "datasets").glob("phantom-chexpert-*"))
    with workspace_env(str(home)):
        train(TrainConfig(data=str(chex), labels="chexpert14", hierarchy="two_network", gate_mode="hard", epochs=1,
                          batch_size=16, image_size=48, max_images=96, policy="ignore", workers=1, threads=1,
                          lr=3e-3, name="twonet"), home / "runs" / "twonet")
    return home
