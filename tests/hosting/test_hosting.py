"""Safe to host for a team: each attack of issue 12 as a test, through the core functions and the pages.

- the server's OPENAI_API_KEY (and the headers the openai client takes from the environment) never reach a
  base URL a visitor typed: two local OpenAI-compatible servers on 127.0.0.1 (tests/llm_stub.py) record every
  header; one plays the server's own endpoint, the other the visitor's;
- typed folders are resolved (``..``, symlinks) and refused outside the operator's data roots, in
  :func:`cxrcore.hosting.resolve_data_path`, in the job layer (``check_config`` / ``dispatch.submit``) and
  on the Dataset, Evaluation and Training pages; on a shared address with no roots, typed folders are off;
- job rights: a visitor without the right cannot cancel or resume someone else's job (dispatch and page), who
  may launch follows CXR_JOB_LAUNCHERS, a per-person cap holds;
- an upload over CXR_MAX_UPLOAD_MB is refused by the Compare page and by the REST service.

A shared server is simulated the way production decides it: Streamlit's ``server.address`` option (what
``run.sh`` passes from CXR_ADDRESS) set to a non-loopback address for the AppTest run; a signed-in visitor is
AppTest's ``user`` (what ``st.user`` reads; Streamlit's own login fills it in production). Nothing here
sends anything beyond 127.0.0.1.
"""
from __future__ import annotations

import base64
import http.client
import json
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import FORMATS, NIH_SAMPLE, REPO, app_page, run_listening_on as run  # also puts the repository root on sys.path
from cxrcore import hosting
from cxrcore.errors import AccessError, JobError
from cxrcore.explain.llm import LLMConfig
from cxrcore.explain.review import review_events
from cxrcore.jobs import JobStore, dispatch
from llm_stub import StubLLM

ENV_KEY = "sk-server-secret-0123456789"
VISITOR_KEY = "sk-visitor-own-9876543210"
SHARED = "0.0.0.0"     # a non-loopback listening address (every interface, as CXR_ADDRESS=0.0.0.0 gives)
LOCAL = "127.0.0.1"
TIMEOUT = 300
ALL_HOSTING_VARS = ("CXR_ADDRESS", "CXR_HOSTED", "CXR_DATA_ROOTS", "CXR_LLM_ALLOWED_BASE_URLS", "CXR_JOB_LAUNCHERS",
                    "CXR_JOB_ADMINS", "CXR_MAX_JOBS_PER_USER", "CXR_MAX_UPLOAD_MB")


