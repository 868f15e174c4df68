"""Ceilings on the work a visitor may ask of a shared server (issue item 6), and one heavy computation at a time.

Each ceiling is one row of :data:`cxrcore.hosting.CEILINGS` (setting, shared-server default, what it bounds),
applied where the work is requested: ``run_evaluation`` (bootstrap replicates, test-time views, images of a
split), ``localize_checkpoint`` (images, ScoreCAM images, faithfulness images per label) and the job layer
(``check_job_resources`` / ``dispatch.submit``: processes, workers, batch size, image size). The refusals
happen before any model runs, so these tests only ask; nothing heavy is computed. On one person's own
machine with nothing configured there is no ceiling (today's behaviour), and the operator (CLI) has none.
"""
from __future__ import annotations

import threading

import pytest
from streamlit.testing.v1 import AppTest

from conftest import NIH_SAMPLE, REPO
from conftest import run_listening_on as run  # one AppTest run with the app listening on an address
from cxrcore import hosting
from cxrcore.errors import AccessError
from cxrcore.jobs import JobStore, dispatch
from cxrcore.jobs.config import check_job_resources

SHARED = "0.0.0.0"
LOCAL = "127.0.0.1"
TIMEOUT = 300
ALICE = hosting.User(id="alice@example.org", name="Alice", signed_in=True)
BOB = hosting.User(id="bob@example.org", name="Bob", signed_in=True)
# the CXR_* settings that change what a visitor may do (none may leak in from the developer's shell)
OPERATOR_VARS = ("CXR_ADDRESS", "CXR_HOSTED", "CXR_DATA_ROOTS", "CXR_JOB_LAUNCHERS", "CXR_JOB_ADMINS",
                 "CXR_MAX_JOBS_PER_USER", *(c.env for c in hosting.CEILINGS))


@pytest.fixture(autouse=True)
def clean_operator_env(monkeypatch):
    for name in OPERATOR_VARS:
        monkeypatch.delenv(name, raising=False)


def shared(**env) -> hosting.Settings:
    return hosting.settings(address=SHARED, environ=env)


def local(**env) -> hosting.Settings:
    return hosting.settings(address=LOCAL, environ=env)


# --------------------------------------------------------------------------- evaluation

def test_shared_server_refuses_10000_bootstrap_replicates_and_ten_crop(shipped):
    from cxrcore.eval.evaluate import run_evaluation

    limits = hosting.limits(shared(), ALICE)
    with pytest.raises(AccessError, match=r"CXR_MAX_BOOTSTRAP=1000") as exc:
        run_evaluation(shipped["baseline"], NIH_SAMPLE, "all", n_boot=10000, limits=limits)
    assert "10000" in str(exc.value)
    with pytest.raises(AccessError, match=r"tencrop.*CXR_MAX_TTA_VIEWS=2"):
        run_evaluation(shipped["baseline"], NIH_SAMPLE, "all", n_boot=100, tta="tencrop", limits=limits)
    # one person's own machine with nothing configured: no ceiling (checked, not run)
    mine = hosting.limits(local(), ALICE)
    assert not mine and mine.allows("bootstrap", 10000) and mine.allows("tta_views", 10)
    # the operator's own tools (CLI, Python): none either, even on a shared server
    assert not hosting.limits(shared(), None) and not hosting.limits(shared(), hosting.operator_user())


def test_a_split_over_the_image_ceiling_is_refused_before_any_model_runs(shipped):
    from cxrcore.eval.evaluate import run_evaluation

    limits = hosting.limits(shared(CXR_MAX_EVAL_IMAGES="10"), ALICE)
    with pytest.raises(AccessError, match=r"Images to predict.*250 is over.*CXR_MAX_EVAL_IMAGES=10"):
        run_evaluation(shipped["baseline"], NIH_SAMPLE, "all", n_boot=50, limits=limits)


def test_env_overrides_raise_lower_or_lift_a_ceiling():
    assert hosting.limits(shared(), ALICE).get("bootstrap") == 1000
    raised = hosting.limits(shared(CXR_MAX_BOOTSTRAP="20000", CXR_MAX_TTA_VIEWS="10"), ALICE)
    assert raised.allows("bootstrap", 10000) and raised.get("bootstrap") == 20000
    assert raised.allows("tta_views", 10)
    assert hosting.limits(shared(CXR_MAX_BOOTSTRAP="0"), ALICE).get("bootstrap") is None  # 0: no ceiling
    # a ceiling set on one's own machine holds there too (as CXR_MAX_JOBS_PER_USER does)
    assert hosting.limits(local(CXR_MAX_BOOTSTRAP="200"), ALICE).get("bootstrap") == 200
    # an unreadable value: the shared-server default, and the operator is told
    bad = shared(CXR_MAX_JOB_BATCH="lots")
    assert hosting.limits(bad, ALICE).get("job_batch") == 256
    assert any("CXR_MAX_JOB_BATCH" in p for p in bad.problems)


# --------------------------------------------------------------------------- localization

