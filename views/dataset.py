"""Dataset: label statistics of the real NIH / CheXpert tables, the phantoms and any dataset folder,
and the balance of the train / val / test split training would make.

A thin view: :mod:`cxrcore.data.stats` and :mod:`cxrcore.data.splits` compute, this page caches and
draws. Fast on the full CheXpert table (223,414 rows): the statistics are cached per source
(``st.cache_data``), every chart is built once per source and option (``st.cache_resource``; plotly
express takes 20–60 ms a figure, sending a built one ~1 ms), only the open section runs (lazy
``st.tabs``), and the CSV downloads are produced only when clicked.
"""
from __future__ import annotations

import re
import time
from functools import partial
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from cxrcore.data import stats
from cxrcore.data.gallery import folder_stamp, gallery_items
from cxrcore.data.imageio import read_image
from cxrcore.data.index import POLICIES, DatasetIndex
from cxrcore.data.readers import LABELS_ONLY, builtin_table, read_dataset
from cxrcore.data.splits import (SPLIT_METHODS, SPLITS, TEST_FRACTION, VAL_FRACTION, WARN_GAP, check_fractions,
                                 split_balance)
from cxrcore import hosting
from cxrcore.errors import AccessError, CXRError
from cxrcore.explain.visual import png_bytes, thumbnail
from cxrcore.labels import LABEL_SPACES, canonical
from ui.common import chart_config, dataset_choices, hosting_settings, md_text, show_error
from ui.embedding_map import embedding_map_tab
from ui.label_review import label_errors_tab
from ui.leaks import leaks_section

NIH_FULL = "NIH ChestX-ray14 — full label table (torchxrayvision)"
CHEXPERT_FULL = "CheXpert — full train table (torchxrayvision)"
FOLDER = "A folder on this machine…"
BUILTIN = {NIH_FULL: "builtin:nih", CHEXPERT_FULL: "builtin:chexpert"}
TOP_K = 100  # combinations computed once; the slider shows a prefix
ALL_IMAGES = "all images"
SECTIONS = ["Prevalence", "Co-occurrence", "Combinations", "Demographics", "Split balance"]
GALLERY = "Gallery"
LABEL_ERRORS = "Label errors"
EMBEDDING_MAP = "Embedding map"
OWN_LABELS = "this dataset's labels"


# --------------------------------------------------------------------------- cached computation

def _stamp(source: str) -> tuple:
    """Changes when a folder's label tables or image folders change, so the cache re-reads them."""
    kind, _, arg = source.partition(":")
    return folder_stamp(arg) if kind == "folder" else ()


@st.cache_resource(show_spinner=False, max_entries=2)
def _index(source: str, stamp: tuple) -> DatasetIndex:
    """The index of one source (``builtin:nih``, ``builtin:chexpert`` or ``folder:/abs/path``), shared
    read-only by the statistics and the split balance (the CheXpert table is ~50 MB; two kept)."""
    kind, _, arg = source.partition(":")
    return builtin_table(arg) if kind == "builtin" else read_dataset(arg, check_files=LABELS_ONLY)


@st.cache_data(show_spinner="Reading the label table and computing statistics…", max_entries=8)
def _statistics(source: str, stamp: tuple) -> dict:
    """All statistics of one source."""
    return stats.all_statistics(_index(source, stamp), k=TOP_K)


@st.cache_data(show_spinner="Splitting the patients and comparing the label rates per split…", max_entries=32)
def _balance(source: str, stamp: tuple, method: str, seed: int, val: float, test: float, space: str,
             policy: str) -> dict:
    """The split training would make (``split_balance``) and its per-label balance; the per-image split only for
    a dataset folder (for the near-duplicate report; the built-in tables are label tables without images)."""
    index = _index(source, stamp)
    wanted = list(index.labels) if space == OWN_LABELS else LABEL_SPACES[space]
    labels = index.shared_labels(wanted)
    t0 = time.perf_counter()
    out = split_balance(index, labels, method, seed, val, test, policy)
    return {"labels": labels, "missing": [x for x in wanted if x not in labels], "report": out["report"],
            "warnings": out["warnings"], "sizes": out["sizes"], "seconds": time.perf_counter() - t0,
            "split": dict(zip(index.frame["image_id"].astype(str), map(str, out["split"])))
            if source.startswith("folder:") else {}}


GALLERY_N = 12
THUMB_HEIGHT = 320


