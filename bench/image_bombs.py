"""Peak memory of reading decompression bombs: the old decode path vs the guarded reader, side by side.

Each bomb (built by the test suite's builders, ``tests/datasets/test_image_bombs.py``) is read in a fresh Python
process, once by the old path and once by the new one; the number is that process's peak resident set
growth (the kernel's high-water mark, ``VmHWM``, reset with ``/proc/self/clear_refs`` after imports and a
warm-up read, then read again after the read; ``ru_maxrss`` where there is no /proc), so zlib's and the
codecs' C buffers count. The old path is what the code did before the fix:

* DICOM: ``pydicom.dcmread(BytesIO(data), force=True)`` then ``pydicom.pixels.pixel_array(ds, index=0)``
  (and ``apply_color_lut`` for a palette image), as ``cxrcore.data.imageio._read_dicom`` did;
* PIL formats: ``Image.open`` with the reader's formats, then ``load`` (the size check in between passes
  a 64 x 64 image), as ``_read_pil`` did;
* the OOD guard's colour check: ``Image.open`` with every PIL format, ``draft``, ``convert("RGB")``,
  ``thumbnail`` (``cxrcore.explain.ood.saturation_from_bytes`` before the fix).

The new path is ``read_image`` (DICOM, TIFF) and ``saturation_from_bytes`` (OOD). Each old-path process runs
under an address-space limit (``--limit-gb``, default 4) so that a bomb cannot take the machine down; a
read stopped by it shows as MemoryError.

    python bench/image_bombs.py [--limit-gb 4]
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "datasets"))

from test_image_bombs import deflated_dicom, png_bomb, rle_bomb, segmented_lut_bomb, tiff_tile_bomb  # noqa: E402

_PROBE = r"""
import io, resource, sys
limit = int(sys.argv[3])
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import numpy as np
import pydicom, pydicom.pixels, pydicom.encaps
from pydicom.pixels import apply_color_lut, pixel_array
from PIL import Image
from cxrcore.data.imageio import read_image
from cxrcore.errors import ImageError
from cxrcore.explain.ood import check_image, saturation_from_bytes

warm = io.BytesIO()
Image.fromarray(np.zeros((64, 64), np.uint8)).save(warm, format="PNG")
check_image(read_image(warm.getvalue()), raw=warm.getvalue())


def old_dicom(data):
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    arr = pixel_array(ds, index=0)
    if str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    return f"decoded {arr.shape}"


def old_saturation(data):
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (256, 256))
        im = im.convert("RGB")
        im.thumbnail((256, 256))
        hsv = np.asarray(im.convert("HSV"), dtype=np.float32)
    return f"saturation {hsv[..., 1].mean() / 255:.3f}"


def old_pil(data):
    Image.init()
    formats = [f for f in ("PNG", "JPEG", "MPO", "TIFF", "BMP", "GIF", "WEBP") if f in Image.OPEN]
    im = Image.open(io.BytesIO(data), formats=formats)
    im.load()
    return f"decoded {im.size}"


def new_pil(data):
    return f"decoded {read_image(data, name='bomb.tif').pixels.shape}"


def new_dicom(data):
    return f"decoded {read_image(data, name='bomb.dcm').pixels.shape}"


def new_saturation(data):
    return f"saturation {saturation_from_bytes(data)}"


data = open(sys.argv[1], "rb").read()


def peak_kb():  # VmHWM: the peak resident size, which clear_refs resets; ru_maxrss elsewhere (it also
    # keeps the peak seen when any thread exited, which nothing resets)
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


try:  # reset the peak to the present resident size (Linux >= 4.0), so that a small read is not hidden under it
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
base = peak_kb()
with open("/proc/self/status") as f:  # the resolution: a read that stays under the earlier peak shows as 0
    now = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
print("HEADROOM_MB", (base - now) / 1024)
try:
    outcome = globals()[sys.argv[2]](data)
