"""The Dataset page's "Label errors" tab (issue 24 §3): a model's suspected label errors of the dataset
(cxrcore.lens.issues, cleanlab on out-of-sample probabilities), most likely first, each with its film, the label as
given and the model's probability; a reviewer marks each "label wrong / label right / unsure", kept at once
(cxrcore.lens.review); the reviewed pairs export as a relabel table (CSV), the dataset's own files untouched."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from cxrcore import hosting
from cxrcore.errors import CXRError
from cxrcore.jobs.lensjobs import read_result
from cxrcore.jobs.scoring import ISSUES
from cxrcore.runs import fmt_time
from ui.common import (current_user, hosting_settings, md_text, model_picker, require_checkpoints, show_error,
                       show_film)
from ui.lens_jobs import crossfit_launcher, finished

PAGE = 10
NOT_REVIEWED = "not reviewed"
OWN = "the model, on the films it did not train on"


@st.cache_data(show_spinner=False, max_entries=4)
def _issues(ckpt: str, folder: str, stamp: tuple) -> dict:
    from cxrcore.lens.issues import find_issues

    access = hosting_settings()
    user = current_user(access)
    with hosting.heavy_slot(user, access):
        return find_issues(ckpt, folder, limits=hosting.limits(access, user)).to_dict()


def label_errors_tab(folder: str, stamp: tuple) -> None:
    from cxrcore.lens.review import VERDICTS, ReviewStore, relabel_table

    access = hosting_settings()
    user = current_user(access)
    choices = require_checkpoints()
    c1, c2 = st.columns([3, 1])
    name = model_picker(c1, "Model whose out-of-sample probabilities judge the labels", choices, "issues_model",
                        prefer=("baseline",))
    ckpt = choices[name]
    jobs = finished(ISSUES, folder, ckpt)
    sources = {OWN: None, **{f"cross-fitting job {j.id}: {j.config.get('folds')} folds ({fmt_time(j.created)})": j
                             for j in jobs}}
    source = st.radio("Out-of-sample probabilities from", list(sources), key="issues_source",
                      help="The model itself judges only the films it did not train on; cross-fitting (K models, "
                           "each trained without one fold of the patients) judges every film.")
    with st.expander("Cross-fit this model over the dataset (a job), so every film is judged"):
        st.caption("K models, each the chosen one fine-tuned on all but one fold of the patients (or, when it "
                   "trained on this dataset, trained as it was, from its own start), each predicting its own fold: "
                   "every film's probabilities come from a model that never saw its patient.")
        crossfit_launcher(folder, ckpt, name)
    c2.write("")
    if c2.button("Look for label errors", key="issues_go", type="primary"):
        st.session_state["issues_for"] = (ckpt, folder, source)
    wanted = st.session_state.get("issues_for")
    if wanted != (ckpt, folder, source):
        st.caption("The model's out-of-sample probabilities, then cleanlab (one label at a time): the (film, label) "
                   "pairs whose given label the model most confidently disagrees with. Press **Look for label "
                   "errors**.")
        return
    try:
        if sources[source] is None:
            with st.spinner("Predicting the films the model did not train on (cached afterwards) and ranking…"):
                found = _issues(ckpt, folder, stamp)
        else:
            found = read_result(sources[source].run_dir)
            if found is None:
                raise CXRError(f"The result of job {sources[source].id} is not readable; run the cross-fitting again.")
    except CXRError as exc:
        show_error(exc)
        return
    issues = found["issues"]
    st.markdown(f"**{len(issues)}** suspected label errors among **{found['images']}** films out of sample for "
                f"{md_text(name)} ({len(found['labels'])} labels)." + (f" {md_text(found['note'])}" if found["note"]
                                                                        else ""))
    store = ReviewStore()
    verdicts = store.verdicts(folder)
    reviewed = sum((r["image"], r["label"]) in verdicts for r in issues)
    pages = max(1, -(-len(issues) // PAGE))
    p1, p2 = st.columns([1, 3])
    page = int(p1.number_input("Page", 1, pages, 1, key="issues_page"))
    p2.caption(f"{reviewed} of {len(issues)} reviewed; {PAGE} per page, most likely error first.")
    for k, r in enumerate(issues[(page - 1) * PAGE: page * PAGE], start=(page - 1) * PAGE + 1):
        left, right = st.columns([1, 3])
        show_film(left, r["path"])
        given = "present" if r["given"] else "absent"
        right.markdown(f"**{k}.** `{md_text(r['image'])}` · **{md_text(r['label'])}** given as **{given}**; the "
                       f"model says {r['probability']:.2f} · suspicion {r['score']:.3f}")
        now = verdicts.get((r["image"], r["label"]), {})
        options = [NOT_REVIEWED, *VERDICTS]
        key = f"issue::{folder}::{r['image']}::{r['label']}"
        st.session_state.setdefault(key, now.get("verdict", NOT_REVIEWED))
        right.radio("Verdict", options, key=key, horizontal=True, label_visibility="collapsed",
                    on_change=_save, args=(store, folder, r, key, user.id if user else "anonymous"))
        if now:
            right.caption(f"reviewed by {md_text(hosting.owner_display(now['reviewer']))}")
    table = relabel_table(store, folder)
    st.download_button(f"Download the relabel table ({len(table)} reviewed pairs, CSV)",
                       table.to_csv(index=False).encode(), file_name=f"relabel_{Path(folder).name}.csv",
                       mime="text/csv", key="issues_export",
                       help="image_id, label, given, corrected (the other value where the label is wrong), verdict, "
                            "reviewer, when; the dataset's own label files are not changed.")


def _save(store, folder: str, r: dict, key: str, reviewer: str) -> None:
    """A verdict kept the moment it is given (another reviewer's later verdict on the same pair replaces it)."""
    verdict = st.session_state[key]
    try:
        if verdict == NOT_REVIEWED:
            store.unmark(folder, r["image"], r["label"])
        else:
            store.mark(folder, r["image"], r["label"], r["given"], verdict, reviewer)
    except CXRError as exc:
        show_error(exc)
