"""Dataset page: cold path (read the full label table + every statistic the page shows) and the warm
re-render served from ``st.cache_data``, on the full NIH (112,120 rows) and CheXpert (223,414 rows) tables.

    OMP_NUM_THREADS=1 python bench/dataset_page.py [--repeat 3] [--no-apptest]

Three measurements per table:

1. cold, split into its parts: ``builtin_table(name)`` (read the gzip CSV and build the index) and
   ``stats.all_statistics(index, k=100)`` (the page's ``_statistics``); best of ``--repeat``.
2. warm, the cached function alone: the page's ``_statistics`` body wrapped in ``st.cache_data``
   (bare mode), the first call fills the cache, later calls read it (median of 20).
3. the page itself with Streamlit's ``AppTest`` (``views/dataset.py``), one process: first run of a
   source cold (cache empty), then a re-run of the same source warm. This includes AppTest's own
   overhead and building every chart (plotly) and table the page draws.
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
NIH_FULL = "NIH ChestX-ray14 — full label table (torchxrayvision)"
CHEXPERT_FULL = "CheXpert — full train table (torchxrayvision)"


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


def bench_functions(repeat: int) -> None:
    import streamlit as st

    t0 = time.perf_counter()
    import torchxrayvision  # noqa: F401
    print(f"import torchxrayvision: {time.perf_counter() - t0:.2f} s (builtin_table used to import it on a "
          "cold process; it now only locates the package, so this is no longer on the page's path)")

    @st.cache_data(show_spinner=False, max_entries=8)
    def _statistics(source: str, stamp: tuple) -> dict:  # the page's cached function, same body
        return stats.all_statistics(builtin_table(source.partition(":")[2]), k=TOP_K)

    for name in ("nih", "chexpert"):
        reads, computes = [], []
        for _ in range(repeat):
            index, tr = _t(lambda: builtin_table(name))
            _, tc = _t(lambda: stats.all_statistics(index, k=TOP_K))
            reads.append(tr)
            computes.append(tc)
        r, c = min(reads), min(computes)
        print(f"{name:8s} rows={len(index):,}  read {r:.2f} s + statistics {c:.2f} s = cold {r + c:.2f} s "
              f"(best of {repeat}; all reads {', '.join(f'{x:.2f}' for x in reads)})")
        _, fill = _t(lambda: _statistics(f"builtin:{name}", ()))
        hits = [_t(lambda: _statistics(f"builtin:{name}", ()))[1] for _ in range(20)]
        print(f"{name:8s} cached _statistics: first call {fill:.2f} s, warm hit median "
              f"{1000 * statistics.median(hits):.1f} ms (max {1000 * max(hits):.1f} ms, n=20)")


def bench_apptest() -> None:
    from streamlit.testing.v1 import AppTest

    os.chdir(REPO)
    home = tempfile.mkdtemp(prefix="cxr_bench_home_")
    os.environ["CXR_HOME"] = home
    from cxrcore.demo import app_data

    app_data()  # the phantoms the page lists; generated before timing
    at = AppTest.from_file(str(REPO / "views" / "dataset.py"), default_timeout=600)
    _, cold = _t(at.run)  # default source: NIH full table, cache empty
    assert not at.exception, [e.value for e in at.exception]
    warm = [_t(at.run)[1] for _ in range(5)]
    print(f"AppTest nih      first run (cold) {cold:.2f} s; re-run (warm) median {1000 * statistics.median(warm):.0f} ms "
          f"(min {1000 * min(warm):.0f}, n=5)")
    _, cold = _t(lambda: at.selectbox(key="dataset_source").set_value(CHEXPERT_FULL).run())
    assert not at.exception, [e.value for e in at.exception]
    warm = [_t(at.run)[1] for _ in range(5)]
    print(f"AppTest chexpert first run (cold) {cold:.2f} s; re-run (warm) median {1000 * statistics.median(warm):.0f} ms "
          f"(min {1000 * min(warm):.0f}, n=5)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-apptest", action="store_true")
    a = ap.parse_args()
    print(f"machine: {_machine()}; python {platform.python_version()}")
    bench_functions(a.repeat)
    if not a.no_apptest:
        bench_apptest()
    print(f"after: {_machine()}")


if __name__ == "__main__":
    main()
