"""The Dataset page's "Embedding map" (issue 24 §4): a model's 2-D map of the dataset's films (cxrcore.lens.map),
coloured by a label, the model's probability, the split, a subgroup (sex, age band, view); a lasso or box selection
shows the films chosen with their labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from cxrcore.errors import CXRError
from ui.common import chart_config, checkpoint_choices, md_text, show_error, show_film
from ui.lens_jobs import index_launcher
from ui.leaks import cached_index, indexes_of

SHOW = 24


@st.cache_data(show_spinner=False, max_entries=4)
def _map(folder: str, stamp: float) -> tuple[np.ndarray, np.ndarray]:
    from cxrcore.lens.index import load_index
    from cxrcore.lens.map import embedding_map

    return embedding_map(load_index(folder))


def embedding_map_tab(dataset_folder: str, frame: pd.DataFrame) -> None:
    """``frame``: the dataset's table (image id, sex, age, view) for the subgroup colours."""
    from cxrcore.eval.subgroups import subgroup_columns

    found = indexes_of(dataset_folder)
    if not found:
        st.caption("No model has indexed this dataset yet. Index it here (a job), or from a shell with "
                   "`cxr index --checkpoint C --data DATASET` (docs/lens.md): the films' embeddings this map, Compare's "
                   "similar cases and the split report's near-duplicates are drawn from.")
        index_launcher(dataset_folder, checkpoint_choices(), "map")
        return
    with st.expander("Index with another model, or add the films new since (a job)"):
        index_launcher(dataset_folder, checkpoint_choices(), "map")
    c1, c2 = st.columns([2, 2])
    name = c1.selectbox("Embeddings of", list(found), key="map_index")
    folder = found[name]
    stamp = (Path(folder) / "meta.json").stat().st_mtime
    try:
        index = cached_index(folder, stamp)
        with st.spinner("t-SNE of the films' embeddings (kept beside the index afterwards)…"):
            rows, xy = _map(folder, stamp)
    except CXRError as exc:
        show_error(exc)
        return
    items = index.items.iloc[rows].reset_index(drop=True)
    labels = sorted({x for v in index.items["labels"] for x in str(v).split(";") if x})
    groups = subgroup_columns(frame.set_index(frame["image_id"].astype(str)).reindex(items["image_id"]).reset_index(
        drop=True))
    colours = ["split", *groups, *[f"label: {x}" for x in labels],
               *[f"model's probability: {x}" for x in index.meta.get("labels", [])]]
    by = c2.selectbox("Colour by", colours, key="map_colour")
    data = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "film": items["image_id"],
                         "labels": items["labels"].replace("", "No Finding")})
    if by == "split":
        data["colour"] = items["split"].replace("", "none")
    elif by in groups:
        data["colour"] = groups[by].fillna("unknown").astype(str)
    elif by.startswith("label: "):
        x = by[len("label: "):]
        data["colour"] = np.where([x in str(v).split(";") for v in items["labels"]], x, "not " + x)
    else:
        x = by[len("model's probability: "):]
        data["colour"] = index.probs[rows, index.meta["labels"].index(x)]
    fig = px.scatter(data, x="x", y="y", color="colour", hover_data=["film", "labels"], height=560,
                     labels={"colour": by})
    fig.update_traces(marker={"size": 5})
    fig.update_layout(xaxis={"visible": False}, yaxis={"visible": False}, margin={"t": 10, "b": 10},
                      dragmode="lasso")
    st.caption(f"{len(rows)} of {len(index)} films" + (" (a seeded sample)" if len(rows) < len(index) else "")
               + f"; t-SNE of {md_text(name)}'s embeddings. Lasso or box a region to see its films.")
    event = st.plotly_chart(fig, key="map_chart", on_select="rerun", selection_mode=("lasso", "box"),
                            config=chart_config())
    picked = sorted({p["point_index"] if "point_index" in p else p.get("pointIndex") for p in
                     (event.selection.points if event and event.selection else [])} - {None}) if event else []
    if not picked:
        return
    shown = data.iloc[picked[:SHOW]]
    st.markdown(f"**{len(picked)} film(s) selected**" + (f" (the first {SHOW} shown)" if len(picked) > SHOW else ""))
    cols = st.columns(6)
    for k, (_, r) in enumerate(shown.iterrows()):
        path = items["path"].iloc[int(r.name)]
        with cols[k % 6]:
            show_film(st, path)
            st.caption(md_text(f"{r['film']}: {r['labels']}"))