@st.cache_data(show_spinner="Finding images…", max_entries=32)
def _gallery_items(source: str, stamp: tuple, label: str) -> list[dict]:
    kind, _, arg = source.partition(":")
    return gallery_items(_index(source, stamp), label, GALLERY_N) if kind == "folder" else []


@st.cache_data(show_spinner=False, max_entries=256)
def _thumbnail(path: str, mtime: float, boxes: tuple, label: str) -> bytes:
    """The image at THUMB_HEIGHT px with its ``boxes`` drawn; PNG bytes."""
    return png_bytes(thumbnail(read_image(path).pixels, boxes, label, THUMB_HEIGHT))


def _gallery(src: str, s: dict) -> None:
    label = st.selectbox("Images positive for", s["labels"], key="gallery_label")
    if label is None:
        return
    items = _gallery_items(src, _stamp(src), label)
    if not items:
        st.info(f"No image on disk is positive for {md_text(label)}.")  # labels and file names: the dataset's
        return
    n_boxes = sum(len(it["boxes"]) for it in items)
    st.caption(f"{len(items)} image(s) positive for **{md_text(label)}** ({GALLERY_N} at most, those with a box first)"
               + (f"; green: the dataset's {n_boxes} ground-truth box(es) for {md_text(label)}." if n_boxes else
                  f"; the dataset has no ground-truth box for {md_text(label)} on these images."))
    cols = st.columns(4)
    for i, it in enumerate(items):
        try:
            mtime = Path(it["path"]).stat().st_mtime
            png = _thumbnail(it["path"], mtime, tuple(it["boxes"]), label)
        except Exception as exc:  # an unreadable file must not break the gallery
            cols[i % 4].warning(md_text(f"{Path(it['path']).name}: {exc}"))
            continue
        cols[i % 4].image(png, caption=md_text(it["caption"]), width="stretch")


def _csv(df: pd.DataFrame, index: bool = True) -> bytes:
    return df.to_csv(index=index).encode("utf-8")


def _download(df: pd.DataFrame, what: str, slug: str, index: bool = True) -> None:
    """A CSV download of ``df``; the CSV is written only when the button is clicked (deferred data)."""
    st.download_button(f"Download {what} (CSV)", partial(_csv, df, index),
                       file_name=f"{slug}-{what.replace(' ', '-')}.csv", mime="text/csv", key=f"dl-{what}",
                       icon=":material/download:", on_click="ignore")


# --------------------------------------------------------------------------- charts, built once

def _fig_prevalence(s: dict, option: str):
    prev = s["prevalence"]
    order = prev.sort_values("pct_images").index.tolist()
    long = prev.reset_index().melt(id_vars="label", value_vars=["pct_images", "pct_patients"],
                                   var_name="per", value_name="percent")
    long["per"] = long["per"].map({"pct_images": "per image", "pct_patients": "per patient"})
    fig = px.bar(long, x="percent", y="label", color="per", barmode="group", orientation="h",
                 category_orders={"label": order[::-1]}, labels={"percent": "prevalence (%)", "label": ""},
                 height=max(320, 34 * len(prev)))
    fig.update_layout(legend_title_text="", margin=dict(l=0, r=0, t=10, b=0))
    return fig


def _fig_values(s: dict, option: str):
    prev = s["prevalence"]
    vc = prev[["positive", "negative", "uncertain", "unmentioned"]]
    long = vc.reset_index().melt(id_vars="label", var_name="value", value_name="images")
    fig = px.bar(long, x="images", y="label", color="value", orientation="h",
                 category_orders={"value": ["positive", "negative", "uncertain", "unmentioned"],
                                  "label": list(prev.index)},
                 color_discrete_map={"positive": "#d62728", "negative": "#2ca02c",
                                     "uncertain": "#ff7f0e", "unmentioned": "#c7c7c7"},
                 labels={"label": ""}, height=max(320, 30 * len(prev)))
    fig.update_layout(legend_title_text="", margin=dict(l=0, r=0, t=10, b=0))
    return fig


def _fig_cooccurrence(s: dict, option: str):
    counts, cond = s["cooccurrence"], s["conditional"]
    if option == "P(B | A)":
        fig = px.imshow(cond.round(3), text_auto=".2f", aspect="auto", zmin=0, zmax=1,
                        color_continuous_scale="Blues", labels=dict(x="B (column)", y="A (row)", color="P(B|A)"))
    else:
        z = counts.astype(float)
        if option != "counts+diagonal":
            for lab in z.index:
                z.loc[lab, lab] = float("nan")
        fig = px.imshow(z, text_auto=True, aspect="auto", color_continuous_scale="Blues",
                        labels=dict(x="B (column)", y="A (row)", color="images"))
    fig.update_layout(height=max(420, 40 * len(counts)), margin=dict(l=0, r=0, t=10, b=0))
    fig.update_xaxes(tickangle=-45)
    return fig


