"""Score new studies as they arrive in the PACS (issue 22 §3, "score new studies"): poll the PACS over DICOMweb,
score each new radiograph study with one model and store its results back beside the images, once.

**What a poll does.** A QIDO-RS search for CR / DX studies whose study date lies in the watch's window (from
``since``, ``YYYYMMDD``; by default from yesterday, so a watch started today takes what arrives from now on and
yesterday's late arrivals), then, for every study not yet scored by this model: its frontal images (WADO-RS; a
lateral view and this tool's own results are skipped), each one's prediction through the same pipeline as Compare
(:mod:`cxrcore.compare`), and for each image a DICOM Structured Report (every label's probability, threshold and
call, the heatmap boxes; unverified, not for diagnostic use) and, when the model calls something, the heatmap of
its most probable finding as a secondary capture, stored into the study (STOW-RS). A DICOMweb poll works with any
PACS; Orthanc's own change feed would be cheaper on Orthanc but is Orthanc's alone.

**Once, and nothing lost.** The watch's table (``pacs_watch.sqlite`` in the workspace) holds one row per (study,
model card digest): a study is claimed before it is scored and marked ``scored`` only after the PACS has accepted
its objects, so a restart, a second watch process or a crash never scores a study twice (a claim left by a dead
process is taken over after :data:`STALE_CLAIM_S`), and a study whose scoring failed is retried, with back-off,
up to :data:`MAX_TRIES` times. An unreachable PACS makes the whole poll fail: the watch says so in its log and
waits longer before each next try (:func:`backoff`: doubling, up to :data:`MAX_WAIT_S`), then goes on.

Run it with ``cxr pacs watch`` (in the foreground, or ``--background`` as a job of the Training page's queue) or
from the Training page; ``cxr pacs scored`` lists the table. Storing needs the operator's consent:
``CXR_PACS_STORE`` other than ``off``.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import monitorlog
from ..errors import CXRError
from ..sqlitedb import Database
from . import dicomweb

DB_NAME = "pacs_watch.sqlite"
MAX_TRIES = 3
STALE_CLAIM_S = 15 * 60
MAX_WAIT_S = 600.0
LATERAL = ("LL", "RL", "LATERAL", "LAT", "LLD", "RLD")
STATES = ("claimed", "scored", "failed", "skipped")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT NOT NULL,
    card_sha256 TEXT NOT NULL,
    model TEXT,
    state TEXT NOT NULL,
    tries INTEGER NOT NULL DEFAULT 0,
    claimed_by TEXT,
    claimed_at REAL,
    next_try REAL,
    scored_at REAL,
    images INTEGER,
    objects TEXT,
    calls TEXT,
    error TEXT,
    PRIMARY KEY (study_uid, card_sha256)
)"""


def db_path() -> Path:
    from .. import workspace

    return workspace.root() / DB_NAME


def backoff(failures: int, interval: float) -> float:
    """Seconds to wait after ``failures`` polls in a row failed: the interval, doubled per failure, at most
    :data:`MAX_WAIT_S` (and never less than the interval)."""
    return max(interval, min(MAX_WAIT_S, interval * 2 ** max(0, failures)))


@dataclass
class PollResult:
    """One poll: the studies it found in the window, scored now, skipped (no frontal radiograph), failed (with
    the reason), and left to others (claimed by another watch)."""

    found: int = 0
    scored: list[str] | None = None
    skipped: list[str] | None = None
    failed: dict[str, str] | None = None
    busy: int = 0

    def __post_init__(self):
        self.scored, self.skipped, self.failed = self.scored or [], self.skipped or [], self.failed or {}


