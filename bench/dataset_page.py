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
4. with ``--server``: the real thing. ``streamlit run app.py`` (a launcher that times every script run
   on the server, and the ``gc.collect(2)`` Streamlit runs after each one, ``runner.postScriptGC``),
   driven by headless Chromium (Playwright): open the page (NIH), switch tabs back and forth, switch to
   CheXpert, switch tabs again. AppTest runs neither that collection nor a browser; on a server whose
   process holds torch and the rest of the app (~550k GC-tracked objects) the collection is the largest
   part of a warm re-run. ``--no-post-gc`` starts the server with ``runner.postScriptGC`` off.
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


LAUNCHER = """
import gc, sys, time
from streamlit.runtime.scriptrunner import script_runner as sr
from streamlit.web import cli
run, collect, spent = sr.ScriptRunner._run_script, gc.collect, [0.0]
def timed_collect(*a, **k):
    t = time.perf_counter()
    try:
        return collect(*a, **k)
    finally:
        spent[0] += time.perf_counter() - t
def timed_run(self, *a, **k):
    spent[0], t = 0.0, time.perf_counter()
    try:
        return run(self, *a, **k)
    finally:
        print(f"SCRIPT_RUN {1000 * (time.perf_counter() - t):.1f} {1000 * spent[0]:.1f} {len(gc.get_objects())}",
              flush=True)
gc.collect, sr.ScriptRunner._run_script = timed_collect, timed_run
sys.exit(cli.main(["run", *sys.argv[1:]], standalone_mode=False))
"""


def bench_server(post_gc: bool, rounds: int = 4) -> None:
    import socket
    import urllib.request

    from playwright.sync_api import sync_playwright

    os.environ.setdefault("CXR_HOME", tempfile.mkdtemp(prefix="cxr_bench_home_"))
    from cxrcore.demo import app_data

    app_data()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = Path(tempfile.mkdtemp(prefix="cxr_bench_server_")) / "server.log"
    env = dict(os.environ, STREAMLIT_RUNNER_POST_SCRIPT_GC="true" if post_gc else "false")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, "app.py", "--server.headless", "true",
                                 "--server.address", "127.0.0.1", "--server.port", str(port),
                                 "--browser.gatherUsageStats", "false"], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def runs() -> list[tuple[float, float, int]]:
        return [(float(a), float(b), int(c)) for line in log.read_text().splitlines()
                if line.startswith("SCRIPT_RUN ") for a, b, c in [line.split()[1:4]]]

    def act(fn) -> list[tuple[float, float, int]]:
        """Do one thing in the browser; the script runs it caused (waits until the server is idle)."""
        n = len(runs())
        fn()
        deadline = time.time() + 300
        while len(runs()) == n and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # a run triggered right after (e.g. by a widget's first value) lands here too
        return runs()[n:]

    phases: dict[str, list] = {}
    try:
        for _ in range(360):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            chromium = next((c for c in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(c).exists()), None)
            browser = p.chromium.launch(executable_path=chromium, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
            page = browser.new_page()
            tab = lambda name: lambda: page.get_by_role("tab", name=name).click()  # noqa: E731

            def source(label: str):
                def go():
                    page.get_by_test_id("stSelectbox").filter(has_text="Source").first.locator("input").click()
                    page.keyboard.type(label.split(" —")[0])
                    page.keyboard.press("Enter")
                return go

            phases["nih: first page load (fresh server: imports + cold NIH)"] = act(
                lambda: page.goto(f"{url}/dataset", timeout=300_000))
            page.get_by_text("Download prevalence (CSV)").wait_for(timeout=300_000)
            phases["nih: open Co-occurrence (builds its chart)"] = act(tab("Co-occurrence"))
            warm = []
            for _ in range(rounds):
                warm += act(tab("Prevalence")) + act(tab("Co-occurrence"))
            phases["nih: warm tab switches"] = warm
            phases["chexpert: cold (Co-occurrence open)"] = act(source(SOURCES["chexpert"]))
            warm = act(tab("Prevalence"))  # first time: builds the two Prevalence charts
            phases["chexpert: open Prevalence (builds its charts)"] = warm
            warm = []
            for _ in range(rounds):
                warm += act(tab("Co-occurrence")) + act(tab("Prevalence"))
            phases["chexpert: warm tab switches"] = warm
            browser.close()
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
    print(f"\nreal server + headless Chromium, runner.postScriptGC={'on' if post_gc else 'off'} "
          f"(server-side time of each script run; of which post-script gc.collect)")
    for name, rs in phases.items():
        if not rs:
            print(f"  {name:58s} (no script run seen)")
            continue
        tot = [r[0] for r in rs]
        gcs = [r[1] for r in rs]
        print(f"  {name:58s} n={len(rs):2d}  median {statistics.median(tot):6.0f} ms (gc {statistics.median(gcs):4.0f} ms)"
              f"  min-max {min(tot):.0f}-{max(tot):.0f} ms; tracked objects {rs[-1][2]:,}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--reruns", type=int, default=7)
    ap.add_argument("--no-apptest", action="store_true")
    ap.add_argument("--page", type=Path, default=REPO / "views" / "dataset.py")
    ap.add_argument("--server", action="store_true", help="only the real server + headless Chromium measurement")
    ap.add_argument("--no-post-gc", action="store_true", help="with --server: runner.postScriptGC off")
    a = ap.parse_args()
    print(f"machine: {_machine()}; python {platform.python_version()}; OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    if a.server:
        bench_server(post_gc=not a.no_post_gc)
        print(f"\nafter: {_machine()}")
        return
    bench_functions(a.repeat)
    if not a.no_apptest:
        bench_apptest(a.page.resolve(), a.reruns)
    print(f"\nafter: {_machine()}")


if __name__ == "__main__":
    main()
