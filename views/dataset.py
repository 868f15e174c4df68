"""Dataset: label statistics of the real NIH / CheXpert tables, the phantoms and any dataset folder.

A thin view: :mod:`cxrcore.data.stats` computes, this page caches (per source) and draws.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from cxrcore.data import stats
from cxrcore.data.readers import builtin_table, read_dataset
from cxrcore.errors import CXRError
from ui.common import chart_config, dataset_choices, show_error

NIH_FULL = "NIH ChestX-ray14 — full label table (torchxrayvision)"
CHEXPERT_FULL = "CheXpert — full train table (torchxrayvision)"
FOLDER = "A folder on this machine…"
BUILTIN = {NIH_FULL: "builtin:nih", CHEXPERT_FULL: "builtin:chexpert"}
TOP_K = 100  # combinations computed once; the slider shows a prefix
ALL_IMAGES = "all images"


# --------------------------------------------------------------------------- cached computation

def _stamp(source: str) -> tuple:
    """Changes when a folder's label tables or image folders change, so the cache re-reads them."""
    kind, _, arg = source.partition(":")
    if kind != "folder":
        return ()
    root = Path(arg)
    if not root.is_dir():
        return ("missing",)
    out = []
    for p in sorted(root.iterdir()):
        if p.is_dir() or p.name.lower().endswith((".csv", ".csv.gz")):
            try:
                st_ = p.stat()
            except OSError:
                continue
            out.append((p.name, st_.st_mtime_ns, st_.st_size))
    return tuple(out)


@st.cache_data(show_spinner="Reading the label table and computing statistics…", max_entries=8)
def _statistics(source: str, stamp: tuple) -> dict:
    """All statistics of one source (``builtin:nih``, ``builtin:chexpert`` or ``folder:/abs/path``)."""
    kind, _, arg = source.partition(":")
    index = builtin_table(arg) if kind == "builtin" else read_dataset(arg)
    return stats.all_statistics(index, k=TOP_K)


GALLERY_N = 12
THUMB_HEIGHT = 320


@st.cache_data(show_spinner="Finding images…", max_entries=32)
def _gallery_items(source: str, stamp: tuple, label: str) -> list[dict]:
    """Up to GALLERY_N images on disk positive for ``label``: path, caption and that label's boxes."""
    kind, _, arg = source.partition(":")
    if kind != "folder":
        return []
    index = read_dataset(arg)
    f = index.frame
    if label not in f.columns:
        return []
    boxes = index.boxes[index.boxes["label"] == label] if len(index.boxes) else index.boxes
    rows = f[(f[label] == 1) & f["path"].notna()]
    boxed = rows["image_id"].isin(set(boxes["image_id"]))
    rows = pd.concat([rows[boxed], rows[~boxed]]).head(GALLERY_N)  # images with a box first
    items = []
    for _, r in rows.iterrows():
        pos = [x for x in index.labels if r[x] == 1]
        b = boxes[boxes["image_id"] == r["image_id"]]
        items.append({"path": str(r["path"]), "caption": f"{Path(str(r['image_id'])).name}: {', '.join(pos)}",
                      "boxes": [tuple(float(v) for v in t) for t in b[["x", "y", "w", "h"]].itertuples(index=False)]})
    return items


@st.cache_data(show_spinner=False, max_entries=256)
def _thumbnail(path: str, mtime: float, boxes: tuple, label: str) -> bytes:
    """The image at THUMB_HEIGHT px with ``boxes`` (fractions of width / height) drawn; PNG bytes."""
    from PIL import Image, ImageDraw

    from cxrcore.data.imageio import read_image, to_uint8
    from cxrcore.explain.visual import png_bytes

    pixels = read_image(path).pixels
    h, w = pixels.shape
    width = max(1, round(w * THUMB_HEIGHT / h))
    img = Image.fromarray(to_uint8(pixels)).resize((width, THUMB_HEIGHT), Image.BILINEAR).convert("RGB")
    draw = ImageDraw.Draw(img)
    for x, y, bw, bh in boxes:
        x0, y0 = x * img.width, y * img.height
        draw.rectangle([x0, y0, x0 + bw * img.width, y0 + bh * img.height], outline=(0, 255, 0), width=2)
        draw.text((x0 + 3, max(0, y0 - 12)), label, fill=(0, 255, 0))
    import numpy as np

    return png_bytes(np.asarray(img))


