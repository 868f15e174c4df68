"""Home: what is loaded, where data lives, where to go next."""
import json

import streamlit as st

from cxrcore import __version__, workspace
from cxrcore.checkpoint import infer_trained_on, read_card
from ui.common import LIBRARY_TAG, checkpoint_choices, ensure_app_data, hosting_settings, show_error

st.title("Chest X-ray classifier workbench")
st.caption(f"cxrcore {__version__} · research tool, not a medical device")

_access = hosting_settings()
if _access.reached_remotely:
    st.error("**This app is reached from another machine** (through a proxy, or on an address others can reach) "
             "but was started as one person's own tool (listening on 127.0.0.1 without `CXR_HOSTED=1`). The "
             "shared-server protections are on for this visit: typed folders outside `CXR_DATA_ROOTS` are off, jobs "
             "need a signed-in user, uploads and computations are capped. Operator: set `CXR_HOSTED=1` (see the "
             "README's \"Deploying for a team\") so every request, the REST service's included, is treated alike.",
             icon=":material/shield:")
elif not _access.hosted and _access.problems:  # the operator's own machine: say which setting is wrong
    st.warning("Some server settings could not be read: " + "; ".join(_access.problems))

st.markdown(
    """
Explore chest X-ray label statistics, fine-tune classifiers in the background, compare a baseline
with a fine-tuned model on an uploaded image (Grad-CAM heatmaps and boxes for every label),
tune per-label thresholds on a validation split, and ask an LLM to explain what the models looked at.
"""
)

cols = st.columns(5)
for col, (page, text) in zip(cols, [
    ("views/dataset.py", "Label statistics of NIH, CheXpert and your folders"),
    ("views/training.py", "Launch and watch fine-tuning jobs"),
    ("views/compare.py", "Upload an X-ray; baseline vs fine-tuned"),
    ("views/thresholds.py", "Per-label thresholds on a validation split"),
    ("views/explain.py", "LLM or template explanation of a comparison"),
]):
    with col:
        st.page_link(page)
        st.caption(text)

def _row(name: str, card) -> dict:
    val = card.metrics.get("val", {}).get("mean_auroc")
    test = card.metrics.get("test", {}).get("mean_auroc")
    return {
        "model": name,
        "architecture": card.model.get("arch"),
        "labels": len(card.labels),
        "input": f"{card.preprocess.get('size')} px, {card.preprocess.get('fit')}",
        "trained on": f"{card.training_kind()}: {(card.trained_on or infer_trained_on(card)).get('summary', '')}",
        "val mean AUROC": None if val is None else round(val, 3),
        "test mean AUROC": None if test is None else round(test, 3),
        "folder": choices[name],
    }


def _rows(names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        try:
            rows.append(_row(name, read_card(choices[name])))  # JSON only: no torch import
        except Exception as exc:  # a damaged run folder must not break the home page
            show_error(exc)
    return rows


st.subheader("Models")
choices = checkpoint_choices(library=False)  # the library models (importing their libraries) come last
if not choices:
    st.warning("No checkpoints found. Build the demo models with `cxr demo build`.")
own = list(choices)
rows = _rows(own)
if rows:
    st.dataframe(rows, hide_index=True, width="stretch")

st.subheader("Data")
try:
    data = ensure_app_data()
    st.write({f"phantom {k}": str(v) for k, v in data.items()})
except Exception as exc:
    show_error(exc)
st.write(f"Workspace (`CXR_HOME`): `{workspace.root()}` — datasets, caches, runs and the job database live here.")
build = workspace.shipped_checkpoints() / "BUILD.json"
if build.exists():
    with st.expander("How the demo models were built"):
        st.json(json.loads(build.read_text()))

# Last: the library models by name (no library imported), their cards when asked for — a library model's card is
# made from the library's metadata (importing torch, timm and torchxrayvision: seconds on a fresh server).
choices = checkpoint_choices()
library = [n for n in choices if n.endswith(LIBRARY_TAG)]
if library:
    st.subheader("Library models (pretrained, used as they are)")
    st.markdown(f"{len(library)} models, chosen by name wherever a model can be chosen (Compare, Thresholds, "
                "Evaluation, Explain, the Training page's start point, `cxr … --checkpoint NAME`): "
                + ", ".join(f"`{choices[n]}`" for n in library) + ".")
    with st.expander("Their cards: labels, input size and scaling, what each was trained on", key="home_library",
                     on_change="rerun"):
        if st.session_state.get("home_library"):
            with st.spinner("Reading the libraries' model metadata…"):
                lib_rows = _rows(library)
            if lib_rows:
                st.dataframe(lib_rows, hide_index=True, width="stretch", key="home_library_table")
        else:
            st.caption("Reading the libraries' model metadata…")