def _fig_per_image(s: dict, option: str):
    fig = px.bar(s["labels_per_image"], x="n_labels", y="images",
                 labels={"n_labels": "positive labels", "images": "images"}, hover_data={"pct": ":.2f"}, height=360)
    fig.update_layout(margin=dict(l=0, r=0, t=10, b=0))
    fig.update_xaxes(dtick=1)
    return fig


def _fig_demographics(s: dict, option: str):
    key, label, pct = option.split("\x1f")
    as_pct = pct == "pct"
    table = s["demographics"][key]
    picked = ["all"] if label == ALL_IMAGES else ["all", label]
    sub = table[picked].rename(columns={"all": ALL_IMAGES, label: f"positive for {label}"})
    if as_pct:
        sub = 100 * sub / sub.sum().where(sub.sum() > 0)
    long = sub.reset_index().melt(id_vars=key, var_name="group", value_name="value")
    fig = px.bar(long, x=key, y="value", color="group", barmode="group", height=340,
                 labels={"value": "% of group" if as_pct else "images", key: ""})
    fig.update_layout(legend_title_text="", margin=dict(l=0, r=0, t=10, b=0), legend=dict(orientation="h", y=-0.25))
    return fig


FIGURES = {"prevalence": _fig_prevalence, "values": _fig_values, "cooccurrence": _fig_cooccurrence,
           "per_image": _fig_per_image, "demographics": _fig_demographics}


@st.cache_resource(show_spinner=False, max_entries=128)
def _figure(source: str, stamp: tuple, kind: str, option: str = ""):
    """One chart of ``source``, built once per option and shared by every rerun and session.

    ``st.cache_resource`` hands out the object itself (``st.cache_data`` would unpickle a copy, which
    re-validates the whole figure: ~7 ms); nothing mutates a figure after this function returns.
    """
    return FIGURES[kind](_statistics(source, stamp), option)


def _chart(src: str, kind: str, option: str = "", key: str = "") -> None:
    st.plotly_chart(_figure(src, _stamp(src), kind, option), key=key or f"chart-{kind}", config=chart_config())


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "dataset"


# --------------------------------------------------------------------------- source selection

st.title("Dataset statistics")
st.caption("Label prevalence, co-occurrence and demographics of the real NIH ChestX-ray14 and CheXpert label "
           "tables, the built-in phantom datasets, or any dataset folder in the NIH or CheXpert layout, and the "
           "label balance of the train / val / test split training would make.")

folders: dict[str, str] = {}
try:
    folders = dataset_choices()
except Exception as exc:  # the real tables and the folder input still work without the phantoms
    show_error(exc)

options = [NIH_FULL, CHEXPERT_FULL, *folders, FOLDER]
choice = st.selectbox("Source", options, key="dataset_source")

source: str | None = None
display = choice
if choice in BUILTIN:
    source = BUILTIN[choice]
elif choice == FOLDER:
    access = hosting_settings()
    if not access.typed_folders_allowed:
        st.info(hosting.HOW_TO_ENABLE_FOLDERS)
    else:
        start = access.data_roots[0] if access.roots_configured else Path.cwd()
        typed = st.text_input(
            "Dataset folder", key="dataset_folder",
            placeholder="/data/ChestX-ray14 (holds Data_Entry_2017*.csv) or /data/CheXpert-v1.0-small (holds train.csv)",
            help="A folder in the NIH layout (Data_Entry_2017*.csv beside images/ or images_0NN/images/) or the "
                 "CheXpert layout (train.csv / valid.csv beside train/ and valid/). Relative paths start at "
                 f"{start}.",
        ).strip()
        if access.roots_configured:
            st.caption("This server opens folders inside: " + ", ".join(f"`{r}`" for r in access.data_roots))
        if typed:
            try:
                path = hosting.resolve_data_path(typed, access)  # symlinks and .. resolved, then the roots checked
            except AccessError as exc:
                show_error(exc)
            else:
                source, display = f"folder:{path}", str(path)
        else:
            st.info("Type the path of a dataset folder on this machine.")
elif choice is not None:
    source = f"folder:{Path(folders[choice]).resolve()}"

