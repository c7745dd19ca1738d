"""Operators: the people who use the inbox, their Argon2 password hashes and granted profiles.

Functions take a sqlite3 connection so the CLI (through the Store) and the inbox's own read
connection (in a worker thread) share one set of queries.
"""

from __future__ import annotations

import functools
import json
import re
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ..store import iso

# argon2-cffi's defaults follow RFC 9106's second recommended option (Argon2id, 64 MiB).
_hasher = PasswordHasher()
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
MIN_PASSWORD = 8


@dataclass(frozen=True)
class Operator:
    """An operator; ``profiles`` empty means every profile."""

    name: str
    profiles: tuple[str, ...] = ()

    def sees(self, profile: str | None) -> bool:
        return not self.profiles or profile in self.profiles


def check_new(name: str, password: str) -> str | None:
    """What is wrong with a new operator's name or password, or None."""
    if not NAME.fullmatch(name):
        return "a name is 1 to 64 letters, digits, '_', '.', '@' or '-', starting with a letter or digit"
    if len(password) < MIN_PASSWORD:
        return f"the password must be at least {MIN_PASSWORD} characters"
    return None


def add(conn: sqlite3.Connection, name: str, password: str, profiles: Iterable[str], now: float) -> bool:
    """Store a new operator; False if the name is taken."""
    cursor = conn.execute(
        "INSERT OR IGNORE INTO operators (name, password_hash, profiles, created_at) VALUES (?, ?, ?, ?)",
        (name, _hasher.hash(password), json.dumps(sorted(set(profiles))), iso(now)),
    )
    return bool(cursor.rowcount)


def remove(conn: sqlite3.Connection, name: str) -> bool:
    return bool(conn.execute("DELETE FROM operators WHERE name = ?", (name,)).rowcount)


def everyone(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT name, profiles, created_at FROM operators ORDER BY name").fetchall()
    return [{"name": r[0], "profiles": json.loads(r[1]), "created_at": r[2]} for r in rows]


def find(conn: sqlite3.Connection, name: str) -> Operator | None:
    row = conn.execute("SELECT name, profiles FROM operators WHERE name = ?", (name,)).fetchone()
    return Operator(row[0], tuple(json.loads(row[1]))) if row else None


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the name is unknown, so a wrong name costs as long as a wrong password.

    Made on first use: an Argon2 hash takes 64 MiB and tens of milliseconds, too much for import time."""
    return _hasher.hash("no such operator")


def authenticate(conn: sqlite3.Connection, name: str, password: str) -> Operator | None:
    """The operator if ``password`` is theirs. Slow on purpose (Argon2): call it off the event loop."""
    row = conn.execute("SELECT password_hash, profiles FROM operators WHERE name = ?", (name,)).fetchone()
    try:
        _hasher.verify(row[0] if row else _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return None
    return Operator(name, tuple(json.loads(row[1]))) if row else None