def _gallery(src: str, s: dict) -> None:
    label = st.selectbox("Images positive for", s["labels"], key="gallery_label")
    if label is None:
        return
    items = _gallery_items(src, _stamp(src), label)
    if not items:
        st.info(f"No image on disk is positive for {label}.")
        return
    n_boxes = sum(len(it["boxes"]) for it in items)
    st.caption(f"{len(items)} image(s) positive for **{label}** ({GALLERY_N} at most, those with a box first)"
               + (f"; green: the dataset's {n_boxes} ground-truth box(es) for {label}." if n_boxes else
                  f"; the dataset has no ground-truth box for {label} on these images."))
    cols = st.columns(4)
    for i, it in enumerate(items):
        try:
            mtime = Path(it["path"]).stat().st_mtime
            png = _thumbnail(it["path"], mtime, tuple(it["boxes"]), label)
        except Exception as exc:  # an unreadable file must not break the gallery
            cols[i % 4].warning(f"{Path(it['path']).name}: {exc}")
            continue
        cols[i % 4].image(png, caption=it["caption"], width="stretch")


def _csv(df: pd.DataFrame, index: bool = True) -> bytes:
    return df.to_csv(index=index).encode("utf-8")


def _download(df: pd.DataFrame, what: str, slug: str, index: bool = True) -> None:
    st.download_button(f"Download {what} (CSV)", _csv(df, index), file_name=f"{slug}-{what.replace(' ', '-')}.csv",
                       mime="text/csv", key=f"dl-{what}", icon=":material/download:", on_click="ignore")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "dataset"


# --------------------------------------------------------------------------- source selection

st.title("Dataset statistics")
st.caption("Label prevalence, co-occurrence and demographics of the real NIH ChestX-ray14 and CheXpert label "
           "tables, the built-in phantom datasets, or any dataset folder in the NIH or CheXpert layout.")

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
    typed = st.text_input(
        "Dataset folder", key="dataset_folder",
        placeholder="/data/ChestX-ray14 (holds Data_Entry_2017*.csv) or /data/CheXpert-v1.0-small (holds train.csv)",
        help="A folder in the NIH layout (Data_Entry_2017*.csv beside images/ or images_0NN/images/) or the "
             "CheXpert layout (train.csv / valid.csv beside train/ and valid/). Relative paths start at "
             f"{Path.cwd()}.",
    ).strip()
    if typed:
        path = Path(typed).expanduser().resolve()
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
    views = ", ".join(f"{k} {v:,}" for k, v in s["views"].items()) or "–"
    sex = ", ".join(f"{k} {v:,}" for k, v in s["sex"].items()) or "–"
    st.caption(f"Layout: **{layout}** · {len(s['labels'])} labels · views: {views} · sex: {sex}"
               + (" · has uncertain (-1) / unmentioned values" if s["uncertainty"] else ""))
    for note in s["notes"]:
        (st.warning if "not found" in note or "not on disk" in note else st.info)(note)


