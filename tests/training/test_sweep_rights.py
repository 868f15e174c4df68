"""Sweeps and resumes under the operator's job rights (cxrcore.hosting): a sweep's trials are launched as the
sweep's owner, within the owner's cap, whoever advances it; stopping a sweep needs the right to cancel its
jobs; a resume counts against the cap like a launch.

No training runs: the workspace simulates one GPU (``CXR_GPUS=0``) held by another person's job row, and the
trials ask for one GPU, so the local backend queues them ("waiting for 1 GPU(s)") without starting a
process. Everything else (the study, the job rows, the rights and cap checks) is the real code.
"""
from __future__ import annotations

import pytest

from conftest import NIH_SAMPLE, TEST_DATA, job_workspace, kill_jobs, phantom_job_config
from cxrcore import hosting
from cxrcore.errors import AccessError, JobError
from cxrcore.jobs import ACTIVE, JobStore, dispatch, runner, sweep

ALICE = hosting.User(id="alice@example.org", name="Alice", signed_in=True)
BOB = hosting.User(id="bob@example.org", name="Bob", signed_in=True)
LEAD = hosting.User(id="lead@example.org", name="Lead", signed_in=True)
ANON = hosting.User(id="anonymous#0123456789abcdef", name="anonymous")
# A shared server: signed-in users launch, two queued + running jobs per person, lead@ is an admin, the
# test data is the data root.
HOSTED = hosting.Settings(address="0.0.0.0", max_jobs_per_user=2, admins=("lead@example.org",),
                          data_roots=(TEST_DATA.resolve(),))


@pytest.fixture
def ws(tmp_path, monkeypatch):
    job_workspace(tmp_path, monkeypatch)
    for name in (hosting.ENV_ADDRESS, hosting.ENV_HOSTED, hosting.ENV_LAUNCHERS, hosting.ENV_ADMINS,
                 hosting.ENV_MAX_JOBS):
        monkeypatch.delenv(name, raising=False)  # the job runner's view: a server on 127.0.0.1, no rights set
    monkeypatch.setenv(hosting.ENV_ROOTS, str(TEST_DATA))
    monkeypatch.setenv("CXR_GPUS", "0")
    store = JobStore()
    blocker = store.launching_as("someone-else@example.org").create(config(), name="holds GPU 0")
    store.update(blocker.id, status="running", gpu_ids=[0])
    yield store
    kill_jobs(tmp_path)


def config(**over) -> dict:
    return phantom_job_config(NIH_SAMPLE, gpus=1, **over)


def start_sweep(store, user=ALICE, parallel=1, trials=3) -> str:
    spec = sweep.SweepSpec("rights", config(), sweep.parse_space("lr = 0.001, 0.01, 0.1"), sampler="grid",
                           n_trials=trials, parallel=parallel)
    return sweep.create(spec, store, user=user, settings=HOSTED)


def trial_jobs(store, sweep_id):
    return [j for j in store.list(limit=None) if (j.config.get("sweep") or {}).get("id") == sweep_id]


def states(sweep_id, store):
    study, _ = sweep.load(sweep_id, store)
    return [t.state.name for t in study.trials]


def test_only_the_owner_or_an_admin_stops_a_sweep(ws):
    sweep_id = start_sweep(ws)
    [job] = trial_jobs(ws, sweep_id)
    assert job.owner == ALICE.id and job.status == "queued"
    for visitor, cancel_running in ((BOB, False), (ANON, True)):
        with pytest.raises(AccessError, match=f"Sweep {sweep_id} was started by alice@example.org"):
            sweep.stop(sweep_id, ws, cancel_running=cancel_running, user=visitor, settings=HOSTED)
        assert "only they or an admin" in sweep.why_not_stop(sweep_id, visitor, ws, HOSTED)   # the page's reason
    study, _ = sweep.load(sweep_id, ws)
    assert not study.user_attrs.get("stopped") and ws.get(job.id).status == "queued"   # nothing changed
    assert sweep.why_not_stop(sweep_id, ALICE, ws, HOSTED) is None
    assert sweep.why_not_stop(sweep_id, LEAD, ws, HOSTED) is None                      # an admin
    assert sweep.why_not_stop(sweep_id, BOB, ws, hosting.Settings()) is None           # one person's own machine
    sweep.stop(sweep_id, ws, cancel_running=True, user=ALICE, settings=HOSTED)         # the owner cancels its trials
    study, _ = sweep.load(sweep_id, ws)
    assert study.user_attrs["stopped"] and ws.get(job.id).status == "cancelled"


