"""Who reaches the PACS from the Compare page (docs/hosting.md): on one's own machine anyone using the app; on a
shared server signed-in visitors only, since searches and images go through the server's account. A misconfigured
PACS is said, and never with its credentials."""
from __future__ import annotations

import pytest

from conftest import app_page, no_exception

FROM_PACS = "A study from the PACS"


@pytest.fixture
def pacs_env(app_env, shipped, monkeypatch):
    monkeypatch.setenv("CXR_DICOMWEB_URL", "http://127.0.0.1:9/dicom-web")   # never contacted before a search
    monkeypatch.setenv("CXR_DICOMWEB_USER", "reader")
    monkeypatch.setenv("CXR_DICOMWEB_PASSWORD", "pacs-secret-4321")
    for name in ("CXR_HOSTED", "CXR_ADDRESS", "CXR_PACS_STORE", "CXR_DICOMWEB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _sources(at) -> list[str]:
    return list(at.radio(key="compare_source").options)


def test_on_ones_own_machine_the_pacs_is_a_source(pacs_env):
    at = app_page("compare").run()
    no_exception(at)
    assert FROM_PACS in _sources(at)
    at.radio(key="compare_source").set_value(FROM_PACS).run()
    no_exception(at)
    shown = " ".join(str(c.value) for c in at.caption).replace("\\", "")   # shown escaped (md_text)
    assert "http://127.0.0.1:9/dicom-web (basic authentication)" in shown and "pacs-secret-4321" not in shown


def test_on_a_shared_server_only_signed_in_visitors_reach_it(pacs_env):
    pacs_env.setenv("CXR_HOSTED", "1")
    at = app_page("compare").run()
    no_exception(at)
    assert FROM_PACS not in _sources(at)
    assert any("sign in to open its studies" in str(c.value) for c in at.caption)


def test_a_misconfigured_pacs_is_said_without_its_credentials(pacs_env):
    pacs_env.setenv("CXR_DICOMWEB_URL", "http://reader:pacs-secret-4321@127.0.0.1:9/dicom-web")
    at = app_page("compare").run()
    no_exception(at)
    errors = " ".join(str(e.value) for e in at.error)
    assert "holds a user name or password" in errors and "pacs-secret-4321" not in errors
    assert FROM_PACS not in _sources(at)
