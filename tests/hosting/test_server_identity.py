"""A shared server's identities, requests from elsewhere, error details and what jobs inherit (issue 19).

- Signed-in visitors are known by e-mail only when the identity provider verified it; an address or a
  user name claimed at an open sign-up never matches an admin, a listed launcher or another person's job.
- A request that reaches an app listening on 127.0.0.1 through a proxy (forwarding headers, a remote Host)
  gets the shared-server defaults although ``CXR_HOSTED`` is unset (Home's warning: tests/browser/test_browser.py).
- Pages never show tracebacks (``client.showErrorDetails``).
- A job's runner does not inherit the server's LLM key or API token.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from cxrcore import hosting

REPO = Path(__file__).resolve().parents[2]
SHARED = "0.0.0.0"
LOCAL = "127.0.0.1"


class _Job:
    def __init__(self, owner, id="j1"):
        self.owner, self.id = owner, id


def test_only_a_verified_email_is_an_identity():
    s = hosting.settings(address=SHARED, environ={"CXR_JOB_ADMINS": "lead@example.org",
                                                  "CXR_JOB_LAUNCHERS": "alice@example.org"})
    lead_job = _Job("lead@example.org")
    real = hosting.visitor({"is_logged_in": True, "email": "Lead@Example.org", "email_verified": True,
                            "sub": "1", "iss": "https://idp"}, "t", s)
    assert real.id == "lead@example.org" and real.signed_in
    assert hosting.may(real, "cancel", _Job("someone@else"), s)  # the verified admin

    # someone who signed up at an open provider with the admin's address, unverified
    claimer = hosting.visitor({"is_logged_in": True, "email": "lead@example.org", "email_verified": False,
                               "sub": "999", "iss": "https://idp", "name": "Lead"}, "t", s)
    assert claimer.signed_in and claimer.id == "oidc:https://idp|999"
    assert "unverified" in claimer.name
    assert not hosting.may(claimer, "cancel", _Job("someone@else"), s)   # not an admin
    assert not hosting.may(claimer, "cancel", lead_job, s)               # not the owner of the admin's job
    # no email_verified claim at all, and the user-name / name fallbacks: not an e-mail identity either
    for info in ({"email": "alice@example.org", "sub": "7"},
                 {"preferred_username": "alice@example.org", "sub": "8"},
                 {"name": "alice@example.org", "sub": "9"}):
        u = hosting.visitor({"is_logged_in": True, **info}, "t", s)
        assert u.id.startswith("oidc:") and not hosting.may(u, "launch", None, s), info
    # the string "true" some providers send counts
    assert hosting.visitor({"is_logged_in": True, "email": "alice@example.org", "email_verified": "true"},
                           "t", s).id == "alice@example.org"
    # signed in with nothing that tells the person apart: as if not signed in (anonymous on a shared server)
    assert hosting.visitor({"is_logged_in": True, "name": "x"}, "tok", s).anonymous


def test_the_operator_may_trust_a_directorys_addresses():
    s = hosting.settings(address=SHARED, environ={"CXR_AUTH_TRUST_EMAIL": "1", "CXR_JOB_ADMINS": "lead@example.org"})
    u = hosting.visitor({"is_logged_in": True, "email": "lead@example.org", "sub": "1"}, "t", s)
    assert u.id == "lead@example.org" and hosting.may(u, "cancel", _Job("x@y"), s)


def test_a_request_from_elsewhere_gets_the_shared_server_defaults():
    local = hosting.settings(address=LOCAL, environ={})
    assert not local.hosted and local.single_user
    # a browser on this machine
    assert hosting.for_request(local, {"Host": "127.0.0.1:8501"}, None) is local
    assert hosting.for_request(local, {"Host": "localhost:8501"}, None) is local
    assert hosting.for_request(local, {}, None) is local  # no request to look at (tests, the CLI)
    # through a reverse proxy on the same machine, or straight from another machine
    for headers, peer in (({"Host": "127.0.0.1:8501", "X-Forwarded-For": "10.1.2.3"}, None),
                          ({"Host": "cxr.hospital.example", "X-Real-IP": "10.1.2.3"}, None),
                          ({"Host": "127.0.0.1:8501", "Forwarded": "for=10.1.2.3"}, None),
                          ({"Host": "cxr.hospital.example"}, None),
                          ({"Host": "127.0.0.1:8501"}, "10.1.2.3")):
        s = hosting.for_request(local, headers, peer)
        assert s.hosted and s.reached_remotely and not s.single_user, headers
        assert not s.typed_folders_allowed and s.effective_launchers == "signed-in" and s.job_cap == 2
    # an explicitly hosted server stays as configured
    hosted = hosting.settings(address=LOCAL, environ={"CXR_HOSTED": "1"})
    assert hosting.for_request(hosted, {"X-Forwarded-For": "1.2.3.4"}, None) is hosted


def test_pages_show_no_tracebacks():
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["client"]["showErrorDetails"] == "none"
    assert config["client"]["toolbarMode"] == "viewer"


def test_a_job_inherits_no_server_secret(monkeypatch, tmp_path):
    from cxrcore.jobs import local
    from cxrcore.jobs.environment import job_environ

    monkeypatch.setenv("CXR_HOME", str(tmp_path))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-operator-secret")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://10.0.0.5/v1")
    monkeypatch.setenv("CXR_API_TOKEN", "api-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    monkeypatch.setenv("HF_TOKEN", "hf-secret")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    env = local._runner_env([])
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "CXR_API_TOKEN", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN"):
        assert name not in env, name
    assert "sk-operator-secret" not in "".join(env.values())
    assert env["TOKENIZERS_PARALLELISM"] == "false" and env["PATH"] == os.environ["PATH"]
    assert env["CXR_HOME"] == str(tmp_path)
    # Slurm: sbatch exports the environment it runs in to the job, and it runs in this one
    from cxrcore.jobs import slurm

    sbatch_env = slurm._env("/etc/slurm/slurm.conf")
    assert "OPENAI_API_KEY" not in sbatch_env and "CXR_API_TOKEN" not in sbatch_env
    assert sbatch_env["SLURM_CONF"] == "/etc/slurm/slurm.conf"
    # the operator keeps what a job does need
    monkeypatch.setenv("CXR_JOB_ENV_KEEP", "HF_TOKEN")
    assert local._runner_env([])["HF_TOKEN"] == "hf-secret" and "OPENAI_API_KEY" not in job_environ()
    # and a process started with it really has none of them
    out = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.environ))"], env=local._runner_env([]),
                         capture_output=True, text=True, check=True).stdout
    assert "OPENAI_API_KEY" not in out and "CXR_API_TOKEN" not in out and "HF_TOKEN" in out
