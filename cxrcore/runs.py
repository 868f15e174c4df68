"""A training job's progress as text and tables for the front ends (no widgets): durations, times, the
progress line, the per-validation history and the options two runs differ in."""
from __future__ import annotations

import datetime as dt
import json

import pandas as pd


def fmt_seconds(s: float | None) -> str:
    """``m:ss`` or ``h:mm:ss``; ``–`` for None."""
    if s is None:
        return "–"
    s = int(round(s))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def fmt_time(t: float | None) -> str:
    """A timestamp as local ``YYYY-MM-DD HH:MM:SS``; ``–`` for none."""
    return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "–"


def progress_text(s: dict, job) -> str:
    """One line of a job's progress summary ``s``: phase, network, epoch, step, speed, ETA, resumes."""
    phase = s["phase"]
    if job.ended and phase not in ("done", "stopped"):
        phase = f"{job.status} while {phase}"
    parts = [phase]
    if s.get("network") and phase != "done":
        k = list(s["networks"]).index(s["network"]) + 1
        parts.append(f"{s['network']} network ({k}/2)")
    if s["epochs"]:
        parts.append(f"epoch {s['epoch'] or 0}/{s['epochs']}")
    if s["total_steps"]:
        parts.append(f"step {s['step']}/{s['total_steps']}")
    if s.get("step_text") and phase != "done":   # an index or cross-fitting job (cxrcore.jobs.lensjobs)
        parts.append(s["step_text"])
    if s.get("total"):   # a scoring job (cxrcore.jobs.progress.score_summary)
        parts.append(f"{s['scored']:,} of {s['total']:,} images")
    if s["images_per_s"] is not None:
        parts.append(f"{s['images_per_s']:.1f} images/s")
    if s["eta_seconds"] is not None and s["phase"] in ("training", "scoring"):
        parts.append(f"ETA {fmt_seconds(s['eta_seconds'])}")
    if s["resumes"] or s.get("attempts", 0) > 1:
        parts.append(f"resumed {s['resumes'] or s['attempts'] - 1}×")
    if s["phase"] == "preparing" and job.active:
        parts.append("reading the data and building the image cache")
    return " · ".join(parts)


def history_table(s: dict) -> pd.DataFrame:
    """One row per validation of the summary ``s``, per-label AUROC as ``val_auroc[label]`` columns."""
    rows = [{**{k: v for k, v in h.items() if k != "val_auroc"},
             **{f"val_auroc[{k}]": v for k, v in (h.get("val_auroc") or {}).items()}} for h in s["history"]]
    return pd.DataFrame(rows)


def config_diff(a: dict, b: dict) -> pd.DataFrame:
    """The options two configs differ in (but the name), as JSON text: columns option, A, B."""
    keys = sorted(set(a) | set(b))
    rows = [{"option": k, "A": json.dumps(a.get(k)), "B": json.dumps(b.get(k))} for k in keys
            if a.get(k) != b.get(k) and k not in ("name",)]
    return pd.DataFrame(rows, columns=["option", "A", "B"])