data: dict | None = None
if source is not None:
    try:
        data = _statistics(source, _stamp(source))
    except CXRError as exc:
        show_error(exc)
    except Exception as exc:  # e.g. a folder without permission; never a traceback
        show_error(exc)


# --------------------------------------------------------------------------- views

def _overview(s: dict) -> None:
    age = "–" if s["age_mean"] is None else f"{s['age_mean']:.1f} / {s['age_median']:.0f}"
    tiles = [("Images", f"{s['images']:,}"), ("Patients", f"{s['patients']:,}"), ("Studies", f"{s['studies']:,}"),
             ("Images on disk", f"{s['images_on_disk']:,}"), ("Frontal images", f"{s['frontal']:,}"),
             ("Age mean / median", age)]
    for row in (tiles[:3], tiles[3:]):
        for col, (label, value) in zip(st.columns(3), row):
            col.metric(label, value, border=True)
    layout = {"nih": "NIH ChestX-ray14", "chexpert": "CheXpert"}.get(s["format"], s["format"])
    views = md_text(", ".join(f"{k} {v:,}" for k, v in s["views"].items()) or "–")  # the table's own values
    sex = md_text(", ".join(f"{k} {v:,}" for k, v in s["sex"].items()) or "–")
    st.caption(f"Layout: **{layout}** · {len(s['labels'])} labels · views: {views} · sex: {sex}"
               + (" · has uncertain (-1) / unmentioned values" if s["uncertainty"] else ""))
    for note in s["notes"]:
        (st.warning if "not found" in note or "not on disk" in note else st.info)(md_text(note))  # names its files


def _prevalence(src: str, prev: pd.DataFrame, slug: str) -> None:
    st.dataframe(
        prev, width="stretch",
        column_config={
            "images_positive": st.column_config.NumberColumn("positive images", format="%d"),
            "pct_images": st.column_config.NumberColumn("% of images", format="%.2f"),
            "patients_positive": st.column_config.NumberColumn("patients with ≥1 positive", format="%d"),
            "pct_patients": st.column_config.NumberColumn("% of patients", format="%.2f"),
        },
    )
    _download(prev, "prevalence", slug)
    if len(prev):
        _chart(src, "prevalence")

    if {"positive", "negative", "uncertain", "unmentioned"} <= set(prev.columns):
        st.subheader("Raw label values (CheXpert-style)")
        st.caption("Counts of 1 (positive), 0 (negative), -1 (uncertain) and blank (unmentioned) per label. "
                   "How uncertain and blank values become training targets is the uncertainty policy.")
        _chart(src, "values")
        vc = prev[["positive", "negative", "uncertain", "unmentioned"]]
        st.dataframe(vc, width="stretch")
        _download(vc, "value counts", slug)


def _cooccurrence(src: str, counts: pd.DataFrame, cond: pd.DataFrame, slug: str) -> None:
    if counts.empty:
        st.info("No labels.")
        return
    mode = st.segmented_control("Show", ["counts", "P(B | A)"], default="counts", key="cooc_mode",
                                help="counts: images positive for both labels. P(B | A): of the images positive "
                                     "for the row label A, the fraction also positive for the column label B.")
    mode = mode or "counts"
    if mode == "counts":
        show_diag = st.checkbox("Include the diagonal (images per label)", value=False, key="cooc_diag")
        option = "counts+diagonal" if show_diag else "counts"
        table, what = counts, "co-occurrence counts"
    else:
        option = "P(B | A)"
        table, what = cond, "co-occurrence P(B given A)"
    _chart(src, "cooccurrence", option, key="chart-cooc")
    with st.expander("Table"):
        st.dataframe(table, width="stretch")
    _download(table, what, slug)


def _combinations(src: str, top: pd.DataFrame, per_image: pd.DataFrame, slug: str, tail: dict | None = None) -> None:
    left, right = st.columns([3, 2])
    with left:
        st.subheader("Most frequent label combinations")
        if tail and tail["distinct"]:
            rare = "; ".join(f"{t['combinations']:,} occur at most {t['at_most']}× ({t['images']:,} images, "
                             f"{t['pct_images']:.2f} %)" for t in tail["tail"])
            st.caption(f"**{tail['distinct']:,} distinct combinations** of positive labels in {tail['images']:,} "
                       f"images. The rare tail: {rare}.")
        k = st.slider("How many", 5, max(5, min(TOP_K, len(top))), min(20, max(5, len(top))), key="top_k") \
            if len(top) > 5 else len(top)
        shown = top.head(k)
        st.dataframe(shown, hide_index=True, width="stretch",
                     column_config={"pct": st.column_config.NumberColumn("% of images", format="%.2f")})
        _download(shown, "top combinations", slug, index=False)
    with right:
        st.subheader("Findings per image")
        st.caption("Number of positive labels per image; “No Finding” is not counted.")
        _chart(src, "per_image")
        st.dataframe(per_image, hide_index=True, width="stretch",
                     column_config={"pct": st.column_config.NumberColumn("% of images", format="%.2f")})
        _download(per_image, "labels per image", slug, index=False)


