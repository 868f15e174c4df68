"""Who may change the thresholds and temperatures everyone sees (cxrcore.eval.thresholds.save_target, with the
rule in cxrcore.hosting.why_not_save).

On a shared server a visitor's Save on the Thresholds page, or "Save these temperatures" on the Evaluation page,
changes a run's card (a run's checkpoint/card.json) only when they launched that run (the job's recorded owner) or
are an admin (CXR_JOB_ADMINS), and the workspace's shared copy of a shipped / library model only when they are an
admin. Anyone else saves into their own copy (``<workspace>/checkpoints/users/<user key>/<name>``), offered only
to them. One person's own machine with nothing configured, and the CLI, keep the behaviour from before.

The runs are copies of the shipped demo model with a job row recording who launched them (as dispatch.submit
records it); a shared server is Settings for the address 0.0.0.0, and for the page, Streamlit's own
``server.address`` option (what run.sh passes from CXR_ADDRESS), as tests/hosting/test_hosting.py does.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import REPO  # also puts the repository root on sys.path
from conftest import run_listening_on as run_page  # one AppTest run with the app listening on an address
from cxrcore import hosting
from cxrcore.checkpoint import read_card
from cxrcore.eval.thresholds import (IN_PLACE, OWN_COPY, SHARED_COPY, own_copies_root, save_target,
                                     save_temperatures, save_thresholds, user_key)
from cxrcore.jobs import JobStore
from cxrcore.mdtext import md_text  # the pages show names escaped (Markdown): compare with the escaped text

SHARED = "0.0.0.0"
LOCAL = "127.0.0.1"
ALICE = hosting.User("alice@example.org", name="Alice", signed_in=True)
BOB = hosting.User("bob@example.org", name="Bob", signed_in=True)
TIMEOUT = 300


@pytest.fixture(autouse=True)
def clean_operator_env(monkeypatch):
    """No operator setting leaks in from the developer's shell."""
    for name in ("CXR_ADDRESS", "CXR_HOSTED", "CXR_DATA_ROOTS", "CXR_JOB_LAUNCHERS", "CXR_JOB_ADMINS",
                 "CXR_MAX_JOBS_PER_USER", "CXR_AUTH_TRUST_EMAIL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def ws(tmp_path, monkeypatch, shipped) -> dict:
    """A workspace of its own, its own copy of the shipped models, and alice's run (her job's run folder holding a
    checkpoint)."""
    home, ships = tmp_path / "home", tmp_path / "shipped"
    for name, path in shipped.items():
        shutil.copytree(path, ships / name)
    monkeypatch.setenv("CXR_HOME", str(home))
    monkeypatch.setenv("CXR_CHECKPOINTS", str(ships))
    store = JobStore()
    job = store.launching_as(ALICE.id).create({"data": "phantom"}, name="alice's run")
    shutil.copytree(ships / "finetuned", Path(job.run_dir) / "checkpoint")
    store.mark(job.id, "succeeded")
    return {"home": home, "ships": ships, "job": job, "run": Path(job.run_dir) / "checkpoint"}


def shared(**env) -> hosting.Settings:
    return hosting.settings(address=SHARED, environ=env)


def card_bytes(folder: Path) -> bytes:
    return (folder / "card.json").read_bytes()


def test_a_visitor_saving_for_someone_elses_run_writes_their_own_copy(ws):
    run, s = ws["run"], shared()
    label = read_card(run).labels[0]
    before = card_bytes(run)
    target = save_target(run, BOB, s)
    assert target.kind == OWN_COPY and "You are not this run's owner" in target.reason
    assert "alice@example.org" in target.reason and f"run {ws['job'].id} (your thresholds)" in target.reason
    where = save_thresholds(run, {label: 0.123}, user=BOB, settings=s)
    assert card_bytes(run) == before                      # alice's card: byte for byte as it was
    assert where == target.folder and where.parent == own_copies_root(BOB, s)
    assert read_card(where).thresholds[label] == pytest.approx(0.123)
    assert read_card(where).weights_sha256 == read_card(run).weights_sha256
    # the weights are shared with the run (a hard link: no disk), never rewritten in place by anyone
    assert (where / "weights.safetensors").stat().st_ino == (run / "weights.safetensors").stat().st_ino
    assert json.loads((where / "copy.json").read_text())["owner"] == BOB.id
    # temperatures from the Evaluation page follow the same rule, into the same copy
    save_temperatures(run, {label: 1.7}, "val", user=BOB, settings=s)
    assert card_bytes(run) == before
    card = read_card(where)
    assert card.metrics["calibration"]["temperatures"][label] == pytest.approx(1.7)
    assert card.thresholds[label] == pytest.approx(0.123)   # the copy keeps bob's thresholds
    # a visitor who has not signed in: a copy of their own browser session, told apart from another session's
    a1, a2 = hosting.visitor({}, "session-1", s), hosting.visitor({}, "session-2", s)
    t1 = save_target(run, a1, s)
    assert t1.kind == OWN_COPY and "not signed in" in t1.reason
    w1 = save_thresholds(run, {label: 0.2}, user=a1, settings=s)
    w2 = save_thresholds(run, {label: 0.3}, user=a2, settings=s)
    assert w1 != w2 and len({w1.parent, w2.parent, where.parent}) == 3
    assert read_card(w1).thresholds[label] == pytest.approx(0.2) and read_card(w2).thresholds[label] == 0.3
    assert card_bytes(run) == before
    # a visitor's own copy is theirs: saved in place; another visitor saving "into" it gets their own again
    assert save_target(where, BOB, s).kind == IN_PLACE
    carol = hosting.User("carol@example.org", signed_in=True)
    bob_copy = card_bytes(where)
    carols = save_thresholds(where, {label: 0.9}, user=carol, settings=s)
    assert card_bytes(where) == bob_copy and carols.parent.name == user_key(carol)


def test_the_owner_and_an_admin_save_in_place(ws):
    run, s = ws["run"], shared()
    label = read_card(run).labels[0]
    target = save_target(run, ALICE, s)
    assert target.kind == IN_PLACE and "You launched this run" in target.reason
    assert save_thresholds(run, {label: 0.31}, user=ALICE, settings=s) == run
    assert read_card(run).thresholds[label] == pytest.approx(0.31)
    assert save_temperatures(run, {label: 2.0}, "val", user=ALICE, settings=s) == run
    admin = shared(CXR_JOB_ADMINS="Bob@Example.org")
    assert save_target(run, BOB, admin).kind == IN_PLACE
    assert save_thresholds(run, {label: 0.44}, user=BOB, settings=admin) == run
    assert read_card(run).thresholds[label] == pytest.approx(0.44)
    # an anonymous visitor owns only what their own browser session launched
    everyone = shared(CXR_JOB_LAUNCHERS="everyone")
    anon = hosting.visitor({}, "tok-a", everyone)
    job = JobStore().launching_as(anon.id).create({}, name="anon's")
    shutil.copytree(ws["ships"] / "baseline", Path(job.run_dir) / "checkpoint")
    assert save_target(job.run_dir, anon, everyone).kind == IN_PLACE
    assert save_target(job.run_dir, hosting.visitor({}, "tok-b", everyone), everyone).kind == OWN_COPY
    # no owner recorded (a run not launched as a job): only an admin changes it
    orphan = ws["home"] / "runs" / "by-hand" / "checkpoint"
    shutil.copytree(ws["ships"] / "baseline", orphan)
    t = save_target(orphan, ALICE, s)
    assert t.kind == OWN_COPY and "No owner is recorded" in t.reason
    assert save_target(orphan, BOB, admin).kind == IN_PLACE


def test_the_shared_copy_of_a_shipped_model_is_not_changed_by_a_visitor(ws):
    ships, s = ws["ships"], shared()
    label = read_card(ships / "finetuned").labels[0]
    team = save_thresholds(ships / "finetuned", {label: 0.5})   # the operator (CLI): the shared workspace copy
    assert team == ws["home"] / "checkpoints" / "finetuned"
    before, shipped_before = card_bytes(team), card_bytes(ships / "finetuned")
    for source in (ships / "finetuned", team):                   # the shipped model, or the shared copy itself
        t = save_target(source, BOB, s)
        assert t.kind == OWN_COPY and "only by an admin" in t.reason and "finetuned (your thresholds)" in t.reason
        mine = save_thresholds(source, {label: 0.07}, user=BOB, settings=s)
        assert mine == own_copies_root(BOB, s) / "finetuned"
        assert read_card(mine).thresholds[label] == pytest.approx(0.07)
    save_temperatures(team, {label: 1.5}, "val", user=hosting.visitor({}, "tok", s), settings=s)
    assert card_bytes(team) == before and card_bytes(ships / "finetuned") == shipped_before
    # a library model (no weights needed to say where a save would go)
    lib = save_target("xrv:densenet121-res224-all", BOB, s)
    assert lib.kind == OWN_COPY and lib.folder.parent == own_copies_root(BOB, s)
    # an admin changes the shared copy, which every visitor is offered
    admin = shared(CXR_JOB_ADMINS="bob@example.org")
    t = save_target(ships / "finetuned", BOB, admin)
    assert t.kind == SHARED_COPY and t.folder == team and own_copies_root(BOB, admin) is None
    assert save_thresholds(ships / "finetuned", {label: 0.61}, user=BOB, settings=admin) == team
    assert read_card(team).thresholds[label] == pytest.approx(0.61)


def test_a_visitor_saving_a_library_models_thresholds_gets_their_own_copy(tmp_path, monkeypatch):
    from library_files import XRV_ALL, plant_densenet  # xrv's DenseNet file with random weights

    from cxrcore.models.library import editable_copy

    name = "xrv:densenet121-res224-all"
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CXR_XRV_CACHE_DIR", str(tmp_path / "xrv-cache"))
    monkeypatch.setenv("CXR_OFFLINE", "1")
    monkeypatch.delenv("CXR_XRV_BASE_URL", raising=False)
    plant_densenet(tmp_path / "xrv-cache", XRV_ALL)
    team = editable_copy(name)               # the shared "(your thresholds)" copy, as one person's machine makes it
    before, library_mass = card_bytes(team), read_card(name).thresholds["Mass"]
    s = shared()
    t = save_target(name, BOB, s)
    assert t.kind == OWN_COPY and "The library model is never changed" in t.reason
    mine = save_thresholds(name, {"Mass": 0.3}, user=BOB, settings=s)
    assert mine == own_copies_root(BOB, s) / team.name and read_card(mine).thresholds["Mass"] == 0.3
    assert save_thresholds(team, {"Mass": 0.4}, user=BOB, settings=s) == mine   # from the shared copy: the same
    assert read_card(mine).thresholds["Mass"] == 0.4
    assert card_bytes(team) == before and read_card(name).thresholds["Mass"] == library_mass


def test_one_persons_own_machine_keeps_the_behaviour_from_before(ws):
    run, ships = ws["run"], ws["ships"]
    local = hosting.settings(address=LOCAL, environ={})
    assert local.single_user
    me = hosting.visitor({}, "tok", local)                   # the app's user on their own machine
    label = read_card(run).labels[0]
    assert save_target(run, me, local).kind == IN_PLACE and save_target(run, me, local).reason == ""
    assert save_thresholds(run, {label: 0.22}, user=me, settings=local) == run   # alice's run: still in place
    t = save_target(ships / "baseline", me, local)
    assert t.kind == SHARED_COPY and t.display == "baseline (your thresholds)"
    base_label = read_card(ships / "baseline").labels[0]
    assert save_temperatures(ships / "baseline", {base_label: 1.2}, "val", user=me, settings=local) == \
        ws["home"] / "checkpoints" / "baseline"
    assert own_copies_root(me, local) is None and not (ws["home"] / "checkpoints" / "users").exists()
    # the CLI / a Python caller (no user given) is the operator, everywhere
    assert save_thresholds(run, {label: 0.23}) == run
    assert save_target(run, hosting.operator_user(), shared()).kind == IN_PLACE


# --------------------------------------------------------------------------- the Thresholds page
SMALL = "phantom-chexpert-first300"  # the pages' dataset: where a save goes does not depend on how many images


def page_data(ws: dict, app_home: Path) -> None:
    """The built-in phantoms linked into the workspace (not generated again), and SMALL: the first 300 rows of each
    table of the CheXpert one (463 images; 105 in the test split, 35 in val), which the pages here predict."""
    from small_data import phantom_subset

    (ws["home"] / "datasets").mkdir(parents=True, exist_ok=True)
    for d in (app_home / "datasets").iterdir():
        (ws["home"] / "datasets" / d.name).symlink_to(d)
    phantom_subset(next((app_home / "datasets").glob("phantom-chexpert-*")), ws["home"] / "datasets" / SMALL, 300)


def thresholds_page(who: dict | None) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    at.switch_page("views/thresholds.py")
    at.session_state["thr_data"] = SMALL  # from the first run on: tuned on 35 images, not the phantom's 350
    if who is not None:
        at.user = who
    return at


def test_thresholds_page_says_where_a_visitors_save_goes_and_leaves_the_owners_card(ws, app_home):
    page_data(ws, app_home)
    run, job = ws["run"], ws["job"]
    before = card_bytes(run)
    bob = {"is_logged_in": True, "email": BOB.id, "email_verified": True, "name": "Bob"}
    at = run_page(thresholds_page(bob), SHARED)
    at.selectbox(key="thr_model").set_value(f"run {job.id}")
    run_page(at, SHARED)
    notes = " ".join(i.value for i in at.info)
    assert md_text("You are not this run's owner") in notes, notes
    assert md_text(f"run {job.id} (your thresholds)") in notes, notes
    label = at.dataframe[0].value["label"].iloc[0]
    next(s for s in at.slider if s.label == label).set_value(0.03)
    run_page(at, SHARED)
    at.button(key="thr_save").click()
    run_page(at, SHARED)
    assert at.success and md_text(f"run {job.id} (your thresholds)") in at.success[0].value
    assert card_bytes(run) == before                                   # alice's card untouched
    mine = ws["home"] / "checkpoints" / "users" / user_key(BOB) / f"run-{job.id}"
    assert read_card(mine).thresholds[label] == pytest.approx(0.03)
    # bob is offered his copy; another visitor is not, and the owner sees her own card, saved in place
    run_page(at, SHARED)
    assert f"run {job.id} (your thresholds)" in at.selectbox(key="thr_model").options
    carol = run_page(thresholds_page({"is_logged_in": True, "email": "carol@example.org", "email_verified": True}),
                     SHARED)
    assert not any("your thresholds" in o for o in carol.selectbox(key="thr_model").options)
    alice = run_page(thresholds_page({"is_logged_in": True, "email": ALICE.id, "email_verified": True}), SHARED)
    alice.selectbox(key="thr_model").set_value(f"run {job.id}")
    run_page(alice, SHARED)
    assert not alice.info and any(md_text("You launched this run") in c.value for c in alice.caption)


def test_evaluation_page_saves_a_visitors_temperatures_into_their_own_copy(ws, app_home):
    page_data(ws, app_home)
    run, job = ws["run"], ws["job"]
    before = card_bytes(run)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    at.switch_page("views/evaluation.py")
    at.user = {"is_logged_in": True, "email": BOB.id, "email_verified": True, "name": "Bob"}
    run_page(at, SHARED)
    at.selectbox(key="eval_model").set_value(f"run {job.id}")
    at.selectbox(key="eval_compare").set_value("(no comparison)")
    at.selectbox(key="eval_data").set_value(SMALL)  # CheXpert: the run's labels
    at.selectbox(key="eval_split").set_value("test")
    at.number_input(key="eval_nboot").set_value(20)
    at.button(key="eval_run").click()
    run_page(at, SHARED)
    notes = " ".join(i.value for i in at.info)
    assert md_text("You are not this run's owner") in notes, notes
    assert md_text(f"run {job.id} (your thresholds)") in notes, notes
    at.button(key="eval_cal_save").click()
    run_page(at, SHARED)
    assert at.success and md_text(f"run {job.id} (your thresholds)") in " ".join(s.value for s in at.success)
    assert card_bytes(run) == before                                   # alice's card untouched
    mine = ws["home"] / "checkpoints" / "users" / user_key(BOB) / f"run-{job.id}"
    assert read_card(mine).metrics["calibration"]["temperatures"]