except ImageError as exc:
    outcome = "ImageError: " + str(exc)
except MemoryError:
    outcome = "MemoryError (address-space limit)"
except Exception as exc:
    outcome = f"{type(exc).__name__}: {str(exc)[:100]}"
print("GROWTH_MB", (peak_kb() - base) / 1024)
print("OUTCOME", outcome)
"""

BOMBS = [  # name, builder, old path, new path
    ("Deflated DICOM, 10x10 declared, 400 MB of zeros (the report)",
     lambda: deflated_dicom(10, 10, 400_000_000), "old_dicom", "new_dicom"),
    ("Deflated DICOM, 64x64 declared, 200 MB of zeros",
     lambda: deflated_dicom(64, 64, 200_000_000), "old_dicom", "new_dicom"),
    ("RLE DICOM, 64x64 declared, 4 MB of runs (256 MB decoded)",
     lambda: rle_bomb(64, 64, 4_000_000), "old_dicom", "new_dicom"),
    ("Palette DICOM, segmented LUT of 100 linear segments (6.5 M entries)",
     lambda: segmented_lut_bomb(segments=100), "old_dicom", "new_dicom"),
    ("TIFF 64x64, one deflate tile declared 16384x16384 (libtiff's tile buffer)",
     lambda: tiff_tile_bomb(), "old_pil", "new_pil"),
    ("PNG 8000x8000 RGB zeros, OOD colour check on the raw bytes",
     lambda: png_bomb(8000, 8000, "RGB"), "old_saturation", "new_saturation"),
]


def measure(path: Path, func: str, limit: int) -> tuple[float, str, float]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", _PROBE, str(path), func, str(limit)], capture_output=True,
                         text=True, cwd=REPO, env=env, timeout=900)
    seconds = time.perf_counter() - t0
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines()
                 if line.startswith(("OUTCOME", "GROWTH_MB", "HEADROOM_MB")))
    if "GROWTH_MB" not in lines:
        return float("nan"), f"process died (rc {run.returncode}): {run.stderr.strip()[-200:]}", seconds, 0.0
    return float(lines["GROWTH_MB"]), lines["OUTCOME"], seconds, float(lines["HEADROOM_MB"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit-gb", type=float, default=4.0, help="address-space limit of each old-path process")
    args = ap.parse_args()
    limit = int(args.limit_gb * 2**30)
    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, build, old, new in BOMBS:
            path = Path(tmp) / "bomb.bin"
            data = build()
            path.write_bytes(data)
            old_mb, old_out, old_s, _ = measure(path, old, limit)
            new_mb, new_out, new_s, headroom = measure(path, new, 0)
            rows.append((name, len(data), old_mb, new_mb, headroom))
            print(f"\n{name}: {len(data) / 1024:,.0f} KB on disk")
            print(f"  old: peak RSS +{old_mb:,.0f} MB  ({old_s:.1f} s process)  {old_out[:150]}")
            print(f"  new: peak RSS +{new_mb:,.1f} MB  ({new_s:.1f} s process; resolution {headroom:.1f} MB)  "
                  f"{new_out[:150]}")
    print("\nPeak RSS growth while reading (\"< x\": under the measurement's resolution, the larger of 0.1 MB and")
    print("how far the peak stood above the resident size at the start; the ratio then uses that).")
    print("\n| bomb | file | old | new | old / new |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, size, old_mb, new_mb, headroom in rows:
        floor = max(headroom, 0.1)
        shown = f"{new_mb:,.1f} MB" if new_mb >= floor else f"< {floor:.1f} MB"
        ratio = f"{old_mb / new_mb:,.0f}" if new_mb >= floor else f"> {old_mb / floor:,.0f}"
        print(f"| {name} | {size / 1024:,.0f} KB | {old_mb:,.0f} MB | {shown} | {ratio} |")


if __name__ == "__main__":
    main()
