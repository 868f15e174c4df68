"""How many LLM requests a visitor may make with the server's own key (``OPENAI_API_KEY``) per hour.

On a shared server every visitor who leaves the key field blank spends the operator's key. The operator
sets ``CXR_LLM_REQUESTS_PER_HOUR`` (default 20 on a shared server, no limit on one's own machine); a
request over it is refused before anything is sent, with when the next one is possible and the way out
(the visitor's own key). Signed-in visitors are counted one by one; visitors who are not signed in are
counted together (a new browser session must not reset the count). Requests with a key the visitor
typed are not counted: they spend the visitor's key.

The count lives in the workspace (``llm_requests.sqlite``), so every app process and thread of one
server shares it; the check and the record happen under one write lock, so two requests at once cannot
both pass the last place.
"""
from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

from ..errors import AccessError

WINDOW_S = 3600.0
ANONYMOUS_POOL = "visitors who are not signed in"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (who TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS requests_who_at ON requests (who, at);
"""


def budget_path() -> Path:
    from .. import workspace

    return workspace.root() / "llm_requests.sqlite"


def pool_of(user) -> str:
    """Whose count a request goes to: a signed-in visitor's own, else the shared pool of the others."""
    return user.id if getattr(user, "signed_in", False) else ANONYMOUS_POOL


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    con.execute("PRAGMA busy_timeout=30000")
    con.executescript(_SCHEMA)
    return con


def take(who: str, per_hour: int, path: Path | None = None, now: float | None = None) -> int:
    """Record one request of ``who`` with the server's key, or raise AccessError when ``who`` made
    ``per_hour`` already in the last hour (nothing is recorded then). ``per_hour`` 0: no limit, nothing
    recorded. Returns how many requests ``who`` has left this hour (after this one; -1: no limit)."""
    if per_hour <= 0:
        return -1
    now = time.time() if now is None else now
    path = budget_path() if path is None else path
    try:
        with closing(_connect(path)) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                con.execute("DELETE FROM requests WHERE at <= ?", (now - WINDOW_S,))
                times = [r[0] for r in con.execute("SELECT at FROM requests WHERE who = ? ORDER BY at", (who,))]
                if len(times) >= per_hour:
                    con.execute("COMMIT")
                    wait = max(1, int(times[len(times) - per_hour] + WINDOW_S - now + 59) // 60)
                    raise AccessError(
                        f"This server allows {per_hour} explanation request{'s' if per_hour != 1 else ''} per hour "
                        f"with its own API key ({'yours' if who != ANONYMOUS_POOL else 'for ' + who}), and they "
                        f"are used up. The next is possible in about {wait} minute{'s' if wait != 1 else ''}. "
                        "Or enter your own API key in the LLM settings (it is not counted); the operator sets the "
                        "limit with CXR_LLM_REQUESTS_PER_HOUR.")
                con.execute("INSERT INTO requests (who, at) VALUES (?, ?)", (who, now))
                con.execute("COMMIT")
            except sqlite3.Error:
                con.execute("ROLLBACK")
                raise
    except sqlite3.Error as exc:
        raise AccessError(f"The LLM request count {path} cannot be read ({exc}); no request was sent. Move the "
                          "file away to start a fresh count.") from exc
    return per_hour - len(times) - 1