@pytest.fixture(autouse=True)
def clean_operator_env(monkeypatch):
    """No operator setting leaks in from the developer's shell."""
    for name in ALL_HOSTING_VARS + ("OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "OPENAI_CUSTOM_HEADERS"):
        monkeypatch.delenv(name, raising=False)


def page(name: str) -> AppTest:
    return app_page(name, TIMEOUT)


def texts(at: AppTest) -> str:
    return " ".join(str(e.value) for kind in ("error", "info", "warning", "caption", "markdown")
                    for e in at.get(kind))


# --------------------------------------------------------------------------- settings

def test_loopback_and_defaults():
    assert hosting.is_loopback("127.0.0.1") and hosting.is_loopback("::1") and hosting.is_loopback("localhost")
    assert hosting.is_loopback("127.3.2.1")
    for other in ("0.0.0.0", "", None, "::", "10.1.2.3", "example.org", "unix:///run/cxr.sock"):
        assert not hosting.is_loopback(other), other
    local = hosting.settings(address=LOCAL, environ={})
    assert not local.hosted and local.typed_folders_allowed and local.single_user
    assert local.effective_launchers == "everyone" and local.job_cap == 0
    shared = hosting.settings(address=SHARED, environ={})
    assert shared.hosted and not shared.typed_folders_allowed and not shared.single_user
    assert shared.effective_launchers == "signed-in" and shared.job_cap == 2
    behind_proxy = hosting.settings(address=LOCAL, environ={"CXR_HOSTED": "1"})
    assert behind_proxy.hosted
    bad = hosting.settings(address=SHARED, environ={"CXR_DATA_ROOTS": "relative/dir", "CXR_MAX_UPLOAD_MB": "lots"})
    assert not bad.data_roots and bad.max_upload_mb == hosting.DEFAULT_MAX_UPLOAD_MB and len(bad.problems) == 2


# --------------------------------------------------------------------------- LLM endpoints

@pytest.fixture
def two_llms(monkeypatch):
    """The server's own endpoint (accepts the env key) and a visitor's (accepts only the visitor's key), with
    the environment set as an operator would, including the headers the openai client adds from it."""
    with StubLLM(ENV_KEY, mode="review") as own, StubLLM(VISITOR_KEY, mode="review") as theirs:
        monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", own.base_url)
        monkeypatch.setenv("OPENAI_ORG_ID", "org-server-only")
        monkeypatch.setenv("OPENAI_PROJECT_ID", "proj_server_only")
        monkeypatch.setenv("OPENAI_CUSTOM_HEADERS", "X-Server-Secret: gateway-token-42")
        yield own, theirs


def leaked(stub: StubLLM) -> list[str]:
    """Anything of the server's environment that reached ``stub``."""
    out = []
    for r in stub.requests:
        everything = json.dumps(r["headers"])
        for secret in (ENV_KEY, "org-server-only", "proj_server_only", "gateway-token-42"):
            if secret in everything:
                out.append(secret)
    return out


def test_env_key_never_goes_to_a_typed_base_url(two_llms):
    own, theirs = two_llms
    facts = {"label": "Effusion", "models": {}}
    for s in (hosting.settings(address=LOCAL),   # one person's own machine: any URL, but never with the env key
              hosting.settings(address=SHARED, environ={"CXR_LLM_ALLOWED_BASE_URLS": theirs.base_url})):
        with pytest.raises(AccessError, match="needs your own API key"):
            hosting.llm_config_for(theirs.base_url, "", s)
        with pytest.raises(AccessError, match="needs your own API key"):
            hosting.llm_config_for(theirs.base_url + "/", "  ", s)  # the same URL written differently
        cfg = hosting.llm_config_for(theirs.base_url, VISITOR_KEY, s)
        assert list(review_events(b"png", facts, "prompt", cfg))[-1].outcome.valid
    assert len(theirs.requests) == 2
    assert {r["auth"] for r in theirs.requests} == {f"Bearer {VISITOR_KEY}"}
    assert leaked(theirs) == []  # no env key, no OpenAI-Organization / -Project, no custom header
    # the server's own endpoint still gets the env key and its headers (blank base URL, or the env's own)
    for typed in ("", own.base_url, own.base_url + "/"):
        cfg = hosting.llm_config_for(typed, "", hosting.settings(address=SHARED))
        assert cfg.api_key == ENV_KEY and not cfg.isolated
        assert list(review_events(b"png", facts, "prompt", cfg))[-1].outcome.valid
    assert {r["auth"] for r in own.requests} == {f"Bearer {ENV_KEY}"}
    assert own.requests[0]["headers"].get("openai-organization") == "org-server-only"
    # the old way of building a config (the page before this change) cannot pair the env key with another URL
    assert LLMConfig.from_env(base_url=theirs.base_url).api_key is None
    assert LLMConfig.from_env(base_url=theirs.base_url, api_key=VISITOR_KEY).isolated


def test_typed_base_urls_follow_the_operator_allowlist(two_llms):
    own, theirs = two_llms
    shared = hosting.settings(address=SHARED)
    assert not hosting.llm_base_url_editable(shared)
    with pytest.raises(AccessError, match="CXR_LLM_ALLOWED_BASE_URLS"):
        hosting.llm_config_for(theirs.base_url, VISITOR_KEY, shared)  # SSRF: not even with the visitor's own key
    allowed = hosting.settings(address=SHARED, environ={"CXR_LLM_ALLOWED_BASE_URLS": theirs.base_url})
    assert hosting.llm_base_url_editable(allowed)
    port = theirs.base_url.split(":")[2].split("/")[0]
    for trick in (f"http://127.0.0.1:{port}@127.0.0.1:9/v1",   # credentials part: a different host
                  f"http://127.0.0.2:{port}/v1", theirs.base_url + "/other", "file:///etc/passwd"):
        with pytest.raises(AccessError):
            hosting.llm_config_for(trick, VISITOR_KEY, allowed)
    assert theirs.requests == [] and own.requests == []


def test_explain_page_on_a_shared_server_sends_nothing_to_a_typed_url(two_llms, app_env, shipped):
    own, theirs = two_llms
    at = run(page("explain"), SHARED)
    at.button(key="explain_sample").click()
    run(at, SHARED)
    assert at.text_input(key="llm_base_url").disabled  # no typed base URL without an allowlist
    assert "CXR_LLM_ALLOWED_BASE_URLS" in texts(at)
    at.session_state["llm_base_url"] = theirs.base_url  # a crafted widget state (the browser cannot type) is ignored
    run(at, SHARED)
    at.button(key="explain_go").click()
    run(at, SHARED)
    assert theirs.requests == [] and len(own.requests) == 1
    # with the visitor's URL allowed, a blank key is refused on the page and nothing is sent there
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXR_LLM_ALLOWED_BASE_URLS", theirs.base_url)
        run(at, SHARED)
        assert not at.text_input(key="llm_base_url").disabled
        at.text_input(key="llm_base_url").set_value(theirs.base_url)
        run(at, SHARED)
        assert any("needs your own API key" in e.value for e in at.error)
        assert not [b for b in at.button if b.key == "explain_go"]  # nothing to press: the page stopped
        at.text_input(key="llm_key").set_value(VISITOR_KEY)
        run(at, SHARED)
        at.button(key="explain_go").click()
        run(at, SHARED)
    assert [r["auth"] for r in theirs.requests] == [f"Bearer {VISITOR_KEY}"] and leaked(theirs) == []
    shown = " ".join(str(e.value) for e in at.main if hasattr(e, "value") and e.type != "text_input")
    assert ENV_KEY not in shown and VISITOR_KEY not in shown  # (the password field holds what the visitor typed)


def test_explain_page_on_this_machine_keeps_the_env_key_home(two_llms, app_env, shipped):
    own, theirs = two_llms
    at = run(page("explain"), LOCAL)
    at.button(key="explain_sample").click()
    run(at, LOCAL)
    assert not at.text_input(key="llm_base_url").disabled  # one person's machine: any URL may be typed
    at.text_input(key="llm_base_url").set_value(theirs.base_url)
    run(at, LOCAL)
    assert any("needs your own API key" in e.value for e in at.error)
    assert theirs.requests == [] and own.requests == []


# --------------------------------------------------------------------------- data roots

@pytest.fixture
def roots(tmp_path):
    """A data root holding a real NIH-format dataset, and escapes out of it: a dataset beside the root
    (another project's), a symlink inside the root that points out, a ``..`` path."""
    root = tmp_path / "root"
    inside = root / "nih"
    shutil.copytree(NIH_SAMPLE, inside)
    outside = tmp_path / "other-project"
    shutil.copytree(NIH_SAMPLE, outside)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "alias").symlink_to(inside, target_is_directory=True)
    return {"root": root, "inside": inside, "outside": outside,
            "attacks": [str(outside), str(root / "escape"), str(root / ".." / "other-project"), "../other-project",
                        "nih/../../other-project", str(root / "nih" / ".." / "escape")]}


