"""Writing: :func:`generate` renders a whole dataset and writes it in the real layout.

Builds the table with :func:`~.tables.sample_table`, renders the images in this process or in a
worker pool (fork, or forkserver in threaded processes such as the Streamlit server), saves them
as marked PNG (NIH) or JPEG (CheXpert), writes the label CSVs, the box file (1024-pixel frame)
and ``PHANTOM.json`` into a hidden sibling folder, and renames it into place at the end.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from ...errors import ConfigError
from ..imageio import PHANTOM_MARK, PHANTOM_MARK_KEY
from .canvas import Box
from .renderer import render
from .tables import (BOX_COLUMNS, CHEXPERT_COLUMNS, DOMAINS, NIH_COLUMNS, _TAG_IMAGE, _TAG_PATIENT,
                     _check_args, nih_test_patient, row_labels, sample_table)


GENERATOR_VERSION = "1.0.0"

BOX_FRAME = 1024  # box coordinates are written in the pixel frame of a 1024 x 1024 NIH image

# Box label spelling in NIH's own box file.
_NIH_BOX_NAME = {"Infiltration": "Infiltrate"}


def _work(task):
    """Render and write one image (runs in a pool worker or in-process)."""
    i, path, labels, key, pkey, domain, size, view = task
    img, boxes = render(labels, key, domain, size, pkey, view)
    save_film(path, img, domain)
    return i, boxes


def _init_worker():
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and cleans up


def _pool_context():
    """fork where this process has one thread; None where it has more (see :func:`_in_clean_process`)."""
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return None


_CHILD = ("import sys\n"
          "from cxrcore.data.phantom.writing import generate\n"
          "out, n, domain, size, seed, workers = sys.argv[1:7]\n"
          "generate(out, int(n), domain, int(size), int(seed), int(workers),\n"
          "         progress=lambda done, total: print(done, total, flush=True))\n")


def _in_clean_process(out: Path, n: int, domain: str, size: int, seed: int, workers: int,
                      progress: Callable[[int, int], None] | None) -> None:
    """Render in a new single-threaded Python process (which forks its own workers), relaying its progress.

    fork is unsafe in a threaded process (the Streamlit server, a test run with threads), and the
    forkserver / spawn methods run the caller's ``__main__`` again in every worker: inside Streamlit
    that is the page script being run (Streamlit makes it ``__main__``), so each worker would run the
    whole page. A child started with ``python -c`` has no such ``__main__``."""
    import subprocess
    import sys

    env = dict(os.environ)
    pkg_parent = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    args = [sys.executable, "-c", _CHILD, str(out), str(n), domain, str(size), str(seed), str(workers)]
    existed = out.exists()   # an empty folder (generate checked), or nothing
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, env=env)
    try:
        for line in proc.stdout:
            parts = line.split()
            if progress and len(parts) == 2 and all(p.isdigit() for p in parts):
                progress(int(parts[0]), int(parts[1]))
        err = proc.stderr.read()
        if proc.wait() != 0:
            last = " ".join(err.strip().splitlines()[-1:]) or f"exit status {proc.returncode}"
            raise ConfigError(f"Writing the phantom dataset {out} failed: {last}")
    except BaseException:
        # Stopped here (Ctrl-C, a progress callback raised): the child cleans up its partial folder on SIGINT.
        # The child reports progress ahead of this process reading it, so it may already have finished and
        # renamed its folder into place: an interrupted call leaves nothing at ``out`` either way, as in-process.
        if proc.poll() is None:
            import signal

            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.returncode == 0 and out.is_dir():
            shutil.rmtree(out, ignore_errors=True)
            if existed:
                out.mkdir(exist_ok=True)
        raise


def fresh_folder(out: str | Path) -> Path:
    """``out`` as a path, checked to be a new or empty folder (its parent made); ConfigError otherwise."""
    out = Path(out).expanduser()
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"{out} exists and is a file; choose a new folder for the phantom dataset.")
        if any(out.iterdir()):
            raise ConfigError(
                f"{out} already exists and is not empty; it was left untouched. "
                "Choose a new folder or delete this one first."
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished hidden folder ``tmp`` to ``out`` (which may be an empty folder)."""
    if out.exists():
        try:
            out.rmdir()
        except OSError:
            raise ConfigError(
                f"{out} was filled by something else while the phantom dataset was generated; "
                "it was left untouched. Choose a new folder."
            ) from None
    os.rename(tmp, out)


def save_film(path: str, img: np.ndarray, domain: str) -> None:
    """One phantom film as the domain's files are: marked PNG (NIH) or JPEG with the mark as comment (CheXpert)."""
    im = Image.fromarray(img)
    if domain == "nih":  # the mark tells a phantom from a real film wherever it is uploaded
        mark = PngImagePlugin.PngInfo()
        mark.add_text(PHANTOM_MARK_KEY, PHANTOM_MARK)
        im.save(path, format="PNG", compress_level=1, pnginfo=mark)
    else:
        im.save(path, format="JPEG", quality=90, comment=PHANTOM_MARK)


