"""A PostgreSQL schema of one's own on a shared server, for the tests and the benchmark alike:
each test or benchmark set-up works in a fresh schema, dropped after it."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote


def unreachable(url: str) -> str | None:
    """Why the PostgreSQL at ``url`` does not answer (its error's first line), or None when it does."""
    import psycopg  # only with PostgreSQL in use

    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0]
    return None


def _admin(url: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement)


@contextmanager
def schema_of_its_own(url: str, prefix: str = "test") -> Iterator[str]:
    """``url`` with its search_path set to a new schema, which is dropped (with all in it) on leaving."""
    schema = f"{prefix}_{secrets.token_hex(6)}"
    _admin(url, f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in url else "?"
    try:
        yield f"{url}{separator}options={quote(f'-csearch_path={schema}', safe='')}"
    finally:
        _admin(url, f"DROP SCHEMA {schema} CASCADE")
