"""The hourly count of explanation requests made with the server's own key (cxrcore/explain/budget.py)."""
from __future__ import annotations

import threading

import pytest

from cxrcore import hosting
from cxrcore.errors import AccessError
from cxrcore.explain import budget
from llm_stub import StubLLM
from conftest import no_exception
from test_explain_page import explain_a_sample


def test_count_refuses_over_the_limit_and_frees_after_an_hour(tmp_path):
    db = tmp_path / "llm_requests.sqlite"
    t0 = 1_000_000.0
    assert budget.take("ann@x.org", 2, db, now=t0) == 1
    assert budget.take("ann@x.org", 2, db, now=t0 + 60) == 0
    with pytest.raises(AccessError) as exc:
        budget.take("ann@x.org", 2, db, now=t0 + 120)
    message = str(exc.value)
    assert "2 explanation requests per hour" in message and "about 58 minutes" in message
    assert "your own API key" in message and "CXR_LLM_REQUESTS_PER_HOUR" in message
    assert budget.take("bob@x.org", 2, db, now=t0 + 120) == 1       # someone else's count
    assert budget.take("ann@x.org", 2, db, now=t0 + 3601) == 0      # the first has left the hour
    assert budget.take("ann@x.org", 0, db, now=t0 + 3602) == -1     # 0: no limit, nothing recorded


def test_two_requests_at_once_cannot_both_take_the_last_place(tmp_path):
    db = tmp_path / "llm_requests.sqlite"
    budget.take("pool", 5, db)
    results, barrier = [], threading.Barrier(8)

    def one():
        barrier.wait()
        try:
            budget.take("pool", 5, db)
            results.append("ok")
        except AccessError:
            results.append("refused")

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 4 and results.count("refused") == 4


def test_settings_defaults_and_pools():
    assert hosting.settings(address="127.0.0.1", environ={}).llm_hour_cap == 0          # one's own machine
    assert hosting.settings(address="0.0.0.0", environ={}).llm_hour_cap == hosting.DEFAULT_HOSTED_LLM_PER_HOUR
    s = hosting.settings(address="0.0.0.0", environ={hosting.ENV_LLM_PER_HOUR: "5"})
    assert s.llm_hour_cap == 5
    bad = hosting.settings(address="0.0.0.0", environ={hosting.ENV_LLM_PER_HOUR: "many"})
    assert bad.llm_hour_cap == hosting.DEFAULT_HOSTED_LLM_PER_HOUR and bad.problems
    signed = hosting.User(id="ann@x.org", name="Ann", signed_in=True)
    assert budget.pool_of(signed) == "ann@x.org"
    # visitors who are not signed in share one count: a new browser session does not reset it
    a = hosting.visitor({}, "token-a", hosting.settings(address="0.0.0.0", environ={}))
    b = hosting.visitor({}, "token-b", hosting.settings(address="0.0.0.0", environ={}))
    assert a.id != b.id and budget.pool_of(a) == budget.pool_of(b) == budget.ANONYMOUS_POOL


def test_explain_page_refuses_the_request_over_the_hour_and_sends_nothing(app_env, shipped, monkeypatch):
    """On a shared server with a limit of 1: the first request goes to the LLM, the second (another label)
    is refused with when and what to do, nothing sent; with the visitor's own key it goes."""
    key = "sk-test-secret-123456"
    budget.budget_path().unlink(missing_ok=True)  # a fresh count (other tests of the session ask the LLM too)
    with StubLLM(key, mode="review") as stub:
        monkeypatch.setenv("CXR_HOSTED", "1")
        monkeypatch.setenv(hosting.ENV_LLM_PER_HOUR, "1")
        at = explain_a_sample(stub, monkeypatch)
        at.button(key="explain_go").click().run()
        no_exception(at)
        assert len(stub.requests) == 1
        assert any("0 more requests with the server's key this hour" in c.value for c in at.caption)
        labels = at.selectbox(key="explain_label").options
        at.selectbox(key="explain_label").set_value(next(x for x in labels if x != at.selectbox(key="explain_label").value))
        at.run()
        at.button(key="explain_go").click().run()
        no_exception(at)
        assert len(stub.requests) == 1  # nothing sent
        errors = " ".join(e.value for e in at.error)
        assert "1 explanation request per hour" in errors and "your own API key" in errors
        assert any("Summary for" in m.value for m in at.markdown)  # the written summary instead
        # the visitor's own key is not counted
        at.text_input(key="llm_key").set_value(key)
        at.button(key="explain_go").click().run()
        no_exception(at)
        assert len(stub.requests) == 2
        shown = [*at.markdown, *at.caption, *at.error, *at.info, *at.warning, *at.code]  # not the key's own field
        assert key not in " ".join(str(e.value) for e in shown)
