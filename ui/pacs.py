"""The PACS on the pages: search studies over DICOMweb; on Compare pick a study's frontal image (and a second view)
and send the results back as DICOM (cxrcore.pacs); on Follow-up pick a patient's prior and current study. Shown
only when the operator set CXR_DICOMWEB_URL.

Patient data stays in this process: the search takes what the person types, and the results list studies by
date, description, accession, modalities and image count, not by patient name; images fetched are kept in this
browser session's state only (never in a cache another session could reach)."""
from __future__ import annotations

import datetime as dt

import pandas as pd
import streamlit as st

from cxrcore.errors import CXRError
from cxrcore.pacs import dicomweb
from ui.common import md_text, show_error

MODALITIES = ("CR", "DX")


def pacs_config():
    """The operator's PACS (``CXR_DICOMWEB_URL`` …), None when none is configured; a configuration error shown.
    On a shared server only signed-in visitors reach it (the searches and images go through the server's account)."""
    from ui.common import current_user, hosting_settings

    try:
        config = dicomweb.PacsConfig.from_env()
    except CXRError as exc:
        show_error(exc)
        return None
    if config is not None and hosting_settings().hosted and not current_user().signed_in:
        st.caption("This server is connected to a PACS: sign in to open its studies.")
        return None
    return config


def _fetch(config, hit, slot: str = "pacs_images") -> bytes:
    """``hit``'s DICOM file, fetched once per browser session (the images of one study at a time are kept per
    ``slot``: Compare's one study, Follow-up's prior and current)."""
    kept = st.session_state.setdefault(slot, {})
    if hit.sop_uid not in kept:
        if any(study != hit.study_uid for study, _ in kept.values()):
            kept.clear()
        with st.spinner("Fetching the image from the PACS…"):
            kept[hit.sop_uid] = (hit.study_uid, dicomweb.retrieve_bytes(config, hit))
    return kept[hit.sop_uid][1]


def _images(config, study_uid: str, slot: str = "pacs_study_images"):
    """The study's images, listed once per browser session, ``slot`` and study (not at every rerun of the page)."""
    listed = st.session_state.get(slot)
    if listed is None or listed[0] != study_uid:
        listed = (study_uid, dicomweb.study_images(config, study_uid))
        st.session_state[slot] = listed
    return listed[1]


def _frontal_first(images) -> list[int]:
    """The study's images' indices, the frontal (PA / AP) ones first, each group in the PACS's order."""
    return sorted(range(len(images)), key=lambda i: images[i].view_position not in ("PA", "AP"))


def _view_name(hit) -> str:
    return f"{hit.view_position or 'view ?'} {hit.modality} …{hit.sop_uid[-6:]}"


def _search(config, key: str = "pacs"):
    """The search form (widget keys ``{key}_patient_id`` ...) and its studies (kept in ``{key}_hits``): a list,
    or None before a search or after an error (shown)."""
    st.caption(f"PACS: {md_text(str(config))}. Search by patient ID, accession number or name (* as a wildcard); "
               "the list shows studies, not names.")
    c1, c2, c3 = st.columns(3)
    patient_id = c1.text_input("Patient ID", key=f"{key}_patient_id")
    accession = c2.text_input("Accession number", key=f"{key}_accession")
    name = c3.text_input("Patient name (e.g. DOE*)", key=f"{key}_name")
    c1, c2 = st.columns(2)
    dates = c1.date_input("Study date (from, to; optional)", value=(), key=f"{key}_dates",
                          min_value=dt.date(1900, 1, 1))
    modalities = c2.multiselect("Modality", MODALITIES, default=list(MODALITIES), key=f"{key}_modalities",
                                help="CR: computed radiography; DX: digital radiography (DR)")
    if st.button("Search the PACS", key=f"{key}_search", type="primary"):
        date_from = dates[0].strftime("%Y%m%d") if len(dates) > 0 else ""
        date_to = dates[1].strftime("%Y%m%d") if len(dates) > 1 else date_from
        try:
            st.session_state[f"{key}_hits"] = dicomweb.search_studies(
                config, patient_id=patient_id, patient_name=name, accession=accession, date_from=date_from,
                date_to=date_to, modalities=tuple(modalities) or MODALITIES)
        except CXRError as exc:
            show_error(exc)
            return None
    hits = st.session_state.get(f"{key}_hits")
    if hits is None:
        return None
    if not hits:
        st.info("No study matches. Widen the search (fewer fields, a wildcard, a longer date range).")
        return None
    return hits


def _study_line(h) -> str:
    return (f"{h.date or 'no date'} · {h.description or 'no description'} · {', '.join(h.modalities)} · "
            f"{h.images or '?'} images")


def _hits_table(hits, key: str) -> None:
    """The studies found: date, description, accession, modalities, images (never the patient)."""
    table = pd.DataFrame([{"date": h.date, "description": h.description, "accession": h.accession,
                           "modalities": ", ".join(h.modalities), "images": h.images} for h in hits])
    st.dataframe(table, hide_index=True, key=key)


