"""How soon the first page after ./run.sh is readable (issue 15 §4): a fresh Streamlit server per run, opened
in headless Chromium; seconds from the request to the page's title, to its models table, to the end of the
page (the workspace line) and to the library models (listed by name, or their table on older revisions).

Side by side in one run: this tree and an earlier revision (``--old REV``, default the commit before the
home page was reordered), each on a fresh server process, alternating, ``--runs`` times.

    .venv/bin/python bench/first_page.py [--old e97c7ab] [--runs 3]

The app's workspace is CXR_HOME (default: the one run.sh uses); its phantom data must exist (open the app once).
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tree: Path, env: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(tree / "app.py"), "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true",
                             "--browser.gatherUsageStats", "false"], cwd=tree, env={**env, "PYTHONPATH": str(tree)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return proc, url
        except OSError:
            time.sleep(0.25)
    raise SystemExit("streamlit did not start")


def measure(browser, url: str, tables: int) -> dict:
    """Seconds to: the title; the first models table; the workspace line (the end of the page's own content);
    the library models listed (``tables``: on revisions that show them in a table, the number of tables the page
    has with it; 0: listed by name, their cards on demand, as this tree does)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    t0 = time.perf_counter()
    page.goto(url, timeout=180_000)
    out = {}
    for key, wait in (("title", lambda: page.get_by_text("Chest X-ray classifier workbench").wait_for(timeout=180_000)),
                      ("models table", lambda: page.locator("[data-testid=stDataFrame]").first.wait_for(timeout=180_000)),
                      ("workspace line", lambda: page.get_by_text("Workspace (", exact=False).wait_for(timeout=180_000)),
                      ("library models", lambda: page.wait_for_function(
                          f"document.querySelectorAll('[data-testid=stDataFrame]').length >= {tables}",
                          timeout=180_000) if tables else page.get_by_text(
                          "models, chosen by name wherever").wait_for(timeout=180_000))):
        wait()
        out[key] = time.perf_counter() - t0
    page.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", default="e97c7ab", help="the revision to compare with")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--old-tables", type=int, default=1,
                    help="tables on the old revision's home page (1 up to e97c7ab; 2 from 7b3e4a3 on)")
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    env = dict(os.environ)
    env.setdefault("CXR_HOME", str(Path.home() / ".cxr"))
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        old.mkdir()
        archive = subprocess.run(["git", "archive", a.old], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        trees = {f"old ({a.old})": old, "new (this tree)": REPO}
        results = {k: [] for k in trees}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            for _ in range(a.runs):
                for name, tree in trees.items():
                    proc, url = start(tree, env)
                    try:
                        results[name].append(measure(browser, url, a.old_tables if tree == old else 0))
                    finally:
                        os.killpg(proc.pid, signal.SIGTERM)
                        proc.wait(timeout=60)
            browser.close()
    keys = ["title", "models table", "workspace line", "library models"]
    print(f"first page on a fresh server, median of {a.runs} runs (seconds from the request)")
    print(f"{'':18}" + "".join(f"{k:>15}" for k in keys))
    med = {n: {k: statistics.median(r[k] for r in rs) for k in keys} for n, rs in results.items()}
    for n in trees:
        print(f"{n:18}" + "".join(f"{med[n][k]:15.2f}" for k in keys))
    o, n = med[f"old ({a.old})"], med["new (this tree)"]
    print("old / new" + " " * 9 + "".join(f"{o[k] / n[k]:15.2f}" for k in keys))


if __name__ == "__main__":
    main()