def test_localization_over_the_ceilings_is_refused(shipped):
    from cxrcore.eval.localize import localize_checkpoint

    # the NIH sample has 23 images with boxes
    few = hosting.limits(shared(CXR_MAX_EVAL_IMAGES="10"), ALICE)
    with pytest.raises(AccessError, match=r"Images with boxes to localize.*23 is over.*CXR_MAX_EVAL_IMAGES=10"):
        localize_checkpoint(shipped["baseline"], NIH_SAMPLE, "all", limits=few)
    limits = hosting.limits(shared(), ALICE)
    with pytest.raises(AccessError, match=r"ScoreCAM.*23 is over.*CXR_MAX_SLOW_CAM_IMAGES=20"):
        localize_checkpoint(shipped["baseline"], NIH_SAMPLE, "all", methods=["GradCAM", "ScoreCAM"], limits=limits)
    with pytest.raises(AccessError, match=r"Faithfulness.*200 is over.*CXR_MAX_FAITHFULNESS_PER_LABEL=5"):
        localize_checkpoint(shipped["baseline"], NIH_SAMPLE, "all", faithfulness_n=200, limits=limits)
    mine = hosting.limits(local(), ALICE)
    assert mine.allows("eval_images", 100000) and mine.allows("slow_cam_images", 100000)
    assert mine.allows("faithfulness", 200)


# --------------------------------------------------------------------------- training jobs

HEAVY_JOBS = {
    "CXR_MAX_JOB_PROCS": {"nproc": 64, "nodes": 1},
    "CXR_MAX_JOB_WORKERS": {"workers": 256},
    "CXR_MAX_JOB_BATCH": {"batch_size": 4096},
    "CXR_MAX_JOB_IMAGE_SIZE": {"image_size": 2048},
}


@pytest.mark.parametrize("setting", list(HEAVY_JOBS))
def test_a_visitors_job_over_a_resource_ceiling_is_refused(setting, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_HOME", str(tmp_path))
    monkeypatch.setenv("CXR_ADDRESS", SHARED)
    s = hosting.settings()
    config = {"data": str(tmp_path / "datasets" / "nih"), "epochs": 1, **HEAVY_JOBS[setting]}
    with pytest.raises(AccessError, match=setting):
        check_job_resources(config, ALICE, s)
    store = JobStore()
    with pytest.raises(AccessError, match=setting):  # the job layer's entry point, as the Training page calls it
        dispatch.submit(config, store=store, user=ALICE, settings=s)
    assert store.list() == []
    # the operator (CLI) and one's own machine with nothing configured: not limited
    check_job_resources(config, None, s)
    check_job_resources(config, hosting.operator_user(), s)
    check_job_resources(config, ALICE, local())


def test_processes_are_counted_over_nodes_and_an_override_raises_the_ceiling():
    config = {"data": "/x", "nproc": 2, "nodes": 4}
    with pytest.raises(AccessError, match=r"nproc x nodes \(2 x 4\): 8 is over.*CXR_MAX_JOB_PROCS=4"):
        check_job_resources(config, ALICE, shared())
    check_job_resources(config, ALICE, shared(CXR_MAX_JOB_PROCS="8"))
    check_job_resources({"data": "/x"}, ALICE, shared())  # the defaults are within every ceiling


# --------------------------------------------------------------------------- one heavy computation at a time

def test_heavy_slot_refuses_a_second_concurrent_computation_of_the_same_visitor():
    s = shared()
    inside, release = threading.Event(), threading.Event()
    failures = []

    def first():
        try:
            with hosting.heavy_slot(ALICE, s):
                inside.set()
                release.wait(60)
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)
            inside.set()

    worker = threading.Thread(target=first)
    worker.start()
    try:
        assert inside.wait(60) and not failures
        with pytest.raises(AccessError, match="You already have a computation running; wait for it to finish"):
            with hosting.heavy_slot(hosting.User(id="Alice@Example.org", signed_in=True), s):
                pass
        with hosting.heavy_slot(BOB, s):  # another visitor is not held up
            pass
    finally:
        release.set()
        worker.join(60)
    assert not failures
    with hosting.heavy_slot(ALICE, s):  # given back when the first ended
        pass
    # given back when the computation fails, too
    with pytest.raises(ZeroDivisionError):
        with hosting.heavy_slot(ALICE, s):
            1 / 0
    with hosting.heavy_slot(ALICE, s):
        pass


def test_heavy_slot_anonymous_visitors_share_one_and_own_machine_has_none():
    s = shared()
    one, other = hosting.User(id="anonymous#aaa"), hosting.User(id="anonymous#bbb")
    with hosting.heavy_slot(one, s):
        with pytest.raises(AccessError, match="not signed in share one computation"):
            with hosting.heavy_slot(other, s):
                pass
    with hosting.heavy_slot(ALICE, local()):  # one person's own machine: nothing is held
        with hosting.heavy_slot(ALICE, local()):
            pass


# --------------------------------------------------------------------------- the Evaluation page

def evaluation_page() -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    at.switch_page("views/evaluation.py")
    return at


def test_evaluation_page_offers_only_what_the_ceilings_allow(app_env, shipped, monkeypatch):
    at = run(evaluation_page(), SHARED)
    boot = at.number_input(key="eval_nboot")
    assert boot.max == hosting.CEILING_BY_NAME["bootstrap"].hosted == 1000
    assert "CXR_MAX_BOOTSTRAP" in (boot.help or "")
    tta = at.selectbox(key="eval_tta").options  # as shown: "none", "image + mirror (2 views)"
    assert len(tta) == 2 and not any("ten-crop" in o for o in tta)
    monkeypatch.setenv("CXR_MAX_BOOTSTRAP", "300")
    at = run(evaluation_page(), SHARED)
    assert at.number_input(key="eval_nboot").max == 300
