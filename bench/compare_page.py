"""The Compare page in a browser (issue 15 §4): how soon an upload of a 1024² PNG shows both models'
probabilities and every label's heatmap, how soon the Monte-Carlo spread follows, and the server's memory
across 50 uploads.

Side by side in one run: this tree and an earlier revision (``--old REV``: before the first answer was split
from the Monte-Carlo spread), each on a fresh server (``streamlit run app.py``), in headless Chromium,
alternating, ``--runs`` uploads each (a new browser session per upload, a different image each time so no
cache answers). Then, on this tree's server, ``--uploads`` uploads of different images one after another,
with the server's resident memory (VmRSS of the streamlit process) every 10.

    CXR_HOME=~/.cxr .venv/bin/python bench/compare_page.py [--old e97c7ab] [--runs 3] [--uploads 50]
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from first_page import ARGS, CHROMIUM, REPO, start  # noqa: E402

FILM = REPO / "tests" / "data" / "formats" / "00000001_000.png"   # a real NIH film, 1024 x 1024


def rss_mib(pid: int) -> float:
    """Resident memory of the server process and its children (MiB)."""
    total = 0
    pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-g", str(pid)], capture_output=True,
                                                   text=True).stdout.split() if int(p) != pid]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def variants(n: int, tmp: Path) -> list[Path]:
    """``n`` different 1024² PNGs: the real film, shifted by a few pixels each (no cache answers twice)."""
    import numpy as np
    from PIL import Image

    base = np.asarray(Image.open(FILM).convert("L"))
    out = []
    for k in range(n):
        p = tmp / f"film_{k:03d}.png"
        Image.fromarray(np.roll(base, k + 1, axis=1)).save(p)
        out.append(p)
    return out


def upload(browser, url: str, image: Path, settle_s: float = 2.0) -> tuple[float, float]:
    """(seconds to the first answer, seconds to the Monte-Carlo spread) after choosing the file, on a Compare
    page opened in a new browser session ``settle_s`` seconds before."""
    ctx = browser.new_context(viewport={"width": 1500, "height": 1800})
    page = ctx.new_page()
    page.goto(f"{url}/compare", timeout=180_000)
    page.get_by_text("Compare a baseline with a fine-tuned model").wait_for(timeout=180_000)
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(settle_s * 1000)  # a person takes a moment to pick the file; the page has settled
    t0 = time.perf_counter()
    page.locator("input[type=file]").first.set_input_files(str(image))
    # first answer: input + both overlays drawn, the probability bars (a chart other than the models-at-a-glance
    # one shown before the upload), the probability table and the heatmap caption on screen
    page.wait_for_function("document.querySelectorAll('[data-testid=stImage] img').length >= 3", timeout=300_000)
    page.wait_for_function("[...document.querySelectorAll('[data-testid=stPlotlyChart]')].some(c => "
                           "c.querySelector('.main-svg') && !c.textContent.includes('Held-out AUROC'))",
                           timeout=300_000)
    page.locator("[data-testid=stDataFrame] canvas").first.wait_for(timeout=300_000)
    page.get_by_text("feature cells").wait_for(timeout=300_000)
    first = time.perf_counter() - t0
    page.get_by_text("sensitivity proxy, not a calibrated error bar").first.wait_for(timeout=300_000)
    spread = time.perf_counter() - t0
    ctx.close()
    return first, spread


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", default="e97c7ab")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--uploads", type=int, default=50)
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    env = dict(os.environ)
    env.setdefault("CXR_HOME", str(Path.home() / ".cxr"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = variants(2 + 2 * a.runs + a.uploads, tmp)
        old = tmp / "old"
        old.mkdir()
        archive = subprocess.run(["git", "archive", a.old], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        trees = {f"old ({a.old})": old, "new (this tree)": REPO}
        res = {k: [] for k in trees}
        servers = {name: start(tree, env) for name, tree in trees.items()}
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
                k = 0
                for name, (_, url) in servers.items():  # warm-up: models loaded once per server
                    upload(browser, url, images[k])
                    k += 1
                for _ in range(a.runs):
                    for name, (_, url) in servers.items():
                        res[name].append(upload(browser, url, images[k]))
                        k += 1
                print(f"Compare page, upload of a 1024x1024 PNG, Monte-Carlo on (20 passes), median of {a.runs}")
                print(f"{'':18}{'first answer s':>16}{'MC spread s':>14}")
                med = {}
                for name in trees:
                    f = statistics.median(r[0] for r in res[name])
                    s = statistics.median(r[1] for r in res[name])
                    med[name] = (f, s)
                    print(f"{name:18}{f:16.2f}{s:14.2f}")
                (fo, so), (fn, sn) = med[f"old ({a.old})"], med["new (this tree)"]
                print(f"{'old / new':18}{fo / fn:16.2f}{so / sn:14.2f}")
                proc, url = servers["new (this tree)"]
                print(f"\nmemory of this tree's server over {a.uploads} uploads of different 1024² PNGs (MiB)")
                print(f"  after warm-up and {2 * a.runs} timed uploads: {rss_mib(proc.pid):.0f}")
                for j in range(a.uploads):
                    upload(browser, url, images[k])
                    k += 1
                    if (j + 1) % 10 == 0:
                        print(f"  after {j + 1:3d} more: {rss_mib(proc.pid):.0f}", flush=True)
                browser.close()
        finally:
            for proc, _ in servers.values():
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=60)


if __name__ == "__main__":
    main()
