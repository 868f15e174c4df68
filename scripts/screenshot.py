"""Take the README's screenshot of Compare: serve the app on 127.0.0.1 with a fresh workspace, upload a
real NIH film in headless Chromium (Debian's), wait for both models' answers and write ``docs/compare.png``.

    .venv/bin/python scripts/screenshot.py [--out docs/compare.png]
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "compare.png")
    ap.add_argument("--image", type=Path, default=REPO / "tests" / "data" / "formats" / "00000001_000.png")
    ap.add_argument("--label", default="Effusion", help="the label whose heatmaps are shown")
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, CXR_HOME=home)
        env.pop("OPENAI_API_KEY", None)
        server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                                   "--server.address", "127.0.0.1", "--server.port", str(port),
                                   "--browser.gatherUsageStats", "false"], cwd=REPO, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(600):
                try:
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                        break
                except OSError:
                    time.sleep(0.5)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS, headless=True)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"{url}/compare", timeout=600_000)
                page.get_by_text("Compare a baseline with a fine-tuned model").wait_for(timeout=600_000)
                page.locator("input[type=file]").first.set_input_files(str(a.image))
                page.get_by_text("sensitivity proxy, not a calibrated error bar").first.wait_for(timeout=600_000)
                box = page.get_by_test_id("stSelectbox").filter(has_text="Heatmap for label")
                box.locator("input").click()
                box.locator("input").fill(a.label)
                page.get_by_role("option", name=a.label).first.click()
                page.get_by_text(f"fine-tuned: {a.label} p=").first.wait_for(timeout=600_000)
                page.wait_for_timeout(2000)
                top = page.get_by_text("Heatmap for label").first.bounding_box()["y"]
                a.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(a.out), full_page=True,
                                clip={"x": 0, "y": max(0, top - 560), "width": 1400, "height": 1000})
                browser.close()
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=60)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
