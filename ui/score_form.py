"""The Training page's second launcher: score a whole archive with one model as a job of the same queue
(:mod:`cxrcore.jobs.scoring`; ``cxr score --background`` from a shell). The job writes its table into its run
folder; the job view shows its progress and, at the end, its rows and downloads."""
from __future__ import annotations

import streamlit as st

from cxrcore import hosting
from cxrcore.errors import CXRError
from cxrcore.jobs import dispatch
from cxrcore.jobs.scoring import NUMBERS, SCORE, TASK_KEY, is_url
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
