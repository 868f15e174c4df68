"""The Dataset page's "Embedding map" (issue 24 §4): a model's 2-D map of the dataset's films (cxrcore.lens.map),
coloured by a label, the model's probability, the split, a subgroup (sex, age band, view) or the suspected label-error
score; a lasso or box selection opens the films chosen: a table with their labels and the model's probabilities (a
CSV), a grid, one film with its heatmap, and (colouring by a label) a reader study of them."""
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
SUSPICION = "suspected label error (score)"


@st.cache_data(show_spinner=False, max_entries=4)
def _map(folder: str, stamp: float) -> tuple[np.ndarray, np.ndarray]:
    from cxrcore.lens.index import load_index
    from cxrcore.lens.map import embedding_map

    return embedding_map(load_index(folder))


def embedding_map_tab(dataset_folder: str, frame: pd.DataFrame, stamp: tuple = ()) -> None:
    """``frame``: the dataset's table (image id, sex, age, view) for the subgroup colours; ``stamp``: the dataset
    folder's (the Label errors tab's cache key, shared)."""
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
               *[f"model's probability: {x}" for x in index.meta.get("labels", [])], SUSPICION]
    by = c2.selectbox("Colour by", colours, key="map_colour")
    data = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "film": items["image_id"],
                         "labels": items["labels"].replace("", "No Finding")})
    suspicion, source = None, None
    if by == SUSPICION:
        try:
            suspicion, source = _suspicion(index, dataset_folder, stamp)
        except CXRError as exc:
            show_error(exc)
            return
    if by == SUSPICION:
        data["colour"] = items["image_id"].astype(str).map(suspicion).fillna(0.0).to_numpy()
        st.caption(f"Suspicion: a film's largest label-error score (1 − cleanlab's self-confidence of its given label; "
                   f"0 where no label of it is flagged), from {md_text(source)}.")
    elif by == "split":
        data["colour"] = items["split"].replace("", "none")
    elif by in groups:
        data["colour"] = groups[by].fillna("unknown").astype(str)
    elif by.startswith("label: "):
        x = by[len("label: "):]
        data["colour"] = np.where([x in str(v).split(";") for v in items["labels"]], x, "not " + x)
    else:
        x = by[len("model's probability: "):]
        data["colour"] = index.probs[rows, index.meta["labels"].index(x)]
    data["row"] = np.arange(len(data))
    fig = px.scatter(data, x="x", y="y", color="colour", hover_data=["film", "labels"], custom_data=["row"],
                     height=560, labels={"colour": by})
    fig.update_traces(marker={"size": 5})
    fig.update_layout(xaxis={"visible": False}, yaxis={"visible": False}, margin={"t": 10, "b": 10},
                      dragmode="lasso")
    st.caption(f"{len(rows)} of {len(index)} films" + (" (a seeded sample)" if len(rows) < len(index) else "")
               + f"; t-SNE of {md_text(name)}'s embeddings. Lasso or box a region to see its films.")
    event = st.plotly_chart(fig, key="map_chart", on_select="rerun", selection_mode=("lasso", "box"),
                            config=chart_config())
    points = ((event or {}).get("selection") or {}).get("points") or []   # dict access: the event is a mapping
    picked = _rows_of(fig, points)
    if not picked:
        return
    _selection(index, items, rows, data, picked, by)


def _rows_of(fig, points: list[dict]) -> list[int]:
    """The map's rows of selected points: a point is numbered within its trace (one trace per colour category), so
    its row is read from that trace's custom data."""
    rows = set()
    for p in points:
        i, curve = p.get("point_index", p.get("pointIndex")), p.get("curve_number", p.get("curveNumber", 0))
        if i is None or not 0 <= int(curve) < len(fig.data):
            continue
        custom = fig.data[int(curve)].customdata
        if custom is not None and 0 <= int(i) < len(custom):
            rows.add(int(custom[int(i)][0]))
    return sorted(rows)


