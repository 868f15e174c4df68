"""Held-out evidence for the out-of-distribution guard (cxrcore/explain/ood.py).

The real frontal chest radiographs of ../shared/data (the NIH sample at its distributed 512 / 1024 px
and the formats folder) are split by patient into two halves. The guard's six fitted limits are
decided on the calibration half only (``fit_thresholds``: the most extreme value seen, pushed out by
k calibration standard deviations; k = 1 chosen before looking at any result); then

* false-alarm rate = share of the held-out real radiographs the guard flags;
* catch rate = share of non-chest images it flags: natural photographs, documents, microscopy,
  a fundus photograph, a head CT phantom (scikit-image's bundled images) and generated images
  (CT-like slice, lateral-like profile, noise, constant, white page, colour field).

The shipped limits (``ood.DEFAULT``) are printed beside the fitted ones, with their rates on the
same images. Run: ``python bench/ood.py [--k 1.0]``.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import platform
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxrcore.data.imageio import read_image  # noqa: E402
from cxrcore.explain.ood import DEFAULT, FITTED, check_stats, fit_thresholds, image_stats, saturation_from_bytes  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def real_images() -> list[tuple[str, str, bytes]]:
    """(name, patient group, bytes) for every real chest radiograph on this machine."""
    sample = SHARED / "nih-sample"
    table = pd.read_csv(sample / "Data_Entry_2017_sample.csv")
    out = [(r["Image Index"], f"nih-{r['Patient ID']}", (sample / "images" / r["Image Index"]).read_bytes())
           for _, r in table.iterrows()]
    out += [(p.name, f"file-{p.name}", p.read_bytes()) for p in sorted((SHARED / "formats").iterdir()) if p.is_file()]
    return out


def non_chest_images() -> list[tuple[str, str, bytes]]:
    """(name, kind, bytes) of images that are not frontal chest radiographs."""
    import skimage.data as sk

    out = []
    kinds = {"photo": ["astronaut", "camera", "coins", "moon", "chelsea", "coffee", "rocket", "horse", "clock", "cat",
                       "hubble_deep_field", "grass", "gravel", "brick", "checkerboard", "logo", "colorwheel",
                       "binary_blobs"],
             "document": ["page", "text"],
             "microscopy": ["cell", "immunohistochemistry", "microaneurysms"],
             "other body part": ["retina", "shepp_logan_phantom"]}
    for kind, names in kinds.items():
        for n in names:
            arr = getattr(sk, n)()
            if arr.dtype != np.uint8:
                arr = (np.clip(arr.astype(np.float64) / max(1e-9, float(arr.max())), 0, 1) * 255).astype(np.uint8)
            out.append((n, kind, _png(arr)))
    left = sk.stereo_motorcycle()[0]
    out.append(("stereo_motorcycle", "photo", _png(left)))
    rng = np.random.default_rng(0)
    low = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
    out.append(("colour_field", "generated", _png(np.asarray(Image.fromarray(low).resize((400, 300), Image.BICUBIC)))))
    page = Image.new("L", (500, 700), 250)
    d = ImageDraw.Draw(page)
    for y in range(60, 650, 22):
        d.text((40, y), "Lorem ipsum dolor sit amet consectetur adipiscing elit sed do", fill=10)
    out.append(("white_page", "document", _png(np.asarray(page))))
    yy, xx = np.mgrid[:256, :256]
    r = np.hypot(yy - 128, xx - 128)
    ct = np.where(r < 100, 0.35, 0.0) + np.where((r >= 90) & (r < 100), 0.55, 0.0)
    ct -= 0.25 * ((np.hypot(yy - 120, xx - 90) < 25) | (np.hypot(yy - 120, xx - 166) < 25))
    out.append(("ct_slice", "other body part", _png((np.clip(ct + rng.normal(0, 0.02, ct.shape), 0, 1) * 255)
                                                    .astype(np.uint8))))
    yy, xx = np.mgrid[:300, :256] / 256.0
    lat = 0.8 * np.exp(-((xx - 0.3) ** 2) / 0.02 - ((yy - 0.5) ** 2) / 0.2) + 0.1 * xx
    lat[:, :40] += 0.3
    out.append(("lateral_like", "lateral (generated)", _png((np.clip(lat, 0, 1) * 255).astype(np.uint8))))
    out.append(("noise", "generated", _png(rng.integers(0, 256, (256, 256), dtype=np.uint8))))
    out.append(("constant", "generated", _png(np.full((256, 256), 128, np.uint8))))
    return out


def stats_of(data: bytes, name: str) -> dict:
    return image_stats(read_image(data, name).pixels, saturation_from_bytes(data))


def half(group: str) -> int:
    return int(hashlib.sha256(group.encode()).hexdigest(), 16) % 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=float, default=1.0, help="standard deviations beyond the extreme calibration value")
    a = ap.parse_args()
    if not (SHARED / "nih-sample").is_dir():
        sys.exit(f"needs the real radiographs of {SHARED} (the development machine's shared data)")
    real = [(n, g, stats_of(b, n)) for n, g, b in real_images()]
    other = [(n, k, stats_of(b, n)) for n, k, b in non_chest_images()]
    cal = [s for _, g, s in real if half(g) == 0]
    held = [(n, s) for n, g, s in real if half(g) == 1]
    fitted = fit_thresholds(cal, a.k)
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"real frontal chest radiographs: {len(real)} ({len(cal)} calibration, {len(held)} held out, split by "
          f"patient); non-chest images: {len(other)}")
    print(f"\nlimits (k = {a.k:g})        fitted on calibration   shipped (ood.DEFAULT)")
    for stat, (field, side) in FITTED.items():
        print(f"  {side} {stat:<16} {getattr(fitted, field):>18.3f} {getattr(DEFAULT, field):>20.3f}")
    for title, t in (("fitted", fitted), ("shipped", DEFAULT)):
        false = [(n, check_stats(s, t)) for n, s in held if check_stats(s, t)]
        caught = {n: check_stats(s, t) for n, _, s in other}
        by_kind: dict[str, list[bool]] = {}
        for n, k, _ in other:
            by_kind.setdefault(k, []).append(bool(caught[n]))
        print(f"\n{title} limits: false alarms on held-out real radiographs {len(false)}/{len(held)} "
              f"({len(false) / len(held):.1%}); caught non-chest {sum(map(bool, caught.values()))}/{len(other)} "
              f"({sum(map(bool, caught.values())) / len(other):.1%})")
        print("  by kind: " + ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in by_kind.items()))
        missed = [n for n, r in caught.items() if not r]
        print("  missed: " + (", ".join(missed) or "none"))
        for n, r in false:
            print(f"  false alarm {n}: {'; '.join(r)}")


if __name__ == "__main__":
    main()
