"""The job table: one SQLite file in the workspace, shared by the app, the CLI and the runners.

The database is in WAL mode, so readers never block the single writer and a job's runner can
update its row while the Training page polls. Every operation opens its own short-lived
connection and holds a write lock only for one statement, which makes the store safe across
processes and threads (SQLite WAL needs a local file system, not NFS/SMB).

Statuses: ``queued`` (row created, process starting) -> ``running`` -> ``succeeded`` | ``failed``
| ``cancelled``.
"""
from __future__ import annotations

import json
import secrets
import sqlite3
import time
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterator

from .. import workspace
from ..errors import JobError

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")
ENDED = ("succeeded", "failed", "cancelled")
BACKENDS = ("local",)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id        TEXT PRIMARY KEY,
    name      TEXT NOT NULL DEFAULT '',
    status    TEXT NOT NULL,
    backend   TEXT NOT NULL DEFAULT 'local',
    config    TEXT NOT NULL DEFAULT '{}',
    run_dir   TEXT NOT NULL,
    pid       INTEGER,
    created   REAL NOT NULL,
    started   REAL,
    finished  REAL,
    error     TEXT,
    exit_code INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created);
"""


@dataclass
class Job:
    """One row of the ``jobs`` table; ``config`` is the training config as a dict."""

    id: str
    name: str
    status: str
    backend: str
    config: dict
    run_dir: str
    pid: int | None = None
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    exit_code: int | None = None

    @property
    def active(self) -> bool:
        """Queued or running (as far as the row says; `local.refresh` reconciles with the process)."""
        return self.status in ACTIVE

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    @property
    def path(self) -> Path:
        return Path(self.run_dir)

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish, or to now while running."""
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started

    def to_dict(self) -> dict:
        return asdict(self)


_COLUMNS = tuple(f.name for f in fields(Job))
_WRITABLE = frozenset(_COLUMNS) - {"id"}


def new_job_id(now: float | None = None) -> str:
    """Short, sortable and unique enough: ``20261122-023512-ab12`` (local time + 4 hex digits)."""
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + "-" + secrets.token_hex(2)


