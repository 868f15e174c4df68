"""What a job's processes inherit from the server's environment: everything but its secrets.

A training job runs the trainer, not the explainer or the REST service, so it needs none of the
server's credentials (a job that reads the PACS, a scoring of a DICOMweb query or a watch, gets the PACS's own and
no other): the LLM key (``OPENAI_API_KEY`` and the ``openai`` client's other settings),
the REST service's bearer token (``CXR_API_TOKEN``), or anything else whose name says it is a key,
token, secret, password or credential. The local backend starts its runner with :func:`job_environ`,
and the Slurm backend runs ``sbatch`` with it (``sbatch`` exports its own environment to the job), so
a job's log, its ``/proc/<pid>/environ`` and any code path inside it never see them.

``CXR_JOB_ENV_KEEP`` (comma separated names) keeps variables a job does need, e.g. ``HF_TOKEN`` for
pretrained weights behind a Hugging Face login.
"""
from __future__ import annotations

import os
import re
from typing import Mapping

ENV_KEEP = "CXR_JOB_ENV_KEEP"
SECRET_PREFIXES = ("OPENAI_",)  # the LLM client's key, organisation, project, headers, endpoint
SECRET_NAMES = ("CXR_API_TOKEN",)
SECRET_WORDS = re.compile(r"(^|_)(API_?KEY|KEY|TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIALS?|AUTH)(_|$)",
                          re.IGNORECASE)


def is_secret(name: str) -> bool:
    """Whether an environment variable's name marks it as a credential a job must not inherit."""
    upper = name.upper()
    return upper in SECRET_NAMES or upper.startswith(SECRET_PREFIXES) or bool(SECRET_WORDS.search(upper))


def job_environ(base: Mapping[str, str] | None = None, needs: tuple[str, ...] = ()) -> dict[str, str]:
    """``base`` (default: this process's environment) without its secrets, except those named in
    ``CXR_JOB_ENV_KEEP`` and the ``needs`` of the job's task (a job that reads the PACS: the PACS's credentials,
    :func:`cxrcore.jobs.scoring.secrets_needed`)."""
    env = dict(os.environ if base is None else base)
    keep = {n.strip().upper() for n in (env.get(ENV_KEEP) or "").split(",") if n.strip()} | {n.upper() for n in needs}
    return {k: v for k, v in env.items() if k.upper() in keep or not is_secret(k)}


__all__ = ["ENV_KEEP", "is_secret", "job_environ"]
