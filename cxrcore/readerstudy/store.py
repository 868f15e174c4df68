"""Reader studies on disk: one SQLite file in the workspace (``reader_studies.sqlite``), WAL mode, a short
connection per operation and one write transaction per answer, so many readers can answer at once and a
reload, a closed tab or a server restart loses nothing that was answered.

Tables: ``studies`` (the set-up, as JSON), ``cases`` (image, truth, boxes, the model's output fixed at set-up),
``readers`` (name or signed-in user, a hash of their link's token, their case order), ``views`` (when a reader
was first shown a case in an arm, which locks the unaided answers of that case for an aided view, and when the
viewing began that the reading time runs from), ``answers`` (one row per reader, case, arm and finding: the
answer as it stands), ``answer_log`` (every answer given, changed ones included: the audit trail) and
``sessions`` (crossover: when each of a reader's two sessions started and ended).
"""
from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import workspace
from ..errors import ConfigError, CXRError
from ..sqlitedb import Database
from .design import StudyDesign


class StudyError(CXRError):
    """A reader-study operation that cannot be done as asked (nothing was written)."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, design TEXT NOT NULL, owner TEXT, created REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'open', source TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS cases (
    study_id TEXT NOT NULL, case_no INTEGER NOT NULL, image TEXT NOT NULL, source_id TEXT NOT NULL,
    truth TEXT NOT NULL, boxes TEXT NOT NULL DEFAULT '{}', model TEXT NOT NULL DEFAULT '{}', half INTEGER NOT NULL,
    PRIMARY KEY (study_id, case_no)
);
CREATE TABLE IF NOT EXISTS readers (
    study_id TEXT NOT NULL, reader_no INTEGER NOT NULL, name TEXT NOT NULL, user_id TEXT, token_hash TEXT UNIQUE,
    case_order TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (study_id, reader_no)
);
CREATE TABLE IF NOT EXISTS views (
    study_id TEXT NOT NULL, reader_no INTEGER NOT NULL, case_no INTEGER NOT NULL, arm TEXT NOT NULL,
    session INTEGER NOT NULL, shown_at REAL NOT NULL, visit TEXT, visit_at REAL,
    PRIMARY KEY (study_id, reader_no, case_no, arm)
);
CREATE TABLE IF NOT EXISTS answers (
    study_id TEXT NOT NULL, reader_no INTEGER NOT NULL, case_no INTEGER NOT NULL, arm TEXT NOT NULL,
    finding TEXT NOT NULL, rating REAL NOT NULL, mark_x REAL, mark_y REAL, session INTEGER NOT NULL,
    answered_at REAL NOT NULL, seconds REAL,
    PRIMARY KEY (study_id, reader_no, case_no, arm, finding)
);
CREATE TABLE IF NOT EXISTS answer_log (
    study_id TEXT NOT NULL, reader_no INTEGER NOT NULL, case_no INTEGER NOT NULL, arm TEXT NOT NULL,
    finding TEXT NOT NULL, rating REAL NOT NULL, mark_x REAL, mark_y REAL, session INTEGER NOT NULL,
    answered_at REAL NOT NULL, seconds REAL
);
CREATE INDEX IF NOT EXISTS answer_log_study ON answer_log (study_id, reader_no);
CREATE TABLE IF NOT EXISTS sessions (
    study_id TEXT NOT NULL, reader_no INTEGER NOT NULL, session INTEGER NOT NULL, started REAL NOT NULL,
    finished REAL,
    PRIMARY KEY (study_id, reader_no, session)
);
"""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_study_id(now: float | None = None) -> str:
    return "rs-" + time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + "-" + secrets.token_hex(2)


@dataclass(frozen=True)
class Study:
    id: str
    design: StudyDesign
    owner: str | None
    created: float
    status: str
    source: dict

    @property
    def name(self) -> str:
        return self.design.name


@dataclass(frozen=True)
class Case:
    """A case as the organiser and the analysis see it. A reader is shown only its number and its image."""

    number: int
    image: str
    source_id: str
    truth: dict            # finding -> 0 / 1
    boxes: dict            # finding -> [[x, y, w, h], ...] as fractions of the image
    model: dict            # finding -> the aided arm's probability (empty for an unaided-only study)
    half: int              # crossover: which half (0 / 1) of the cases


@dataclass(frozen=True)
class Reader:
    number: int
    name: str
    user_id: str | None
    order: tuple[int, ...]   # case numbers in this reader's reading order
    created: float


@dataclass(frozen=True)
class Answer:
    reader: int
    case: int
    arm: str
    finding: str
    rating: float
    mark: tuple[float, float] | None
    session: int
    answered_at: float
    seconds: float | None


