"""Score a whole archive with one model: a folder of images, a CSV list of files, or a DICOMweb query, into one
table (Parquet and CSV) with a row per image (issue 22 §4; ``cxr score``).

Each row: ``path``; per label its probability (the column named by the label), its call at the card's threshold
(``LABEL call``) and, when the card has temperatures, the calibrated probability (``LABEL calibrated``); the
out-of-distribution reasons (``ood``, empty when the image looks like a frontal chest film) and the model's notices
for this image (``warnings``: codes, e.g. a phantom-trained model on a real film); the ``model``, its
``card_sha256`` and the ``site`` profile whose thresholds and temperatures gave the calls (empty: the card's own);
for drift monitoring (:mod:`cxrcore.eval.drift`): when it was scored (``scored_at``, UTC; DICOM dates are patient
data and are not copied), the image statistics of :data:`IMAGE_STATS` (``image mean`` ...) and the model's
penultimate-layer embedding projected to 32 numbers (``embedding``, Parquet only; empty for a model without a split
head). A file that cannot be read goes to the errors table (``path``, ``error``) and the run goes on.

**Resumable.** Rows are written in parts (``OUT.parts/part-NNNNN.parquet``, each written whole then renamed into
place) as they are scored; a run killed at any point and started again with the same command reads the parts,
skips every image already in them (or in the errors), and scores the rest: each image ends up in the table once.
At the end the parts are merged into ``OUT`` (input order), ``OUT`` with ``.csv`` and ``OUT`` with
``.errors.csv``, and the parts folder is removed. Run again over a folder that has grown, it scores only the new
images. The parts folder records the model's card digest: another model's leftovers are refused, not mixed in.

Images are decoded and squared by a pool of threads while the model scores the previous batch."""
from __future__ import annotations

import csv
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from .errors import CXRError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
PART_ROWS = 256          # images per part file: what a kill can cost at most
BATCH = 32


@dataclass
class Source:
    """What to score: the images' ``paths`` (file paths, or DICOMweb instance URLs) in order, and how to read one."""

    paths: list[str]
    read: Callable[[str], bytes]
    describe: str


@dataclass
class Summary:
    rows: int
    errors: int
    seconds: float
    scored_now: int
    resumed: int
    out: str
    csv: str
    errors_csv: str
    model: str
    card_sha256: str
    labels: list[str] = field(default_factory=list)
    complete: bool = True   # False: stopped on request before the end; the parts wait for the same command
    runtime: str = "torch"  # what ran the network: torch, or onnx (cxrcore.runtime)
    runtime_note: str | None = None   # why not the runtime asked for, when it could not be used
    pending_shards: int = 0  # a shard of a sharded job that ended before the others: how many were not done yet
    reports: int = 0         # DICOM Structured Reports written this call (dicom_sr)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _read_file(path: str) -> bytes:
    return Path(path).read_bytes()


def source_of(spec: str, environ=None) -> Source:
    """A folder (every image below it, sorted), a CSV with a ``path`` column (relative paths from the CSV's folder),
    or a DICOMweb query URL (``…/studies?ModalitiesInStudy=CR&StudyDate=20240101-20240131``: every radiograph of
    the matching studies; the PACS credentials of ``CXR_DICOMWEB_*`` are sent only to ``CXR_DICOMWEB_URL``)."""
    if spec.startswith(("http://", "https://")):
        return _dicomweb_source(spec, environ)
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"{spec} holds no image ({', '.join(IMAGE_SUFFIXES)}). Point at the folder of the images.")
        return Source(files, _read_file, f"folder {path}")
    if path.is_file() and path.suffix.lower() == ".csv":
        import pandas as pd

        try:
            table = pd.read_csv(path, dtype=str)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the same advice
            raise DataError(f"{spec} is not a readable CSV ({type(exc).__name__}).") from None
        if "path" not in table.columns:
            raise DataError(f"{spec} has no 'path' column (it has: {', '.join(map(str, table.columns[:8]))}). "
                            "Give one row per image with its file in a column named path.")
        paths = [str((path.parent / p).resolve()) if not Path(p).is_absolute() else p
                 for p in table["path"].dropna().astype(str) if p.strip()]
        if not paths:
            raise DataError(f"{spec} lists no file in its path column.")
        return Source(list(dict.fromkeys(paths)), _read_file, f"list {path}")
    raise DataError(f"{spec} is neither a folder, a CSV with a path column, nor a DICOMweb query URL.")


