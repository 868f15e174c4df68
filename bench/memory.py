"""Resident memory of the running app with two DenseNet121 models loaded and used.

Starts the real app (`streamlit run app.py`) with two DenseNet121 checkpoints (timm, 14 labels,
random initialisation: nothing can be downloaded here; memory does not depend on the weights) as
its "baseline" and "fine-tuned" models, drives the Compare page in headless Chromium to upload a
real 1024x1024 DICOM (both models predict, every label's heatmap), and reads the server process's
resident set size (VmRSS) and peak (VmHWM) from /proc, side by side with the same app before any
model was loaded.

    python bench/memory.py [--size 224]
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
sys.path.insert(0, str(REPO))

DICOM = REPO.parent / "shared" / "data" / "formats" / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]


def make_checkpoints(folder: Path, size: int) -> None:
    import torch

    from cxrcore.checkpoint import Card, save_checkpoint
    from cxrcore.data.preprocess import Preprocess
    from cxrcore.labels import CHEXPERT14, NIH14
    from cxrcore.models.registry import build_model

    for name, labels, seed in (("baseline", NIH14, 0), ("finetuned", CHEXPERT14, 1)):
        torch.manual_seed(seed)
        model = build_model("densenet121", len(labels))
        card = Card(labels=list(labels), model={"library": "timm", "arch": "densenet121", "kwargs": {}, "pretrained": "none"},
                    preprocess=Preprocess(size=size).to_dict(), name=f"densenet121 {name} (random init)")
        save_checkpoint(folder / name, model.state_dict(), card)


def memory(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=224)
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_checkpoints(tmp / "ckpt", a.size)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ, CXR_HOME=str(tmp / "home"), CXR_CHECKPOINTS=str(tmp / "ckpt"))
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                                 "--server.address", "127.0.0.1", "--server.port", str(port),
                                 "--server.fileWatcherType", "none"], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(240):
                try:
                    urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                    break
                except OSError:
                    time.sleep(0.5)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1200})
                page.goto(f"{url}/compare", timeout=120_000)
                page.get_by_text("Compare a baseline with a fine-tuned model").wait_for(timeout=120_000)
                time.sleep(2)
                idle_rss, _ = memory(proc.pid)
                page.locator("input[type=file]").set_input_files(str(DICOM))
                page.get_by_text("feature cells").wait_for(timeout=600_000)
                time.sleep(2)
                rss, peak = memory(proc.pid)
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}")
    print(f"models: 2 x timm densenet121 (14 labels each), input {a.size} px, one 1024x1024 DICOM compared")
    print(f"app server, Compare page open, no model loaded: {idle_rss:7.0f} MiB resident")
    print(f"after loading both models and comparing:        {rss:7.0f} MiB resident (peak {peak:.0f} MiB)")
    print(f"target: under 1536 MiB -> {'met' if peak < 1536 else 'NOT met'}")


if __name__ == "__main__":
    main()