def reading_order(case_numbers: list[int], seed: int, reader_no: int) -> list[int]:
    """This reader's order of the cases: a permutation seeded by (study seed, reader number), recorded."""
    rng = np.random.default_rng([int(seed), int(reader_no)])
    return [int(case_numbers[i]) for i in rng.permutation(len(case_numbers))]


class StudyStore:
    """The reader-study tables of ``path`` (default: the workspace's ``reader_studies.sqlite``)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path).expanduser() if path is not None else workspace.root() / "reader_studies.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = Database(self.path, synchronous="FULL")   # an answer given is an answer kept, power cut included
        try:
            with closing(self._connect()) as con:
                con.execute("PRAGMA journal_mode=WAL")
                con.executescript(_SCHEMA)
                columns = {r[1] for r in con.execute("PRAGMA table_info(views)")}
                for column, kind in (("visit", "TEXT"), ("visit_at", "REAL")):   # tables of the first version
                    if column not in columns:
                        con.execute(f"ALTER TABLE views ADD COLUMN {column} {kind}")
        except sqlite3.DatabaseError as exc:
            raise StudyError(f"The reader-study database {self.path} cannot be opened ({exc}). Move it away to "
                             "start a fresh one.") from exc

    def _connect(self) -> sqlite3.Connection:
        return self._db.connect()

    def _write(self):
        return self._db.write()

    def _read(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        return self._db.read(sql, args)

    # ------------------------------------------------------------------ studies and cases

    def create(self, design: StudyDesign, cases: list[dict], owner: str | None = None,
               source: dict | None = None, study_id: str | None = None) -> Study:
        """A new study with ``cases`` (dicts: image, source_id, truth, boxes, model), numbered 1..N in the order
        given; crossover halves from a permutation seeded by the design's seed."""
        design.check()
        if not cases:
            raise ConfigError("The study has no cases: choose at least one.")
        for i, c in enumerate(cases, 1):
            missing = [f for f in design.findings if c.get("truth", {}).get(f) not in (0, 1)]
            if missing:
                raise ConfigError(f"Case {i} ({c.get('source_id')}) has no 0/1 ground truth for "
                                  f"{', '.join(missing)}: give truth for every finding read.")
        sid = study_id or new_study_id()
        halves = np.zeros(len(cases), dtype=int)
        halves[np.random.default_rng([int(design.seed), 7]).permutation(len(cases))[len(cases) // 2:]] = 1
        now = time.time()
        with self._write() as con:
            con.execute("INSERT INTO studies (id, name, design, owner, created, status, source) VALUES (?,?,?,?,?,?,?)",
                        (sid, design.name, json.dumps(design.to_dict()), owner, now, "open", json.dumps(source or {})))
            con.executemany(
                "INSERT INTO cases (study_id, case_no, image, source_id, truth, boxes, model, half) "
                "VALUES (?,?,?,?,?,?,?,?)",
                [(sid, i, str(c["image"]), str(c.get("source_id") or Path(str(c["image"])).name),
                  json.dumps({f: int(c["truth"][f]) for f in design.findings}),
                  json.dumps(c.get("boxes") or {}), json.dumps(c.get("model") or {}), int(halves[i - 1]))
                 for i, c in enumerate(cases, 1)])
        return self.study(sid)

    @staticmethod
    def _study(row: sqlite3.Row) -> Study:
        return Study(row["id"], StudyDesign.from_dict(json.loads(row["design"])), row["owner"], row["created"],
                     row["status"], json.loads(row["source"] or "{}"))

    def study(self, study_id: str) -> Study:
        rows = self._read("SELECT * FROM studies WHERE id = ?", (study_id,))
        if not rows:
            raise StudyError(f"No reader study {study_id!r}; `cxr reader-study list` shows the studies.")
        return self._study(rows[0])

    def studies(self) -> list[Study]:
        return [self._study(r) for r in self._read("SELECT * FROM studies ORDER BY created DESC")]

    def set_status(self, study_id: str, status: str) -> None:
        if status not in ("open", "closed"):
            raise StudyError("A study is open or closed.")
        self.study(study_id)
        with self._write() as con:
            con.execute("UPDATE studies SET status = ? WHERE id = ?", (status, study_id))

    def cases(self, study_id: str) -> list[Case]:
        return [Case(r["case_no"], r["image"], r["source_id"], json.loads(r["truth"]), json.loads(r["boxes"]),
                     json.loads(r["model"]), r["half"])
                for r in self._read("SELECT * FROM cases WHERE study_id = ? ORDER BY case_no", (study_id,))]

    def case(self, study_id: str, number: int) -> Case:
        for c in self.cases(study_id):
            if c.number == number:
                return c
        raise StudyError(f"Study {study_id} has no case {number}.")

    # ------------------------------------------------------------------ readers

    def add_reader(self, study_id: str, name: str, user_id: str | None = None) -> tuple[Reader, str]:
        """A reader and the token of their personal link (shown once; only its hash is kept)."""
        name = (name or "").strip()
        if not name and not user_id:
            raise ConfigError("A reader needs a name (or a signed-in account).")
        study = self.study(study_id)
        numbers = [c.number for c in self.cases(study_id)]
        token = secrets.token_urlsafe(18)
        with self._write() as con:
            taken = {r["name"] for r in con.execute("SELECT name FROM readers WHERE study_id = ?", (study_id,))}
            if (name or user_id) in taken:
                raise ConfigError(f"Study {study_id} already has a reader named {name or user_id!r}.")
            if user_id and con.execute("SELECT 1 FROM readers WHERE study_id = ? AND user_id = ?",
                                       (study_id, user_id)).fetchone():
                raise ConfigError("That account already reads in this study.")
            n = con.execute("SELECT COALESCE(MAX(reader_no), 0) + 1 FROM readers WHERE study_id = ?",
                            (study_id,)).fetchone()[0]
            order = reading_order(numbers, study.design.seed, n)
            con.execute("INSERT INTO readers (study_id, reader_no, name, user_id, token_hash, case_order, created) "
                        "VALUES (?,?,?,?,?,?,?)",
                        (study_id, n, name or user_id, user_id, token_hash(token), json.dumps(order), time.time()))
        return self.reader(study_id, n), token

    def new_token(self, study_id: str, reader_no: int) -> str:
        """A new link for a reader (the old one stops working); their answers are kept."""
        self.reader(study_id, reader_no)
        token = secrets.token_urlsafe(18)
        with self._write() as con:
            con.execute("UPDATE readers SET token_hash = ? WHERE study_id = ? AND reader_no = ?",
                        (token_hash(token), study_id, reader_no))
        return token

    @staticmethod
    def _reader(row: sqlite3.Row) -> Reader:
        return Reader(row["reader_no"], row["name"], row["user_id"], tuple(json.loads(row["case_order"])),
                      row["created"])

    def reader(self, study_id: str, reader_no: int) -> Reader:
        rows = self._read("SELECT * FROM readers WHERE study_id = ? AND reader_no = ?", (study_id, int(reader_no)))
        if not rows:
            raise StudyError(f"Study {study_id} has no reader {reader_no}.")
        return self._reader(rows[0])

    def readers(self, study_id: str) -> list[Reader]:
        return [self._reader(r) for r in
                self._read("SELECT * FROM readers WHERE study_id = ? ORDER BY reader_no", (study_id,))]

    def by_token(self, token: str) -> tuple[str, Reader] | None:
        """(study id, reader) of a reader's link token; None for an unknown one."""
        if not token:
            return None
        rows = self._read("SELECT * FROM readers WHERE token_hash = ?", (token_hash(token),))
        return (rows[0]["study_id"], self._reader(rows[0])) if rows else None

    def by_user(self, user_id: str) -> list[tuple[str, Reader]]:
        """The studies a signed-in account reads in."""
        return [(r["study_id"], self._reader(r)) for r in
                self._read("SELECT * FROM readers WHERE user_id = ? ORDER BY created", (user_id,))]

    # ------------------------------------------------------------------ views, answers, sessions

    def views(self, study_id: str, reader_no: int) -> dict[tuple[int, str], tuple[int, float]]:
        """(case, arm) -> (session, first shown at)."""
        return {(r["case_no"], r["arm"]): (r["session"], r["shown_at"]) for r in
                self._read("SELECT * FROM views WHERE study_id = ? AND reader_no = ?", (study_id, reader_no))}

    def mark_shown(self, study_id: str, reader_no: int, case_no: int, arm: str, session: int,
                   now: float | None = None, visit: str | None = None) -> float:
        """Record that the case was shown in this arm; returns when it was first shown. ``visit``: the viewing
        it is shown in (the reading screen makes a new one for each read it puts up, each reload and each return
        to an earlier read, not for a contrast change): a new visit restarts the read's clock, so the reading
        time of an answer counts from the viewing it was given in, not from a first look days before."""
        now = now or time.time()
        with self._write() as con:
            con.execute("INSERT OR IGNORE INTO views (study_id, reader_no, case_no, arm, session, shown_at, visit, "
                        "visit_at) VALUES (?,?,?,?,?,?,?,?)", (study_id, reader_no, case_no, arm, session, now, visit, now))
            if visit is not None:
                con.execute("UPDATE views SET visit = ?, visit_at = ? WHERE study_id = ? AND reader_no = ? AND "
                            "case_no = ? AND arm = ? AND (visit IS NULL OR visit != ?)",
                            (visit, now, study_id, reader_no, case_no, arm, visit))
            return con.execute("SELECT shown_at FROM views WHERE study_id = ? AND reader_no = ? AND case_no = ? "
                               "AND arm = ?", (study_id, reader_no, case_no, arm)).fetchone()[0]

    def answers(self, study_id: str, reader_no: int | None = None) -> list[Answer]:
        """Each reader's answers as they stand (one per case, arm and finding: the last one given)."""
        return self._answers("answers", study_id, reader_no)

    def answer_log(self, study_id: str, reader_no: int | None = None) -> list[Answer]:
        """Every answer ever given, in the order given, changed ones included (the audit trail: the ``answers``
        table keeps only the last of each)."""
        return self._answers("answer_log", study_id, reader_no)

    def _answers(self, table: str, study_id: str, reader_no: int | None) -> list[Answer]:
        sql, args = f"SELECT * FROM {table} WHERE study_id = ?", (study_id,)
        if reader_no is not None:
            sql, args = sql + " AND reader_no = ?", (study_id, reader_no)
        return [Answer(r["reader_no"], r["case_no"], r["arm"], r["finding"], r["rating"],
                       (r["mark_x"], r["mark_y"]) if r["mark_x"] is not None else None, r["session"],
                       r["answered_at"], r["seconds"])
                for r in self._read(sql + " ORDER BY answered_at, rowid", args)]

    def write_answers(self, study_id: str, reader_no: int, case_no: int, arm: str, session: int,
                      ratings: dict[str, float], marks: dict[str, tuple[float, float] | None],
                      locked_if_seen: str | None = None, now: float | None = None) -> None:
        """Store a case's ratings in one transaction. ``locked_if_seen``: an arm whose view, once recorded,
        makes these answers final (the aided view locks the unaided answers); checked inside the same
        transaction, so an aided view shown meanwhile in another tab cannot be slipped past."""
        now = now or time.time()
        with self._write() as con:
            if locked_if_seen and con.execute(
                    "SELECT 1 FROM views WHERE study_id = ? AND reader_no = ? AND case_no = ? AND arm = ?",
                    (study_id, reader_no, case_no, locked_if_seen)).fetchone():
                raise StudyError(f"Your {arm} answer to this case can no longer be changed: the model's output "
                                 "for it has been shown to you, and the study keeps the answer you gave before.")
            shown = con.execute("SELECT COALESCE(visit_at, shown_at) FROM views WHERE study_id = ? AND "
                                "reader_no = ? AND case_no = ? AND arm = ?", (study_id, reader_no, case_no, arm)).fetchone()
            seconds = max(0.0, now - shown[0]) if shown else None   # from the start of this viewing
            columns = "study_id, reader_no, case_no, arm, finding, rating, mark_x, mark_y, session, answered_at, seconds"
            for finding, rating in ratings.items():
                mark = marks.get(finding)
                row = (study_id, reader_no, case_no, arm, finding, float(rating),
                       None if mark is None else float(mark[0]), None if mark is None else float(mark[1]),
                       session, now, seconds)
                con.execute(
                    f"INSERT INTO answers ({columns}) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
                    "ON CONFLICT (study_id, reader_no, case_no, arm, finding) DO UPDATE SET rating = excluded.rating, "
                    "mark_x = excluded.mark_x, mark_y = excluded.mark_y, answered_at = excluded.answered_at, "
                    "seconds = excluded.seconds", row)
                con.execute(f"INSERT INTO answer_log ({columns}) VALUES (?,?,?,?,?,?,?,?,?,?,?)", row)   # audit trail

    def sessions(self, study_id: str, reader_no: int) -> dict[int, tuple[float, float | None]]:
        return {r["session"]: (r["started"], r["finished"]) for r in
                self._read("SELECT * FROM sessions WHERE study_id = ? AND reader_no = ?", (study_id, reader_no))}

    def start_session(self, study_id: str, reader_no: int, session: int, now: float | None = None) -> None:
        with self._write() as con:
            con.execute("INSERT OR IGNORE INTO sessions (study_id, reader_no, session, started) VALUES (?,?,?,?)",
                        (study_id, reader_no, session, now or time.time()))

    def finish_session(self, study_id: str, reader_no: int, session: int, now: float | None = None) -> None:
        with self._write() as con:
            con.execute("UPDATE sessions SET finished = ? WHERE study_id = ? AND reader_no = ? AND session = ? "
                        "AND finished IS NULL", (now or time.time(), study_id, reader_no, session))