def pacs_pair_picker(config):
    """The Follow-up page's PACS: search (a patient's studies), pick the prior and the current study; each study's
    frontal image (the first PA / AP one) is fetched. ``((raw, name), (raw, name))`` once both are there, else None.
    Two studies of different patients are refused (the patient is compared by ID inside this process, never
    shown)."""
    hits = _search(config, "fu_pacs")
    if not hits:
        return None
    hits = sorted(hits, key=lambda h: h.date or "")          # oldest first: a patient's studies in order
    _hits_table(hits, "fu_pacs_table")
    if len(hits) < 2:
        st.info("The search found one study; a comparison needs the prior too. Widen the search.")
        return None
    c1, c2 = st.columns(2)
    a = c1.selectbox("Prior study", range(len(hits)), index=len(hits) - 2, key="fu_pacs_prior",
                     format_func=lambda i: _study_line(hits[i]))
    b = c2.selectbox("Current study", range(len(hits)), index=len(hits) - 1, key="fu_pacs_current",
                     format_func=lambda i: _study_line(hits[i]))
    if a == b:
        st.error("The prior and the current study are the same; pick two.")
        return None
    if hits[a].patient_id != hits[b].patient_id:
        st.error("The two studies belong to different patients; a follow-up compares one patient's films.")
        return None
    out = []
    for k, slot in ((a, "prior"), (b, "current")):
        try:
            images = _images(config, hits[k].study_uid, f"fu_pacs_{slot}_images")
            if not images:
                st.info(f"The {slot} study has no radiograph in the PACS.")
                return None
            first = images[_frontal_first(images)[0]]
            out.append((_fetch(config, first, f"fu_pacs_{slot}_files"), _view_name(first) + ".dcm"))
        except CXRError as exc:
            show_error(exc)
            return None
    return out[0], out[1]


def pacs_picker(config):
    """Search, pick a study and its image(s): ``((raw, name), second or None)`` once an image is chosen, else None."""
    hits = _search(config, "pacs")
    if not hits:
        return None
    _hits_table(hits, "pacs_table")
    k = st.selectbox("Study", range(len(hits)), key="pacs_study", format_func=lambda i: _study_line(hits[i]))
    try:
        images = _images(config, hits[k].study_uid)
    except CXRError as exc:
        show_error(exc)
        return None
    if not images:
        st.info("That study has no radiograph in the PACS.")
        return None
    frontal_first = _frontal_first(images)
    c1, c2 = st.columns(2)
    first = c1.selectbox("Image", frontal_first, key="pacs_image", format_func=lambda i: _view_name(images[i]))
    others = [i for i in frontal_first if i != first]
    other = c2.selectbox("Second view of the study (optional, e.g. the lateral)", [None, *others],
                         key="pacs_image2", format_func=lambda i: "none" if i is None else _view_name(images[i]))
    try:
        raw = _fetch(config, images[first])
        second = (_fetch(config, images[other]), _view_name(images[other]) + ".dcm") if other is not None else None
    except CXRError as exc:
        show_error(exc)
        return None
    st.session_state["pacs_source"] = images[first]
    return (raw, _view_name(images[first]) + ".dcm"), second


def send_results(config, result, label: str, raw: bytes, name: str, model_names: dict[str, str]) -> None:
    """Send one model's results for this image to the PACS as DICOM: the Structured Report and the heatmap of
    ``label`` as a secondary capture, after a confirmation; only when the operator allows it."""
    from cxrcore.pacs.sr import ModelIdentity, heatmap_capture, source_of, structured_report
    from ui.common import load_predictor

    st.subheader("Send the results to the PACS")
    if config.store != "on-request":
        st.caption(f"Sending results to the PACS is off on this server (the operator turns it on with "
                   f"{dicomweb.ENV_STORE}=on-request).")
        return
    role = st.radio("Results of", list(result.predictions), horizontal=True, key="pacs_send_model",
                    format_func=lambda r: f"{r}: {model_names.get(r, r)}")
    pred = result.predictions[role]
    heat = label in pred.labels
    st.caption("Sends a DICOM Structured Report (every label's probability, threshold and call, the heatmap boxes)"
               + (f" and the heatmap of {md_text(label)} as a secondary capture" if heat else "")
               + ", into this study, marked unverified and not for diagnostic use."
               + ("" if heat else f" (This model has no {md_text(label)} output: no heatmap is sent.)"))
    sure = st.checkbox("These are a research model's unverified outputs; store them in the PACS beside the image",
                       key="pacs_send_sure")
    if not st.button("Send to the PACS", key="pacs_send", disabled=not sure):
        return
    try:
        header, in_pacs = source_of(raw, name, pred.image_shape)
        if not in_pacs:
            st.error("This image has no DICOM header: its results have no study to go into in the PACS.")
            return
        ident = ModelIdentity.of(model_names.get(role, role), load_predictor(result.model_paths[role]).card)
        from cxrcore.data.imageio import read_image

        objects = [structured_report(pred, header, ident)]
        if heat:
            objects.append(heatmap_capture(pred, label, read_image(raw, name).pixels, header, ident))
        uids = dicomweb.store(config, objects)
    except CXRError as exc:
        show_error(exc)
        return
    st.session_state["pacs_sent"] = uids
    st.success(f"Stored in the PACS: the report{' and the heatmap' if len(uids) > 1 else ''} "
               f"(SOP Instance UID {uids[0]}{', ' + uids[1] if len(uids) > 1 else ''}).")
