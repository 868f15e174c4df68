"""Compare's "Similar cases" (issue 24 §2): the films of an indexed dataset nearest to the upload in one model's eyes
(cxrcore.lens.index), with their labels, the model's probabilities and distance, how many share each finding the
model calls; one opened side by side with the upload."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from cxrcore.errors import CXRError
from ui.common import load_predictor, md_text, show_error, show_film
from ui.leaks import cached_index


def indexes_for(paths: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Display name -> (index folder, role) of every index in the workspace's cache built by one of the models
    ``paths`` (role -> checkpoint)."""
    from cxrcore.checkpoint import read_card
    from cxrcore.lens.index import workspace_indexes
    from cxrcore.runtime import network_digest

    nets = {}
    for role, path in paths.items():
        try:
            nets[network_digest(read_card(path))] = role
        except CXRError:
            continue
    out = {}
    for where, m in workspace_indexes():
        role = nets.get(m.get("network"))
        if role is not None:
            out[f"{m.get('dataset')} ({m.get('images')} films) · {role}'s eyes"] = (str(where), role)
    return out


def similar_cases(image, paths: dict[str, str], key: str = "similar") -> None:
    """The expander (nothing when no index of either model is in the workspace: it says how to build one)."""
    with st.expander("Similar cases from an indexed dataset", expanded=False):
        found = indexes_for(paths)
        if not found:
            st.caption("No dataset is indexed by these models yet: `cxr index --checkpoint C --data DATASET` builds "
                       "one (docs/lens.md).")
            return
        c1, c2 = st.columns([3, 1])
        chosen = c1.selectbox("Index", list(found), key=f"{key}_index")
        k = c2.number_input("How many", 1, 50, 8, key=f"{key}_k")
        folder, role = found[chosen]
        try:
            from cxrcore.lens.index import similar

            index = cached_index(folder, (Path(folder) / "meta.json").stat().st_mtime)
            result = similar(index, image, k=int(k), predictor=load_predictor(paths[role]))
        except CXRError as exc:
            show_error(exc)
            return
        called = result["query"]["called"]
        st.caption(f"The {result['k']} films of {md_text(chosen)} nearest to this one (distance: 1 − cosine of the "
                   f"model's penultimate features). " + ("; ".join(
                       f"{count} of {result['k']} carry {md_text(x)}" for x, count in result["agreement"].items())
                       if called else "The model calls no finding on this film."))
        labels = list(result["query"].get("probabilities") or {}) or list(index.meta.get("labels", []))
        strongest = max(called, key=lambda x: result["query"]["probabilities"].get(x, 0.0)) if called else None
        h1, h2 = st.columns([1, 2])
        cams = h1.toggle("Heatmaps", key=f"{key}_cams", help="each film's Grad-CAM for one finding, as this model "
                                                           "sees it (one backward pass per film)")
        cam_label = h2.selectbox("Heatmap of", labels, index=labels.index(strongest) if strongest in labels else 0,
                                 key=f"{key}_cam_label", disabled=not cams) if labels else None
        cols = st.columns(4)
        for i, n in enumerate(result["neighbours"]):
            top = ", ".join(f"{md_text(x)} {n['probabilities'][x]:.2f}" for x in called) or "-"
            with cols[i % 4]:
                if cams and cam_label:
                    show_cam(n["path"], paths[role], cam_label)
                else:
                    show_film(st, n["path"])
                st.caption(f"**{i + 1}** · distance {n['distance']:.4f} · labels: "
                           f"{md_text(', '.join(n['labels']) or 'No Finding')} · model: {top}")
        names = [f"{i + 1}: {Path(n['path']).name}" for i, n in enumerate(result["neighbours"])]
        pick = st.selectbox("Open one side by side with this film", names, key=f"{key}_open")
        n = result["neighbours"][names.index(pick)]
        left, right = st.columns(2)
        from cxrcore.data.imageio import to_uint8

        left.image(to_uint8(image.pixels), caption="this film", use_container_width=True)
        show_film(right, n["path"], md_text(f"{Path(n['path']).name}: {', '.join(n['labels']) or 'No Finding'}"),
                  height=720)


@st.cache_data(show_spinner=False, max_entries=256)
def _cam(path: str, checkpoint: str, label: str, stamp: float):
    """A neighbour's film with its heatmap for ``label`` (cached per film, model and label)."""
    from cxrcore.data.imageio import read_image
    from cxrcore.explain.visual import overlay

    image = read_image(path)
    heat, boxes = load_predictor(checkpoint).heatmap(image, label)
    return overlay(image.pixels, heat, boxes, label, height=320)


def show_cam(path: str, checkpoint: str, label: str) -> None:
    try:
        st.image(_cam(path, checkpoint, label, Path(path).stat().st_mtime), width="stretch")
    except (CXRError, OSError) as exc:
        show_error(exc)
