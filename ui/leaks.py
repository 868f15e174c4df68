"""The split balance report's near-duplicates and leaks (issue 24 §3): when a model has indexed this dataset
(``cxr index``, kept in the workspace's cache), the films whose embeddings nearly coincide, and those that the split
shown above puts in two different splits: a leak (the same film, or nearly, trained on and tested on)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from cxrcore.errors import CXRError
from ui.common import md_text, show_error


def indexes_of(folder: str) -> dict[str, str]:
    """Display name -> index folder of every index in the workspace's cache built over the dataset ``folder``."""
    from cxrcore.lens.index import workspace_indexes

    return {f"{m.get('model')} ({m.get('images')} films, {m.get('updated', '')[:10]})": str(where)
            for where, m in workspace_indexes() if Path(str(m.get("data", ""))).resolve() == Path(folder).resolve()}


@st.cache_resource(show_spinner=False, max_entries=4)
def cached_index(folder: str, stamp: float):
    """An index loaded once per version (``stamp``: its meta.json's time), shared read-only by the sessions."""
    from cxrcore.lens.index import load_index

    return load_index(folder)


@st.cache_data(show_spinner=False, max_entries=8)
def _pairs(index_folder: str, stamp: float, splits: tuple) -> dict:
    from cxrcore.lens.index import near_duplicates

    return near_duplicates(cached_index(index_folder, stamp), splits=dict(splits))


def leaks_section(folder: str, split: dict[str, str]) -> None:
    """``split``: image id -> the split the page computed."""
    st.markdown("**Near-duplicates and leaks across the splits**")
    found = indexes_of(folder)
    if not found:
        st.caption("No model has indexed this dataset yet: `cxr index --checkpoint C --data DATASET` (docs/lens.md) "
                   "lets this report find films whose embeddings nearly coincide, and those split apart.")
        return
    name = st.selectbox("Embeddings of", list(found), key="leaks_index")
    try:
        res = _pairs(found[name], (Path(found[name]) / "meta.json").stat().st_mtime, tuple(sorted(split.items())))
    except CXRError as exc:
        show_error(exc)
        return
    pairs = res["pairs"]
    if not pairs:
        st.success(f"No near-duplicate films (none nearer than {res['threshold']:.2g}: {res['ratio']} × the median "
                   "distance from a film to its nearest other film).")
        return
    (st.error if res["leaks"] else st.warning)(
        f"{len(pairs)} near-duplicate pair(s), **{res['leaks']} across the splits above (leaks)**: nearer than "
        f"{res['threshold']:.2g} ({res['ratio']} × the median nearest-other distance).")
    table = pd.DataFrame([{"film": p["a"], "near-duplicate": p["b"], "distance": p["distance"],
                           "splits": f"{p['split_a']} / {p['split_b']}", "leak": p["leak"],
                           "same patient": p["same_patient"]} for p in pairs])
    st.dataframe(table.sort_values("leak", ascending=False), hide_index=True, width="stretch")
    st.caption(md_text("A leak of one patient's films is prevented by the patient-level split; a leak between "
                       "patients (the same film under two ids, a copy) is not, and only the images show it."))
