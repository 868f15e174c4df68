"""``cxr pacs``: score new studies arriving in the operator's PACS (cxrcore.pacs.watch), and list what was scored."""
from __future__ import annotations

import json
import sys

from .common import CHECKPOINT_HELP, Command


def _watch(a) -> int:
    import signal

    from ..jobs.scoring import TASK_KEY, WATCH, check_watch_config

    config = {TASK_KEY: WATCH, "checkpoint": a.checkpoint, "interval": a.interval, "since": a.since or ""}
    if a.background:
        from ..jobs import dispatch

        job = dispatch.submit(config, name=a.name or "")   # recorded as launched by the OS user
        print(f"started watch job {job.id} (run folder {job.run_dir}); `cxr jobs logs {job.id}` shows what it scored, "
              f"`cxr jobs cancel {job.id}` stops it, `cxr pacs scored` lists the studies")
        return 0
    from ..compare import model_name
    from ..pacs.dicomweb import PacsConfig
    from ..pacs.watch import WatchTable, poll, watch
    from ..predictor import Predictor

    config = check_watch_config(config)
    predictor = Predictor(config["checkpoint"])
    model = model_name(config["checkpoint"], predictor)
    pacs, table = PacsConfig.from_env(), WatchTable()
    if a.once:
        result = poll(pacs, predictor, model, table, since=config["since"], interval=config["interval"])
        print(json.dumps({"found": result.found, "scored": result.scored, "skipped": result.skipped,
                          "failed": result.failed, "busy": result.busy}, indent=1))
        return 1 if result.failed else 0
    stopped = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
    try:
        n = watch(pacs, predictor, model, table, since=config["since"], interval=config["interval"],
                  should_stop=lambda: bool(stopped))
    except KeyboardInterrupt:
        n = None
    print(f"stopped watching{'' if n is None else f'; {n} new study(ies) scored'}", file=sys.stderr)
    return 0


def _scored(a) -> int:
    from ..pacs.watch import WatchTable

    rows = WatchTable().rows(limit=a.limit)
    if a.json:
        print(json.dumps(rows, indent=1, default=str))
        return 0
    if not rows:
        print("no study scored yet; start with `cxr pacs watch --checkpoint C`")
    for r in rows:
        called = sorted({x for c in r["calls"].values() for x in c})
        print(f"{r['study_uid']}  {r['state']:<8} {r['model'] or ''}  {r['images'] or 0} image(s)"
              + (f"  called: {', '.join(called)}" if called else "") + (f"  ({r['error']})" if r["error"] else ""))
    return 0


def _flags(s) -> None:
    sub = s.add_subparsers(dest="pacs_action", required=True)
    w = sub.add_parser("watch", help="score new CR/DX studies as they arrive and store the results in the PACS "
                                     "(each study once, even after a restart)")
    w.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    w.add_argument("--interval", type=float, default=60.0, help="seconds between two polls (at least 5)")
    w.add_argument("--since", default="", metavar="YYYYMMDD",
                   help="study dates from this day on (default: from yesterday)")
    w.add_argument("--once", action="store_true", help="one poll, then a JSON summary")
    w.add_argument("--background", action="store_true",
                   help="as a job of the queue (the Training page lists it; cancel stops it, resume goes on)")
    w.add_argument("--name", default="", help="the job's name (with --background)")
    w.set_defaults(func=_watch)
    sc = sub.add_parser("scored", help="the studies a watch took: scored, skipped or failed, newest first")
    sc.add_argument("--limit", type=int, default=100)
    sc.add_argument("--json", action="store_true")
    sc.set_defaults(func=_scored)


PACS = Command("pacs", "score new PACS studies as they arrive (results stored as DICOM), and list them", _flags)
