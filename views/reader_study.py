"""Reader study: set up a study (cases, findings, design, the model the aided arm shows), invite readers, watch
their progress, analyse the answers. Opened with a reader's link (``?token=…``) it is that reader's reading
screen and nothing else."""
from datetime import datetime

import pandas as pd
import streamlit as st

from cxrcore.errors import CXRError
from cxrcore.labels import resolve_label_space
from cxrcore.readerstudy import session
from cxrcore.readerstudy.design import DESIGNS, HEATMAPS, SCALES, StudyDesign
from cxrcore.readerstudy.setup import SAMPLING, cases_from_dataset, cases_from_files, create_study, read_truth_csv
from cxrcore.readerstudy.store import StudyStore, new_study_id
from ui import handoff
from ui.common import (checkpoint_choices, current_user, dataset_choices, hosting_settings, md_text, model_picker,
                       show_error)
from ui.reading import reader_page

store = StudyStore()
token = st.query_params.get("token")
if token:   # a reader's link: their reading screen and nothing else
    found = store.by_token(token)
    if found is None:
        st.error("This reading link is not valid (it may have been replaced by a new one). Ask the study's "
                 "organiser for your link.")
    else:
        reader_page(store, *found)
    st.stop()

st.title("Reader study")
st.caption("Do readers do better with the model? Clinicians read cases blind, without and with the model's output; "
           "the analysis is the standard multi-reader multi-case one (Obuchowski–Rockette with Hillis's degrees of "
           "freedom). Readers open their own link and see only their own cases and answers.")

access = hosting_settings()
user = current_user(access)
if user.signed_in:   # a reader invited by the account they sign in with reads here, without a link
    mine = store.by_user(user.id)
    reading = st.session_state.get("rs_read_as")
    if reading and any(sid == reading[0] and r.number == reading[1] for sid, r in mine):
        if st.button("← Back to the study list", key="rs_leave"):
            st.session_state.pop("rs_read_as")
            st.rerun()
        reader_page(store, reading[0], store.reader(*reading))
        st.stop()
    for sid, r in mine:
        s = store.study(sid)
        if s.status == "open" and st.button(f"Read in “{s.name}” as {r.name}", key=f"rs_read_{sid}"):
            st.session_state["rs_read_as"] = (sid, r.number)
            st.rerun()


@st.cache_data(show_spinner="Reading the dataset's labels…", max_entries=8)
def _labels(data: str) -> list[str]:
    from cxrcore.data.readers import read_dataset

    return list(read_dataset(data).labels)


def _link(tok: str) -> str:
    """A reader's link: this page's address (as the organiser's browser reached it) with their token."""
    try:
        base = (st.context.url or "").split("?")[0]
    except Exception:  # noqa: BLE001 - outside a browser session (AppTest)
        base = ""
    return f"{base}?token={tok}"


def new_study_form() -> None:
    why = session.why_not_organise(user, None, access)
    if why:
        st.info(why)
        return
    try:
        datasets = dataset_choices()
    except CXRError as exc:
        show_error(exc)
        return
    c1, c2 = st.columns(2)
    name = c1.text_input("Study name", key="rs_name", placeholder="e.g. Effusion with and without the model")
    handed = handoff.received_cases(st.session_state)
    sources = (["the Evaluation case browser"] if handed else []) + ["a dataset folder",
                                                                       "uploaded images and a truth CSV"]
    source = c2.radio("Cases from", sources, key="rs_source", horizontal=True)
    if source == "the Evaluation case browser":
        st.caption(f"{len(handed.cases)} cases from {md_text(handed.origin)}; ground truth for {md_text(handed.finding)}.")
        labels = [handed.finding]
    elif source == "a dataset folder":
        c1, c2, c3, c4 = st.columns(4)
        data_name = c1.selectbox("Dataset", list(datasets), key="rs_data")
        split = c2.selectbox("Split", ["test", "val", "train", "all", "official_test"], key="rs_split")
        sampling = c3.selectbox("Sampling", list(SAMPLING), key="rs_sampling", format_func=lambda s: f"{s}: {SAMPLING[s]}")
        n = c4.number_input("N", 1, 2000, 20, key="rs_n", disabled=sampling == "all")
        try:
            labels = _labels(datasets[data_name])
        except CXRError as exc:
            show_error(exc)
            return
    else:
        uploads = st.file_uploader("Images (PNG, JPEG, DICOM)", accept_multiple_files=True, key="rs_uploads")
        truth_file = st.file_uploader("Truth CSV: a column image (file name), one 0/1 column per finding",
                                      type=["csv"], key="rs_truth")
        labels = sorted({lab for space in ("nih14", "chexpert14") for lab in resolve_label_space(space)})
    findings = st.multiselect("Findings to read", labels, key="rs_findings", max_selections=14,
                              default=labels if source == "the Evaluation case browser" else None)
    c1, c2, c3 = st.columns(3)
    design = c1.radio("Design", list(DESIGNS), index=list(DESIGNS).index("sequential"), key="rs_design",
                      format_func=lambda k: DESIGNS[k])
    scale = c2.radio("Rating scale", list(SCALES), key="rs_scale", format_func=lambda k: f"{k}: {SCALES[k][2]}")
    mark = c3.toggle("Readers click where the finding is", key="rs_mark",
                     help="Location marks give a hit rate against the dataset's ground-truth boxes, where it has them.")
    c1, c2, c3, c4 = st.columns(4)
    choices = checkpoint_choices()
    model = model_picker(c1, "Model shown in the aided arm", choices, "rs_model", prefer=("finetuned",)) \
        if design != "unaided" and choices else None
    heatmap = c2.selectbox("Heatmap shown", HEATMAPS, key="rs_heatmap", disabled=design == "unaided")
    washout = c3.number_input("Wash-out (days, crossover)", 0.0, 365.0, 28.0, key="rs_washout",
                              disabled=design != "crossover")
    seed = c4.number_input("Seed (sampling and case order)", 0, 2**31 - 1, 0, key="rs_seed")
    if not st.button("Set up the study", type="primary", key="rs_create"):
        return
    try:
        d = StudyDesign(name=name, findings=tuple(findings), design=design, scale=scale, mark_location=mark,
                        model=choices[model] if model else None, heatmap=heatmap, washout_days=float(washout),
                        seed=int(seed)).check()
        sid = new_study_id()
        if source == "the Evaluation case browser":
            if list(findings) != [handed.finding]:
                st.error(f"These cases have ground truth for {handed.finding} only: read that finding.")
                return
            cases = [dict(c) for c in handed.cases]
            src = {"kind": "evaluation case browser", "origin": handed.origin, "cases": len(cases)}
        elif source == "a dataset folder":
            cases, src = cases_from_dataset(datasets[data_name], list(findings), split, sampling, int(n), int(seed))
        else:
            if not uploads or truth_file is None:
                st.error("Upload the images and the truth CSV first.")
                return
            truth = read_truth_csv(truth_file.getvalue(), list(findings))
            cases = cases_from_files([(u.name, u.getvalue()) for u in uploads], truth, sid)
            src = {"kind": "upload", "cases": len(cases)}
        bar = st.progress(0.0, text="Running the model on every case once (what the aided arm will show)…")
        study = create_study(d, cases, src, owner=user.id, store=store, study_id=sid,
                             progress=lambda k, total: bar.progress(k / total, text=f"Model output: case {k}/{total}"))
        bar.empty()
    except CXRError as exc:
        show_error(exc)
        return
    st.session_state["rs_pick"] = study.id   # the study list below opens on the new study
    st.session_state["rs_created"] = f"Study **{md_text(study.name)}** set up with {len(cases)} cases. Add its readers below."
    st.rerun()