def _prevalence(prev: pd.DataFrame, slug: str) -> None:
    table = prev.copy()
    st.dataframe(
        table, width="stretch",
        column_config={
            "images_positive": st.column_config.NumberColumn("positive images", format="%d"),
            "pct_images": st.column_config.NumberColumn("% of images", format="%.2f"),
            "patients_positive": st.column_config.NumberColumn("patients with ≥1 positive", format="%d"),
            "pct_patients": st.column_config.NumberColumn("% of patients", format="%.2f"),
        },
    )
    _download(table, "prevalence", slug)
    if len(prev):
        order = prev.sort_values("pct_images").index.tolist()
        long = prev.reset_index().melt(id_vars="label", value_vars=["pct_images", "pct_patients"],
                                       var_name="per", value_name="percent")
        long["per"] = long["per"].map({"pct_images": "per image", "pct_patients": "per patient"})
        fig = px.bar(long, x="percent", y="label", color="per", barmode="group", orientation="h",
                     category_orders={"label": order[::-1]}, labels={"percent": "prevalence (%)", "label": ""},
                     height=max(320, 34 * len(prev)))
        fig.update_layout(legend_title_text="", margin=dict(l=0, r=0, t=10, b=0))
        st.plotly_chart(fig, key="chart-prevalence", config=chart_config())

    if {"positive", "negative", "uncertain", "unmentioned"} <= set(prev.columns):
        st.subheader("Raw label values (CheXpert-style)")
        st.caption("Counts of 1 (positive), 0 (negative), -1 (uncertain) and blank (unmentioned) per label. "
                   "How uncertain and blank values become training targets is the uncertainty policy.")
        vc = prev[["positive", "negative", "uncertain", "unmentioned"]]
        long = vc.reset_index().melt(id_vars="label", var_name="value", value_name="images")
        fig = px.bar(long, x="images", y="label", color="value", orientation="h",
                     category_orders={"value": ["positive", "negative", "uncertain", "unmentioned"],
                                      "label": list(prev.index)},
                     color_discrete_map={"positive": "#d62728", "negative": "#2ca02c",
                                         "uncertain": "#ff7f0e", "unmentioned": "#c7c7c7"},
                     labels={"label": ""}, height=max(320, 30 * len(prev)))
        fig.update_layout(legend_title_text="", margin=dict(l=0, r=0, t=10, b=0))
        st.plotly_chart(fig, key="chart-values", config=chart_config())
        st.dataframe(vc, width="stretch")
        _download(vc, "value counts", slug)


def _cooccurrence(counts: pd.DataFrame, cond: pd.DataFrame, slug: str) -> None:
    if counts.empty:
        st.info("No labels.")
        return
    mode = st.segmented_control("Show", ["counts", "P(B | A)"], default="counts", key="cooc_mode",
                                help="counts: images positive for both labels. P(B | A): of the images positive "
                                     "for the row label A, the fraction also positive for the column label B.")
    mode = mode or "counts"
    if mode == "counts":
        show_diag = st.checkbox("Include the diagonal (images per label)", value=False, key="cooc_diag")
        z = counts.astype(float)
        if not show_diag:
            for lab in z.index:
                z.loc[lab, lab] = float("nan")
        fig = px.imshow(z, text_auto=True, aspect="auto", color_continuous_scale="Blues",
                        labels=dict(x="B (column)", y="A (row)", color="images"))
        table, what = counts, "co-occurrence counts"
    else:
        fig = px.imshow(cond.round(3), text_auto=".2f", aspect="auto", zmin=0, zmax=1,
                        color_continuous_scale="Blues", labels=dict(x="B (column)", y="A (row)", color="P(B|A)"))
        table, what = cond, "co-occurrence P(B given A)"
    fig.update_layout(height=max(420, 40 * len(counts)), margin=dict(l=0, r=0, t=10, b=0))
    fig.update_xaxes(tickangle=-45)
    st.plotly_chart(fig, key="chart-cooc", config=chart_config())
    with st.expander("Table"):
        st.dataframe(table, width="stretch")
    _download(table, what, slug)


