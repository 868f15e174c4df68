"""Setting a study up: its cases (from a dataset folder, a list of images, or uploads with a truth CSV) and the
aided arm's content, computed once at set-up from the chosen model and recorded with the study (probability,
threshold and heatmap per case and finding), so every reader sees exactly the same model output and the analysis
can put the model beside the readers as a standalone arm."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .. import workspace
from ..errors import ConfigError, DataError
from ..labels import find_label
from .design import MAX_CASES, StudyDesign
from .store import Study, StudyStore, new_study_id

SAMPLING = {
    "random": "a random sample of N cases",
    "stratified": "N cases positive for each finding, and N negative for all of them",
    "all": "every case of the split",
}


def study_folder(study_id: str) -> Path:
    """Where a study keeps its files (uploaded images, the aided arm's heatmaps)."""
    return workspace.sub("reader_studies") / study_id


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def aided_image(study_id: str, case_no: int, finding: str) -> Path:
    return study_folder(study_id) / "aided" / f"case-{case_no:04d}-{_slug(finding)}.png"


def cases_from_dataset(data: str | Path, findings: list[str], split: str = "test", sampling: str = "random",
                       n: int = 20, seed: int = 0) -> tuple[list[dict], dict]:
    """Cases from a dataset folder: ``split`` of its patient hash split (or ``all`` / ``official_test``), then
    ``sampling`` (see :data:`SAMPLING`), seeded. Truth is the dataset's label per finding; an image whose label
    for a finding is uncertain or missing (CheXpert's -1 / blank) is left out. Boxes come with the dataset's
    ground-truth boxes (fractions of the image, as the index holds them). Returns the cases and a description of where they came from."""
    from ..data.readers import read_dataset
    from ..eval.predictions import split_rows

    if sampling not in SAMPLING:
        raise ConfigError(f"Sampling {sampling!r} is not one of {', '.join(SAMPLING)}.")
    if sampling != "all" and not 1 <= int(n) <= MAX_CASES:
        raise ConfigError(f"N is between 1 and {MAX_CASES}.")
    index = read_dataset(data)
    cols = []
    for f in findings:
        j = find_label(f, list(index.labels))
        if j is None:
            raise DataError(f"{index.root} has no label {f!r}; its labels: {', '.join(index.labels)}.")
        cols.append(index.labels[j])
    rows = split_rows(index, split, seed=0)
    raw = index.frame[cols].to_numpy(dtype=np.float32)[rows]
    certain = np.all(np.isin(raw, (0.0, 1.0)), axis=1)
    rows, raw = rows[certain], raw[certain]
    if len(rows) == 0:
        raise DataError(f"No image of the {split} split of {index.root} has a certain 0/1 label for every finding.")
    rng = np.random.default_rng(int(seed))
    if sampling == "random":
        pick = rng.permutation(len(rows))[: int(n)]
    elif sampling == "stratified":
        chosen: list[int] = []
        for j in range(len(cols)):
            pos = np.flatnonzero(raw[:, j] == 1)
            chosen += [int(i) for i in rng.permutation(pos)[: int(n)] if i not in chosen]
        neg = np.flatnonzero(raw.sum(axis=1) == 0)
        chosen += [int(i) for i in rng.permutation(neg)[: int(n)]]
        pick = np.asarray(chosen, dtype=int)
    else:
        pick = np.arange(len(rows))
    if len(pick) > MAX_CASES:
        raise ConfigError(f"{len(pick)} cases: a study holds at most {MAX_CASES}; sample fewer.")
    pick = np.sort(pick) if sampling == "all" else pick
    frame = index.frame.iloc[rows[pick]]
    boxes = index.boxes[index.boxes["image_id"].isin(set(frame["image_id"]))]
    out = []
    for k, (_, r) in enumerate(frame.iterrows()):
        truth = {f: int(raw[pick[k], j]) for j, f in enumerate(findings)}
        mine = boxes[boxes["image_id"] == r["image_id"]]   # the index holds boxes as fractions of the image
        case_boxes = {f: mine[mine["label"] == col][["x", "y", "w", "h"]].astype(float).to_numpy().tolist()
                      for f, col in zip(findings, cols) if (mine["label"] == col).any()}
        out.append({"image": str(r["path"]), "source_id": str(r["image_id"]), "truth": truth, "boxes": case_boxes})
    positives = {f: int(sum(c["truth"][f] for c in out)) for f in findings}
    return out, {"kind": "dataset", "data": str(index.root), "split": split, "sampling": sampling, "n": int(n),
                 "seed": int(seed), "cases": len(out), "positives": positives}


def read_truth_csv(path_or_bytes, findings: list[str]) -> dict[str, dict[str, int]]:
    """A truth CSV: a column ``image`` (file name) and one 0/1 column per finding. Returns name -> truth."""
    import io

    try:
        frame = pd.read_csv(io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"The truth CSV cannot be read ({exc}); it needs a header row: image, then one column per "
                        "finding holding 0 or 1.") from exc
    cols = {c.strip().lower(): c for c in frame.columns}
    if "image" not in cols:
        raise DataError("The truth CSV needs a column named image (the file name of each image).")
    missing = [f for f in findings if f.lower() not in cols]
    if missing:
        raise DataError(f"The truth CSV has no column for {', '.join(missing)}; it needs one 0/1 column per finding.")
    out = {}
    for i, r in frame.iterrows():
        truth = {}
        for f in findings:
            v = r[cols[f.lower()]]
            if v not in (0, 1, 0.0, 1.0, "0", "1"):
                raise DataError(f"Line {i + 2} of the truth CSV: {f} is {v!r}; truth is 0 or 1.")
            truth[f] = int(float(v))
        out[Path(str(r[cols["image"]])).name] = truth
    return out


def cases_from_files(files: list[tuple[str, bytes]], truth: dict[str, dict[str, int]], study_id: str) -> list[dict]:
    """Uploaded images (name, bytes) saved into the study's folder, with their truth (from :func:`read_truth_csv`)."""
    from ..data.imageio import read_image

    missing = [name for name, _ in files if Path(name).name not in truth]
    if missing:
        raise DataError(f"The truth CSV has no row for {', '.join(missing[:10])}"
                        f"{f' and {len(missing) - 10} more' if len(missing) > 10 else ''}.")
    for name, data in files:
        read_image(data, name)   # ImageError with the file's name for one that is not an image
    folder = study_folder(study_id) / "images"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k, (name, data) in enumerate(files, 1):
        path = folder / f"{k:04d}{Path(name).suffix.lower()}"
        path.write_bytes(data)
        out.append({"image": str(path), "source_id": Path(name).name, "truth": truth[Path(name).name]})
    return out


def aided_outputs(design: StudyDesign, cases: list[dict], study_id: str,
                  progress: Callable[[int, int], None] | None = None) -> dict:
    """Run the design's model on every case once: the probability of each finding into ``case["model"]``, the
    heatmap overlay saved as a PNG (when the design shows one). Returns what was shown (model, thresholds)."""
    from ..data.imageio import read_image
    from ..explain.visual import overlay, png_bytes
    from ..models.library import resolve
    from ..predictor import Predictor

    predictor = Predictor(resolve(design.model))
    idx = {}
    for f in design.findings:
        j = find_label(f, predictor.labels)
        if j is None:
            raise ConfigError(f"The model {design.model} has no output for {f!r}; its labels: "
                              f"{', '.join(predictor.labels)}.")
        idx[f] = j
    (study_folder(study_id) / "aided").mkdir(parents=True, exist_ok=True)
    for k, case in enumerate(cases, 1):
        image = read_image(case["image"])
        pred = predictor.predict(image, heatmaps=design.heatmap != "none")
        case["model"] = {f: float(pred.probs[j]) for f, j in idx.items()}
        if design.heatmap != "none":
            for f, j in idx.items():
                aided_image(study_id, k, f).write_bytes(png_bytes(overlay(image.pixels, pred.heatmaps[j], height=768)))
        if progress:
            progress(k, len(cases))
        shown = pred
    return {"model": str(design.model), "checkpoint": str(predictor.path), "card_name": predictor.card.name,
            "thresholds": {f: float(shown.thresholds[j]) for f, j in idx.items()},
            "labels": {f: predictor.labels[j] for f, j in idx.items()}, "heatmap": design.heatmap,
            "cam_method": shown.cam_method, "trained_on": shown.trained_on}


def create_study(design: StudyDesign, cases: list[dict], source: dict, owner: str | None = None,
                 store: StudyStore | None = None, study_id: str | None = None,
                 progress: Callable[[int, int], None] | None = None) -> Study:
    """Check the design, compute the aided arm (when there is one) and store the study."""
    design.check()
    store = store or StudyStore()
    sid = study_id or new_study_id()
    source = dict(source)
    if design.design != "unaided":
        source["aided"] = aided_outputs(design, cases, sid, progress)
    (study_folder(sid)).mkdir(parents=True, exist_ok=True)
    study = store.create(design, cases, owner=owner, source=source, study_id=sid)
    (study_folder(sid) / "study.json").write_text(json.dumps({"id": sid, "design": design.to_dict(),
                                                              "source": source}, indent=1))
    return study