class JobStore:
    """The ``jobs`` table of ``path`` (default: the workspace's ``jobs.sqlite``)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path).expanduser() if path is not None else workspace.jobs_db()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with closing(self._connect()) as con:
                mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                con.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise JobError(f"The job database {self.path} cannot be opened ({exc}). Move it away to start "
                           "a fresh one; the run folders are kept.") from exc
        self.journal_mode = str(mode).lower()

    def __repr__(self) -> str:
        return f"JobStore({str(self.path)!r})"

    # ------------------------------------------------------------------ plumbing

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: autocommit; explicit BEGIN IMMEDIATE where a read-then-write must be atomic.
        con = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA busy_timeout=30000")
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with closing(self._connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    @staticmethod
    def _row_to_job(row: sqlite3.Row) -> Job:
        d = dict(row)
        try:
            d["config"] = json.loads(d["config"] or "{}")
        except json.JSONDecodeError:
            d["config"] = {}
        return Job(**{k: d.get(k) for k in _COLUMNS})

    @staticmethod
    def _encode(fields_: dict) -> dict:
        bad = set(fields_) - _WRITABLE
        if bad:
            raise JobError(f"Unknown job field(s): {', '.join(sorted(bad))}. Fields: {', '.join(sorted(_WRITABLE))}.")
        out = dict(fields_)
        if "status" in out and out["status"] not in STATUSES:
            raise JobError(f"Unknown job status {out['status']!r}; use one of {', '.join(STATUSES)}.")
        if "config" in out:
            out["config"] = json.dumps(out["config"] or {})
        if "run_dir" in out and out["run_dir"] is not None:
            out["run_dir"] = str(out["run_dir"])
        return out

    # ------------------------------------------------------------------ API

    def create(self, config: dict, name: str = "", backend: str = "local", run_dir: str | Path | None = None) -> Job:
        """A new ``queued`` row. ``run_dir`` defaults to ``<workspace>/runs/<id>`` and must be absent or empty."""
        if backend not in BACKENDS:
            raise JobError(f"Unknown job backend {backend!r}; available: {', '.join(BACKENDS)}.")
        try:
            config_text = json.dumps(config or {})
        except (TypeError, ValueError) as exc:
            raise JobError(f"The job config cannot be stored as JSON: {exc}.") from exc
        explicit = run_dir is not None
        if explicit:
            _check_run_dir(Path(run_dir).expanduser())
        for _ in range(20):
            now = time.time()
            job_id = new_job_id(now)
            folder = Path(run_dir).expanduser() if explicit else workspace.runs() / job_id
            if not explicit and folder.exists() and any(folder.iterdir()):
                continue  # a leftover folder with this name; draw another id
            folder = folder.resolve()
            try:
                with self._write() as con:
                    con.execute(
                        "INSERT INTO jobs (id, name, status, backend, config, run_dir, created) VALUES (?,?,?,?,?,?,?)",
                        (job_id, name or "", "queued", backend, config_text, str(folder), now))
            except sqlite3.IntegrityError:
                continue  # id collision: same second, same 4 hex digits
            return self.get(job_id)
        raise JobError("Could not draw a unique job id; try again.")

    def get(self, job_id: str) -> Job:
        with closing(self._connect()) as con:
            row = con.execute("SELECT * FROM jobs WHERE id = ?", (str(job_id),)).fetchone()
        if row is None:
            raise JobError(f"No job with id {job_id!r} in {self.path}. `cxr jobs list` shows the job ids.")
        return self._row_to_job(row)

    def list(self, limit: int | None = 100, status: str | tuple | None = None) -> list[Job]:
        """Newest first; ``status`` filters by one status or a tuple of them."""
        sql, args = "SELECT * FROM jobs", []
        if status:
            wanted = (status,) if isinstance(status, str) else tuple(status)
            sql += f" WHERE status IN ({','.join('?' * len(wanted))})"
            args.extend(wanted)
        sql += " ORDER BY created DESC, rowid DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        with closing(self._connect()) as con:
            rows = con.execute(sql, args).fetchall()
        return [self._row_to_job(r) for r in rows]

    def update(self, job_id: str, **fields_) -> Job:
        """Set columns of one row; returns the updated job (JobError for an unknown id or field)."""
        enc = self._encode(fields_)
        if enc:
            with self._write() as con:
                cur = con.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in enc)} WHERE id = ?",
                                  (*enc.values(), str(job_id)))
                if cur.rowcount == 0:
                    raise JobError(f"No job with id {job_id!r} in {self.path}. `cxr jobs list` shows the job ids.")
        return self.get(job_id)

    def mark(self, job_id: str, status: str, **fields_) -> Job:
        """Set the status; ``started`` (running) or ``finished`` (ended statuses) default to now."""
        return self.update(job_id, **_status_fields(status, fields_))

    def transition(self, job_id: str, from_status: str | tuple, status: str, **fields_) -> bool:
        """Compare-and-set: mark only if the row's status is still one of ``from_status``.

        Returns whether the row changed. Used where a runner and a watcher may race (the runner
        reports its own end; the watcher only marks a job whose row still says it is running).
        """
        enc = self._encode(_status_fields(status, fields_))
        wanted = (from_status,) if isinstance(from_status, str) else tuple(from_status)
        with self._write() as con:
            cur = con.execute(
                f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in enc)} WHERE id = ? "
                f"AND status IN ({','.join('?' * len(wanted))})",
                (*enc.values(), str(job_id), *wanted))
            changed = cur.rowcount > 0
        if not changed:
            self.get(job_id)  # JobError for an unknown id
        return changed

    def delete(self, job_id: str) -> None:
        """Remove a row (not its run folder). Refused while the job is queued or running."""
        job = self.get(job_id)
        if job.active:
            raise JobError(f"Job {job_id} is {job.status}; cancel it first (`cxr jobs cancel {job_id}`).")
        with self._write() as con:
            con.execute("DELETE FROM jobs WHERE id = ?", (str(job_id),))


def _status_fields(status: str, fields_: dict) -> dict:
    if status not in STATUSES:
        raise JobError(f"Unknown job status {status!r}; use one of {', '.join(STATUSES)}.")
    out = {"status": status, **fields_}
    if status == "running":
        out.setdefault("started", time.time())
    elif status in ENDED:
        out.setdefault("finished", time.time())
    return out


def _check_run_dir(folder: Path) -> None:
    if folder.exists():
        if not folder.is_dir():
            raise JobError(f"The run folder {folder} is a file. Choose another run folder.")
        if any(folder.iterdir()):
            raise JobError(f"The run folder {folder} already exists and is not empty. Choose another run folder "
                           "or remove that one, so an earlier run is not overwritten.")
