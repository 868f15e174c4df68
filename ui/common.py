"""Streamlit helpers shared by the pages: cached loading, checkpoint choices, errors.

Only view code lives here; everything it calls is in ``cxrcore``.
"""
from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from cxrcore import catalog, workspace
from cxrcore.catalog import LIBRARY_TAG, MY_THRESHOLDS, SHARED_THRESHOLDS  # noqa: F401 - the pages' names for them
from cxrcore.errors import CXRError
from cxrcore.mdtext import md_text  # noqa: F401 - the pages' one escape for other people's text in Markdown


def _viewer():
    """(user, settings) of this browser session, or (None, None) outside a script run (a test, a script: the
    operator's view, as before)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    if get_script_run_ctx(suppress_warning=True) is None:
        return None, None
    s = hosting_settings()
    return current_user(s), s


def checkpoint_choices(library: bool = True) -> dict[str, str]:
    """Display name -> checkpoint folder or library model name, for this browser session's visitor
    (:func:`cxrcore.catalog.checkpoint_choices`: shipped models, runs with a two-network run's networks under it,
    threshold copies, library models; see :func:`choice_label` for a library model's "needs weights" mark).
    ``library=False``: the shipped models and runs only (no library import: fast on a fresh server)."""
    user, s = _viewer()
    return catalog.checkpoint_choices(user, s, library=library)


def choice_label(display: str) -> str:
    """``display`` as shown in a model picker: library models whose file is not in the library's
    cache are marked "needs weights" (the option itself stays the same, so a choice survives the
    download)."""
    if display.endswith(LIBRARY_TAG):
        from cxrcore.models.library import library_status

        try:
            if not library_status(display[: -len(LIBRARY_TAG)])["cached"]:
                return f"{display} · needs weights"
        except CXRError:
            pass
    return display


NO_CHECKPOINTS = "No checkpoints found. Run `cxr demo build` or train a model on the Training page."


def require_checkpoints() -> dict[str, str]:
    """:func:`checkpoint_choices`, or an error on the page and the script stopped when there is none."""
    choices = checkpoint_choices()
    if not choices:
        st.error(NO_CHECKPOINTS)
        st.stop()
    return choices


def model_picker(col, label: str, choices: dict[str, str], key: str, prefer: tuple = ()) -> str:
    """A model selectbox (library models marked "needs weights"); the first name starting with one of
    ``prefer`` (in that order) is the default. Returns the chosen display name."""
    names = list(choices)
    index = next((i for want in prefer for i, n in enumerate(names) if n.startswith(want)), 0)
    return col.selectbox(label, names, index=index, key=key, format_func=choice_label)


@st.cache_resource(show_spinner="Loading model…", max_entries=6)
def _predictor(path: str, stamp: tuple):
    import torch

    from cxrcore.predictor import Predictor

    # Half the cores for the app's own inference, the rest for background training jobs:
    # two processes each running all-core OpenMP on a small machine slow each other down many times over.
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    return Predictor(path)


def ensure_weights(path: str) -> None:
    """For a library model whose weight file is not cached: download it now into the library's
    folder with a progress bar (when its host answers), or raise the error that names the file,
    the folder, the URL and the variable that moves the folder. Nothing for other checkpoints.
    On a shared server a model name or folder is checked first (:func:`cxrcore.hosting.check_model_ref`:
    listed names and folders inside the workspace / data roots only); every page loads through here."""
    from cxrcore import hosting
    from cxrcore.models.library import fetch_weights, library_ref, library_status

    hosting.check_model_ref(path, hosting_settings())  # AccessError before anything is read or downloaded
    name = library_ref(path)
    if not name:
        return
    status = library_status(name)
    if status["cached"]:
        return
    text = f"Downloading {status['file']} for {name} into {status['folder']}"
    bar = st.progress(0.0, text=text + "…")

    def update(done: int, total: int) -> None:
        mb = f"{done / 2**20:.0f}" + (f" of {total / 2**20:.0f}" if total else "") + " MB"
        bar.progress(min(1.0, done / total) if total else 0.0, text=f"{text}: {mb}")

    try:
        fetch_weights(name, progress=update)
    finally:
        bar.empty()


def load_predictor(path: str):
    """A cached Predictor; reloaded when its card changes (e.g. thresholds saved). Library models:
    the weights are fetched first (see :func:`ensure_weights`)."""
    ensure_weights(path)
    from cxrcore.models.library import card_stamp

    return _predictor(path, card_stamp(path))


@st.cache_data(show_spinner="Running both models (probabilities and every label's heatmap in one pass each)…",
               max_entries=16)
def _comparison(raw: bytes, name: str, base_path: str, tuned_path: str, stamps: tuple, truth: tuple | None,
                mc_samples: int, sites: tuple = (None, None)):
    from cxrcore.compare import compare
    from cxrcore.data.imageio import read_image

    predictors = _predictors(base_path, tuned_path, sites)
    return compare(read_image(raw, name), predictors, name, list(truth) if truth is not None else None, raw=raw,
                   mc_samples=mc_samples)


def _predictors(base_path: str, tuned_path: str, sites: tuple) -> dict:
    """The two models, each as used at its site (a view of the shared cached model: :meth:`Predictor.at_site`)."""
    return {"baseline": load_predictor(base_path).at_site(sites[0]),
            "fine-tuned": load_predictor(tuned_path).at_site(sites[1])}


def run_comparison(raw: bytes, name: str, base_path: str, tuned_path: str, truth=None, mc_samples: int = 0,
                   sites: tuple = (None, None)):
    """The Compare page's workflow (also the Explain page's): library weights fetched if needed, both
    models run (cached per image, models and their cards), each as used at its site profile in ``sites`` (None:
    the card's own); the caller hands it on (:mod:`ui.handoff`)."""
    from cxrcore.models.library import card_stamp

    for chosen in (base_path, tuned_path):
        ensure_weights(chosen)  # a library model's file: downloaded with a progress bar, or a clear error
    result = _comparison(raw, name, base_path, tuned_path, (card_stamp(base_path), card_stamp(tuned_path)),
                         tuple(truth) if truth is not None else None, mc_samples, tuple(sites))
    return result


@st.cache_data(show_spinner=False, max_entries=16)
def _uncertainty(raw: bytes, name: str, base_path: str, tuned_path: str, stamps: tuple, truth: tuple | None,
                 mc_samples: int, sites: tuple = (None, None)):
    from cxrcore.compare import with_uncertainty

    first = _comparison(raw, name, base_path, tuned_path, stamps, truth, 0, sites)
    return with_uncertainty(first, _predictors(base_path, tuned_path, sites), mc_samples)


def run_uncertainty(raw: bytes, name: str, base_path: str, tuned_path: str, truth=None, mc_samples: int = 20,
                    sites: tuple = (None, None)):
    """The comparison of :func:`run_comparison` (no Monte-Carlo) with each model's Monte-Carlo dropout spread
    added; cached per image, models and sites."""
    from cxrcore.models.library import card_stamp

    result = _uncertainty(raw, name, base_path, tuned_path, (card_stamp(base_path), card_stamp(tuned_path)),
                          tuple(truth) if truth is not None else None, mc_samples, tuple(sites))
    return result


def site_picker(col, path: str, key: str) -> str | None:
    """A selectbox of the model's site profiles (:mod:`cxrcore.eval.site`), shown only when its card has some;
    the chosen profile's name, or None for the card's own thresholds."""
    from cxrcore.checkpoint import read_card

    try:
        sites = sorted(read_card(path).sites or {})
    except CXRError:
        return None
    if not sites:
        return None
    own = "(the model's own thresholds)"
    chosen = col.selectbox("Site profile", [own] + sites, key=key,
                           help="The model as used at a site: that site's recalibrated thresholds and temperatures "
                                "(cxr site fit). The model itself is unchanged.")
    return None if chosen == own else chosen


def model_card_rows(path: str) -> dict:
    """The model card facts shown next to a model's predictions (name, source, what it saw, licence,
    labels, input, thresholds)."""
    from cxrcore.checkpoint import read_card
    from cxrcore.models.library import describe_card

    return describe_card(read_card(path))


def show_model_cards(paths: dict[str, str]) -> None:
    """An expander with the card of each model (display name -> checkpoint)."""
    with st.expander("Model cards", expanded=False):
        for who, path in paths.items():
            try:
                facts = model_card_rows(path)
            except CXRError as exc:
                show_error(exc)
                continue
            st.markdown(f"**{md_text(who)}: {md_text(facts.pop('name') or path)}**")  # a card's name: a job's
            ours = ("source", "licence", "input")  # written by cxrcore; the others carry names and labels of users
            st.markdown("\n".join(f"- *{k}*: {v if k in ours else md_text(v)}" for k, v in facts.items()))


def hosting_settings():
    """The operator's settings (:mod:`cxrcore.hosting`) for this server: read from the environment now,
    with the address Streamlit listens on (unset means every interface, so not loopback), and the
    shared-server defaults on for a request that came from another machine (:func:`hosting.for_request`)."""
    from cxrcore import hosting

    s = hosting.settings(address=st.get_option("server.address") or "0.0.0.0")
    try:  # a request from another machine (a proxy in front of 127.0.0.1) gets the shared-server defaults
        headers, peer = dict(st.context.headers or {}), st.context.ip_address
        peer = peer if isinstance(peer, str) else None  # (AppTest's stand-in client is no address)
    except Exception:  # noqa: BLE001 - outside a script run (no request to look at)
        return s
    return hosting.for_request(s, headers, peer)


def current_user(settings=None):
    """Who this session is (:func:`cxrcore.hosting.visitor`): signed in when Streamlit's own
    authentication (``st.login``, configured in ``.streamlit/secrets.toml``) says so through
    ``st.user``; otherwise anonymous, told apart per browser session by a random token kept
    server-side in the session state (never taken from the browser or typed)."""
    import secrets

    from cxrcore import hosting

    token = st.session_state.get("_cxr_session_token")
    if not token:
        token = st.session_state["_cxr_session_token"] = secrets.token_hex(8)
    return hosting.visitor(st.user.to_dict(), token, settings or hosting_settings())


def login_configured() -> bool:
    """Whether ``.streamlit/secrets.toml`` has an ``[auth]`` section (an OpenID Connect provider)."""
    try:
        return "auth" in st.secrets
    except Exception:  # noqa: BLE001 - no secrets file at all
        return False


def account_box(user) -> None:
    """Sidebar: who you are, and Sign in / Sign out when the operator configured a login."""
    if not user.signed_in and not login_configured():
        return  # a single user on their own machine: nothing to show (no empty box)
    box = st.sidebar.container(border=True)
    if user.signed_in:
        box.caption(f"Signed in as **{md_text(user.name or user.id)}**")
        if login_configured():
            box.button("Sign out", key="account_logout", on_click=st.logout)
        return
    box.caption("Not signed in.")
    if box.button("Sign in", key="account_login"):
        from streamlit.auth_util import is_authlib_installed

        if not is_authlib_installed():
            box.error("Sign-in needs the Authlib package on the server (pip install Authlib>=1.3.2); "
                      "tell the operator.")
        else:
            st.login()


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


def compare_slider_html(left_png: bytes, right_png: bytes, left: str, right: str, height: int = 520) -> str:
    """The slider's HTML. ``left`` / ``right`` are model names (a run's name is another user's text): escaped,
    since a component's frame runs scripts with the app's origin."""
    import base64
    import html

    a, b = (base64.b64encode(x).decode() for x in (left_png, right_png))
    left, right = html.escape(str(left)), html.escape(str(right))
    return f"""
<div style="font-family:sans-serif;font-size:13px;color:#444">
  <div style="position:relative;display:inline-block;max-width:100%">
    <img src="data:image/png;base64,{b}" style="display:block;max-height:{int(height) - 60}px;max-width:100%">
    <div id="clip" style="position:absolute;top:0;left:0;height:100%;width:50%;overflow:hidden">
      <img src="data:image/png;base64,{a}" style="display:block;max-height:{int(height) - 60}px;max-width:none;height:100%">
    </div>
  </div>
  <div><input type="range" min="0" max="100" value="50" style="width:100%"
       oninput="document.getElementById('clip').style.width=this.value+'%'"></div>
  <div style="display:flex;justify-content:space-between"><span>&larr; {left}</span><span>{right} &rarr;</span></div>
</div>"""


def image_compare_slider(left_png: bytes, right_png: bytes, left: str, right: str, height: int = 520) -> None:
    """Two same-size images on top of each other; a slider reveals one over the other (plain HTML/CSS)."""
    import streamlit.components.v1 as components

    components.html(compare_slider_html(left_png, right_png, left, right, height), height=height)


def chart_config() -> dict:
    """plotly config for every chart: the toolbar's camera button saves PNG or SVG (sidebar choice)."""
    fmt = st.session_state.get("chart_format", "png")
    return {"toImageButtonOptions": {"format": fmt, "scale": 2 if fmt == "png" else 1}, "displaylogo": False}


FILM_HEIGHT = 320   # the height of a film shown in a grid (similar cases, suspected label errors, drift, the map)


@st.cache_data(show_spinner=False, max_entries=256)
def _film_png(path: str, mtime: float, height: int) -> bytes:
    from cxrcore.data.imageio import read_image
    from cxrcore.explain.visual import png_bytes, thumbnail

    return png_bytes(thumbnail(read_image(path).pixels, height=height))


def show_film(where, path: str, caption: str | None = None, height: int = FILM_HEIGHT) -> None:
    """The film at ``path`` in ``where`` (a column, or ``st``) at ``height`` px (the Dataset gallery's
    ``cxrcore.explain.visual.thumbnail``, cached per file and size), or a note that it is not readable here."""
    try:
        where.image(_film_png(str(path), Path(path).stat().st_mtime, int(height)), caption=caption,
                    use_container_width=True)
    except (OSError, CXRError):
        where.caption((caption + " " if caption else "") + "(the film is not readable here)")
