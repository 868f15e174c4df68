"""Streamlit helpers shared by the pages: cached loading, checkpoint choices, errors.

Only view code lives here; everything it calls is in ``cxrcore``.
"""
from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from cxrcore import workspace
from cxrcore.errors import CXRError


def checkpoint_choices() -> dict[str, str]:
    """Display name -> checkpoint folder: the shipped demo models, then finished runs in the workspace."""
    out: dict[str, str] = {}
    shipped = workspace.shipped_checkpoints()
    saved = workspace.sub("checkpoints")  # shipped models with thresholds saved on the Thresholds page
    for name in ("baseline", "finetuned"):
        if (saved / name / "card.json").exists():
            out[f"{name} (your thresholds)"] = str(saved / name)
        if (shipped / name / "card.json").exists():
            out[f"{name} (shipped demo)"] = str(shipped / name)
    runs = workspace.runs()
    for card in sorted(runs.glob("*/checkpoint/card.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        out[f"run {card.parent.parent.name}"] = str(card.parent)
    for card in sorted(runs.glob("*/*/checkpoint/card.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        out[f"run {card.parent.parent.parent.name}/{card.parent.parent.name}"] = str(card.parent)
    return out


def _card_stamp(path: str) -> float:
    p = Path(path) / "card.json"
    return p.stat().st_mtime if p.exists() else 0.0


@st.cache_resource(show_spinner="Loading model…", max_entries=6)
def _predictor(path: str, stamp: float):
    import torch

    from cxrcore.predictor import Predictor

    # Half the cores for the app's own inference, the rest for background training jobs:
    # two processes each running all-core OpenMP on a small machine slow each other down many times over.
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    return Predictor(path)


def load_predictor(path: str):
    """A cached Predictor; reloaded when its card changes (e.g. thresholds saved)."""
    return _predictor(path, _card_stamp(path))


def pick_checkpoint(label: str, key: str, default_index: int = 0) -> str | None:
    choices = checkpoint_choices()
    if not choices:
        st.error("No checkpoints found. Run `cxr demo build` or train a model on the Training page.")
        return None
    names = list(choices)
    name = st.selectbox(label, names, index=min(default_index, len(names) - 1), key=key)
    return choices[name]


def show_error(exc: Exception) -> None:
    """A user-caused error as a message; anything else as an error box without a traceback."""
    if isinstance(exc, CXRError):
        st.error(str(exc))
    else:
        st.error(f"Unexpected error ({type(exc).__name__}): {exc}. The app keeps running; please report this.")


def ensure_app_data() -> dict[str, Path]:
    """The phantom datasets the app works on by default, generated on first use with a progress bar."""
    from cxrcore.demo import APP_DATA_N, app_data, phantom_dir

    if all((phantom_dir(d, APP_DATA_N) / "PHANTOM.json").exists() for d in ("nih", "chexpert")):
        return app_data()
    bar = st.progress(0.0, text="Generating the built-in phantom datasets (once)…")
    out = app_data(progress=lambda done, total: bar.progress(done / max(1, total),
                                                             text=f"Generating phantom images {done}/{total}"))
    bar.empty()
    return out


def dataset_choices() -> dict[str, str]:
    """Display name -> dataset folder: the built-in phantoms and anything under the workspace's datasets/."""
    data = ensure_app_data()
    out = {f"phantom {d} (built-in)": str(p) for d, p in data.items()}
    for p in sorted(workspace.datasets().iterdir()):
        if p.is_dir() and str(p) not in out.values() and not p.name.startswith("."):
            out[p.name] = str(p)
    return out


def image_compare_slider(left_png: bytes, right_png: bytes, left: str, right: str, height: int = 520) -> None:
    """Two same-size images on top of each other; a slider reveals one over the other (plain HTML/CSS)."""
    import base64

    import streamlit.components.v1 as components

    a, b = (base64.b64encode(x).decode() for x in (left_png, right_png))
    components.html(f"""
<div style="font-family:sans-serif;font-size:13px;color:#444">
  <div style="position:relative;display:inline-block;max-width:100%">
    <img src="data:image/png;base64,{b}" style="display:block;max-height:{height - 60}px;max-width:100%">
    <div id="clip" style="position:absolute;top:0;left:0;height:100%;width:50%;overflow:hidden">
      <img src="data:image/png;base64,{a}" style="display:block;max-height:{height - 60}px;max-width:none;height:100%">
    </div>
  </div>
  <div><input type="range" min="0" max="100" value="50" style="width:100%"
       oninput="document.getElementById('clip').style.width=this.value+'%'"></div>
  <div style="display:flex;justify-content:space-between"><span>&larr; {left}</span><span>{right} &rarr;</span></div>
</div>""", height=height)


def chart_config() -> dict:
    """plotly config for every chart: the toolbar's camera button saves PNG or SVG (sidebar choice)."""
    fmt = st.session_state.get("chart_format", "png")
    return {"toImageButtonOptions": {"format": fmt, "scale": 2 if fmt == "png" else 1}, "displaylogo": False}