def _selection(index, items: pd.DataFrame, rows: np.ndarray, data: pd.DataFrame, picked: list[int], by: str) -> None:
    """The films a lasso or box chose: a table (labels, split, the model's probabilities, the colour), a download,
    a grid, one film opened with its heatmap, and a hand-off of them to a reader study (colouring by a label)."""
    model_labels = list(index.meta.get("labels", []))
    probs = index.probs[rows[picked]]
    table = pd.DataFrame({"film": data["film"].iloc[picked].to_numpy(), "labels": data["labels"].iloc[picked].to_numpy(),
                          "split": items["split"].iloc[picked].replace("", "none").to_numpy(),
                          "model calls": ["; ".join(x for x, p in zip(model_labels, ps) if p >= 0.5) or "-"
                                          for ps in probs]})
    if "colour" in data:
        table[by] = data["colour"].iloc[picked].to_numpy()
    for j, x in enumerate(model_labels):
        table[f"p({x})"] = np.round(probs[:, j], 3)
    st.markdown(f"**{len(picked)} film(s) selected**")
    st.dataframe(table, hide_index=True, key="map_selection_table", height=min(400, 38 + 35 * len(table)))
    st.download_button(f"Download the selection ({len(table)} films, CSV)", table.to_csv(index=False).encode(),
                       file_name="map_selection.csv", mime="text/csv", key="map_selection_csv")
    cols = st.columns(6)
    for k, i in enumerate(picked[:SHOW]):
        with cols[k % 6]:
            show_film(st, items["path"].iloc[i])
            st.caption(md_text(f"{data['film'].iloc[i]}: {data['labels'].iloc[i]}"))
    if len(picked) > SHOW:
        st.caption(f"The first {SHOW} of {len(picked)} shown; open any below.")
    o1, o2 = st.columns([2, 1])
    names = [str(data["film"].iloc[i]) for i in picked]
    film = o1.selectbox("Open a film", names, key="map_open")
    label = o2.selectbox("Heatmap of", model_labels, key="map_open_label") if model_labels else None
    i = picked[names.index(film)]
    left, right = st.columns(2)
    show_film(left, items["path"].iloc[i], md_text(f"{film}: {data['labels'].iloc[i]}"), height=640)
    if label:
        from ui.similar import show_cam

        with right:
            show_cam(items["path"].iloc[i], index.meta["checkpoint"], label)
            q = model_labels.index(label)
            st.caption(md_text(f"{index.meta.get('model', 'the model')}: {label} p={index.probs[rows[i], q]:.2f}"))
    if by.startswith("label: "):
        finding = by[len("label: "):]
        if st.button(f"Read these {len(picked)} films in a reader study ({finding})", key="map_to_study",
                     help=f"Open the Reader study page with these films and their {finding} label as the truth."):
            from ui import handoff

            handoff.send_cases(st.session_state, handoff.StudyCases(
                tuple({"image": str(items["path"].iloc[i]), "source_id": str(items["image_id"].iloc[i]),
                       "truth": {finding: int(finding in str(items["labels"].iloc[i]).split(";"))}} for i in picked),
                finding, f"a region of the embedding map ({index.meta.get('dataset')}, {index.meta.get('model')})"))
            st.switch_page("views/reader_study.py")


def _suspicion(index, dataset_folder: str, stamp: tuple) -> tuple[dict, str]:
    """image id -> its largest label-error score, and where the scores came from: the newest finished cross-fitting
    job of this dataset with the index's model, else the model's own out-of-sample probabilities."""
    from cxrcore.jobs.lensjobs import read_result
    from cxrcore.jobs.scoring import ISSUES
    from ui.label_review import _issues
    from ui.lens_jobs import finished

    ckpt = index.meta["checkpoint"]
    found, source = None, None
    for job in finished(ISSUES, dataset_folder, ckpt):
        found = read_result(job.run_dir)
        if found:
            source = f"cross-fitting job {job.id} ({found.get('folds')} folds)"
            break
    if found is None:
        with st.spinner("The model's probabilities on the films it did not train on, then cleanlab…"):
            found = _issues(ckpt, dataset_folder, stamp)
        source = f"{index.meta.get('model')}'s probabilities on the films it did not train on"
    out: dict[str, float] = {}
    for r in found["issues"]:
        out[r["image"]] = max(out.get(r["image"], 0.0), float(r["score"]))
    return out, source
