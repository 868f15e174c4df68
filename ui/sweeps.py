"""The Training page's sweeps: the sweep part of the launch form, derived from the declaration of
:class:`cxrcore.jobs.sweep.SweepSpec`, and the sweeps section (trials table, Optuna's plots, best trial)."""
from __future__ import annotations

import streamlit as st

from cxrcore.errors import CXRError
from cxrcore.jobs import sweep
from ui.common import chart_config, md_text, show_error

REFRESH_S = 2  # a sweep refreshes every 2 x REFRESH_S seconds
KEY = "sweep_"  # widget key prefix: sweep_<key> of the option's declaration


def metric_label(metric: str) -> str:
    """A sweep metric as the page names it (the declared choice label)."""
    labels = dict(next(o for o, _ in sweep.spec_options() if o.name == "metric").choice_labels)
    return labels.get(metric, metric)


def spec_widget(col, o, meta: dict):
    """The widget of a declared SweepSpec option: its kind, bounds, choices, label and help decide it."""
    key = KEY + meta["key"]
    if o.kind == "choice":
        choices, names = list(o.choices), dict(o.choice_labels)
        return col.selectbox(o.label, choices, index=choices.index(o.default) if o.default in choices else 0,
                             key=key, help=o.help, format_func=lambda c: names.get(c, c))
    if o.kind == "bool":
        return col.checkbox(o.label, value=bool(o.default), key=key, help=o.help)
    if o.kind in ("int", "float"):
        num = int if o.kind == "int" else float
        return col.number_input(o.label, value=num(o.default), key=key, help=o.help, step=num(o.step or 1),
                                min_value=None if o.min is None else num(o.min),
                                max_value=None if o.max is None else num(o.max))
    return col.text_input(o.label, value=str(o.default or ""), key=key, help=o.help)


def sweep_form() -> tuple[str, dict]:
    """The sweep part of the launch form (inside st.form): the options to vary, and one widget per declared
    SweepSpec option. Returns the space text and the options' values by field name."""
    st.caption("Every trial is an ordinary job with the options above, except those listed here. One per line: "
               "`option = low .. high` (add `log` for a log scale; random / TPE) or `option = v1, v2, …` "
               "(any sampler; a grid tries every combination).")
    space = st.text_area("Options to vary", key="sweep_space", height=100,
                         placeholder="lr = 1e-4 .. 1e-2 log\nimage_size = 48, 64, 96",
                         help="Options a sweep can vary: " + ", ".join(sorted(sweep.sweepable())))
    declared = sweep.spec_options()
    values = {}
    for col, (o, meta) in zip(st.columns(len(declared)), declared):
        values[o.name] = spec_widget(col, o, meta)
    return space, values


