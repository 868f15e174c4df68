"""How this project uses SQLite for tables many processes and threads write at once (the job table, the
reader-study tables): one connection per operation (a connection is never shared between threads), autocommit,
a 30 s wait on a busy database, and ``BEGIN IMMEDIATE`` where a read-then-write must be atomic."""
from __future__ import annotations

import sqlite3
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterator


class Database:
    """The SQLite file ``path``. ``synchronous``: ``NORMAL`` (WAL-safe, fast) or ``FULL`` (a committed row
    survives a power cut too)."""

    def __init__(self, path: str | Path, synchronous: str = "NORMAL"):
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        self.path = Path(path)
        self.synchronous = synchronous

    def connect(self) -> sqlite3.Connection:
        """A new connection (rows as :class:`sqlite3.Row`, autocommit); close it when done."""
        con = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA busy_timeout=30000")
        con.execute(f"PRAGMA synchronous={self.synchronous}")
        return con

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A connection inside ``BEGIN IMMEDIATE``: committed when the block ends, rolled back when it raises."""
        with closing(self.connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def read(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        """The rows of one query."""
        with closing(self.connect()) as con:
            return con.execute(sql, args).fetchall()