def readers_panel(study) -> None:
    st.subheader("Readers")
    readers = store.readers(study.id)
    rows = session.progress(store, study.id)
    if rows:
        table = pd.DataFrame([{"reader": r["name"], "done": r["done"], "of": r["total"],
                               "last answer": datetime.fromtimestamp(r["last_answer"]).strftime("%Y-%m-%d %H:%M")
                               if r["last_answer"] else "–",
                               "median seconds per read": round(r["median_seconds"], 1) if r["median_seconds"] else None}
                              for r in rows])
        st.dataframe(table, hide_index=True)
    c1, c2 = st.columns([3, 1])
    name = c1.text_input("Invite a reader (name, or the e-mail they sign in with)", key=f"rs_reader_{study.id}")
    if c2.button("Add reader", key=f"rs_add_{study.id}"):
        try:
            signed = "@" in name and hosting_settings().hosted
            reader, tok = store.add_reader(study.id, name, user_id=name.strip().lower() if signed else None)
        except CXRError as exc:
            show_error(exc)
        else:
            st.session_state[f"rs_newlink_{study.id}"] = (reader.name, tok)
            st.rerun()
    new = st.session_state.get(f"rs_newlink_{study.id}")
    if new:
        st.info(f"Link for **{md_text(new[0])}** (shown once: send it to them; it is their key to their own cases "
                "and answers):")
        st.code(_link(new[1]), language=None)
    if readers:
        pick = st.selectbox("Replace a reader's link (the old one stops working; answers are kept)",
                            [r.name for r in readers], index=None, key=f"rs_relink_{study.id}")
        if pick and st.button("Make a new link", key=f"rs_relink_go_{study.id}"):
            r = next(r for r in readers if r.name == pick)
            st.session_state[f"rs_newlink_{study.id}"] = (r.name, store.new_token(study.id, r.number))
            st.rerun()


def analysis_panel(study) -> None:
    from cxrcore.readerstudy.analysis import study_analysis

    st.subheader("Analysis")
    finding = st.selectbox("Finding", list(study.design.findings), key=f"rs_finding_{study.id}")
    try:
        result = study_analysis(store, study.id, finding)
    except CXRError as exc:
        st.info(str(exc))
        return
    from ui.reader_analysis import show_analysis

    show_analysis(result, study, finding, store)


studies = [s for s in store.studies() if session.why_not_organise(user, s, access) is None]
if st.session_state.get("rs_created"):
    st.success(st.session_state.pop("rs_created"))
with st.expander("Set up a new study", expanded=not studies):
    new_study_form()
if not studies:
    st.stop()
names = {s.id: f"{s.name} · {s.design.design} · {s.id}" for s in studies}
ids = list(names)
if st.session_state.get("rs_pick") not in ids:
    st.session_state.pop("rs_pick", None)
study_id = st.selectbox("Study", ids, key="rs_pick", format_func=names.get)
study = store.study(study_id)
d = study.design
aided = study.source.get("aided", {})
st.caption(f"{len(store.cases(study.id))} cases · findings: {', '.join(d.findings)} · {DESIGNS[d.design]} · scale "
           f"{d.scale}" + (f" · aided arm: {aided.get('card_name') or aided.get('model')}, heatmap {d.heatmap}"
                           if aided else "") + f" · created {datetime.fromtimestamp(study.created):%Y-%m-%d}"
           + ("" if study.status == "open" else " · **closed**"))
readers_panel(study)
c1, c2 = st.columns(2)
if study.status == "open" and c1.button("Close the study (no more answers)", key=f"rs_close_{study.id}"):
    store.set_status(study.id, "closed")
    st.rerun()
if study.status == "closed" and c1.button("Reopen the study", key=f"rs_open_{study.id}"):
    store.set_status(study.id, "open")
    st.rerun()
analysis_panel(study)
