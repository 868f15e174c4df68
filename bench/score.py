"""Scoring speed on this machine's CPUs: PyTorch eager vs the same network exported (ONNX Runtime, and OpenVINO
where installed), side by side in one run (issue 22 §4: aim for >= 2x eager on two cores).

Two models: torchxrayvision's DenseNet-121 at 224 px (its own file, random weights, planted where the library
looks: no model hub here; the speed does not depend on the weights) and the shipped fine-tuned model. For each:

* **network**: images/s of the network alone on 128 phantom films already squared (uint8, batch 32), each
  runtime in turn, repeated; the best of the repeats (the least disturbed), and the largest difference from
  PyTorch's probabilities on those films;
* **end to end**: ``cxr score``'s own loop (:func:`cxrcore.score.score`: decoding and squaring by 2 threads
  overlapped with the network, the OOD check, the table written in parts) over N phantom films, eager vs ONNX
  Runtime.

Run: ``python bench/score.py [--n 512] [--threads 2] [--repeats 3]``. Prints a markdown table for
bench/RESULTS.md. The phantom films come from the workspace's built-in NIH phantom (generated once if missing).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def _best_rate(fn, n: int, repeats: int) -> float:
    fn()   # warm-up: first-call allocations, lazy initialisation
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = max(best, n / (time.perf_counter() - t))
    return best


def _openvino(onnx_file: Path, threads: int):
    """The ONNX file compiled by OpenVINO for this CPU, as a function of a uint8 batch; None when not installed."""
    try:
        import openvino as ov
    except ImportError:
        return None
    core = ov.Core()
    compiled = core.compile_model(ov.convert_model(str(onnx_file)), "CPU",
                                  {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "THROUGHPUT"})
    return lambda batch: compiled([batch])[0]


def network_rows(name: str, predictor, squares: np.ndarray, threads: int, repeats: int, tmp: Path) -> list[dict]:
    from cxrcore.runtime import OnnxScorer

    onnx = OnnxScorer(predictor, threads, path=tmp / f"{name}.onnx")
    eager = predictor.predict_squares(squares, batch_size=32, raw=True)
    rows = []
    runs = {"PyTorch eager": lambda: predictor.predict_squares(squares, batch_size=32, raw=True),
            "ONNX Runtime": lambda: onnx.predict_squares(squares, batch_size=32, raw=True)}
    ov = _openvino(onnx.path, threads)
    if ov is not None:
        runs["OpenVINO"] = lambda: np.concatenate([ov(squares[k:k + 32]) for k in range(0, len(squares), 32)])
    for runtime, fn in runs.items():
        diff = float(np.abs(fn() - eager).max())
        rows.append({"model": name, "what": "network", "runtime": runtime, "rate": _best_rate(fn, len(squares), repeats),
                     "diff": diff})
    return rows


def end_to_end_rows(name: str, predictor, images: Path, threads: int, tmp: Path) -> list[dict]:
    from cxrcore.runtime import OnnxScorer
    from cxrcore.score import score, source_of

    source = source_of(str(images))
    onnx = OnnxScorer(predictor, threads, path=tmp / f"{name}.onnx")
    rows = []
    for runtime, network in (("PyTorch eager", predictor), ("ONNX Runtime", onnx)):
        out = tmp / f"{name}-{network.__class__.__name__}.parquet"
        summary = score(source, network, out, name, workers=2, batch=32)
        rows.append({"model": name, "what": "end to end", "runtime": runtime,
                     "rate": summary.rows / summary.seconds, "diff": None})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512, help="phantom films for the end-to-end runs")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from cxrcore.demo import ensure_phantom
    from cxrcore.predictor import Predictor
    from library_files import plant_densenet

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-score-"))
    try:
        plant_densenet(tmp / "xrv")
        os.environ["CXR_XRV_CACHE_DIR"] = str(tmp / "xrv")
        phantom = ensure_phantom("nih")
        images = tmp / "films"
        images.mkdir()
        for p in sorted((phantom / "images").glob("*.png"))[:args.n]:
            os.symlink(p, images / p.name)
        models = {"DenseNet-121 224 px (xrv)": Predictor("xrv:densenet121-res224-all"),
                  "shipped fine-tuned": Predictor(REPO / "checkpoints" / "finetuned")}
        from cxrcore.data.imageio import read_image

        films = [read_image(p).pixels for p in sorted(images.iterdir())[:128]]
        rows = []
        for name, predictor in models.items():
            squares = np.stack([predictor.prep.square(f) for f in films])   # the films as the network sees them
            rows += network_rows(name, predictor, squares, args.threads, args.repeats, tmp)
            rows += end_to_end_rows(name, predictor, images, args.threads, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}, "
          f"{args.threads} threads; {args.n} phantom films end to end; network: 128 films, best of {args.repeats}")
    print("\n| model | measured | runtime | images/s | × eager | max |p − p_eager| |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        eager = next(x["rate"] for x in rows if x["model"] == r["model"] and x["what"] == r["what"]
                     and x["runtime"] == "PyTorch eager")
        diff = "" if r["diff"] is None else f"{r['diff']:.1e}"
        print(f"| {r['model']} | {r['what']} | {r['runtime']} | {r['rate']:.1f} | {r['rate'] / eager:.2f} | {diff} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
