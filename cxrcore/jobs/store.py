"""The job table: one SQLite file in the workspace, shared by the app, the CLI and the runners.

The database is in WAL mode, so readers never block the single writer and a job's runner can
update its row while the Training page polls. Every operation opens its own short-lived
connection and holds a write lock only for one statement, which makes the store safe across
processes and threads (SQLite WAL needs a local file system, not NFS/SMB).

Statuses: ``queued`` (row created, process starting) -> ``running`` -> ``succeeded`` | ``failed``
| ``cancelled``.
"""
from __future__ import annotations

import copy
import json
import secrets
import sqlite3
import time
from contextlib import closing
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .. import workspace
from ..errors import JobError
from ..sqlitedb import Database

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")
ENDED = ("succeeded", "failed", "cancelled")
# The job backends, declared once: the job table, dispatch (their implementations), the CLI's --backend
# and the Training page read them.
BACKENDS = ("local", "slurm")

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
    exit_code INTEGER,
    backend_id TEXT,
    gpu_ids   TEXT,
    note      TEXT,
    owner     TEXT
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created);
"""

# Columns added after the first release: (name, SQL type), added to older databases on open.
_ADDED_COLUMNS = (("backend_id", "TEXT"), ("gpu_ids", "TEXT"), ("note", "TEXT"), ("owner", "TEXT"))


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
    backend_id: str | None = None     # the backend's own id (Slurm job id); None for local jobs
    gpu_ids: list | None = None       # local: GPU indices given to the job (CUDA_VISIBLE_DEVICES); None until placed
    note: str | None = None           # what a queued job waits for ("waiting for 1 GPU(s)", Slurm's reason); an
    #                                   ended one: how it ended when its status does not say (stopped early)
    owner: str | None = None          # who launched it (cxrcore.hosting.User.id); None: before owners were recorded

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


class CapReached(JobError):
    """A launch (or resume) refused because the person already has ``count`` queued or running jobs and the
    server allows ``cap`` at once; nothing was created or changed."""

    def __init__(self, message: str, count: int = 0, cap: int = 0):
        super().__init__(message)
        self.count, self.cap = int(count), int(cap)


def new_job_id(now: float | None = None) -> str:
    """Short, sortable and unique enough: ``20261122-023512-ab12`` (local time + 4 hex digits)."""
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + "-" + secrets.token_hex(2)


class JobStore:
    """The ``jobs`` table of ``path`` (default: the workspace's ``jobs.sqlite``)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path).expanduser() if path is not None else workspace.jobs_db()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = Database(self.path)
        try:
            with closing(self._connect()) as con:
                mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                con.executescript(_SCHEMA)
                _migrate(con)
        except sqlite3.DatabaseError as exc:
            raise JobError(f"The job database {self.path} cannot be opened ({exc}). Move it away to start "
                           "a fresh one; the run folders are kept.") from exc
        self.journal_mode = str(mode).lower()
        self._launch: tuple | None = None  # (owner, cap, same_person) of launching_as; None: no owner recorded

    def launching_as(self, owner: str, cap: int = 0, same_person=None) -> "JobStore":
        """This table, for one launcher: rows it creates record ``owner``, and creating one is refused
        (:class:`CapReached`) when ``cap`` > 0 and ``same_person(row_owner)`` holds for ``cap`` queued or
        running rows already; the count and the insert happen under one write lock, so two launches at once
        cannot both pass. A resume is a launch too: :meth:`transition` from an ended status back to queued
        or running is refused the same way (the row keeps its owner). A new object: the store it came from
        is unchanged (threads share stores)."""
        clone = copy.copy(self)
        clone._launch = (str(owner), int(cap or 0), same_person or (lambda o: o == owner))
        return clone

    def __repr__(self) -> str:
        return f"JobStore({str(self.path)!r})"

    # ------------------------------------------------------------------ plumbing

    def _connect(self) -> sqlite3.Connection:
        return self._db.connect()

    def _write(self):
        return self._db.write()

    @staticmethod
    def _row_to_job(row: sqlite3.Row) -> Job:
        d = dict(row)
        try:
            d["config"] = json.loads(d["config"] or "{}")
        except json.JSONDecodeError:
            d["config"] = {}
        try:
            d["gpu_ids"] = json.loads(d["gpu_ids"]) if d.get("gpu_ids") is not None else None
        except json.JSONDecodeError:
            d["gpu_ids"] = None
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
        if "gpu_ids" in out and out["gpu_ids"] is not None:
            out["gpu_ids"] = json.dumps([int(i) for i in out["gpu_ids"]])
        if "backend_id" in out and out["backend_id"] is not None:
            out["backend_id"] = str(out["backend_id"])
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
                    owner = None
                    if self._launch is not None:
                        owner = self._launch[0]
                        self._check_cap(con)
                    con.execute(
                        "INSERT INTO jobs (id, name, status, backend, config, run_dir, created, owner) "
                        "VALUES (?,?,?,?,?,?,?,?)",
                        (job_id, name or "", "queued", backend, config_text, str(folder), now, owner))
            except sqlite3.IntegrityError:
                continue  # id collision: same second, same 4 hex digits
            return self.get(job_id)
        raise JobError("Could not draw a unique job id; try again.")

    def _check_cap(self, con: sqlite3.Connection, besides: str | None = None) -> None:
        """CapReached when this launcher (:meth:`launching_as`) has its cap of queued + running rows
        (``besides``: a row not counted, the one being resumed). Called inside the write that adds one."""
        if self._launch is None:
            return
        _, cap, same = self._launch
        if cap <= 0:
            return
        rows = con.execute(f"SELECT id, owner FROM jobs WHERE status IN ({','.join('?' * len(ACTIVE))})", ACTIVE)
        mine = sum(1 for job_id, o in rows if job_id != besides and same(o))
        if mine >= cap:
            raise CapReached(f"You have {mine} job(s) queued or running; this server allows {cap} per person at "
                             "once. Wait for one to end or cancel one.", mine, cap)

    def count_active(self, same_person) -> int:
        """Queued + running rows whose owner ``same_person(owner)`` holds (a look, not a reservation: the
        launch itself counts again under its write lock)."""
        with closing(self._connect()) as con:
            rows = con.execute(f"SELECT owner FROM jobs WHERE status IN ({','.join('?' * len(ACTIVE))})",
                               ACTIVE).fetchall()
        return sum(1 for (o,) in rows if same_person(o))

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

    def update_active(self, job_id: str, **fields_) -> bool:
        """Set columns only while the row is still queued or running; returns whether it changed.

        For notes a watcher writes ("Slurm: RUNNING") that must not land on a row the runner has
        meanwhile marked ended.
        """
        enc = self._encode(fields_)
        if not enc:
            return False
        with self._write() as con:
            cur = con.execute(
                f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in enc)} WHERE id = ? "
                f"AND status IN ({','.join('?' * len(ACTIVE))})", (*enc.values(), str(job_id), *ACTIVE))
            changed = cur.rowcount > 0
        if not changed:
            self.get(job_id)  # JobError for an unknown id
        return changed

    def mark(self, job_id: str, status: str, **fields_) -> Job:
        """Set the status; ``started`` (running) or ``finished`` (ended statuses) default to now."""
        return self.update(job_id, **_status_fields(status, fields_))

    def transition(self, job_id: str, from_status: str | tuple, status: str, **fields_) -> bool:
        """Compare-and-set: mark only if the row's status is still one of ``from_status``.

        Returns whether the row changed. Used where a runner and a watcher may race (the runner
        reports its own end; the watcher only marks a job whose row still says it is running).
        From ended statuses back to queued / running (a resume) on a store of :meth:`launching_as`, the
        launcher's cap is checked in the same write: CapReached, the row unchanged.
        """
        enc = self._encode(_status_fields(status, fields_))
        wanted = (from_status,) if isinstance(from_status, str) else tuple(from_status)
        with self._write() as con:
            if status in ACTIVE and not set(wanted) & set(ACTIVE):
                self._check_cap(con, besides=str(job_id))
            cur = con.execute(
                f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in enc)} WHERE id = ? "
                f"AND status IN ({','.join('?' * len(wanted))})",
                (*enc.values(), str(job_id), *wanted))
            changed = cur.rowcount > 0
        if not changed:
            self.get(job_id)  # JobError for an unknown id
        return changed

    def place_waiting(self, universe: list[int], start) -> list[str]:
        """Give GPUs to local jobs waiting for them and start them, atomically across processes.

        Under one write lock: GPUs held by active local jobs are counted, then every waiting job
        (local, queued, no process, ``gpus`` > 0, no ``gpu_ids`` yet) is considered in creation
        order; one that fits gets its ids and is started by ``start(job, ids) -> pid`` while the
        lock is held (so no other process hands out the same GPUs or starts the job twice). A job
        that does not fit gets a "waiting for N GPU(s)" note. ``start`` raising marks that job
        failed with the message. Returns the ids of the jobs started.
        """
        universe = sorted({int(i) for i in universe})
        started: list[str] = []
        with self._write() as con:
            rows = con.execute("SELECT * FROM jobs WHERE backend = 'local' AND status IN ('queued', 'running') "
                               "ORDER BY created, rowid").fetchall()
            jobs = [self._row_to_job(r) for r in rows]
            use: dict[int, int] = {i: 0 for i in universe}  # gpu -> number of active jobs on it
            for j in jobs:
                for i in j.gpu_ids or []:
                    use[int(i)] = use.get(int(i), 0) + 1
            for j in jobs:
                need = _int(j.config.get("gpus"))
                if j.status != "queued" or j.pid is not None or j.gpu_ids is not None or need <= 0:
                    continue
                if j.config.get("share_gpus"):
                    pool = sorted(universe, key=lambda i: (use.get(i, 0), i))  # least loaded first
                else:
                    pool = [i for i in universe if use.get(i, 0) == 0]
                if len(pool) < need:
                    busy = sorted(i for i in universe if use.get(i, 0))
                    note = (f"waiting for {need} GPU(s): {len(universe) - len(busy)} of {len(universe)} free"
                            + (f" (in use: {', '.join(map(str, busy))})" if busy else ""))
                    if note != j.note:
                        con.execute("UPDATE jobs SET note = ? WHERE id = ?", (note, j.id))
                    continue
                ids = pool[:need]
                try:
                    pid = int(start(j, ids))
                except Exception as exc:  # noqa: BLE001 - recorded in the row
                    con.execute("UPDATE jobs SET status = 'failed', finished = ?, error = ?, note = NULL WHERE id = ?",
                                (time.time(), f"The job's process could not be started: {exc}", j.id))
                    continue
                for i in ids:
                    use[i] = use.get(i, 0) + 1
                con.execute("UPDATE jobs SET gpu_ids = ?, pid = ?, note = NULL WHERE id = ?",
                            (json.dumps(ids), pid, j.id))
                started.append(j.id)
        return started

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
        # notes describe a live job ("Slurm: RUNNING", "waiting for GPUs"); an ended job's, only what its
        # runner says of its end when the status alone does not ("Stopped early: ...", jobs.runner.final_state)
        out.setdefault("note", None)
    return out


def _int(v) -> int:
    try:
        return int(v or 0)
    except (TypeError, ValueError):
        return 0


def _migrate(con: sqlite3.Connection) -> None:
    """Add the columns newer versions use to a database created by an older one."""
    have = {r[1] for r in con.execute("PRAGMA table_info(jobs)").fetchall()}
    for name, kind in _ADDED_COLUMNS:
        if name not in have:
            try:
                con.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
            except sqlite3.OperationalError as exc:  # another process added it meanwhile
                if "duplicate column" not in str(exc).lower():
                    raise


def _check_run_dir(folder: Path) -> None:
    if folder.exists():
        if not folder.is_dir():
            raise JobError(f"The run folder {folder} is a file. Choose another run folder.")
        if any(folder.iterdir()):
            raise JobError(f"The run folder {folder} already exists and is not empty. Choose another run folder "
                           "or remove that one, so an earlier run is not overwritten.")
