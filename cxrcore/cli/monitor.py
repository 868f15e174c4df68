"""``cxr monitor``: drift of what a deployed model scores (a scored table, or the monitoring log of the REST
service and the PACS watch) against its validation split, per time window (cxrcore.eval.drift): each window's
drift score, the components behind it, the alarms. ``--json`` (or ``--out``) gives what an operator's alerting
polls; ``--fail-on-alarm`` makes the latest window's alarm the exit status."""
from __future__ import annotations

import json

from .common import CHECKPOINT_HELP, Command, bar

ALARM_EXIT = 3   # `--fail-on-alarm` and the latest window alarms (1 and 2 are errors)


def _run(a) -> int:
    from pathlib import Path

    from ..errors import DataError
    from ..eval.drift import monitor, read_log, read_stream, reference_table

    if (a.table is None) == (not a.log):
        raise DataError("Give the scored images: --table T.parquet (a table of `cxr score`) or --log (what the REST "
                        "service and the PACS watch scored with --checkpoint's model), one of the two.")
    if a.log and a.checkpoint is None:
        raise DataError("--log reads what --checkpoint's model scored: give --checkpoint.")
    if a.reference_table is None:
        if a.checkpoint is None:
            raise DataError("Give --checkpoint (its validation split is scored as the reference) or a scored "
                            "--reference-table.")
        if a.reference is None:
            from ..checkpoint import read_card

            root = (read_card(a.checkpoint).data or {}).get("root")
            if not root or not Path(root).is_dir():
                raise DataError("The model's card names no training folder on this machine: give the labelled "
                                "reference dataset (--reference DATA; its --split is scored once and cached).")
            a.reference = root
        a.reference_table = str(reference_table(a.checkpoint, a.reference, a.split, site=a.site,
                                                progress=None if a.json else bar("reference")))
    reference = read_stream(a.reference_table)
    if a.log:
        from ..checkpoint import read_card
        from ..runtime import network_digest

        stream = read_log(network_digest(read_card(a.checkpoint)), reference.labels, source=a.source)
    else:
        stream = read_stream(a.table, labels=reference.labels)
    report = monitor(stream, reference, a.window, alarm_at=a.alarm_at, n_perm=a.n_perm, seed=a.seed)
    result = {**report.to_dict(), "table": "monitoring log" if a.log else str(a.table),
              "reference_table": str(a.reference_table)}
    if a.out:
        out = Path(a.out)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(out)
    if a.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{report.stream_rows} scored image(s) of {result['table']} in {len(report.windows)} window(s) of {a.window}, "
              f"against {report.reference_rows} reference image(s); families: {', '.join(report.families)}; "
              f"alarm at a drift score of {report.alarm_at:g}")
        for note in report.notes:
            print(f"  note: {note}")
        print(f"  {'window':<26} {'images':>6} {'score':>7}  {'families (z)':<40} why")
        for w in report.windows:
            span = w["start"] if w["start"] == w["end"] else f"{w['start']} .. {w['end']}"
            if w["score"] is None:
                print(f"  {span:<26} {w['n']:>6} {'-':>7}  {w['note']}")
                continue
            fams = ", ".join(f"{f} {v:+.1f}" for f, v in w["families"].items())
            print(f"  {span:<26} {w['n']:>6} {w['score']:>7.1f}{' !' if w['alarm'] else '  '}{fams:<40} "
                  + ("; ".join(w["why"][:3]) if w["alarm"] else ""))
        print(f"{len(report.alarms)} window(s) alarm" + (f": {', '.join(str(w['index']) for w in report.alarms)}"
                                                         if report.alarms else ""))
    return ALARM_EXIT if a.fail_on_alarm and report.to_dict()["latest_alarm"] else 0


def _flags(m) -> None:
    from ..eval.drift import ALARM_AT, N_PERM, WINDOWS
    from ..eval.predictions import SPLIT_CHOICES

    from ..monitorlog import SOURCES

    m.add_argument("--table", default=None, help="the scored images: the .parquet table of `cxr score` (a folder "
                                                 "scored again as it grows keeps one table)")
    m.add_argument("--log", action="store_true", help="instead of --table: what the REST service and the PACS watch "
                                                      "scored with --checkpoint's model (the workspace's monitoring "
                                                      "log, kept without the images)")
    m.add_argument("--source", choices=list(SOURCES), default=None, help="with --log: one source only")
    m.add_argument("--checkpoint", default=None, help=CHECKPOINT_HELP + " (its --split of --reference is the "
                                                                        "reference, scored once and cached)")
    m.add_argument("--reference", default=None, help="a labelled dataset folder (default: the model's training "
                                                     "folder, when on this machine)")
    m.add_argument("--split", choices=list(SPLIT_CHOICES), default="val")
    m.add_argument("--reference-table", default=None, help="a table `cxr score` wrote on the reference images "
                                                           "(instead of --checkpoint / --reference)")
    m.add_argument("--site", default=None, help="the model as used at a site (when the reference is scored here)")
    m.add_argument("--window", default="day", help=f"{' / '.join(WINDOWS)} (by scoring time) or a number of images "
                                                   "(default day)")
    m.add_argument("--alarm-at", type=float, default=ALARM_AT, help="the drift score that alarms (standard "
                                                                     "deviations of the reference's own windows)")
    m.add_argument("--n-perm", type=int, default=N_PERM, help="permutations of the embedding's MMD test")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--json", action="store_true")
    m.add_argument("--out", default=None, help="also write the JSON to this file (written whole, then renamed)")
    m.add_argument("--fail-on-alarm", action="store_true", help=f"exit {ALARM_EXIT} when the latest window alarms")
    m.set_defaults(func=_run)


MONITOR = Command("monitor", "drift of what a deployed model scores against its validation split, per day, week "
                             "or N images (outputs, image statistics, embedding; alarms)", _flags)