def _dicomweb_source(url: str, environ=None) -> Source:
    from .pacs import dicomweb

    parts = urlsplit(url)
    root, _, rest = url.split("?")[0].partition("/studies")
    if rest not in ("", "/"):
        raise DataError("A DICOMweb query is the service's /studies with search parameters, e.g. "
                        "http://pacs:8042/dicom-web/studies?ModalitiesInStudy=CR&StudyDate=20240101-20240131.")
    env = dict(os.environ if environ is None else environ)
    configured = (env.get(dicomweb.ENV_URL) or "").rstrip("/")
    if configured != root.rstrip("/"):   # the operator's credentials go to the operator's PACS only
        env = {dicomweb.ENV_URL: root}
    config = dicomweb.PacsConfig.from_env(env)
    filters = dict(parse_qsl(parts.query))
    modalities = tuple(m for m in filters.pop("ModalitiesInStudy", ",".join(dicomweb.RADIOGRAPHY)).split(",") if m)
    studies = dicomweb.search_studies(config, patient_id=filters.pop("PatientID", ""),
                                      accession=filters.pop("AccessionNumber", ""),
                                      date_from=filters.get("StudyDate", "-").partition("-")[0],
                                      date_to=filters.pop("StudyDate", "-").partition("-")[2],
                                      modalities=modalities, limit=100_000)
    if filters:
        raise DataError(f"Search parameters not understood here: {', '.join(filters)} (use PatientID, "
                        "AccessionNumber, StudyDate, ModalitiesInStudy).")
    hits = {}
    for study in studies:
        for h in dicomweb.study_images(config, study.study_uid):
            hits[f"{root}/studies/{h.study_uid}/series/{h.series_uid}/instances/{h.sop_uid}"] = h
    if not hits:
        raise DataError(f"No radiograph matches the query at {config.host}.")
    return Source(list(hits), lambda p: dicomweb.retrieve_bytes(config, hits[p]), f"DICOMweb query at {config.host}")


# The image statistics a row keeps (from the out-of-distribution guard's, cxrcore.explain.ood.image_stats), each in
# a column "image <name>": what drift monitoring (cxrcore.eval.drift) compares with the reference.
IMAGE_STATS = ("mean", "std", "entropy", "neighbour_corr", "edge_density", "white_fraction", "symmetry")
EMBEDDING = "embedding"   # the column of the projected penultimate-layer features (Parquet only, not the CSV)


def _columns(labels: list[str], calibrated: bool) -> list[str]:
    cols = ["path"] + list(labels) + [f"{x} call" for x in labels]
    if calibrated:
        cols += [f"{x} calibrated" for x in labels]
    return (cols + ["ood", "warnings", "model", "card_sha256", "site", "scored_at"]
            + [f"image {s}" for s in IMAGE_STATS] + [EMBEDDING])


def _done(parts: Path, out: Path) -> tuple[set[str], int]:
    """Paths already in the parts, the errors parts or an earlier merged table; and how many rows those hold."""
    import pandas as pd

    seen: set[str] = set()
    rows = 0
    for f in sorted(parts.glob("part-*.parquet")) + ([out] if out.exists() else []):
        got = pd.read_parquet(f, columns=["path"])["path"].tolist()
        seen.update(got)
        rows += len(got)
    for f in sorted(parts.glob("errors-*.csv")) + ([_errors_path(out)] if _errors_path(out).exists() else []):
        with open(f, newline="") as fh:
            seen.update(r["path"] for r in csv.DictReader(fh))
    return seen, rows


def _errors_path(out: Path) -> Path:
    return out.with_name(out.stem + ".errors.csv")


def _write_part(parts: Path, k: int, rows: list[dict], errors: list[dict], columns: list[str]) -> None:
    import pandas as pd

    if rows:
        tmp = parts / f".part-{k:05d}.parquet.tmp"
        pd.DataFrame(rows, columns=columns).to_parquet(tmp, index=False)
        os.replace(tmp, parts / f"part-{k:05d}.parquet")
    if errors:
        tmp = parts / f".errors-{k:05d}.csv.tmp"
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["path", "error"])
            w.writeheader()
            w.writerows(errors)
        os.replace(tmp, parts / f"errors-{k:05d}.csv")


