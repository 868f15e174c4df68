"""The Training page's second launcher: score a whole archive with one model as a job of the same queue
(:mod:`cxrcore.jobs.scoring`; ``cxr score --background`` from a shell). The job writes its table into its run
folder; the job view shows its progress and, at the end, its rows and downloads."""
from __future__ import annotations

import streamlit as st

from cxrcore import hosting
from cxrcore.errors import CXRError
from cxrcore.jobs import dispatch
from cxrcore.jobs.scoring import NUMBERS, SCORE, TASK_KEY, WATCH, is_url
from cxrcore.runtime import RUNTIMES
from ui.common import md_text, show_error

INPUT_HELP = ("A folder of images (PNG, JPEG, DICOM; every one below it), a CSV with a `path` column (paths relative "
              "to the CSV's folder), or a DICOMweb query of the operator's PACS, e.g. "
              "`http://pacs:8042/dicom-web/studies?ModalitiesInStudy=CR&StudyDate=20240101-20240131`.")


def score_launcher(datasets: dict[str, str], checkpoints: dict[str, str], access, user, blocked: str | None) -> None:
    """The form; on submit, the job (or the reason it was not started)."""
    with st.expander("Score an archive with a model (a job: one table row per image)"):
        with st.form("score_form", border=False):
            c1, c2 = st.columns(2)
            picked = c1.selectbox("Images: a dataset", ["(type a folder, CSV or query instead)"] + list(datasets),
                                  key="score_dataset")
            typed = c2.text_input("… or a folder, CSV list or DICOMweb query", key="score_input", help=INPUT_HELP)
            m1, m2 = st.columns([3, 1])
            model = m1.selectbox("Model", list(checkpoints), key="score_model")
            runtime = m2.selectbox("Runtime", RUNTIMES, key="score_runtime",
                                   help="onnx: the model exported once to ONNX Runtime (PyTorch's probabilities "
                                        "within 1e-4, faster on CPUs); torch: PyTorch as on the other pages. A "
                                        "model that does not export is scored by PyTorch, and the log says why.")
            n1, n2, n3 = st.columns(3)
            workers = n1.number_input("Decoding threads", min_value=NUMBERS["workers"][1],
                                      value=NUMBERS["workers"][0], step=1, key="score_workers",
                                      help="threads reading and squaring images while the model scores")
            batch = n2.number_input("Batch size", min_value=NUMBERS["batch_size"][1],
                                    value=NUMBERS["batch_size"][0], step=1, key="score_batch")
            name = n3.text_input("Job name (optional)", key="score_name")
            go = st.form_submit_button("Start scoring", disabled=blocked is not None or not checkpoints,
                                       help=blocked)
        if not go:
            return
        try:
            spec = typed.strip()
            if spec and not is_url(spec):   # typed: symlinks and .. resolved, the operator's data roots checked
                spec = str(hosting.resolve_data_path(spec, access))
            elif not spec:
                if picked not in datasets:
                    raise CXRError("Choose a dataset, or type a folder, a CSV list or a DICOMweb query.")
                spec = datasets[picked]
            config = {TASK_KEY: SCORE, "input": spec, "checkpoint": checkpoints[model], "workers": int(workers),
                      "batch_size": int(batch), "runtime": runtime}
            with st.spinner("Checking the input and the model, and starting the job…"):
                job = dispatch.submit(config, name=name.strip(), user=user, settings=access)
        except Exception as exc:  # noqa: BLE001 - CXRError as a message; anything else without a traceback
            show_error(exc)
            return
        st.success(f"Started scoring job **{job.id}** ({md_text(job.name)}). It runs in the background; watch it "
                   "below. Cancelled or killed, **Resume** scores only the images not in its table yet.")
        st.session_state["train_watch"] = job.id


def watch_launcher(checkpoints: dict[str, str], access, user, blocked: str | None) -> None:
    """Score new PACS studies as they arrive (a watch job, :mod:`cxrcore.pacs.watch`): offered where a PACS is set
    up, to the operator, one person's own machine, or an admin (CXR_JOB_ADMINS)."""
    from cxrcore.pacs import dicomweb

    try:
        pacs = dicomweb.PacsConfig.from_env()
    except CXRError:
        return   # a misconfigured PACS is reported where it is used (Compare)
    if pacs is None or not hosting.is_admin(user, access):
        return
    with st.expander(f"Score new studies arriving in the PACS ({md_text(pacs.host)})"):
        if pacs.store == "off":
            st.caption(f"This stores results in the PACS, which is off here: the operator allows it with "
                       f"{dicomweb.ENV_STORE}=on-request.")
            return
        st.caption("A job polls the PACS for new CR/DX studies, scores each frontal image once with the chosen model "
                   "and stores a Structured Report (and the heatmap of the most probable finding called) into the "
                   "study, unverified and not for diagnostic use. Cancel it to stop watching; Resume watches again "
                   "without scoring any study twice.")
        with st.form("watch_form", border=False):
            w1, w2, w3 = st.columns([3, 1, 1])
            model = w1.selectbox("Model", list(checkpoints), key="watch_model")
            interval = w2.number_input("Every (seconds)", min_value=5, value=60, step=5, key="watch_interval")
            since = w3.text_input("Study dates from (YYYYMMDD)", key="watch_since",
                                  help="Empty: from yesterday (what arrives from now on, and yesterday's late ones).")
            go = st.form_submit_button("Start watching", disabled=blocked is not None or not checkpoints, help=blocked)
        if not go:
            return
        try:
            config = {TASK_KEY: WATCH, "checkpoint": checkpoints[model], "interval": int(interval),
                      "since": since.strip()}
            with st.spinner("Checking the PACS settings and the model, and starting the watch…"):
                job = dispatch.submit(config, user=user, settings=access)
        except Exception as exc:  # noqa: BLE001 - CXRError as a message; anything else without a traceback
            show_error(exc)
            return
        st.success(f"Started watch **{job.id}**: new studies are scored as they arrive. Its log and studies are below.")
        st.session_state["train_watch"] = job.id
