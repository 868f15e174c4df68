"""The Dataset page's launchers of the two lens jobs (:mod:`cxrcore.jobs.lensjobs`): an index of the dataset's films
(`cxr index` as a job) and its label errors by cross-fitting (`cxr label-issues --folds K` as a job). The jobs run in
the background, in the queue the Training page shows (watched, cancelled and resumed there); what they leave is read
back here: the index by the Embedding map, Compare's similar cases and the split report; the ranked label errors by
the Label errors tab."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from cxrcore import hosting
from cxrcore.errors import CXRError
from cxrcore.jobs.scoring import INDEX, ISSUES, TASK_KEY
from ui.common import current_user, hosting_settings, md_text, show_error


def _submit(config: dict, what: str) -> None:
    from cxrcore.jobs import dispatch

    access = hosting_settings()
    user = current_user(access)
    try:
        with st.spinner("Checking the dataset and the model, and starting the job…"):
            job = dispatch.submit(config, user=user, settings=access)
    except Exception as exc:  # noqa: BLE001 - CXRError as a message; anything else without a traceback
        show_error(exc)
        return
    st.success(f"Started {what} job **{job.id}** ({md_text(job.name)}). It runs in the background: watch it, cancel "
               "or resume it on the Training page; its result shows here when it has succeeded.")


def blocked() -> str | None:
    access = hosting_settings()
    return hosting.why_not(current_user(access), "launch", None, access)


def index_launcher(folder: str, checkpoints: dict[str, str], key: str) -> None:
    """A form: index the dataset at ``folder`` with a chosen model, as a job."""
    why = blocked()
    with st.form(f"index_job_{key}", border=False):
        c1, c2 = st.columns([3, 1])
        model = c1.selectbox("Model whose embeddings index the films", list(checkpoints), key=f"index_job_model_{key}")
        c2.write("")
        go = c2.form_submit_button("Index (a job)", disabled=why is not None or not checkpoints, help=why)
    if go:
        _submit({TASK_KEY: INDEX, "data": folder, "checkpoint": checkpoints[model]}, "indexing")


def crossfit_launcher(folder: str, checkpoint: str, name: str) -> None:
    """A form: cross-fit ``checkpoint`` over the dataset at ``folder`` in K folds, as a job."""
    from cxrcore.data.index import MAX_FOLDS
    from cxrcore.lens.crossfit import DEFAULT_FOLDS, FINE_TUNE

    why = blocked()
    with st.form("crossfit_job", border=False):
        c1, c2, c3 = st.columns([1, 1, 1])
        folds = c1.number_input("Folds", 2, MAX_FOLDS, DEFAULT_FOLDS, key="crossfit_folds",
                                help="K models, each trained without one fold of the patients and predicting it")
        epochs = c2.number_input("Epochs per fold model (0: default)", 0, 1000, 0, key="crossfit_epochs",
                                 help=f"default: {FINE_TUNE['epochs']} when fine-tuning this model (it never saw the "
                                      "dataset), else its own recipe's")
        c3.write("")
        go = c3.form_submit_button("Cross-fit (a job)", disabled=why is not None, help=why)
    if go:
        _submit({TASK_KEY: ISSUES, "data": folder, "checkpoint": checkpoint, "folds": int(folds),
                 "epochs": int(epochs) or None}, f"cross-fitting ({md_text(name)})")


def finished(task: str, folder: str, checkpoint: str | None = None) -> list:
    """The succeeded jobs of ``task`` over the dataset at ``folder`` (and ``checkpoint``), newest first."""
    from cxrcore.jobs import JobStore

    want = str(Path(folder).resolve())
    try:
        jobs = JobStore().list(limit=500, status="succeeded")
    except CXRError:
        return []
    return [j for j in jobs if (j.config or {}).get(TASK_KEY) == task and (j.config or {}).get("data") == want
            and (checkpoint is None or (j.config or {}).get("checkpoint") in (checkpoint,
                                                                               str(Path(checkpoint).resolve())))]
