"""Training throughput (images/s) through the real training loop, from the uint8 cache, side by side.

Every variant runs ``cxrcore.train.trainer.train`` for one epoch on the same phantom dataset (cache
built once before timing) and reports the median of the per-step images/s the run logs (training steps
only; the first steps are warm-up and skipped). Ratios are to the first variant, measured in the same run.

CPU (default): the demo backbone (timm regnetx_002, output stride 16, 160 px, batch 32) in full fine-tuning,
head-only, LoRA, channels_last, bf16 autocast and gradient accumulation.

GPU (``--gpu``, when one is lent): DenseNet121 at 224 px, fp32 vs bf16 + channels_last, plus the fraction
of time the GPU was busy while training (NVML utilisation sampled every 100 ms; target > 90 %).

    python bench/train_speed.py [--images 480] [--threads 2] [--gpu]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _gpu_sampler(stop: threading.Event, out: list) -> None:
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
    except Exception:  # noqa: BLE001 - no NVML: no utilisation figure
        return
    while not stop.is_set():
        out.append(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)
        time.sleep(0.1)


def run_variant(name: str, base: dict, over: dict, root: Path, skip: int) -> dict:
    from cxrcore.train.trainer import TrainConfig, read_events, train

    cfg = TrainConfig(**{**base, **over})
    out = root / name.replace(" ", "_")
    samples: list = []
    stop = threading.Event()
    sampler = threading.Thread(target=_gpu_sampler, args=(stop, samples), daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    train(cfg, out)
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join(timeout=1)
    steps = [e for e in read_events(out / "events.jsonl") if e["type"] == "step"]
    # images/s per step from consecutive step timestamps (the logged value is a running mean).
    rates = []
    for a, b in zip(steps[skip:], steps[skip + 1:]):
        dt = b["time"] - a["time"]
        if dt > 0:
            rates.append(cfg.batch_size / dt)
    data = [e for e in read_events(out / "events.jsonl") if e["type"] == "data"][0]
    busy = (sum(1 for u in samples if u > 0) / len(samples)) if samples else None
    mean_util = (sum(samples) / len(samples)) if samples else None
    mem = max((e.get("gpu_mem_mib") or 0) for e in steps) if steps else 0
    return {"name": name, "images_per_s": statistics.median(rates) if rates else float("nan"), "steps": len(steps),
            "wall_s": wall, "trainable": data["trainable_params"], "total": data["total_params"],
            "gpu_busy": busy, "gpu_util_mean": mean_util, "gpu_mem_mib": mem or None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=480, help="images in the phantom dataset")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--gpu", action="store_true", help="the GPU comparison (DenseNet121, 224 px)")
    ap.add_argument("--skip", type=int, default=3, help="warm-up steps left out")
    args = ap.parse_args()

    import torch

    from cxrcore.data.phantom import generate

    root = Path(tempfile.mkdtemp(prefix="cxr-bench-train-"))
    os.environ.setdefault("CXR_HOME", str(root / "home"))
    data = root / "chexpert"
    generate(data, args.images, "chexpert", size=256, seed=0, workers=min(2, os.cpu_count() or 1))
    if args.gpu:
        if not torch.cuda.is_available():
            print("no CUDA device here; run with --gpu on a GPU machine")
            return 1
        base = dict(data=str(data), labels="chexpert14", arch="densenet121", pretrained="none", epochs=1,
                    batch_size=64, image_size=224, policy="zeros", workers=4, threads=args.threads, device="cuda",
                    max_images=None, val_fraction=0.05, test_fraction=0.05)
        variants = [("fp32", {}), ("bf16 + channels_last", {"precision": "bf16", "channels_last": True})]
        machine = torch.cuda.get_device_name(0)
    else:
        torch.set_num_threads(args.threads)
        base = dict(data=str(data), labels="chexpert14", arch="regnetx_002", arch_kwargs={"output_stride": 16},
                    pretrained="none", epochs=1, batch_size=32, image_size=160, policy="zeros", workers=2,
                    threads=args.threads, device="cpu", val_fraction=0.05, test_fraction=0.05)
        variants = [("full fp32", {}), ("head only", {"mode": "head"}), ("LoRA r=8", {"mode": "lora"}),
                    ("channels_last", {"channels_last": True}), ("bf16 autocast", {"precision": "bf16"}),
                    ("accum 2 x 16", {"batch_size": 16, "accum_steps": 2}),
                    ("no augmentation", {"augment": False})]
        machine = f"CPU, {args.threads} thread(s)"
    # Build the cache once, outside the timings.
    from cxrcore.data.cache import build_cache
    from cxrcore.data.preprocess import Preprocess
    from cxrcore.data.readers import read_dataset

    build_cache(read_dataset(data), Preprocess(size=base["image_size"], fit="pad"), workers=2)
    print(f"training throughput, {machine}, torch {torch.__version__}, {args.images} phantom images, "
          f"{base['arch']} at {base['image_size']} px, batch {base['batch_size']}; load {os.getloadavg()[0]:.2f}")
    results = [run_variant(n, base, o, root, args.skip) for n, o in variants]
    ref = results[0]["images_per_s"]
    print(f"{'variant':<24}{'images/s':>10}{'ratio':>8}{'trainable':>14}{'steps':>7}{'wall s':>8}"
          + ("  GPU busy  mean util  peak MiB" if args.gpu else ""))
    for r in results:
        line = (f"{r['name']:<24}{r['images_per_s']:>10.1f}{r['images_per_s'] / ref:>7.2f}x"
                f"{r['trainable']:>14,}{r['steps']:>7}{r['wall_s']:>8.1f}")
        if args.gpu:
            busy = "n/a" if r["gpu_busy"] is None else f"{100 * r['gpu_busy']:.0f} %"
            util = "n/a" if r["gpu_util_mean"] is None else f"{r['gpu_util_mean']:.0f} %"
            line += f"  {busy:>8}  {util:>9}  {r['gpu_mem_mib'] or 0:>8.0f}"
        print(line)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