def render_sweep(sweep_id: str, store, user, access) -> bool:
    """A sweep's trials table, Optuna's plots and the best trial; True while trials are at work."""
    try:
        # Records ended trials and starts due ones, as the sweep's owner (not this visitor), within their cap.
        sweep.advance(sweep_id, store, settings=access)
        table = sweep.results(sweep_id, store)
        study, spec = sweep.load(sweep_id, store)
    except Exception as exc:  # noqa: BLE001 - a damaged sweep database must not break the page
        show_error(exc)
        return False
    states = table["state"].tolist() if len(table) else []
    at_work = sum(x in ("queued", "running", "finishing") for x in states)
    n = {x: states.count(x) for x in set(states)}
    st.caption(f"{spec.sampler} sampler over " + "; ".join(md_text(f"{k} = {p.describe()}") for k, p in spec.space.items())
               + f" · {len(table)}/{spec.n_trials} trials made, {spec.parallel} at a time · "
               + ", ".join(f"{v} {k}" for k, v in sorted(n.items()))
               + f" · judged on {metric_label(spec.metric)}"
               + (" · pruning on" if spec.prune else "") + (" · stopped" if study.user_attrs.get("stopped") else ""))
    waiting = study.user_attrs.get("waiting")
    if waiting and not study.user_attrs.get("stopped"):
        st.info(waiting[:1].upper() + waiting[1:])  # its trials are launched as its owner: their cap, their right
    metric_col = [c for c in table.columns if c.startswith("best val")]
    st.dataframe(table, hide_index=True, placeholder="–", key=f"train_sweep_table_{sweep_id}",
                 column_config={c: st.column_config.NumberColumn(format="%.4f") for c in metric_col})
    st.download_button("Trials as CSV", table.to_csv(index=False).encode(), f"{sweep_id}.csv", "text/csv",
                       key=f"train_sweep_csv_{sweep_id}")
    figs = sweep.figures(sweep_id, store)
    f1, f2 = st.columns(2)
    for col, key, title in ((f1, "parallel", "Parallel coordinates"), (f2, "importance", "Option importance")):
        fig = figs[key]
        with col:
            st.markdown(f"**{title}**")
            if isinstance(fig, str):
                st.caption(fig)
            else:
                fig.update_layout(height=360, margin=dict(l=10, r=10, t=30, b=10), title=None)
                st.plotly_chart(fig, key=f"train_sweep_{key}_{sweep_id}", config=chart_config())
    best = sweep.best_job(sweep_id, store)
    if best is not None:
        value = study.best_value
        st.success(f"Best trial: job **{best.id}** ({md_text(best.name)}), "
                   f"{metric_label(spec.metric)} {value:.4f}. Its checkpoint is in "
                   f"the model pickers as **run {best.id}**.")
        if st.button("Clone the best trial into the form", key=f"train_sweep_clone_{sweep_id}", type="primary"):
            st.session_state["train_clone"] = (best.config, best.backend, best.name)
            st.rerun()
    # Stopping is cancelling the owner's work: the owner or an admin (sweep.stop checks it again).
    no_stop = sweep.why_not_stop(sweep_id, user, store, access)
    if st.button("Stop the sweep (no new trials)", key=f"train_sweep_stop_{sweep_id}", help=no_stop,
                 disabled=bool(study.user_attrs.get("stopped")) or no_stop is not None):
        try:
            sweep.stop(sweep_id, store, user=user, settings=access)
        except CXRError as exc:
            show_error(exc)
        else:
            st.rerun()
    if no_stop and not study.user_attrs.get("stopped"):
        st.caption(no_stop)
    return at_work > 0 or bool(waiting and not study.user_attrs.get("stopped"))


@st.fragment(run_every=REFRESH_S * 2)
def live_sweep(sweep_id: str, store, user, access) -> None:
    if not render_sweep(sweep_id, store, user, access):
        st.rerun()  # the sweep has ended: redraw the page once, without auto refresh


@st.fragment
def ended_sweep(sweep_id: str, store, user, access) -> None:
    render_sweep(sweep_id, store, user, access)



def sweeps_section(store, user, access) -> None:
    """The sweeps of this workspace: pick one, watch it live while trials are at work."""
    try:
        sweeps = sweep.list_sweeps(store)
    except Exception as exc:  # noqa: BLE001
        show_error(exc)
        sweeps = []
    if sweeps:
        st.subheader("Sweeps")
        sweep_ids = [r["id"] for r in sweeps]
        names = {r["id"]: f"{r['name']} · {r['id']} ({r['trials']}/{r['planned']} trials)" for r in sweeps}
        if st.session_state.get("train_sweep") not in sweep_ids:
            st.session_state["train_sweep"] = sweep_ids[0]
        chosen = st.selectbox("Sweep", sweep_ids, key="train_sweep", format_func=names.get)
        trials = sweep.results(chosen, store)
        waits = any(r["id"] == chosen and r["waiting"] and not r["stopped"] for r in sweeps)  # for a job slot
        busy = waits or (len(trials) and trials["state"].isin(["queued", "running", "finishing", "waiting"]).any())
        if busy:
            live_sweep(chosen, store, user, access)
        else:
            ended_sweep(chosen, store, user, access)