def generate(out: str | Path, n: int, domain: str = "nih", size: int = 256, seed: int = 0,
             workers: int = 2, progress: Callable[[int, int], None] | None = None) -> Path:
    """Write a phantom dataset of ``n`` images into ``out`` in the real layout of ``domain``.

    ``domain`` is ``nih`` or ``chexpert``; ``size`` the image side in pixels (64-1024);
    ``workers`` processes render in parallel (1 renders in this process); ``progress(done,
    total)`` is called in this process as images finish. ``out`` must not exist or be an empty
    folder. The dataset is built in a hidden sibling folder and renamed into place at the end,
    so an interrupted run leaves nothing at ``out``. Returns ``out``.
    """
    _check_args(n, domain, size, seed, workers)
    n, size, seed, workers = int(n), int(size), int(seed), int(workers)
    out = fresh_folder(out)
    if workers > 1 and n > 1 and _pool_context() is None:
        _in_clean_process(out, n, domain, size, seed, workers, progress)  # it builds and renames the same way
        return out
    frame = sample_table(n, domain, seed)
    code = DOMAINS[domain]
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        tasks = []
        dirs = sorted({str(Path(f).parent) for f in frame["_file"]})
        for d in dirs:
            (tmp / d).mkdir(parents=True, exist_ok=True)
        view_col = "View Position" if domain == "nih" else "AP/PA"
        for i, row in enumerate(frame.to_dict("records")):
            tasks.append((i, str(tmp / row["_file"]), row_labels(row, domain),
                          [seed, code, _TAG_IMAGE, i], [seed, code, _TAG_PATIENT, int(row["_patient"])],
                          domain, size, row[view_col]))
        boxes: dict[int, list[Box]] = {}
        done = 0
        if workers == 1 or n == 1:
            for t in tasks:
                i, b = _work(t)
                boxes[i] = b
                done += 1
                if progress:
                    progress(done, n)
        else:
            ctx = _pool_context()
            chunk = max(1, min(16, n // (workers * 8)))
            with ctx.Pool(min(workers, n), initializer=_init_worker) as pool:
                for i, b in pool.imap_unordered(_work, tasks, chunksize=chunk):
                    boxes[i] = b
                    done += 1
                    if progress:
                        progress(done, n)
        _write_tables(tmp, frame, boxes, domain, size, seed)
        (tmp / "PHANTOM.json").write_text(json.dumps({
            "generator": "cxrcore.data.phantom", "version": GENERATOR_VERSION, "domain": domain,
            "n": n, "size": size, "seed": seed,
        }, indent=2) + "\n")
        move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _box_rows(image_id: str, boxes: list[Box], size: int, domain: str):
    f = BOX_FRAME / size
    rows = []
    for lab, x, y, w, h in boxes:
        if domain == "nih":
            lab = _NIH_BOX_NAME.get(lab, lab)
        rows.append((image_id, lab, round(x * f, 2), round(y * f, 2), round(w * f, 2), round(h * f, 2)))
    return rows


def write_nih_lists(root: Path, names, patients, seed: int) -> None:
    """NIH's official split as NIH ships it: patient-disjoint image lists (test_list.txt, train_val_list.txt)
    beside the table; a patient is on the test list by a hash of (seed, patient)."""
    test = np.array([nih_test_patient(seed, int(p)) for p in patients], dtype=bool)
    names = np.asarray(names).astype(str)
    (root / "test_list.txt").write_text("".join(f"{x}\n" for x in names[test]))
    (root / "train_val_list.txt").write_text("".join(f"{x}\n" for x in names[~test]))


def add_missing_nih_lists(root: str | Path) -> bool:
    """Write the official lists into an NIH phantom folder made before the generator wrote them; True if written."""
    import pandas as pd

    root = Path(root)
    meta = json.loads((root / "PHANTOM.json").read_text())
    if meta.get("domain") != "nih" or (root / "test_list.txt").exists():
        return False
    t = pd.read_csv(root / "Data_Entry_2017.csv", usecols=["Image Index", "Patient ID"])
    write_nih_lists(root, t["Image Index"], t["Patient ID"], int(meta.get("seed", 0)))
    return True


def _write_tables(root: Path, frame, boxes: dict[int, list[Box]], domain: str, size: int, seed: int = 0):
    import pandas as pd

    box_rows = []
    if domain == "nih":
        table = frame[NIH_COLUMNS[:7]].copy()
        spacing = round(0.143 * BOX_FRAME / size, 3)
        table["OriginalImage[Width"] = size
        table["Height]"] = size
        table["OriginalImagePixelSpacing[x"] = spacing
        table["y]"] = spacing
        table.to_csv(root / "Data_Entry_2017.csv", index=False)
        write_nih_lists(root, frame["Image Index"], frame["_patient"], seed)
        for i, name in enumerate(frame["Image Index"]):
            box_rows += _box_rows(name, boxes[i], size, domain)
        pd.DataFrame(box_rows, columns=BOX_COLUMNS).to_csv(root / "BBox_List_2017.csv", index=False)
    else:
        for split in ("train", "valid"):
            part = frame[frame["_split"] == split]
            part[CHEXPERT_COLUMNS].to_csv(root / f"{split}.csv", index=False)
        for i, path in enumerate(frame["Path"]):
            box_rows += _box_rows(path, boxes[i], size, domain)
        pd.DataFrame(box_rows, columns=BOX_COLUMNS).to_csv(root / "phantom_boxes.csv", index=False)