def _demographics(src: str, demo: dict[str, pd.DataFrame], labels: list[str], slug: str) -> None:
    def _default_pct() -> None:  # comparing a label with all images reads best in percent
        st.session_state["demo_pct"] = st.session_state.get("demo_label", ALL_IMAGES) != ALL_IMAGES

    label = st.selectbox("Among images positive for", [ALL_IMAGES, *labels], key="demo_label", on_change=_default_pct,
                         help="Compare the distribution of the images positive for one label with all images.")
    as_pct = st.toggle("Show as % of each group", key="demo_pct")
    cols = st.columns(3)
    for col, key, title in zip(cols, ("age", "sex", "view"), ("Age (years)", "Sex", "View")):
        with col:
            st.markdown(f"**{title}**")
            _chart(src, "demographics", "\x1f".join((key, label, "pct" if as_pct else "n")), key=f"chart-demo-{key}")
            _download(demo[key], f"{key} by label", slug)
    with st.expander("Tables (images per group; one column per label = positive images)"):
        for key in ("age", "sex", "view"):
            st.dataframe(demo[key], width="stretch")


def _space_choices(labels: list[str]) -> list[str]:
    """This dataset's labels, then the named label spaces sharing at least one label with it."""
    keys = {canonical(x) for x in labels}
    return [OWN_LABELS] + [name for name, space in LABEL_SPACES.items() if keys & {canonical(x) for x in space}]


def _highlight(row: pd.Series) -> list[str]:
    return ["background-color: rgba(255, 165, 0, 0.25)" if row["warn"] else ""] * len(row)


