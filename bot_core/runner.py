"""Running a bot for a moment inside a CLI command, beside or instead of a server.

``bot-core send``, ``chat`` and ``explain`` work on the same database a server uses. A command
beside a running server only queues (the server sends), and ``chat`` refuses to run a sandbox
bot on a database a server is using, so commands first ask :func:`database_in_use`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from .bot import Bot
from .config import Config
from .store import is_postgres


def database_in_use(path: str | Path) -> bool:
    """True when another connection (another process, usually a server) has the database open.

    On PostgreSQL: when a replica's heartbeat is recent (:func:`.store.postgres.replicas_alive`).
    SQLite grants an exclusive lock only to a lone connection; asking for one without waiting
    tells whether anyone else holds the file open, idle or not. A missing file is not in use.
    """
    if is_postgres(path):
        from .store.postgres import replicas_alive

        return replicas_alive(str(path))
    path = Path(path)
    if not path.exists():
        return False
    probe = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        probe.execute("PRAGMA locking_mode = EXCLUSIVE")
        probe.execute("BEGIN EXCLUSIVE")
        probe.execute("COMMIT")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        probe.close()


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[Bot]:
    """A started bot: it resumes the database's unfinished work, as ``serve`` would."""
    bot = Bot(config)
    await bot.start()
    try:
        yield bot
    finally:
        await bot.stop()


@asynccontextmanager
async def queueing(config: Config) -> AsyncIterator[Bot]:
    """A bot that only writes to the database: for queueing messages a running server will send.

    Its loops never run: the server's sender picks new outbox rows up within a second.
    """
    bot = Bot(config)
    bot.open()
    try:
        yield bot
    finally:
        bot.close()
