"""Dataset page: cold load and cached re-render on the full NIH (112,120 rows) and CheXpert (223,414 rows)
label tables, side by side, against the targets (cold < 2 s, re-render < 100 ms).

    OMP_NUM_THREADS=1 python bench/dataset_page.py [--repeat 3] [--reruns 7] [--no-apptest] [--page FILE]

Measurements:

1. data path, split into its parts: ``builtin_table(name)`` (read the gzip CSV and build the index) and
   ``stats.all_statistics(index, k=100)`` (the page's ``_statistics``); best of ``--repeat``. Then the same
   wrapped in ``st.cache_data`` as the page does: first call (fills the cache) and a cache hit (median of 20).
2. the page itself with Streamlit's ``AppTest`` (``views/dataset.py``, or ``--page``, e.g. an older version
   from ``git show``), one process. A first run on a small phantom source takes the one-off imports
   (plotly express …); then per table: the first run of that source (its caches empty) and ``--reruns``
   re-runs (median). AppTest compiles the page script again on every run (a new ``ScriptCache`` each
   time) while a Streamlit server compiles it once; that compile is timed separately and the re-run is
   also given without it.
3. per section (the page's lazy tabs): opening each one on CheXpert (first time: builds its charts) and
   re-running it; the Split balance section also for the stratified split.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxrcore.data import stats  # noqa: E402
from cxrcore.data.readers import builtin_table  # noqa: E402

TOP_K = 100
COLD_TARGET_S = 2.0
RERUN_TARGET_MS = 100.0
SOURCES = {"nih": "NIH ChestX-ray14 — full label table (torchxrayvision)",
           "chexpert": "CheXpert — full train table (torchxrayvision)"}
PHANTOM = "phantom nih (built-in)"
SECTIONS = ["Prevalence", "Co-occurrence", "Combinations", "Demographics", "Split balance"]


def _machine() -> str:
    model = platform.processor() or "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    load = os.getloadavg()
    return f"{model}, {os.cpu_count()} cores; load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"


def _t(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench_functions(repeat: int) -> dict:
    import streamlit as st

    @st.cache_data(show_spinner=False, max_entries=8)
    def _statistics(source: str, stamp: tuple) -> dict:  # the page's cached function, same body
        return stats.all_statistics(builtin_table(source.partition(":")[2]), k=TOP_K)

    out = {}
    for name in SOURCES:
        reads, computes = [], []
        for _ in range(repeat):
            index, tr = _t(lambda: builtin_table(name))
            _, tc = _t(lambda: stats.all_statistics(index, k=TOP_K))
            reads.append(tr)
            computes.append(tc)
        _, fill = _t(lambda: _statistics(f"builtin:{name}", ()))
        hits = [_t(lambda: _statistics(f"builtin:{name}", ()))[1] for _ in range(20)]
        out[name] = {"rows": len(index), "read": min(reads), "stats": min(computes), "reads": reads,
                     "computes": computes, "fill": fill, "hit_ms": 1000 * statistics.median(hits)}
    print("\ndata path (best of %d; all runs in brackets)" % repeat)
    print(f"{'table':9s} {'rows':>8s}  {'read':>13s}  {'statistics':>18s}  {'read+stats':>10s}  "
          f"{'cache fill':>10s}  {'cache hit':>9s}")
    for name, r in out.items():
        print(f"{name:9s} {r['rows']:>8,}  {r['read']:5.2f} s [{max(r['reads']):.2f}]  "
              f"{r['stats']:5.2f} s [{', '.join(f'{x:.2f}' for x in r['computes'])}]  "
              f"{r['read'] + r['stats']:8.2f} s  {r['fill']:8.2f} s  {r['hit_ms']:6.1f} ms")
    return out


def _check(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


def bench_apptest(page: Path, reruns: int) -> None:
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache
    from streamlit.testing.v1 import AppTest

    os.chdir(REPO)
    os.environ["CXR_HOME"] = tempfile.mkdtemp(prefix="cxr_bench_home_")
    from cxrcore.demo import app_data

    app_data()  # the phantoms the page lists; generated before timing
    compile_ms = 1000 * statistics.median(_t(lambda: ScriptCache().get_bytecode(str(page)))[1] for _ in range(10))

    at = AppTest.from_file(str(page), default_timeout=600)
    at.session_state["dataset_source"] = PHANTOM
    _, first = _t(at.run)
    _check(at)
    print(f"\npage {page.relative_to(REPO) if page.is_relative_to(REPO) else page} under AppTest; first run of the "
          f"process (phantom, 500 images; one-off imports): {first:.2f} s; script compile per AppTest run "
          f"{compile_ms:.0f} ms (a server compiles once)")
    rows = {}
    for name, label in SOURCES.items():
        _, cold = _t(lambda: at.selectbox(key="dataset_source").set_value(label).run())
        _check(at)
        warm = [_t(at.run)[1] for _ in range(reruns)]
        _check(at)
        rows[name] = (cold, 1000 * statistics.median(warm), 1000 * min(warm), 1000 * max(warm))
    print(f"{'table':9s} {'cold first run':>16s} {'/ 2 s':>6s}   {'re-run median':>14s} {'/ 100 ms':>8s}   "
          f"{'min-max':>10s}   {'re-run - compile':>16s} {'/ 100 ms':>8s}")
    for name, (cold, med, lo, hi) in rows.items():
        net = med - compile_ms
        print(f"{name:9s} {cold:14.2f} s {cold / COLD_TARGET_S:5.2f}x   {med:11.0f} ms {med / RERUN_TARGET_MS:7.2f}x   "
              f"{lo:4.0f}-{hi:<4.0f}ms   {net:13.0f} ms {net / RERUN_TARGET_MS:7.2f}x")

    if "dataset_section" not in at.session_state:  # an older page without lazy tabs
        return
    print(f"\nsections on chexpert (open = first time, builds its charts; re-run = median of {reruns})")
    for section in SECTIONS:
        at.session_state["dataset_section"] = section
        _, opened = _t(at.run)
        _check(at)
        warm = [_t(at.run)[1] for _ in range(reruns)]
        print(f"  {section:14s} open {1000 * opened:6.0f} ms   re-run {1000 * statistics.median(warm):4.0f} ms")
    _, strat = _t(lambda: at.segmented_control(key="bal_method").set_value("stratified").run())
    _check(at)
    warm = [_t(at.run)[1] for _ in range(reruns)]
    print(f"  {'Split balance':14s} stratified split first time {strat:.2f} s, re-run "
          f"{1000 * statistics.median(warm):.0f} ms; warnings shown: {len(at.warning)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--reruns", type=int, default=7)
    ap.add_argument("--no-apptest", action="store_true")
    ap.add_argument("--page", type=Path, default=REPO / "views" / "dataset.py")
    a = ap.parse_args()
    print(f"machine: {_machine()}; python {platform.python_version()}; OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    bench_functions(a.repeat)
    if not a.no_apptest:
        bench_apptest(a.page.resolve(), a.reruns)
    print(f"\nafter: {_machine()}")


if __name__ == "__main__":
    main()