def _split_balance(src: str, s: dict, slug: str) -> None:
    st.caption("The train / val / test split training would make of this source (all images, before cohort "
               "filters such as frontal-only) and how evenly each label's positives are spread over it. "
               "**hash**: each patient by a hash of its id and the seed (stable when patients are added or "
               "removed); **stratified**: iterative stratification over patients, so every label's positive "
               f"rate is about equal in all splits; **official**: the dataset's own test list, the rest split by hash. "
               f"Gaps above {100 * WARN_GAP:.0f} percentage points are flagged.")
    c1, c2, c3, c4 = st.columns([2, 1, 1, 1])
    first = next(iter(SPLIT_METHODS))  # the methods and the fractions' bounds: cxrcore/data/splits.py
    method = c1.segmented_control("Split method (patient-level)", list(SPLIT_METHODS), default=first,
                                  required=True, key="bal_method",
                                  help="; ".join(f"{k}: {v}" for k, v in SPLIT_METHODS.items()))
    seed = int(c2.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, step=1, key="bal_seed"))
    val = float(c3.number_input("Val fraction", min_value=VAL_FRACTION.min, max_value=VAL_FRACTION.max,
                                value=VAL_FRACTION.default, step=0.05, key="bal_val"))
    test = float(c4.number_input("Test fraction", min_value=TEST_FRACTION.min, max_value=TEST_FRACTION.max,
                                 value=TEST_FRACTION.default, step=0.05, key="bal_test"))
    c1, c2 = st.columns(2)
    space = c1.selectbox("Label space", _space_choices(s["labels"]), key="bal_space",
                         help="The labels a model would be trained on; labels the dataset lacks are left out.")
    policy = "zeros"
    if s["uncertainty"]:
        policy = c2.selectbox("Uncertain (-1) / blank values", list(POLICIES), key="bal_policy",
                              help="zeros: both negative; ones: -1 positive; ignore: -1 left out of the rate "
                                   "(blank is negative in all three). Same as training's uncertainty policy.")
    try:
        check_fractions(val, test)
        res = _balance(src, _stamp(src), method or first, seed, round(val, 6), round(test, 6), space, policy)
    except CXRError as exc:
        show_error(exc)
        return
    if not res["labels"]:
        st.info("The dataset has none of the labels of this label space.")
        return
    sizes = res["sizes"]
    st.markdown("**Images and patients per split**")
    st.dataframe(sizes, width="stretch",
                 column_config={"pct_images": st.column_config.NumberColumn("% of images", format="%.1f"),
                                "pct_patients": st.column_config.NumberColumn("% of patients", format="%.1f")})
    _download(sizes, "split sizes", slug)

    report = res["report"]
    warnings = res["warnings"]
    if warnings:
        st.warning(f"{len(warnings)} of {len(report)} labels have positive rates differing by more than "
                   f"{100 * WARN_GAP:.0f} points between splits:\n\n" + "\n".join(f"- {md_text(w)}" for w in warnings))
    else:
        st.success(f"Every label's positive rate is within {100 * WARN_GAP:.0f} points across the splits.")
    st.markdown("**Positive rate per label and split (%)**")
    shown = report.set_index("label")
    shown = pd.concat([100 * shown[list(SPLITS)], (100 * shown["max_gap"]).rename("max_gap"),
                       shown[[f"{x}_pos" for x in SPLITS]], shown["warn"]], axis=1)
    pct = {x: st.column_config.NumberColumn(f"{x} %", format="%.2f") for x in SPLITS}
    # The highlight (a pandas Styler) costs ~15 ms a rerun: only when a row is flagged.
    st.dataframe(shown.style.apply(_highlight, axis=1) if shown["warn"].any() else shown, width="stretch",
                 column_config={**pct, "max_gap": st.column_config.NumberColumn("largest gap (points)", format="%.2f"),
                                **{f"{x}_pos": st.column_config.NumberColumn(f"{x} positives", format="%d")
                                   for x in SPLITS},
                                "warn": st.column_config.CheckboxColumn(f"gap > {100 * WARN_GAP:.0f} pts")})
    _download(report, "split balance", slug, index=False)
    notes = [f"{s['images']:,} images; split computed in {res['seconds']:.2f} s (cached for these settings)."]
    if res["missing"]:
        notes.append(f"Not in this dataset, left out: {md_text(', '.join(res['missing']))}.")
    st.caption(" ".join(notes))
    if src.startswith("folder:"):   # a model's index of these films: near-duplicates, and those split apart
        leaks_section(src.partition(":")[2], res["split"])


if data is not None:
    s = data["summary"]
    slug = _slug(choice if choice != FOLDER else Path(display).name)
    st.subheader(md_text(display))  # a dataset folder's name or path
    _overview(s)
    if not s["labels"]:
        st.info("This dataset has no label columns.")
    else:
        has_images = source is not None and not source.startswith("builtin:") and s["images_on_disk"] > 0
        names = SECTIONS + ([GALLERY, LABEL_ERRORS, EMBEDDING_MAP] if has_images else [])
        if st.session_state.get("dataset_section") not in names:  # e.g. Gallery, then a source without images
            st.session_state["dataset_section"] = names[0]
        # Lazy tabs: only the open one runs (and draws); switching reruns the page.
        tabs = dict(zip(names, st.tabs(names, key="dataset_section", on_change="rerun")))
        section = next((n for n, t in tabs.items() if t.open), names[0])
        with tabs[section]:
            if section == "Prevalence":
                _prevalence(source, data["prevalence"], slug)
            elif section == "Co-occurrence":
                _cooccurrence(source, data["cooccurrence"], data["conditional"], slug)
            elif section == "Combinations":
                _combinations(source, data["top_combinations"], data["labels_per_image"], slug,
                              data.get("combination_tail"))
            elif section == "Demographics":
                _demographics(source, data["demographics"], s["labels"], slug)
            elif section == "Split balance":
                _split_balance(source, s, slug)
            elif section == LABEL_ERRORS:   # a model's suspected label errors, reviewed here (ui/label_review.py)
                label_errors_tab(source.partition(":")[2], _stamp(source))
            elif section == EMBEDDING_MAP:  # a model's 2-D map of the films (ui/embedding_map.py)
                embedding_map_tab(source.partition(":")[2], _index(source, _stamp(source)).frame, _stamp(source))
            else:
                _gallery(source, s)
        if not has_images:
            st.caption("Gallery: this source is a label table only (the built-in NIH and CheXpert tables ship "
                       "without images), so there are no images to browse. Choose a phantom or a dataset folder "
                       "with images to see a gallery of positive images with their ground-truth boxes.")