class WatchTable:
    """The watch's table of studies (see the module's text)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else db_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = Database(self.path, synchronous="FULL")
        with self._db.write() as con:
            con.execute(_SCHEMA)
        self.me = f"{socket.gethostname()}:{os.getpid()}"

    def claim(self, study_uid: str, digest: str, model: str, now: float | None = None) -> bool:
        """Take ``study_uid`` for this process, if nobody scored it, nobody holds a fresh claim on it, and a failed
        try is due again; True when taken."""
        now = time.time() if now is None else now
        with self._db.write() as con:
            row = con.execute("SELECT * FROM studies WHERE study_uid = ? AND card_sha256 = ?",
                              (study_uid, digest)).fetchone()
            if row is None:
                con.execute("INSERT INTO studies (study_uid, card_sha256, model, state, claimed_by, claimed_at) "
                            "VALUES (?, ?, ?, 'claimed', ?, ?)", (study_uid, digest, model, self.me, now))
                return True
            due = (row["state"] == "failed" and row["tries"] < MAX_TRIES and (row["next_try"] or 0) <= now) or (
                row["state"] == "claimed" and now - (row["claimed_at"] or 0) > STALE_CLAIM_S)
            if not due:
                return False
            con.execute("UPDATE studies SET state = 'claimed', claimed_by = ?, claimed_at = ? WHERE study_uid = ? "
                        "AND card_sha256 = ?", (self.me, now, study_uid, digest))
            return True

    def finish(self, study_uid: str, digest: str, state: str, *, images: int = 0, objects: list[str] | None = None,
               calls: dict | None = None, error: str | None = None, interval: float = 60.0) -> None:
        """Record how this process's claim on ``study_uid`` ended (``scored``, ``skipped`` or ``failed``)."""
        if state not in STATES[1:]:
            raise ValueError(f"state must be one of {STATES[1:]}, not {state!r}")
        now = time.time()
        with self._db.write() as con:
            tries = con.execute("SELECT tries FROM studies WHERE study_uid = ? AND card_sha256 = ?",
                                (study_uid, digest)).fetchone()["tries"] + (state == "failed")
            con.execute("UPDATE studies SET state = ?, tries = ?, claimed_by = NULL, next_try = ?, scored_at = ?, "
                        "images = ?, objects = ?, calls = ?, error = ? WHERE study_uid = ? AND card_sha256 = ?",
                        (state, tries, now + backoff(tries, interval) if state == "failed" else None,
                         now if state == "scored" else None, images, json.dumps(objects or []),
                         json.dumps(calls or {}), error, study_uid, digest))

    def rows(self, digest: str | None = None, limit: int = 500) -> list[dict]:
        """The table, newest first (one model's rows with ``digest``)."""
        where, args = ("WHERE card_sha256 = ?", (digest,)) if digest else ("", ())
        return [dict(r) | {"objects": json.loads(r["objects"] or "[]"), "calls": json.loads(r["calls"] or "{}")}
                for r in self._db.read(f"SELECT * FROM studies {where} ORDER BY COALESCE(scored_at, claimed_at) DESC "
                                       "LIMIT ?", (*args, limit))]


def _frontal(hits) -> list:
    return [h for h in hits if h.view_position.strip().upper() not in LATERAL]


def score_study(config: dicomweb.PacsConfig, study_uid: str, predictor, model: str,
                score_log=None) -> tuple[int, list[str], dict]:
    """Score one study's frontal images and store their results in the PACS: (images scored, stored SOP Instance
    UIDs, {image SOP UID: the labels called}). PacsError when the PACS cannot be read or refuses the objects.
    ``score_log``: where each image's row for drift monitoring goes (:mod:`cxrcore.monitorlog`; its ref a hash of
    the SOP Instance UID)."""
    from ..compare import compare, load_image
    from .sr import ModelIdentity, heatmap_capture, source_of, structured_report

    images = _frontal(dicomweb.study_images(config, study_uid))
    ident = ModelIdentity.of(model, predictor.card)
    stored, calls = [], {}
    for hit in images:
        raw = dicomweb.retrieve_bytes(config, hit)
        name = f"{hit.sop_uid}.dcm"
        image, raw = load_image(raw, name)
        result = compare(image, {model: predictor}, name, raw=raw)
        pred = result.predictions[model]
        monitorlog.record(score_log, source="pacs-watch", name=model, predictor=predictor, image=image, prediction=pred,
                          ood=result.ood, ref=monitorlog.ref_of(hit.sop_uid))
        header, _ = source_of(raw, name, pred.image_shape)
        called = [lab for lab, yes in zip(pred.labels, pred.positive) if yes]
        objects = [structured_report(pred, header, ident)]
        if called:   # the heatmap of the most probable finding the model calls
            top = max(called, key=lambda lab: pred.probs[list(pred.labels).index(lab)])
            objects.append(heatmap_capture(pred, top, image.pixels, header, ident))
        stored += dicomweb.store(config, objects)
        calls[hit.sop_uid] = called
    return len(images), stored, calls