def test_resolve_data_path_refuses_escapes(roots, monkeypatch):
    root = roots["root"]
    shared = hosting.settings(address=SHARED, environ={"CXR_DATA_ROOTS": str(root)})
    for attack in roots["attacks"]:
        with pytest.raises(AccessError, match="outside the folders this server opens"):
            hosting.resolve_data_path(attack, shared)
    assert hosting.resolve_data_path("nih", shared) == roots["inside"]           # relative: inside the first root
    assert hosting.resolve_data_path(str(root / "alias"), shared) == roots["inside"]  # a symlink within the root
    assert hosting.resolve_data_path(str(root / "nih" / ".." / "nih"), shared) == roots["inside"]
    with pytest.raises(AccessError, match="NUL"):
        hosting.resolve_data_path(str(root / "nih") + "\0", shared)
    # the same roots bind on this machine too once configured
    local_roots = hosting.settings(address=LOCAL, environ={"CXR_DATA_ROOTS": str(root)})
    with pytest.raises(AccessError):
        hosting.resolve_data_path(str(roots["outside"]), local_roots)
    # a shared server without roots: typed folders are off and the message says how to enable them
    with pytest.raises(AccessError, match="CXR_DATA_ROOTS"):
        hosting.resolve_data_path(str(roots["inside"]), hosting.settings(address=SHARED, environ={}))
    # one person's own machine with nothing configured: any folder, as before
    monkeypatch.chdir(REPO)
    assert hosting.resolve_data_path(str(roots["outside"]), hosting.settings(address=LOCAL, environ={})) == roots["outside"]
    assert hosting.resolve_data_path("tests/data/nih-sample", hosting.settings(address=LOCAL, environ={})) == NIH_SAMPLE


