"""Benchmark: probabilities + a heatmap for every label of two DenseNet121 models, three ways.

(a) reference: two plain forward passes (probabilities only, no heatmaps);
(b) ours: ``forward_with_cams`` once per model (probabilities + all 14 maps from one pass);
(c) pytorch-grad-cam's ``GradCAM`` once per label (14 labels x 2 models, forward + backward each).

Both models are timm ``densenet121`` with 14 outputs and RANDOM initialisation: nothing can be
downloaded here, and the timings do not depend on the weights. One real NIH image (1024 x 1024)
is the input, fed at 1024 (no resize; 32 x 32 feature grid) and at 224 (7 x 7 grid). The
preprocessing is done once, outside the timed region; all three paths get the same tensor.

Also checks that (b)'s maps equal pytorch-grad-cam's for a few labels, at the feature grid:
  - exact: pytorch-grad-cam's own weights x activations (captured by its hooks), ReLU + min-max;
  - end to end: pytorch-grad-cam's output map (cv2-resized to the input size) against our grid map
    put through the same resize (its ``scale_cam_image``).

Usage::

    python bench/heatmaps.py                     # 1024 and 224, 2 threads
    python bench/heatmaps.py --sizes 224 --loop-repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cxrcore.data.imageio import read_image  # noqa: E402
from cxrcore.data.preprocess import Preprocess  # noqa: E402
from cxrcore.explain.cam import forward_with_cams, scale_maps, supports_fast_cam, target_layer  # noqa: E402
from cxrcore.models.registry import build_model  # noqa: E402

DEFAULT_IMAGE = REPO.parent / "shared" / "data" / "nih-sample" / "images" / "00000150_002.png"
N_LABELS = 14


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except Exception:
        pass
    return platform.processor() or "unknown"


def load() -> str:
    a, b, c = os.getloadavg()
    return f"{a:.2f} {b:.2f} {c:.2f}"


def timed(fn, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def path_a(models, x):
    with torch.no_grad():
        return [torch.sigmoid(m(x)) for m in models]


def path_b(models, x):
    return [forward_with_cams(m, x) for m in models]


def path_c(models, x, labels=range(N_LABELS)):
    """pytorch-grad-cam as one would use it: one GradCAM call per label, per model."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    out = []
    for m in models:
        maps, probs = [], None
        with GradCAM(model=m, target_layers=[target_layer(m)]) as cam:
            for j in labels:
                maps.append(cam(input_tensor=x, targets=[ClassifierOutputTarget(j)])[0])
                if probs is None:
                    probs = torch.sigmoid(cam.outputs.detach())
        out.append((probs, np.stack(maps)))
    return out


