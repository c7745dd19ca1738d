"""The inbox's reads: its own SQLite connections, used from worker threads, never the event loop.

The bot's connection belongs to the event loop, where the webhook hot path writes; a page query
that takes milliseconds runs here instead, on a connection per worker thread (WAL lets them read
beside the writer without waiting for it).
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread

from ..phone import normalize_number
from ..store import ACCOUNT
from .operators import Operator

T = TypeVar("T")
PAGE = 50  # conversations a list page shows
THREAD = 200  # the latest messages a conversation page shows
SEARCHED = 200_000  # text search reads this many latest messages: a bounded scan, not the whole history
_NUMBER = re.compile(r"[0-9+()\s.-]*[0-9][0-9+()\s.-]*")  # a search that is (part of) a phone number


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA query_only = ON")
    return conn


class Reader:
    """Runs read functions ``fn(conn, ...)`` in worker threads, one connection per thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path)
            with self._lock:
                self._all.append(conn)
        return conn

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(lambda: fn(self._conn(), *args))

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


def _rows(conn: sqlite3.Connection, sql: str, params: dict[str, Any] | tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    cursor = conn.execute(sql, params)
    keys = [d[0] for d in cursor.description]
    return [dict(zip(keys, row, strict=True)) for row in cursor.fetchall()]


def _visible(operator: Operator, params: dict[str, Any], column: str = "c.profile") -> str:
    """A WHERE term limiting rows to the operator's profiles (empty for an operator who sees all)."""
    if not operator.profiles:
        return ""
    names = []
    for i, profile in enumerate(operator.profiles):
        params[f"p{i}"] = profile
        names.append(f":p{i}")
    return f" AND {column} IN ({', '.join(names)})"


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def conversations(conn: sqlite3.Connection, operator: Operator, *, waiting: bool = False, query: str = "",
                  before: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """A page of conversations, latest message first, with that message."""
    params: dict[str, Any] = {"limit": PAGE}
    where = "c.last_message_at IS NOT NULL" + _visible(operator, params)
    if waiting:
        where += " AND c.waiting = 1"  # verbatim: the partial index conversations_waiting
    if before:  # "<last_message_at> <id>" of the previous page's last row: ties in a millisecond stay in order
        at, _, after_id = before.rpartition(" ")
        where += " AND (c.last_message_at < :at OR (c.last_message_at = :at AND c.id < :id))"
        params.update(at=at, id=int(after_id) if after_id.isdigit() else 0)
    query = query.strip()
    if _NUMBER.fullmatch(query):
        try:  # a whole number (+ and country code) reads one index entry; part of one scans
            if not query.startswith("+"):
                raise ValueError("part of a number")
            params["q"] = normalize_number(query)
            where += " AND c.their_number = :q"
        except ValueError:
            params["q"] = _like(re.sub(r"[^0-9]", "", query))
            # As a subquery SQLite scans the compact their_number index, not the table in date order.
            where += " AND c.id IN (SELECT id FROM conversations WHERE their_number LIKE :q ESCAPE '\\')"
    elif query:
        params["q"] = _like(query)
        where += (" AND c.id IN (SELECT conversation_id FROM mdrs WHERE id > (SELECT MAX(id) FROM mdrs) - :window"
                  " AND text LIKE :q ESCAPE '\\')")  # fmt: skip
        params["window"] = SEARCHED
    return _rows(conn, (
        "SELECT c.id, c.profile, c.our_number, c.their_number, c.with_person, c.operator AS handler,"
        " c.waiting, c.last_message_at, m.direction, m.text, m.status, m.operator"
        " FROM conversations c LEFT JOIN mdrs m ON m.id = c.last_mdr_id"
        f" WHERE {where} ORDER BY c.last_message_at DESC, c.id DESC LIMIT :limit"), params)  # fmt: skip


def conversation(conn: sqlite3.Connection, operator: Operator, conversation_id: int) -> dict[str, Any] | None:
    """One conversation with its latest messages (oldest first), or None if the operator may not see it."""
    params: dict[str, Any] = {"id": conversation_id}
    rows = _rows(conn, (
        "SELECT c.id, c.profile, c.our_number, c.their_number, c.with_person, c.operator AS handler,"
        " c.handoff_reason, c.waiting, COALESCE((SELECT MAX(opted_out) FROM optouts WHERE number = c.their_number"
        " AND profile IN (c.profile, :account)), 0) AS opted_out FROM conversations c"  # or account-wide
        f" WHERE c.id = :id{_visible(operator, params)}"), {**params, "account": ACCOUNT})  # fmt: skip
    if not rows:
        return None
    messages = _rows(conn, (
        "SELECT id, direction, text, status, error, operator, created_at FROM mdrs WHERE conversation_id = ?"
        " ORDER BY id DESC LIMIT ?"), (conversation_id, THREAD))  # fmt: skip
    return {**rows[0], "messages": messages[::-1]}