def _prepared(read: Callable[[str], bytes], path: str, prep, headers: bool = False) -> tuple[str, object]:
    """One image read, checked and squared (a worker thread's job): ``(path, (loaded, square, ood, header))`` or
    ``(path, error text)``; ``header``: with ``headers``, a DICOM file's header (no pixels), else None."""
    from .data.imageio import dicom_header, read_image
    from .explain.ood import check_image

    try:
        raw = read(path)
        name = Path(urlsplit(path).path).name or path
        image = read_image(raw, name)
        header = dicom_header(raw, name) if headers else None
        return path, (image, prep.square(image.pixels), check_image(image, raw), header)
    except CXRError as exc:
        return path, str(exc)
    except Exception as exc:  # noqa: BLE001 - one bad file never stops the run; its kind is recorded
        return path, f"could not be read ({type(exc).__name__})"


def score(source: Source, predictor, out: str | Path, model: str, *, workers: int = 2, batch: int = BATCH,
          progress: Callable[[int, int, int], None] | None = None, part_rows: int = PART_ROWS,
          should_stop: Callable[[], bool] | None = None, dicom_sr: str | Path | None = None) -> Summary:
    """Score every image of ``source`` with ``predictor`` into ``out`` (a .parquet path); see the module's text.
    ``predictor``: a :class:`cxrcore.predictor.Predictor`, or the same network on ONNX Runtime
    (:class:`cxrcore.runtime.OnnxScorer`).

    ``progress(done, todo, errors)`` after each part written (``done`` of the ``todo`` images this call scores);
    ``should_stop()`` is asked after each part: True ends the call there, without merging (``complete`` False;
    the same call later goes on from the parts).

    ``dicom_sr``: a folder that gets, for every DICOM image, a DICOM Structured Report of its row (each label's
    probability, threshold and call; no heatmap boxes: batch scoring computes no heatmaps) referencing the image,
    named by the image's SOP Instance UID, written before the row's part (so a resumed run has every report)."""
    import pandas as pd

    from .explain.trust import domain_notices
    from .inference import apply_temperature, logits_from_probs

    t0 = time.perf_counter()
    runtime = getattr(predictor, "runtime", "torch")   # an OnnxScorer (cxrcore.runtime) says so
    out = Path(out)
    if out.suffix.lower() != ".parquet":
        raise DataError(f"--out must name a .parquet file (the CSV is written beside it), not {out.name}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    card = predictor.card
    digest, labels = card.sha256(), list(predictor.labels)
    site = (card.metrics.get("site") or {}).get("name") or ""   # the site profile in use (Card.with_site), if any
    temps = card.temperature_list()
    columns = _columns(labels, temps is not None)
    parts = out.with_name(out.name + ".parts")
    meta = {"card_sha256": digest, "model": model, "columns": columns}
    if parts.exists():
        old = json.loads((parts / "meta.json").read_text()) if (parts / "meta.json").exists() else {}
        if old.get("card_sha256") != digest:
            raise DataError(f"{parts} holds the rows of another model ({old.get('model', 'unknown')}): remove it, "
                            "or write this model's table to another --out.")
    else:
        parts.mkdir()
        (parts / "meta.json").write_text(json.dumps(meta))
    if out.exists():
        head = pd.read_parquet(out)
        if list(head.columns) != columns or (len(head) and head["card_sha256"].iloc[0] != digest):
            raise DataError(f"{out} is another model's table (or another layout): write to another --out.")
    done, resumed = _done(parts, out)
    todo = [p for p in source.paths if p not in done]
    thresholds = np.array(card.threshold_list(), dtype=np.float32)
    k = 1 + max([int(f.stem.split("-")[1]) for f in parts.glob("part-*.parquet")]
                + [int(f.stem.split("-")[1]) for f in parts.glob("errors-*.csv")] + [0])
    scored = failed = reports = 0

    def batches() -> Iterator[list[str]]:
        for i in range(0, len(todo), part_rows):
            yield todo[i:i + part_rows]

    sr_folder = None if dicom_sr is None else Path(dicom_sr)
    if sr_folder is not None:
        sr_folder.mkdir(parents=True, exist_ok=True)

    def prepare(path: str):
        return _prepared(source.read, path, predictor.prep, headers=sr_folder is not None)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending = None
        chunks = batches()
        nxt = next(chunks, None)
        if nxt is not None:
            pending = pool.map(prepare, nxt)
        while nxt is not None:
            ready = list(pending)
            nxt = next(chunks, None)   # the next part decodes while this one is scored
            if nxt is not None:
                pending = pool.map(prepare, nxt)
            good = [(p, v) for p, v in ready if not isinstance(v, str)]
            errors = [{"path": p, "error": v} for p, v in ready if isinstance(v, str)]
            rows = []
            if good:
                squares = np.stack([v[1] for _, v in good])
                if hasattr(predictor, "score_squares"):
                    probs, embedding = predictor.score_squares(squares, batch_size=batch)
                else:
                    probs, embedding = predictor.predict_squares(squares, batch_size=batch), None
                scored_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
                cal = apply_temperature(logits_from_probs(probs), np.array(temps)) if temps is not None else None
                if sr_folder is not None:
                    reports += _write_reports(sr_folder, good, probs, thresholds, card, model)
                for j, (path, (image, _, ood, _)) in enumerate(good):
                    row = {"path": path, **{x: float(probs[j, i]) for i, x in enumerate(labels)},
                           **{f"{x} call": bool(probs[j, i] >= thresholds[i]) for i, x in enumerate(labels)}}
                    if cal is not None:
                        row.update({f"{x} calibrated": float(cal[j, i]) for i, x in enumerate(labels)})
                    row.update(ood="; ".join(ood.reasons) if ood.is_suspect else "",
                               warnings=",".join(n.code for n in domain_notices(card, image, model)),
                               model=model, card_sha256=digest, site=site, scored_at=scored_at,
                               **{f"image {s}": float(ood.stats.get(s, np.nan)) for s in IMAGE_STATS})
                    row[EMBEDDING] = None if embedding is None else embedding[j].astype(np.float32).tolist()
                    rows.append(row)
            _write_part(parts, k, rows, errors, columns)
            k += 1
            scored += len(ready)
            failed += len(errors)
            if progress:
                progress(scored, len(todo), failed)
            if should_stop is not None and nxt is not None and should_stop():
                list(pending)   # let the decoding threads finish the next part's reads before they are dropped
                return Summary(resumed + scored - failed, failed, round(time.perf_counter() - t0, 3), scored, resumed,
                               str(out), "", "", model, digest, labels, complete=False, runtime=runtime,
                               reports=reports)
    return _merge(source, parts, out, columns, Summary(0, 0, 0.0, scored, resumed, str(out), "", "", model, digest,
                                                       labels, runtime=runtime, reports=reports), t0)


def _write_reports(folder: Path, good: list, probs: np.ndarray, thresholds: np.ndarray, card, model: str) -> int:
    """The Structured Report of each DICOM image of a part (:func:`cxrcore.pacs.sr.structured_report`), each file
    written whole then renamed into place; how many."""
    from .pacs.sr import ModelIdentity, structured_report, write
    from .predictor import Prediction

    ident = ModelIdentity.of(model, card)
    written = 0
    for j, (_, (image, _, _, header)) in enumerate(good):
        if header is None:
            continue
        pred = Prediction(list(card.labels), probs[j], thresholds, np.zeros((len(card.labels), 0, 0), np.float32), {},
                          tuple(image.pixels.shape), cam_method="none (batch scoring computes no heatmaps)")
        target = folder / f"{header.SOPInstanceUID}.dcm"
        tmp = folder / f".{header.SOPInstanceUID}.dcm.tmp"
        write(structured_report(pred, header, ident), tmp)
        os.replace(tmp, target)
        written += 1
    return written


def _merge(source: Source, parts: Path, out: Path, columns: list[str], summary: Summary, t0: float) -> Summary:
    """Parts (and an earlier table) into ``out`` in input order, one row per path; the CSV and the errors beside
    it; the parts removed."""
    import shutil

    tables = ([out] if out.exists() else []) + sorted(parts.glob("part-*.parquet"))
    error_files = ([_errors_path(out)] if _errors_path(out).exists() else []) + sorted(parts.glob("errors-*.csv"))
    summary.rows, summary.errors = _write_table(source, tables, error_files, out, columns)
    shutil.rmtree(parts)
    summary.csv, summary.errors_csv = str(out.with_suffix(".csv")), str(_errors_path(out))
    summary.seconds = round(time.perf_counter() - t0, 3)
    return summary


def shard_of(path: str, shards: int) -> int:
    """Which of ``shards`` shards ``path`` belongs to: by a digest of the path, so the split does not depend on
    the order a folder is listed or a PACS answers in, and an image keeps its shard when the archive grows."""
    import hashlib

    return int.from_bytes(hashlib.sha1(path.encode()).digest()[:8], "big") % shards


def shard_source(source: Source, shard: int, shards: int) -> Source:
    """The images of ``source`` in shard ``shard`` (0-based) of ``shards``, in the source's order."""
    return Source([p for p in source.paths if shard_of(p, shards) == shard], source.read,
                  f"{source.describe}, shard {shard + 1} of {shards}")


def shard_table(folder: Path, shard: int) -> Path:
    """Where shard ``shard`` of a sharded scoring writes its own table (its errors beside it)."""
    return Path(folder) / f"shard-{shard:05d}.parquet"


def merge_shards(source: Source, folder: Path, shards: int, out: str | Path, columns: list[str],
                 summary: Summary) -> Summary:
    """Every shard's table (``folder``, :func:`shard_table`) into ``out`` in input order, as one unsharded run
    would have written it; the shards' folder removed. DataError when a shard's table is missing."""
    import shutil

    out = Path(out)
    tables = [shard_table(folder, k) for k in range(shards)]
    missing = [k + 1 for k, t in enumerate(tables) if not t.exists()]
    if missing:
        raise DataError(f"Shard(s) {', '.join(map(str, missing))} of {shards} have no table yet in {folder}.")
    t0 = time.perf_counter()
    errors = [_errors_path(t) for t in tables if _errors_path(t).exists()]
    summary.rows, summary.errors = _write_table(source, tables, errors, out, columns)
    shutil.rmtree(folder)
    summary.out, summary.csv, summary.errors_csv = str(out), str(out.with_suffix(".csv")), str(_errors_path(out))
    summary.seconds = round(summary.seconds + time.perf_counter() - t0, 3)
    summary.complete = True
    return summary


def _write_table(source: Source, tables: list[Path], error_files: list[Path], out: Path,
                 columns: list[str]) -> tuple[int, int]:
    """``tables`` into ``out`` (one row per path, the source's order), its CSV and the errors table beside it,
    each written whole then renamed into place; (rows, errors)."""
    import pandas as pd

    frames = [pd.read_parquet(f) for f in tables]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    table = table.drop_duplicates("path", keep="first")
    order = {p: i for i, p in enumerate(source.paths)}
    table = table.assign(_o=table["path"].map(order).fillna(len(order))).sort_values("_o", kind="stable").drop(
        columns="_o").reset_index(drop=True)
    errors = pd.concat([pd.read_csv(f, dtype=str) for f in error_files], ignore_index=True) if error_files \
        else pd.DataFrame(columns=["path", "error"])
    errors = errors.drop_duplicates("path", keep="last")
    errors = errors[~errors["path"].isin(set(table["path"]))]
    tmp = out.with_name(out.name + ".tmp")
    table.to_parquet(tmp, index=False)
    csv_path, err_path = out.with_suffix(".csv"), _errors_path(out)
    table.drop(columns=[EMBEDDING], errors="ignore").to_csv(csv_path.with_name(csv_path.name + ".tmp"), index=False)
    errors.to_csv(err_path.with_name(err_path.name + ".tmp"), index=False)
    os.replace(tmp, out)
    os.replace(csv_path.with_name(csv_path.name + ".tmp"), csv_path)
    os.replace(err_path.with_name(err_path.name + ".tmp"), err_path)
    return len(table), len(errors)