def _combinations(top: pd.DataFrame, per_image: pd.DataFrame, slug: str) -> None:
    left, right = st.columns([3, 2])
    with left:
        st.subheader("Most frequent label combinations")
        k = st.slider("How many", 5, max(5, min(TOP_K, len(top))), min(20, max(5, len(top))), key="top_k") \
            if len(top) > 5 else len(top)
        shown = top.head(k)
        st.dataframe(shown, hide_index=True, width="stretch",
                     column_config={"pct": st.column_config.NumberColumn("% of images", format="%.2f")})
        _download(shown, "top combinations", slug, index=False)
    with right:
        st.subheader("Findings per image")
        st.caption("Number of positive labels per image; “No Finding” is not counted.")
        fig = px.bar(per_image, x="n_labels", y="images", labels={"n_labels": "positive labels", "images": "images"},
                     hover_data={"pct": ":.2f"}, height=360)
        fig.update_layout(margin=dict(l=0, r=0, t=10, b=0))
        fig.update_xaxes(dtick=1)
        st.plotly_chart(fig, key="chart-per-image", config=chart_config())
        st.dataframe(per_image, hide_index=True, width="stretch",
                     column_config={"pct": st.column_config.NumberColumn("% of images", format="%.2f")})
        _download(per_image, "labels per image", slug, index=False)


def _demographics(demo: dict[str, pd.DataFrame], labels: list[str], slug: str) -> None:
    def _default_pct() -> None:  # comparing a label with all images reads best in percent
        st.session_state["demo_pct"] = st.session_state.get("demo_label", ALL_IMAGES) != ALL_IMAGES

    label = st.selectbox("Among images positive for", [ALL_IMAGES, *labels], key="demo_label", on_change=_default_pct,
                         help="Compare the distribution of the images positive for one label with all images.")
    as_pct = st.toggle("Show as % of each group", key="demo_pct")
    cols = st.columns(3)
    for col, key, title in zip(cols, ("age", "sex", "view"), ("Age (years)", "Sex", "View")):
        table = demo[key]
        picked = ["all"] if label == ALL_IMAGES else ["all", label]
        sub = table[picked].rename(columns={"all": ALL_IMAGES, label: f"positive for {label}"})
        if as_pct:
            sub = 100 * sub / sub.sum().where(sub.sum() > 0)
        long = sub.reset_index().melt(id_vars=key, var_name="group", value_name="value")
        with col:
            st.markdown(f"**{title}**")
            fig = px.bar(long, x=key, y="value", color="group", barmode="group", height=340,
                         labels={"value": "% of group" if as_pct else "images", key: ""})
            fig.update_layout(legend_title_text="", margin=dict(l=0, r=0, t=10, b=0),
                              legend=dict(orientation="h", y=-0.25))
            st.plotly_chart(fig, key=f"chart-demo-{key}", config=chart_config())
            _download(table, f"{key} by label", slug)
    with st.expander("Tables (images per group; one column per label = positive images)"):
        for key in ("age", "sex", "view"):
            st.dataframe(demo[key], width="stretch")


if data is not None:
    s = data["summary"]
    slug = _slug(choice if choice != FOLDER else Path(display).name)
    st.subheader(display)
    _overview(s)
    if not s["labels"]:
        st.info("This dataset has no label columns.")
    else:
        has_images = source is not None and not source.startswith("builtin:") and s["images_on_disk"] > 0
        names = ["Prevalence", "Co-occurrence", "Combinations", "Demographics"] + (["Gallery"] if has_images else [])
        t_prev, t_cooc, t_comb, t_demo, *t_gal = st.tabs(names)
        with t_prev:
            _prevalence(data["prevalence"], slug)
        with t_cooc:
            _cooccurrence(data["cooccurrence"], data["conditional"], slug)
        with t_comb:
            _combinations(data["top_combinations"], data["labels_per_image"], slug)
        with t_demo:
            _demographics(data["demographics"], s["labels"], slug)
        if t_gal:
            with t_gal[0]:
                _gallery(source, s)
        else:
            st.caption("Gallery: this source is a label table only (the built-in NIH and CheXpert tables ship "
                       "without images), so there are no images to browse. Choose a phantom or a dataset folder "
                       "with images to see a gallery of positive images with their ground-truth boxes.")