def test_trials_are_launched_as_the_owner_whoever_advances(ws):
    sweep_id = start_sweep(ws)
    [first] = trial_jobs(ws, sweep_id)
    ws.mark(first.id, "failed", error="simulated end")
    # An anonymous visitor (who may not launch on this server) looks at the page: the next trial is Alice's.
    started = sweep.advance(sweep_id, ws, user=ANON, settings=HOSTED)
    assert len(started) == 1 and ws.get(started[0]).owner == ALICE.id
    assert states(sweep_id, ws) == ["FAIL", "RUNNING"]   # no trial failed for the viewer's lack of rights
    # Its job ends; its runner (the OS user, no settings in its environment) starts the next: Alice's again.
    ws.mark(started[0], "failed", error="simulated end")
    runner._advance_sweep(JobStore(), started[0])
    jobs = trial_jobs(ws, sweep_id)
    assert len(jobs) == 3 and {j.owner for j in jobs} == {ALICE.id}
    assert hosting.why_not(ALICE, "cancel", jobs[0], HOSTED) is None    # so Alice may cancel every trial


def test_at_the_cap_the_next_trial_waits_and_starts_when_a_slot_frees(ws):
    own = ws.launching_as(ALICE.id).create(config(), name="alice's own job")   # Alice: 1 of her 2 slots used
    sweep_id = start_sweep(ws, parallel=3, trials=3)                          # no error at the cap
    jobs = trial_jobs(ws, sweep_id)
    assert len(jobs) == 1 and jobs[0].owner == ALICE.id
    assert states(sweep_id, ws) == ["RUNNING"]            # no trial asked, none failed, nothing to report
    [row] = sweep.list_sweeps(ws)
    assert "waiting for a free job slot" in row["waiting"] and "2 job(s)" in row["waiting"]
    for _ in range(2):  # looking again (the page, the CLI) changes nothing and raises nothing
        assert sweep.advance(sweep_id, ws, user=BOB, settings=HOSTED) == []
    assert len(trial_jobs(ws, sweep_id)) == 1 and states(sweep_id, ws) == ["RUNNING"]
    # Alice's own job ends: its runner starts her waiting sweep's next trial, within her cap.
    ws.mark(own.id, "cancelled")
    runner._advance_sweep(JobStore(), own.id)
    jobs = trial_jobs(ws, sweep_id)
    assert len(jobs) == 2 and {j.owner for j in jobs} == {ALICE.id}
    assert sum(j.status in ACTIVE for j in ws.list(limit=None) if j.owner == ALICE.id) == 2
    # A trial ends: the next advance starts the last one.
    ws.mark(jobs[0].id, "failed", error="simulated end")
    assert len(sweep.advance(sweep_id, ws, settings=HOSTED)) == 1
    assert len(trial_jobs(ws, sweep_id)) == 3 and sweep.list_sweeps(ws)[0]["waiting"] is None


def _resumable(store, owner: str):
    """A cancelled job of ``owner`` with a saved epoch (the files resume looks for)."""
    from cxrcore.train.state import META, STATE_DIR, TENSORS

    job = store.launching_as(owner).create(config(), name="resumable")
    last = job.path / STATE_DIR
    last.mkdir(parents=True)
    (last / META).write_text("{}")
    (last / TENSORS).write_bytes(b"")
    return store.mark(job.id, "cancelled")


def test_resume_counts_against_the_cap(ws):
    job = _resumable(ws, ALICE.id)
    busy = [ws.launching_as(ALICE.id).create(config(), name=f"busy {i}") for i in range(2)]   # Alice at her cap
    with pytest.raises(JobError, match=rf"Job {job.id} was not resumed: You have 2 job\(s\) queued or running "
                                       r"and this server allows 2 per person"):
        dispatch.resume(job.id, ws, user=ALICE, settings=HOSTED)
    with pytest.raises(JobError, match="alice@example.org has 2 job"):   # an admin: counted on the owner's jobs
        dispatch.resume(job.id, ws, user=LEAD, settings=HOSTED)
    assert ws.get(job.id).status == "cancelled"
    ws.mark(busy[0].id, "cancelled")                                     # a slot frees
    resumed = dispatch.resume(job.id, ws, user=ALICE, settings=HOSTED)
    assert resumed.status == "queued" and resumed.owner == ALICE.id
    # The operator's own tool (the CLI) is not capped, as for its launches.
    other = _resumable(ws, ALICE.id)
    assert dispatch.resume(other.id, ws, settings=HOSTED).status == "queued"


def test_the_page_shows_a_visitor_why_they_may_not_stop_anothers_sweep(ws, monkeypatch, app_home):
    from streamlit.testing.v1 import AppTest

    from conftest import REPO

    (ws.path.parent / "datasets").symlink_to(app_home / "datasets", target_is_directory=True)  # the page's phantoms
    sweep_id = start_sweep(ws)
    monkeypatch.setenv(hosting.ENV_HOSTED, "1")   # a shared server: this visitor is anonymous, not Alice
    at = AppTest.from_file(str(REPO / "views" / "training.py"), default_timeout=180)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    stop = at.button(key=f"train_sweep_stop_{sweep_id}")
    assert stop.disabled and "only they or an admin" in stop.help
    assert any(f"Sweep {sweep_id} was started by alice@example.org" in c.value for c in at.caption)
    study, _ = sweep.load(sweep_id, ws)
    assert not study.user_attrs.get("stopped") and {j.owner for j in trial_jobs(ws, sweep_id)} == {ALICE.id}
