"""Operators: the people who use the inbox, their Argon2 password hashes and granted profiles.

Writes take a connection of ``store.transaction()`` (either engine); reads go through the store's
``inbox_operators``, which blocks: the inbox calls them in a worker thread.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ..store import Store, iso

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


def add(conn: Any, name: str, password: str, profiles: Iterable[str], now: float) -> bool:
    """Store a new operator (``conn``: a store transaction's); False if the name is taken."""
    cursor = conn.execute(
        "INSERT INTO operators (name, password_hash, profiles, created_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (name, _hasher.hash(password), json.dumps(sorted(set(profiles))), iso(now)),
    )
    return bool(cursor.rowcount)


def remove(conn: Any, name: str) -> bool:
    return bool(conn.execute("DELETE FROM operators WHERE name = ?", (name,)).rowcount)


def everyone(store: Store) -> list[dict[str, Any]]:
    return [{"name": r["name"], "profiles": json.loads(r["profiles"]), "created_at": r["created_at"]}
            for r in store.inbox_operators()]  # fmt: skip


def find(store: Store, name: str) -> Operator | None:
    rows = store.inbox_operators(name)
    return Operator(name, tuple(json.loads(rows[0]["profiles"]))) if rows else None


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the name is unknown, so a wrong name costs as long as a wrong password.

    Made on first use: an Argon2 hash takes 64 MiB and tens of milliseconds, too much for import time."""
    return _hasher.hash("no such operator")


def authenticate(store: Store, name: str, password: str) -> Operator | None:
    """The operator if ``password`` is theirs. Slow on purpose (Argon2): call it off the event loop."""
    rows = store.inbox_operators(name)
    try:
        _hasher.verify(rows[0]["password_hash"] if rows else _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return None
    return Operator(name, tuple(json.loads(rows[0]["profiles"]))) if rows else None