def poll(config: dicomweb.PacsConfig, predictor, model: str, table: WatchTable, *, since: str = "",
         interval: float = 60.0, log: Callable[[str], None] = print,
         should_stop: Callable[[], bool] | None = None) -> PollResult:
    """One poll (see the module's text). PacsError when the search itself fails (the PACS is unreachable)."""
    since = since or (dt.date.today() - dt.timedelta(days=1)).strftime("%Y%m%d")
    studies = dicomweb.search_studies(config, date_from=since, modalities=dicomweb.RADIOGRAPHY, limit=100_000)
    digest = predictor.card.sha256()
    result = PollResult(found=len(studies))
    score_log = monitorlog.ScoreLog() if monitorlog.enabled() else None
    for study in sorted(studies, key=lambda s: s.date):   # oldest first: the order they came in, roughly
        if should_stop is not None and should_stop():
            break
        if not table.claim(study.study_uid, digest, model):
            result.busy += 1
            continue
        try:
            n, stored, calls = score_study(config, study.study_uid, predictor, model, score_log)
        except CXRError as exc:
            table.finish(study.study_uid, digest, "failed", error=str(exc), interval=interval)
            result.failed[study.study_uid] = str(exc)
            log(f"study {study.study_uid}: not scored ({exc}); tried again later")
            continue
        if n == 0:
            table.finish(study.study_uid, digest, "skipped", error="no frontal radiograph in the study")
            result.skipped.append(study.study_uid)
            log(f"study {study.study_uid}: skipped (no frontal radiograph)")
            continue
        table.finish(study.study_uid, digest, "scored", images=n, objects=stored, calls=calls)
        result.scored.append(study.study_uid)
        found = sorted({lab for c in calls.values() for lab in c})
        log(f"study {study.study_uid}: {n} image(s) scored, {len(stored)} object(s) stored"
            + (f"; called: {', '.join(found)}" if found else "; nothing called"))
    return result


def watch(config: dicomweb.PacsConfig, predictor, model: str, table: WatchTable, *, since: str = "",
          interval: float = 60.0, log: Callable[[str], None] = print, should_stop: Callable[[], bool] = lambda: False,
          polls: int | None = None, sleep: Callable[[float], None] | None = None) -> int:
    """Poll every ``interval`` seconds until ``should_stop()`` (or ``polls`` polls); returns the studies scored.
    A failed poll (an unreachable PACS) is logged and the next one waits longer (:func:`backoff`)."""
    if config.store == "off":
        raise dicomweb.PacsError(f"Scoring new studies stores results in the PACS, which is off here: the operator "
                                 f"allows it with {dicomweb.ENV_STORE}=on-request.")
    scored, failures, done = 0, 0, 0

    def wait(seconds: float) -> None:
        if sleep is not None:
            sleep(seconds)
            return
        end = time.monotonic() + seconds
        while time.monotonic() < end and not should_stop():
            time.sleep(min(0.5, max(0.0, end - time.monotonic())))

    log(f"watching {config.host} for new CR/DX studies (from {since or 'yesterday'}) every {interval:g} s with {model}")
    while not should_stop():
        try:
            result = poll(config, predictor, model, table, since=since, interval=interval, log=log,
                          should_stop=should_stop)
        except dicomweb.PacsError as exc:
            failures += 1
            pause = backoff(failures, interval)
            log(f"poll failed ({exc}); next try in {pause:.0f} s")
        else:
            failures = 0
            pause = interval
            scored += len(result.scored)
            if result.scored or result.failed:
                log(f"poll: {result.found} study(ies) in the window, {len(result.scored)} scored now, "
                    f"{len(result.failed)} failed")
        done += 1
        if polls is not None and done >= polls:
            break
        wait(pause)
    return scored