def test_job_layer_refuses_data_and_init_outside_the_roots(roots, tmp_path, monkeypatch):
    """check_config (every backend runs it first) and dispatch.submit refuse before any row or folder exists."""
    from cxrcore.jobs.config import check_config

    monkeypatch.setenv("CXR_HOME", str(tmp_path / "ws"))
    monkeypatch.setenv("CXR_DATA_ROOTS", str(roots["root"]))
    store = JobStore()
    for attack in [str(roots["outside"]), str(roots["root"] / "escape"), str(roots["root"] / ".." / "other-project")]:
        cfg = dict(data=attack, labels="nih14", epochs=1, image_size=64, max_images=8)
        with pytest.raises(AccessError, match="outside"):
            check_config(cfg)   # whatever the caller: the environment's roots
        with pytest.raises(AccessError, match="outside"):
            dispatch.submit(cfg, store=store)
    init_escape = dict(data=str(roots["inside"]), labels="nih14", init=str(REPO.parent))
    with pytest.raises(AccessError, match="outside"):
        check_config(init_escape)
    assert store.list() == [] and not any((tmp_path / "ws" / "runs").iterdir())
    # inside the roots the config passes the path check (and the rest of check_config)
    ok = check_config(dict(data=str(roots["root"] / "alias"), labels="nih14", epochs=1, image_size=64, arch="resnet18",
                           pretrained="none"))
    assert ok["data"] == str(roots["inside"])
    # shipped checkpoints and library names stay usable as init on a shared server without roots
    monkeypatch.delenv("CXR_DATA_ROOTS")
    shared = hosting.settings(address=SHARED)
    hosting.check_job_paths({"data": str(tmp_path / "ws" / "datasets"), "init": str(REPO / "checkpoints" / "baseline")},
                            shared)
    hosting.check_job_paths({"data": str(tmp_path / "ws" / "datasets"), "init": "xrv:densenet121-res224-all"}, shared)
    with pytest.raises(AccessError):
        hosting.check_job_paths({"data": str(roots["inside"])}, shared)


def test_dataset_page_refuses_typed_folders_outside_the_roots(roots, app_env, monkeypatch):
    monkeypatch.setenv("CXR_DATA_ROOTS", str(roots["root"]))
    at = run(page("dataset"), SHARED)
    at.selectbox(key="dataset_source").set_value("A folder on this machine…")
    run(at, SHARED)
    for attack in roots["attacks"]:
        at.text_input(key="dataset_folder").input(attack)
        run(at, SHARED)
        assert any("outside the folders this server opens" in e.value for e in at.error), attack
        assert not at.metric and not at.dataframe, f"{attack}: statistics of a folder outside the roots were shown"
    at.text_input(key="dataset_folder").input("nih")  # inside the root: shown
    run(at, SHARED)
    assert not at.error and {m.label: m.value for m in at.metric}["Images"] == "250"


def test_dataset_page_on_a_shared_server_without_roots_has_no_folder_input(app_env):
    at = run(page("dataset"), SHARED)
    at.selectbox(key="dataset_source").set_value("A folder on this machine…")
    run(at, SHARED)
    assert not [t for t in at.text_input if t.key == "dataset_folder"]
    assert any("CXR_DATA_ROOTS" in i.value for i in at.info)


def test_evaluation_page_refuses_a_folder_outside_the_roots(roots, app_env, shipped, monkeypatch):
    monkeypatch.setenv("CXR_DATA_ROOTS", str(roots["root"]))
    at = run(page("evaluation"), SHARED)
    at.selectbox(key="eval_data").set_value("A folder path…")
    run(at, SHARED)
    at.text_input(key="eval_folder").set_value(str(roots["root"] / "escape"))
    at.button(key="eval_run").click()
    run(at, SHARED)
    assert any("outside the folders this server opens" in e.value for e in at.error)
    assert "eval_params" not in at.session_state and not at.dataframe


