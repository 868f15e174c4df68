"""What a deployment scores one image at a time, kept for drift monitoring without the images (issue 23 §3): the
REST service's predictions (``cxr serve``) and the PACS watch's (``cxr pacs watch``). Batch scoring keeps the same
in its table (:mod:`cxrcore.score`).

One row per image in ``monitoring.sqlite`` in the workspace: when (UTC), which source, the model's name, its
network's digest (weights, architecture, preprocessing: :func:`cxrcore.runtime.network_digest`, so new thresholds
or a site keep one stream) and card digest, the site profile used, each label's probability, the image statistics of
:data:`cxrcore.score.IMAGE_STATS`, the penultimate-layer embedding projected as a scored table keeps it, the
out-of-distribution reasons, and ``ref``: a hash of the image's bytes (REST) or of its SOP Instance UID (PACS),
which tells repeats apart and names nothing. No pixel, no file name, no DICOM attribute is kept: DICOM patient data
never leaves the process this way.

On by default; ``CXR_MONITOR_LOG=off`` turns it off (for the REST service and the watch alike). A row that cannot be
written is logged as a warning and the answer goes out as it would have.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .sqlitedb import Database

DB_NAME = "monitoring.sqlite"
SOURCES = ("rest", "pacs-watch")
ENV = "CXR_MONITOR_LOG"
log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scored (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    scored_at TEXT NOT NULL,
    source TEXT NOT NULL,
    model TEXT NOT NULL,
    network TEXT NOT NULL,
    card_sha256 TEXT NOT NULL,
    site TEXT NOT NULL DEFAULT '',
    probs TEXT NOT NULL,
    stats TEXT NOT NULL,
    embedding BLOB,
    ood TEXT NOT NULL DEFAULT '',
    ref TEXT NOT NULL DEFAULT ''
)"""
_INDEX = "CREATE INDEX IF NOT EXISTS scored_by_network ON scored (network, scored_at)"


def enabled(environ=None) -> bool:
    return (os.environ if environ is None else environ).get(ENV, "on").strip().lower() not in ("off", "0", "no",
                                                                                               "false")


def db_path() -> Path:
    from . import workspace

    return workspace.root() / DB_NAME


def ref_of(text: str | bytes) -> str:
    """An opaque reference for an image (its bytes, or its SOP Instance UID): a truncated SHA-256."""
    return hashlib.sha256(text if isinstance(text, bytes) else text.encode()).hexdigest()[:20]


class ScoreLog:
    """The log (see the module's text); ``path`` default the workspace's."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else db_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = Database(self.path)
        with self._db.write() as con:
            con.execute(_SCHEMA)
            con.execute(_INDEX)

    def append(self, *, source: str, model: str, network: str, card_sha256: str, site: str,
               probs: dict[str, float], stats: dict[str, float], embedding: np.ndarray | None, ood: str,
               ref: str, when: datetime | None = None) -> None:
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, not {source!r}")
        when = (when or datetime.now(timezone.utc)).astimezone(timezone.utc)
        with self._db.write() as con:
            con.execute("INSERT INTO scored (scored_at, source, model, network, card_sha256, site, probs, stats, "
                        "embedding, ood, ref) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (when.isoformat(timespec="seconds"), source, model, network, card_sha256, site or "",
                         json.dumps({k: round(float(v), 6) for k, v in probs.items()}),
                         json.dumps({k: round(float(v), 6) for k, v in stats.items()}),
                         None if embedding is None else np.asarray(embedding, np.float32).tobytes(), ood or "", ref))

    def streams(self) -> list[dict]:
        """Each (model, network) the log holds: how many rows, the first and last time, the sources."""
        rows = self._db.read("SELECT model, network, COUNT(*) AS n, MIN(scored_at) AS first, MAX(scored_at) AS "
                             "last, GROUP_CONCAT(DISTINCT source) AS sources FROM scored GROUP BY model, network "
                             "ORDER BY last DESC")
        return [dict(r) | {"sources": sorted((r["sources"] or "").split(","))} for r in rows]

    def frame(self, network: str, source: str | None = None):
        """The rows of one network as a table shaped like :func:`cxrcore.score.score`'s (a column per label, the
        ``image …`` columns, ``embedding``, ``scored_at``, ``path`` = the ref), oldest first."""
        import pandas as pd

        from .score import EMBEDDING, IMAGE_STATS

        where, args = "WHERE network = ?", [network]
        if source:
            where += " AND source = ?"
            args.append(source)
        rows = self._db.read(f"SELECT * FROM scored {where} ORDER BY scored_at, id", tuple(args))
        out = []
        for r in rows:
            stats = json.loads(r["stats"])
            emb = np.frombuffer(r["embedding"], dtype=np.float32).tolist() if r["embedding"] is not None else None
            out.append({"path": r["ref"], **json.loads(r["probs"]), "ood": r["ood"], "model": r["model"],
                        "card_sha256": r["card_sha256"], "site": r["site"], "scored_at": r["scored_at"],
                        "source": r["source"], **{f"image {s}": stats.get(s, np.nan) for s in IMAGE_STATS},
                        EMBEDDING: emb})
        return pd.DataFrame(out)


def record(log_: ScoreLog | None, *, source: str, name: str, predictor, image, prediction, ood, ref: str) -> None:
    """One image's row: ``predictor`` (the model as used, its site's card), the ``image`` it read
    (:class:`cxrcore.data.imageio.LoadedImage`), the ``prediction`` it answered and the OOD check's result. The
    embedding costs one more forward pass of the backbone (no gradients); a model without a split head has none.
    Never raises: a failure is a warning in the server's log."""
    if log_ is None:
        return
    try:
        from .runtime import network_digest

        t0 = time.perf_counter()
        _, emb = predictor.score_squares(predictor.prep.square(image.pixels)[None])
        card = predictor.card
        log_.append(source=source, model=name, network=network_digest(card), card_sha256=card.sha256(),
                    site=(card.metrics.get("site") or {}).get("name") or "",
                    probs={x: float(p) for x, p in zip(prediction.labels, prediction.probs)},
                    stats=dict(ood.stats) if ood is not None else {}, embedding=None if emb is None else emb[0],
                    ood="; ".join(ood.reasons) if ood is not None and ood.is_suspect else "", ref=ref)
        log.debug("monitoring row written in %.1f ms", 1000 * (time.perf_counter() - t0))
    except Exception as exc:  # noqa: BLE001 - monitoring never costs the user their answer
        log.warning("the monitoring log could not be written (%s)", type(exc).__name__)