def equality_check(models, x, labels) -> dict:
    """Max abs difference between our maps and pytorch-grad-cam's, at the feature grid."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from pytorch_grad_cam.utils.image import scale_cam_image

    exact, resized, prob_diff = 0.0, 0.0, 0.0
    for m in models:
        logits, fast = forward_with_cams(m, x)
        h, w = fast.shape[-2:]
        layer = target_layer(m)
        with GradCAM(model=m, target_layers=[layer]) as cam:
            for j in labels:
                full = cam(input_tensor=x, targets=[ClassifierOutputTarget(j)])  # (1, H, W), cv2-resized
                prob_diff = max(prob_diff, float((torch.sigmoid(cam.outputs.detach()) - torch.sigmoid(logits)).abs().max()))
                acts = cam.activations_and_grads.activations[0].numpy()
                grads = cam.activations_and_grads.gradients[0].numpy()
                weights = cam.get_cam_weights(x, [layer], None, acts, grads)
                ref = scale_maps((weights[:, :, None, None] * acts).sum(1))[0]
                exact = max(exact, float(np.abs(ref - fast[0, j]).max()))
                # ours, resized to the input exactly as pytorch-grad-cam resizes its own (cv2 bilinear)
                ours_full = scale_cam_image(scale_cam_image(fast[:, j], (x.shape[-1], x.shape[-2])))
                resized = max(resized, float(np.abs(ours_full - full).max()))
    return {"labels": list(labels), "grid": [int(h), int(w)], "max_abs_diff_exact": exact,
            "max_abs_diff_output_at_input_size": resized, "max_abs_diff_probs": prob_diff}


def run_size(models, pixels: np.ndarray, size: int, repeats: int, loop_repeats: int, check_labels) -> dict:
    prep = Preprocess(size=size, fit="pad", norm="imagenet", channels=3)
    x = prep.normalize(torch.from_numpy(prep.square(pixels))[None])
    res = {"input": list(x.shape), "load_before": load()}
    # (a) and (b) alternate, run by run, so that both see the same load on a shared machine
    path_a(models, x), path_b(models, x)  # warm-up
    a, b = [], []
    for _ in range(repeats):
        a += timed(lambda: path_a(models, x), 1, warmup=0)
        b += timed(lambda: path_b(models, x), 1, warmup=0)
    # the loop is slow: warm it up with one label per model, then time full loops
    c = [float("nan")]
    if loop_repeats > 0:
        path_c(models, x, labels=[0])  # warm-up of the backward pass
        c = timed(lambda: path_c(models, x), loop_repeats, warmup=0)
    res.update({
        "a_plain_forward_s": a, "b_single_pass_s": b, "c_gradcam_loop_s": c,
        "a_median": statistics.median(a), "b_median": statistics.median(b), "c_median": statistics.median(c),
        "a_min": min(a), "b_min": min(b), "c_min": min(c),
    })
    res["b_over_a_min"] = res["b_min"] / res["a_min"]
    res["c_over_b_min"] = res["c_min"] / res["b_min"]
    res["b_over_a"] = res["b_median"] / res["a_median"]
    res["c_over_b"] = res["c_median"] / res["b_median"]
    res["check"] = equality_check(models, x, check_labels)
    res["load_after"] = load()
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image", default=str(DEFAULT_IMAGE), help="a 1024 x 1024 chest X-ray (PNG or DICOM)")
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 224])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="timed repeats of (a) and (b); the median is reported")
    p.add_argument("--loop-repeats", type=int, default=2, help="timed repeats of (c) (at least 3 below 512 px; 0 skips it)")
    p.add_argument("--check-labels", type=int, nargs="+", default=[0, 1, 6, 13])
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)

    torch.set_num_threads(a.threads)
    image = read_image(a.image)
    info = {"cpu": cpu_name(), "cores_visible": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "image": Path(a.image).name,
            "image_shape": list(image.pixels.shape), "load_start": load(),
            "models": "2 x timm densenet121, 14 labels, random init (no pretrained weights: offline)"}
    try:
        from importlib.metadata import version
        info["grad_cam"] = version("grad-cam")
    except Exception:
        pass
    print(json.dumps(info, indent=1), flush=True)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = build_model("densenet121", N_LABELS).eval()
        assert supports_fast_cam(m), "densenet121 should have a GAP + linear head"
        models.append(m)

    results = {"info": info, "sizes": {}}
    for size in a.sizes:
        loop_repeats = a.loop_repeats if size > 512 or a.loop_repeats == 0 else max(a.loop_repeats, 3)
        r = run_size(models, image.pixels, size, a.repeats, loop_repeats, a.check_labels)
        results["sizes"][size] = r
        ck = r["check"]
        print(f"\n== input {size}x{size} (feature grid {ck['grid'][0]}x{ck['grid'][1]}), load {r['load_before']} -> {r['load_after']}")
        print(f"(a) 2 plain forwards          median {r['a_median']:8.3f} s   runs {[round(t, 3) for t in r['a_plain_forward_s']]}")
        print(f"(b) 2 forward_with_cams       median {r['b_median']:8.3f} s   runs {[round(t, 3) for t in r['b_single_pass_s']]}")
        print(f"(c) GradCAM loop 14 x 2       median {r['c_median']:8.3f} s   runs {[round(t, 3) for t in r['c_gradcam_loop_s']]}")
        print(f"b/a = {r['b_over_a']:.3f}  (target <= 1.5)    c/b = {r['c_over_b']:.1f}  (target >= 20)   [medians]")
        print(f"b/a = {r['b_over_a_min']:.3f}                   c/b = {r['c_over_b_min']:.1f}                  [fastest runs]")
        print(f"maps vs pytorch-grad-cam, labels {ck['labels']}: max abs diff exact (its weights x activations) "
              f"{ck['max_abs_diff_exact']:.2e}; its output vs ours resized the same way {ck['max_abs_diff_output_at_input_size']:.2e}; "
              f"probabilities {ck['max_abs_diff_probs']:.2e}", flush=True)
    results["load_end"] = load()
    print(f"\nload at start {info['load_start']}, at end {results['load_end']}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