def _training_ws(tmp_path, monkeypatch, app_home) -> Path:
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "ws"))
    monkeypatch.setenv("CXR_CHECKPOINTS", str(tmp_path / "no-shipped-checkpoints"))
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "datasets").symlink_to(app_home / "datasets", target_is_directory=True)
    return tmp_path / "ws"


def test_training_page_refuses_a_typed_folder_outside_the_roots(roots, tmp_path, monkeypatch, app_home):
    _training_ws(tmp_path, monkeypatch, app_home)
    monkeypatch.setenv("CXR_DATA_ROOTS", str(roots["root"]))
    monkeypatch.setenv("CXR_JOB_LAUNCHERS", "everyone")
    at = run(AppTest.from_file(str(REPO / "views" / "training.py"), default_timeout=TIMEOUT), SHARED)
    at.radio(key="train_start").set_value("An architecture (timm, tv:, xrv:)")
    run(at, SHARED)
    at.text_input(key="tf_folder").set_value(str(roots["root"] / "escape"))
    at.button(key="train_submit").click()
    run(at, SHARED)
    assert any("outside the folders this server opens" in e.value for e in at.error)
    assert JobStore().list() == []


# --------------------------------------------------------------------------- who may do what

class _Job:
    def __init__(self, owner, id="j1"):
        self.owner, self.id = owner, id


def test_rights_matrix():
    alice = hosting.User("alice@example.org", signed_in=True)
    bob = hosting.User("bob@example.org", signed_in=True)
    anon = hosting.visitor({}, "token1", hosting.settings(address=SHARED, environ={}))
    anon2 = hosting.visitor({"email": "x@y"}, "token2", hosting.settings(address=SHARED, environ={}))  # not logged in
    assert anon.anonymous and anon2.anonymous and anon.id != anon2.id
    job = _Job(alice.id)
    # one person's own machine, nothing configured: everything, as before
    local = hosting.settings(address=LOCAL, environ={})
    me = hosting.visitor({}, "t", local)
    assert not me.anonymous and all(hosting.may(me, a, job, local) for a in hosting.ACTIONS)
    # shared server, defaults: signed-in users launch; only the launcher (or an admin) cancels / resumes
    shared = hosting.settings(address=SHARED, environ={})
    assert hosting.may(alice, "launch", None, shared) and not hosting.may(anon, "launch", None, shared)
    assert hosting.may(alice, "cancel", job, shared) and hosting.may(alice, "resume", job, shared)
    assert not hosting.may(bob, "cancel", job, shared) and not hosting.may(bob, "resume", job, shared)
    assert not hosting.may(anon, "cancel", job, shared)
    assert not hosting.may(bob, "cancel", _Job(None), shared)  # a job from before owners were recorded
    admin = hosting.settings(address=SHARED, environ={"CXR_JOB_ADMINS": "Bob@Example.org"})
    assert hosting.may(bob, "cancel", job, admin) and hosting.may(bob, "resume", job, admin)
    # a list of launchers
    listed = hosting.settings(address=SHARED, environ={"CXR_JOB_LAUNCHERS": "alice@example.org"})
    assert hosting.may(alice, "launch", None, listed) and not hosting.may(bob, "launch", None, listed)
    unsigned_alice = hosting.visitor({"email": "alice@example.org"}, "t", listed)  # e-mail but no login
    assert not hosting.may(unsigned_alice, "launch", None, listed)
    # everyone: anonymous visitors launch, and cancel only what their own session launched
    everyone = hosting.settings(address=SHARED, environ={"CXR_JOB_LAUNCHERS": "everyone"})
    assert hosting.may(anon, "launch", None, everyone)
    assert hosting.may(anon, "cancel", _Job(anon.id), everyone) and not hosting.may(anon2, "cancel", _Job(anon.id), everyone)
    nobody = hosting.settings(address=SHARED, environ={"CXR_JOB_LAUNCHERS": "nobody"})
    assert not hosting.may(alice, "launch", None, nobody) and not hosting.may(alice, "resume", job, nobody)
    assert hosting.may(alice, "cancel", job, nobody)
    # the CLI is the operator's own tool
    assert all(hosting.may(hosting.operator_user(), a, job, nobody) for a in hosting.ACTIONS)


