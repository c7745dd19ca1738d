"""Live updates: one poller per process finds changed conversations and fans them out to every
open page of that process.

It reads the database, not the process's own events, so a change committed by any process or
replica (a message webhooked to another replica of a PostgreSQL database, an operator's reply
there) reaches every open page. However many browsers have the inbox open, the database sees
one cheap query per interval from each process: two index range scans on ``updated_at``,
skipped on SQLite while nothing was committed (``PRAGMA data_version``), and none at all while
nobody is watching.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import anyio.to_thread

from ..store import Store
from .operators import Operator

log = logging.getLogger("bot_core.inbox")

# Rows are found by updated_at, stamped before their transaction commits: looking this far back
# catches a row committed late by a slower writer (another process), and ``_seen`` drops repeats.
# Replicas stamp rows by their own clocks: keep them in sync (NTP), well within this.
LOOKBACK = timedelta(seconds=2)


class Subscription:
    """One open page: the conversation ids it may see arrive on ``queue`` (None: closing)."""

    def __init__(self, operator: Operator) -> None:
        self.operator = operator
        self.queue: asyncio.Queue[list[int] | None] = asyncio.Queue()


class Notifier:
    """Polls for changes while someone is subscribed. ``store`` gives the bot's store, which
    exists once the bot has started (after the app is made).

    ``generation`` moves on whenever what a page shows may have changed unseen: at every poll
    that found a change, and when polling starts again after nobody watched. A page rendered at
    one generation is still current while the generation stays."""

    def __init__(self, store: Callable[[], Store], interval: float) -> None:
        self.store = store
        self.interval = interval
        self.generation = 0
        self._subscriptions: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._version: int | None = None
        self._cursor = ""
        self._seen: dict[str, str] = {}  # "m<id>" or "c<id>" -> updated_at (strings: not tracked by the GC)

    def subscribe(self, operator: Operator) -> Subscription:
        subscription = Subscription(operator)
        self._subscriptions.add(subscription)
        if self._task is None or self._task.done():
            self.generation += 1  # changes made while nobody watched were not polled
            self._task = asyncio.get_running_loop().create_task(self._run())
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def close(self) -> None:
        """End every open stream (the server is stopping)."""
        for subscription in self._subscriptions:
            subscription.queue.put_nowait(None)
        self._subscriptions.clear()
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while self._subscriptions:
            await asyncio.sleep(self.interval)
            try:
                changed = await anyio.to_thread.run_sync(self._changes)
            except Exception:
                log.exception("cannot read the inbox's changes; trying again")
                continue
            if changed:
                self.generation += 1
            for subscription in list(self._subscriptions):
                visible = [cid for cid, profile in changed.items() if subscription.operator.sees(profile)]
                if visible:
                    subscription.queue.put_nowait(visible)

    def _changes(self) -> dict[int, str | None]:
        """Conversations whose messages or hands changed since the last call: id -> profile."""
        store = self.store()
        version = store.inbox_version()
        if version is not None and version == self._version:
            return {}
        self._version = version
        if not self._cursor:  # the first poll: start from now
            self._cursor = store.inbox_latest_change()
        changed: dict[int, str | None] = {}
        for kind, row_id, updated_at, conversation_id, profile in store.inbox_changes(_back(self._cursor)):
            key = f"{kind}{row_id}"
            if self._seen.get(key) != updated_at:
                self._seen[key] = updated_at
                changed[conversation_id] = profile
            self._cursor = max(self._cursor, updated_at)
        since = _back(self._cursor)
        self._seen = {key: at for key, at in self._seen.items() if at >= since}
        return changed


def _back(cursor: str) -> str:
    if not cursor:
        return ""
    return (datetime.fromisoformat(cursor) - LOOKBACK).isoformat(timespec="milliseconds")