def test_a_visitor_cannot_cancel_or_resume_someone_elses_job(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_HOME", str(tmp_path))
    shared = hosting.settings(address=SHARED)
    alice = hosting.User("alice@example.org", signed_in=True)
    bob = hosting.User("bob@example.org", signed_in=True)
    store = JobStore()
    job = store.launching_as(alice.id).create({"data": "x"}, name="alice's")  # queued, no process yet
    assert store.get(job.id).owner == alice.id
    with pytest.raises(AccessError, match="launched by alice@example.org"):
        dispatch.cancel(job.id, store, user=bob, settings=shared)
    assert store.get(job.id).status == "queued"
    store.mark(job.id, "failed", error="test")
    with pytest.raises(AccessError):
        dispatch.resume(job.id, store, user=bob, settings=shared)
    assert store.get(job.id).status == "failed"
    store.update(job.id, status="queued", finished=None)
    done = dispatch.cancel(job.id, store, user=alice, settings=shared)
    assert done.status == "cancelled"
    # launching needs the right too, checked before anything is created
    anon = hosting.visitor({}, "tok", shared)
    with pytest.raises(AccessError, match="Sign in"):
        dispatch.submit({"data": str(NIH_SAMPLE)}, store=store, user=anon, settings=shared)
    assert len(store.list()) == 1


def test_cap_on_concurrent_jobs_per_person(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_HOME", str(tmp_path))
    store = JobStore()
    alice = hosting.User("alice@example.org", signed_in=True)
    as_alice = store.launching_as(alice.id, 2, lambda o: hosting.same_person(o, alice))
    first = as_alice.create({})
    as_alice.create({})
    with pytest.raises(JobError, match="allows 2 per person"):
        as_alice.create({})
    store.launching_as("bob@example.org", 2).create({})  # someone else is not counted against alice
    store.mark(first.id, "cancelled")
    as_alice.create({})  # an ended job frees a place
    # anonymous sessions count as one person
    shared = hosting.settings(address=SHARED, environ={"CXR_JOB_LAUNCHERS": "everyone"})
    a1, a2 = hosting.visitor({}, "s1", shared), hosting.visitor({}, "s2", shared)
    store.launching_as(a1.id, 1, lambda o: hosting.same_person(o, a1)).create({})
    with pytest.raises(JobError):
        store.launching_as(a2.id, 1, lambda o: hosting.same_person(o, a2)).create({})
    # concurrent launches cannot both slip under the cap (count and insert share one write lock)
    carol = hosting.User("carol@example.org", signed_in=True)
    results: list = []

    def launch():
        try:
            results.append(store.launching_as(carol.id, 1, lambda o: hosting.same_person(o, carol)).create({}))
        except JobError as exc:
            results.append(exc)

    threads = [threading.Thread(target=launch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(1 for r in results if not isinstance(r, Exception)) == 1
    assert store.get(first.id).owner == alice.id  # the store it came from is unchanged
    assert store._launch is None


def test_owner_column_is_added_to_an_old_database(tmp_path):
    db = tmp_path / "jobs.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, name TEXT NOT NULL DEFAULT '', status TEXT NOT NULL, "
                "backend TEXT NOT NULL DEFAULT 'local', config TEXT NOT NULL DEFAULT '{}', run_dir TEXT NOT NULL, "
                "pid INTEGER, created REAL NOT NULL, started REAL, finished REAL, error TEXT, exit_code INTEGER)")
    con.execute("INSERT INTO jobs (id, status, run_dir, created) VALUES ('old', 'succeeded', '/tmp/x', 1.0)")
    con.commit()
    con.close()
    store = JobStore(db)
    assert store.get("old").owner is None
    assert store.launching_as("me").create({}, run_dir=tmp_path / "r").owner == "me"


def test_training_page_job_rights_follow_the_operator(tmp_path, monkeypatch, app_home):
    ws = _training_ws(tmp_path, monkeypatch, app_home)
    store = JobStore()
    job = store.launching_as("alice@example.org").create({"data": str(ws / "datasets")}, name="alice-run")
    page_file = str(REPO / "views" / "training.py")
    # bob, signed in on a shared server: sees who launched it, may launch, may not cancel alice's job
    at = AppTest.from_file(page_file, default_timeout=TIMEOUT)
    at.user = {"is_logged_in": True, "email": "bob@example.org", "email_verified": True, "name": "Bob"}
    run(at, SHARED)
    table = at.dataframe[0].value
    assert table.set_index("id").loc[job.id, "launched by"] == "alice@example.org"
    assert not at.button(key="train_submit").disabled
    assert at.button(key=f"train_cancel_{job.id}").disabled
    assert "only they or an admin" in (at.button(key=f"train_cancel_{job.id}").help or "")
    assert store.get(job.id).status == "queued"
    # an anonymous visitor on the same server cannot launch
    anon = AppTest.from_file(page_file, default_timeout=TIMEOUT)
    run(anon, SHARED)
    assert anon.button(key="train_submit").disabled and any("Sign in" in i.value for i in anon.info)
    # alice may cancel her own job from the page
    mine = AppTest.from_file(page_file, default_timeout=TIMEOUT)
    mine.user = {"is_logged_in": True, "email": "alice@example.org", "email_verified": True}
    run(mine, SHARED)
    assert not mine.button(key=f"train_cancel_{job.id}").disabled
    mine.button(key=f"train_cancel_{job.id}").click()
    run(mine, SHARED)
    assert store.get(job.id).status == "cancelled"
    # one person's own machine with nothing configured: as before, everything is allowed
    local = AppTest.from_file(page_file, default_timeout=TIMEOUT)
    run(local, LOCAL)
    assert not local.button(key="train_submit").disabled and not local.info
    assert not local.button(key=f"train_resume_{job.id}").disabled


# --------------------------------------------------------------------------- uploads

def test_compare_page_refuses_an_oversized_upload(app_env, shipped, monkeypatch):
    monkeypatch.setenv("CXR_MAX_UPLOAD_MB", "0.05")  # 51 KB
    raw = (FORMATS / next(p.name for p in FORMATS.iterdir() if p.suffix == ".png")).read_bytes()
    big = raw + b"\0" * (60 * 1024)  # a PNG padded past the limit
    at = run(page("compare"), SHARED)
    at.file_uploader(key="compare_upload").set_value(("big.png", big, "image/png"))
    run(at, SHARED)
    assert any("this server accepts images up to 0.05 MB" in e.value for e in at.error)
    assert "explain_handoff" not in at.session_state and not at.dataframe  # nothing handed to Explain (ui.handoff.KEY)


def test_rest_service_default_limit_follows_the_upload_setting(shipped, monkeypatch):
    from cxrcore.api import Service, make_server

    monkeypatch.setenv("CXR_MAX_UPLOAD_MB", "0.05")
    service = Service([shipped["baseline"]])
    s = hosting.settings()
    assert service.max_image_bytes == s.max_upload_bytes and service.max_bytes == hosting.api_max_body_bytes(s)
    server = make_server(service, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]

        def post(body: bytes):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            out = resp.status, json.loads(resp.read())
            conn.close()
            return out

        over_body = json.dumps({"image": base64.b64encode(b"\0" * (s.max_upload_bytes * 2)).decode()}).encode()
        status, answer = post(over_body)
        assert status == 413 and "limit" in answer["error"]
        # a body under the body limit whose image is over the image limit (JSON padding is tiny here)
        just_over = json.dumps({"image": base64.b64encode(b"\0" * (s.max_upload_bytes + 1)).decode()}).encode()
        assert len(just_over) <= service.max_bytes
        status, answer = post(just_over)
        assert status == 413 and "CXR_MAX_UPLOAD_MB" in answer["error"]
    finally:
        server.shutdown()
        server.server_close()


def test_cxr_serve_refuses_a_public_address_without_a_token(shipped, capsys, monkeypatch):
    from cxrcore.cli import main

    monkeypatch.delenv("CXR_API_TOKEN", raising=False)
    # refused before any model is loaded or any port is bound
    assert main(["serve", "--checkpoint", str(shipped["baseline"]), "--host", "0.0.0.0", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Refusing to serve on 0.0.0.0 without a bearer token") and "--token" in err
