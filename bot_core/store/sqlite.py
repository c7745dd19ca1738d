"""The SQLite engine of the store contract (see the package docstring for the design).

Three connections to one WAL file. The *writer* connection runs every write on one thread of
its own (:meth:`Store.call`), so a write that waits for the file lock (another process holds
``BEGIN IMMEDIATE``) or fails (the disk is full) never stalls the event loop; writes queued
while the thread is busy (webhook inserts in a burst, finishes, send marks) share one
transaction, each in its own savepoint (group commit). The *reader* connection answers the
reads, which WAL never makes wait for a writer. The *plugin* connection is ``bot.db``.

Any thread may call the synchronous methods (tests and the CLI do): a lock per connection
keeps their statements apart. A busy timeout of a few seconds, not 30, makes a write behind
a long-held lock fail soon; the unit that made it retries it after a backoff. The wait is
ours, not SQLite's busy handler: that one sleeps up to 100 ms between tries, so a process
behind another's back-to-back group commits missed the gaps for a second and answered 503;
:meth:`Store.transaction` tries ``BEGIN IMMEDIATE`` again every millisecond at most.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache, partial
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from ..errors import ForeignStatusError
from ..logs import Masker
from ..messages import Conversation, DeliveryStatus, InboundMessage, Media
from ..timers import Timer
from . import (
    ACCOUNT,
    PENDING,
    RECEIVED,
    SENDING,
    CancelEffect,
    ConsentEffect,
    Context,
    Effect,
    LeaseLost,
    Outbound,
    OutboundDraft,
    SchemaTooNew,
    SendEffect,
    StatusEvent,
    TimerEffect,
)  # fmt: skip
from .schema import IN_OUTBOX, MIGRATIONS

T = TypeVar("T")
# A row as sqlite3 returns it, and the parameters of a statement (positional or named).
Row = tuple[Any, ...]
Params = Sequence[Any] | Mapping[str, Any]

# Telnyx delivery statuses only move forward: a late "sent" never overwrites "delivered".
_STATUS_RANK = {PENDING: 0, SENDING: 1, "queued": 2, "sending": 3, "sent": 4}
_FINAL_RANK = 5
_UNIT_TABLES = ("mdrs", "timers", "delivery_events")


def iso(ts: float) -> str:
    """A UTC ISO 8601 timestamp that sorts as text."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


class Store:
    """The bot's SQLite database. Create one per process; call :meth:`close` when done.

    ``clock`` stamps rows and decides what is due (a test's fake clock); leases always run on
    the wall clock, so moving a fake clock on never takes a unit from the process running it.
    """

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time, secrets: Iterable[str] = (),
                 busy_timeout: float = 5.0) -> None:  # fmt: skip
        path = Path(path)
        self.path: Path | str = path  # a PostgreSQL engine keeps its URL here
        self.clock = clock
        self.lease_clock: Callable[[], float] = time.time
        # Error texts come from plugins and from Telnyx; whatever they quote, no secret is stored.
        self._masker = Masker(secrets)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout = busy_timeout
        self.conn = self._connect(busy_timeout)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA busy_timeout = 0")  # transaction() waits for the lock itself
        self._lock = threading.RLock()
        self._reader = self._connect(busy_timeout)
        self._read_lock = threading.Lock()
        self.db = sqlite_utils.Database(self._connect(busy_timeout))
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="bot-core-store")
        self._jobs: list[_Job] = []
        self._jobs_lock = threading.Lock()
        self._inbox_readers = _InboxReaders(path)
        self._migrate()

    def _connect(self, busy_timeout: float) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout)
        # NORMAL in WAL survives a process crash (the kill -9 case); only power loss can lose
        # the last transactions. FULL would fsync every webhook.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        for conn in (self.conn, self._reader, self.db.conn):
            conn.close()
        self._inbox_readers.close()

    def _migrate(self) -> None:
        with self.transaction():
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise SchemaTooNew(f"{self.path} has schema version {version}; this bot-core knows "
                                   f"{len(MIGRATIONS)}: upgrade bot-core")  # fmt: skip
            for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
                migration(sqlite_utils.Database(self.conn))
                self.conn.execute(f"PRAGMA user_version = {number}")

    def listen(self, wake: Callable[[], object]) -> None:
        """No wake-ups from other processes on SQLite: their work is found by polling."""

    # -- threads -----------------------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` (a method of this store) on the writer thread, off the event loop."""
        return await self.submit(partial(fn, *args, **kwargs))

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` (a read of this store) for a unit being handled: inline here, where the
        reader connection answers in microseconds (less than a hop to a thread); off the event
        loop on PostgreSQL, where each read is a network round trip."""
        return fn(*args, **kwargs)

    def submit(self, job: Callable[[], T]) -> asyncio.Future[T]:
        """Queue ``job`` for the writer thread. Jobs queued while it is busy run together in one
        transaction (group commit: one commit, one wake-up of each thread, for all of them); a
        job that fails fails alone (see :meth:`_drain`). Cancel the future to give up waiting:
        a job not started yet is then skipped."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._jobs_lock:
            self._jobs.append((job, future, loop))
            if len(self._jobs) > 1:
                return future  # a drain is queued already and takes this one too
        loop.run_in_executor(self._executor, self._drain)
        return future

    def _drain(self) -> None:
        """Run the queued jobs in one transaction. They run bare first; if one raises (a lost
        lease, a refused status), the transaction is rolled back and they run again, each in a
        savepoint of its own. Two statements per job saved, in the common case, are a third of
        the writer thread's statements, each of which lets the event loop's thread take the GIL."""
        with self._jobs_lock:
            jobs, self._jobs = self._jobs, []
        jobs = [job for job in jobs if not job[1].done()]  # done: its caller gave up (a webhook got 503)
        if not jobs:
            return
        try:
            try:
                with self.transaction() as conn:
                    results = _run_bare(conn, jobs)
            except _JobFailed as failed:
                results = self._run_apart(jobs, failed.index, failed.error)
        except Exception as exc:  # BEGIN or COMMIT failed (locked, disk full): every job failed
            results = [(future, None, exc) for _, future, _ in jobs]
        jobs[0][2].call_soon_threadsafe(_settle, results)

    def _run_apart(self, jobs: list[_Job], failed: int, error: Exception) -> _Results:
        """The jobs again, each in a savepoint, but the one that failed: its error is its result."""
        results: _Results = []
        with self.transaction() as conn:
            for index, (job, future, _) in enumerate(jobs):
                if index == failed:
                    results.append((future, None, error))
                    continue
                conn.execute("SAVEPOINT job")
                try:
                    results.append((future, job(), None))
                except Exception as exc:
                    if not conn.in_transaction:  # SQLite rolled it all back (disk full): all failed
                        raise
                    conn.execute("ROLLBACK TO job")
                    results.append((future, None, exc))
                conn.execute("RELEASE job")
        return results

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; nested use joins the outer one."""
        with self._lock:  # a test or CLI thread beside the writer thread must not join its transaction
            if self.conn.in_transaction:
                yield self.conn
                return
            self._begin()
            try:
                yield self.conn
            except BaseException:
                if self.conn.in_transaction:  # SQLite may have rolled back already (SQLITE_FULL)
                    self.conn.execute("ROLLBACK")
                raise
            try:
                self.conn.execute("COMMIT")
            except sqlite3.Error:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise

    def _begin(self) -> None:
        """``BEGIN IMMEDIATE``, tried again after 0.1 ms, then at most every 1 ms, until
        ``busy_timeout``: a process waiting for another's lock takes it within a millisecond
        of its release (SQLite's handler sleeps up to 100 ms), for ~10 µs of CPU per try."""
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.0001
        while True:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.001)

    def _statement(self, sql: str, params: Params) -> sqlite3.Cursor:
        """One write that is its own transaction (or joins the open one)."""
        with self.transaction() as conn:
            return conn.execute(sql, params)

    def _read(self, sql: str, params: Params = ()) -> list[Row]:
        with self._read_lock:
            return self._reader.execute(sql, params).fetchall()

    def _read_one(self, sql: str, params: Params = ()) -> Row | None:
        rows = self._read(sql, params)
        return rows[0] if rows else None

    def _aggregate(self, sql: str, params: Params = ()) -> Row:
        """The one row of a query of aggregates only (COUNT, max), which SQLite always returns."""
        return self._read(sql, params)[0]

    def now(self) -> str:
        return iso(self.clock())

    def redact(self, text: str | None) -> str | None:
        """``text`` with every configured secret masked."""
        return self._masker.mask(text) if text else text

    def healthy(self, owner: str = "") -> bool:
        """Whether the database takes a write now: a heartbeat row, rewritten (fails when full)."""
        try:
            with self.transaction() as conn:
                conn.execute("INSERT OR REPLACE INTO heartbeats (owner, at) VALUES (?, ?)", (owner, time.time()))
        except sqlite3.Error:
            return False
        return True

    # -- inbox -------------------------------------------------------------------------------

    def add_inbound(self, message: InboundMessage, *, status: str = RECEIVED, error: str | None = None) -> int | None:
        """Store an inbound MDR keyed by Telnyx's id; None if that id is already stored."""
        now = self.now()
        media = json.dumps([m.__dict__ for m in message.media]) if message.media else None
        others = json.dumps(message.other_recipients) if message.other_recipients else None
        cursor = self._statement(
            "INSERT INTO mdrs (direction, profile, from_number, to_number, text,"
            " media, status, telnyx_id, error, other_recipients, created_at, updated_at)"
            " VALUES ('inbound', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (message.profile, message.from_number, message.to_number, message.text, media,
             status, message.id, self.redact(error), others, now, now),
        )  # fmt: skip
        return cursor.lastrowid if cursor.rowcount else None

    def insert_inbound(self, message: InboundMessage, *, status: str = RECEIVED,
                       error: str | None = None) -> asyncio.Future[int | None]:  # fmt: skip
        """:meth:`add_inbound` on the writer thread, committed with whatever else is queued."""
        return self.submit(partial(self.add_inbound, message, status=status, error=error))

    def pending_inbound(self) -> list[InboundMessage]:
        """Inbound messages acknowledged but not yet handled, oldest first."""
        rows = self._read(f"SELECT {_INBOUND_COLUMNS} FROM mdrs WHERE status = '{RECEIVED}' ORDER BY id")
        return [_inbound(row) for row in rows]

    def inbound(self, mdr_id: int) -> InboundMessage | None:
        row = self._read_one(f"SELECT {_INBOUND_COLUMNS} FROM mdrs WHERE id = ? AND direction = 'inbound'", (mdr_id,))
        return _inbound(row) if row else None

    def finish_inbound(
        self,
        mdr_id: int,
        *,
        status: str,
        conversation: Conversation | None = None,
        replies: Sequence[OutboundDraft] = (),
        claimed_by: str | None = None,
        error: str | None = None,
        effects: Sequence[Effect] = (),
        owner: str | None = None,
    ) -> list[int]:
        """Record the outcome of handling one message: state, effects, replies and status, atomically.

        With ``owner``, only while that process holds the message's lease (else LeaseLost).
        """
        now = self.now()
        conversation_id = conversation.id if conversation else None
        with self.transaction():
            self._finish("mdrs", mdr_id, owner, status=status, claimed_by=claimed_by, error=self.redact(error),
                         conversation_id=conversation_id, updated_at=now)  # fmt: skip
            self._save_state(conversation, now)
            self._apply(effects, now)
            return [self._add_outbound(d, conversation_id, mdr_id, now) for d in replies]

    def _finish(self, table: str, row_id: int, owner: str | None, **fields: Any) -> None:
        """Set ``fields`` and clear the lease of one unit, if ``owner`` still holds it."""
        columns = ", ".join(f"{name} = ?" for name in fields)
        sql = f"UPDATE {table} SET {columns}, lease_owner = NULL, lease_until = NULL WHERE id = ?"
        params = [*fields.values(), row_id]
        if owner is not None:
            sql += " AND lease_owner = ?"
            params.append(owner)
        if not self.conn.execute(sql, params).rowcount:
            raise LeaseLost(f"{table} row {row_id} is no longer held by {owner}")

    def _save_state(self, conversation: Conversation | None, now: str) -> None:
        if conversation is not None:
            self.conn.execute("UPDATE conversations SET state = ?, updated_at = ? WHERE id = ?",
                              (json.dumps(conversation.state), now, conversation.id))  # fmt: skip

    # -- claims ------------------------------------------------------------------------------

    def _claim(self, table: str, select: str, params: dict[str, Any], owner: str, lease: float,
               returning: str) -> list[Row]:  # fmt: skip
        """Lease the rows ``select`` picks (ids) to ``owner``; returns ``returning`` (id first) of each, by id."""
        now = self.lease_clock()
        params = {**params, "now": now}
        with self.transaction() as conn:  # claiming nothing writes nothing to the WAL
            rows = conn.execute(
                f"UPDATE {table} SET lease_owner = :owner, lease_until = :until WHERE id IN ({select})"
                f" RETURNING {returning}",
                {**params, "owner": owner, "until": now + lease},
            ).fetchall()
        return sorted(rows)

    def _claim_heads(self, table: str, heads: tuple[str, str, str], params: dict[str, Any], owner: str,
                     lease: float, returning: str) -> list[Row]:  # fmt: skip
        """Lease lane heads (:func:`_lane_heads`): first among the oldest units only, where a
        claim costs an index lookup per unit it passes and stops at ``limit``; the scan of every
        lane follows only when those held fewer than a few heads and more units wait past them,
        so a lane whose units all came later is never starved by a few long ones (and more
        heads than a few are found by the next claim, as the oldest units finish)."""
        walk, grouped, beyond = heads
        enough = min(params["limit"], _ENOUGH)
        window = enough + _WINDOW
        rows = self._claim(table, walk, {**params, "window": window}, owner, lease, returning)
        if len(rows) < enough and self._read(beyond, {"window": window}):
            rows += self._claim(table, grouped, {**params, "limit": params["limit"] - len(rows)}, owner, lease,
                                returning)  # fmt: skip
        return sorted(rows)

    def claim_inbound(self, owner: str, limit: int, lease: float) -> list[InboundMessage]:
        """The next received message of up to ``limit`` conversations nobody is working on."""
        heads = _lane_heads(f"status = '{RECEIVED}'", ("to_number", "from_number"), _TIMER_HELD)
        rows = self._claim_heads("mdrs", heads, {"limit": limit}, owner, lease, _INBOUND_COLUMNS)
        return [_inbound(row) for row in rows]

    def claim_timers(self, owner: str, limit: int, lease: float, *, lane: tuple[str, str] | None = None) -> list[Timer]:
        """The first due timer of up to ``limit`` conversations with no message waiting (of the
        conversation ``lane``, (our number, theirs), only, when given)."""
        select = (
            "SELECT t.id FROM timers t LEFT JOIN conversations c ON c.id = t.conversation_id"
            " WHERE t.status = 'pending' AND t.due_at <= :due AND (t.lease_owner IS NULL OR t.lease_until < :now)"
            " AND NOT EXISTS (SELECT 1 FROM timers o WHERE o.status = 'pending'"
            "  AND o.conversation_id = t.conversation_id AND (o.due_at < t.due_at OR (o.due_at = t.due_at AND o.id < t.id)))"
            f" AND NOT EXISTS (SELECT 1 FROM mdrs m WHERE m.status = '{RECEIVED}' AND m.to_number = c.our_number"
            "  AND m.from_number = c.their_number)"
            + (" AND c.our_number = :our AND c.their_number = :their" if lane else "")
            + " ORDER BY t.due_at, t.id LIMIT :limit"
        )
        params = {
            "limit": limit,
            "due": self.clock(),
            "our": lane[0] if lane else None,
            "their": lane[1] if lane else None,
        }
        rows = self._claim(
            "timers", select, params, owner, lease, "id, conversation_id, due_at, plugin, name, text, payload"
        )
        return [Timer(*row[:6], json.loads(row[6] or "{}")) for row in rows]  # type: ignore[call-arg]  # mypy lets *row[:n] fill every field

    def claim_sends(self, owner: str, limit: int, lease: float) -> list[Outbound]:
        """The first due send of up to ``limit`` (from, to) lanes nobody is sending."""
        heads = _lane_heads(IN_OUTBOX, ("from_number", "to_number"), "COALESCE(m.next_attempt_at, 0) <= :due")
        rows = self._claim_heads("mdrs", heads, {"limit": limit, "due": self.clock()}, owner, lease,
                                 "id, profile, from_number, to_number, text, attempts, next_attempt_at, ignore_optout,"
                                 " conversation_id, status")  # fmt: skip
        return [Outbound(*row[:6], row[6] or 0.0, bool(row[7]), row[8], row[9] == SENDING) for row in rows]  # type: ignore[call-arg]  # mypy lets *row[:n] fill every field

    def claim_status_hooks(self, owner: str, limit: int, lease: float) -> list[StatusEvent]:
        """The first delivery status owing a hook call, of up to ``limit`` (from, to) lanes."""
        select = (
            "SELECT d.id FROM (SELECT MIN(id) AS id FROM delivery_events WHERE hook = 'pending'"
            "  GROUP BY from_number, to_number) AS head JOIN delivery_events d ON d.id = head.id"
            " WHERE (d.lease_owner IS NULL OR d.lease_until < :now) ORDER BY d.id LIMIT :limit"
        )
        rows = self._claim("delivery_events", select, {"limit": limit}, owner, lease,
                           "id, telnyx_id, status, from_number, to_number, error, mdr_id")  # fmt: skip
        return [StatusEvent(*row[:3], row[3] or None, row[4] or None, *row[5:]) for row in rows]  # type: ignore[call-arg]  # mypy lets *row[:n] fill every field

    def renew(self, owner: str, lease: float) -> None:
        """Extend every lease ``owner`` holds: its process is alive and working."""
        until = self.lease_clock() + lease
        with self.transaction() as conn:
            for table in _UNIT_TABLES:
                conn.execute(f"UPDATE {table} SET lease_until = ? WHERE lease_owner = ?", (until, owner))

    def release(self, owner: str) -> None:
        """Give back every unit ``owner`` holds (stopping): any process may claim them now."""
        with self.transaction() as conn:
            for table in _UNIT_TABLES:
                conn.execute(f"UPDATE {table} SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?",
                             (owner,))  # fmt: skip

    def release_unit(self, table: str, row_id: int, owner: str) -> None:
        """Give back one unit ``owner`` holds, for any process to claim again."""
        assert table in _UNIT_TABLES
        self._statement(f"UPDATE {table} SET lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ?",
                        (row_id, owner))  # fmt: skip

    def owners(self) -> set[str]:
        """Every process holding a lease now, live or not."""
        sql = " UNION ".join(
            f"SELECT DISTINCT lease_owner FROM {t} WHERE lease_owner IS NOT NULL" for t in _UNIT_TABLES
        )
        return {row[0] for row in self._read(sql)}

    def expire(self, owner: str) -> None:
        """End ``owner``'s leases now (its process is known to be gone)."""
        with self.transaction() as conn:
            for table in _UNIT_TABLES:
                conn.execute(f"UPDATE {table} SET lease_until = 0 WHERE lease_owner = ?", (owner,))

    def unheld_in_flight(self) -> int:
        """Sends whose request had started when their holder stopped: they may have reached Telnyx."""
        now = self.lease_clock()
        count: int = self._aggregate(
            f"SELECT COUNT(*) FROM mdrs WHERE {IN_OUTBOX} AND status = '{SENDING}'"
            " AND (lease_owner IS NULL OR lease_until < ?)", (now,)
        )[0]  # fmt: skip
        return count

    def backlog(self) -> dict[str, int]:
        """Units not finished yet, by kind (timers not counted: they wait for their time)."""
        row = self._aggregate(
            f"SELECT (SELECT COUNT(*) FROM mdrs WHERE status = '{RECEIVED}'),"
            f" (SELECT COUNT(*) FROM mdrs WHERE {IN_OUTBOX}),"
            " (SELECT COUNT(*) FROM delivery_events WHERE hook = 'pending')"
        )  # fmt: skip
        return dict(zip(("messages", "sends", "delivery status hook calls"), row, strict=True))

    def outstanding(self) -> int:
        """How many units are not finished yet (see :meth:`backlog`)."""
        return sum(self.backlog().values())

    # -- conversations -----------------------------------------------------------------------

    def conversation(self, profile: str | None, our_number: str, their_number: str) -> Conversation:
        """The conversation between two numbers, created on first use."""
        found = self.find_conversation(our_number, their_number)
        if found is not None:
            return found
        with self.transaction():
            self._conversation_id(profile, our_number, their_number, self.now())
            row = self.conn.execute(_CONVERSATION_SQL, (our_number, their_number)).fetchone()
        return Conversation(row[0], row[1], our_number, their_number, json.loads(row[2]))

    def find_conversation(self, our_number: str, their_number: str) -> Conversation | None:
        """The conversation between two numbers, if it exists (a read: never waits for a writer)."""
        row = self._read_one(_CONVERSATION_SQL, (our_number, their_number))
        return Conversation(row[0], row[1], our_number, their_number, json.loads(row[2])) if row else None

    def conversation_context(self, our_number: str | None = None, their_number: str | None = None, *,
                             conversation_id: int | None = None) -> tuple[Conversation, Context] | None:  # fmt: skip
        """The conversation between two numbers (or with ``conversation_id``), with what handling
        a unit of it reads besides, in one query: its handler and its customer's opt-outs."""
        where = "c.id = ?" if conversation_id is not None else "c.our_number = ? AND c.their_number = ?"
        row = self._read_one(_CONTEXT_SQL + where, (conversation_id,) if conversation_id is not None
                             else (our_number, their_number))  # fmt: skip
        if row is None:
            return None
        conversation = Conversation(row[0], row[1], row[2], row[3], json.loads(row[4]))
        consent = {(conversation.profile, conversation.their_number): bool(row[9]),
                   (None, conversation.their_number): bool(row[10])}  # fmt: skip
        return conversation, Context(bool(row[5]), row[6], row[7], row[8], consent)

    def _conversation_id(self, profile: str | None, our_number: str, their_number: str, now: str) -> int:
        self.conn.execute(
            "INSERT INTO conversations (profile, our_number, their_number, state, created_at, updated_at)"
            " VALUES (?, ?, ?, '{}', ?, ?) ON CONFLICT DO NOTHING", (profile, our_number, their_number, now, now),
        )  # fmt: skip
        conversation_id: int = self.conn.execute("SELECT id FROM conversations WHERE our_number = ? AND their_number = ?",
                                                 (our_number, their_number)).fetchone()[0]  # fmt: skip
        return conversation_id

    def conversation_by_id(self, conversation_id: int) -> Conversation | None:
        row = self._read_one(
            "SELECT id, profile, our_number, their_number, state FROM conversations WHERE id = ?", (conversation_id,)
        )
        if row is None:
            return None
        return Conversation(row[0], row[1], row[2], row[3], json.loads(row[4]))

    def save_state(self, conversation: Conversation) -> None:
        with self.transaction():
            self._save_state(conversation, self.now())

    # -- plugin effects ----------------------------------------------------------------------

    def apply(self, effects: Sequence[Effect]) -> list[int | None]:
        """Write plugin effects made outside any unit (``bot-core send``, a startup hook)."""
        with self.transaction():
            return self._apply(effects, self.now())

    def _apply(self, effects: Sequence[Effect], now: str) -> list[int | None]:
        """Each effect in the order the plugin made it: a cancel never touches a later schedule.

        Returns the row each one wrote (MDR or timer id; None for cancels and consent)."""
        ids: list[int | None] = []
        for effect in effects:
            if isinstance(effect, SendEffect):
                conversation_id = self._conversation_id(*effect.conversation, now) if effect.conversation else None
                ids.append(self._add_outbound(effect.draft, conversation_id, None, now))
            elif isinstance(effect, TimerEffect):
                ids.append(self.conn.execute(
                    "INSERT INTO timers (conversation_id, plugin, name, due_at, text, payload, status, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                    (effect.conversation_id, effect.plugin, effect.name, effect.due_at, effect.text,
                     json.dumps(effect.payload), now),
                ).lastrowid)  # fmt: skip
            elif isinstance(effect, CancelEffect):
                self._cancel_timers(effect.conversation_id, effect.plugin, effect.name)
                ids.append(None)
            elif isinstance(effect, ConsentEffect):
                self._set_opted_out(effect.profile, effect.number, effect.opted_out, effect.source, now)
                ids.append(None)
        return ids

    # -- outbox ------------------------------------------------------------------------------

    def add_outbound(self, draft: OutboundDraft, conversation_id: int | None = None) -> int:
        """Write one proactive message to the outbox."""
        with self.transaction():
            return self._add_outbound(draft, conversation_id, None, self.now())

    def _add_outbound(
        self, draft: OutboundDraft, conversation_id: int | None, in_reply_to: int | None, now: str
    ) -> int:
        cursor = self.conn.execute(
            "INSERT INTO mdrs (direction, profile, from_number, to_number, text, status, error,"
            " encoding, parts, conversation_id, in_reply_to, ignore_optout, next_attempt_at,"
            " created_at, updated_at) VALUES ('outbound', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (draft.profile, draft.from_number, draft.to_number, draft.text, draft.status,
             draft.error, draft.encoding, draft.parts, conversation_id, in_reply_to,
             int(draft.ignore_optout), self.clock(), now, now),
        )  # fmt: skip
        assert cursor.lastrowid is not None, "set by the INSERT"
        return cursor.lastrowid

    def pending_outbound(self) -> list[Outbound]:
        """Messages waiting in the outbox (not in flight), oldest first."""
        rows = self._read(
            "SELECT id, profile, from_number, to_number, text, attempts, next_attempt_at,"
            f" ignore_optout, conversation_id FROM mdrs WHERE {IN_OUTBOX} AND status = '{PENDING}' ORDER BY id"
        )
        return [Outbound(*row[:7], bool(row[7]), row[8]) for row in rows]  # type: ignore[call-arg]  # mypy lets *row[:n] fill every field

    def start_send(self, mdr_id: int, owner: str | None = None, *, rate: float = 0.0) -> float:
        """Mark a send in flight (its HTTP request starts now) and take its number's pacing slot;
        with ``rate`` (sends a second per sending number, shared by every process) and the slot
        not reached yet, change nothing and return the seconds to wait for it (else 0)."""
        now = time.time()
        with self.transaction() as conn:
            if rate > 0:
                number = conn.execute("SELECT from_number FROM mdrs WHERE id = ?", (mdr_id,)).fetchone()[0]
                row = conn.execute("SELECT next_at FROM pacing WHERE number = ?", (number,)).fetchone()
                if row and row[0] > now:
                    wait: float = row[0] - now
                    return wait
                conn.execute("INSERT OR REPLACE INTO pacing (number, next_at) VALUES (?, ?)", (number, now + 1 / rate))
            self._update(mdr_id, owner, status=SENDING)
        return 0.0

    def mark_sent(self, mdr_id: int, telnyx_id: str | None, status: str, attempts: int | None = None,
                  owner: str | None = None) -> None:  # fmt: skip
        """Record Telnyx's acceptance, end the unit, then apply any status update that arrived before it."""
        fields: dict[str, Any] = {"status": status, "telnyx_id": telnyx_id, "error": None}
        if attempts is not None:
            fields["attempts"] = attempts
        with self.transaction() as conn:
            self._finish("mdrs", mdr_id, owner, **fields, updated_at=self.now())
            if telnyx_id:
                self._apply_early_statuses(conn, mdr_id, telnyx_id)

    def _apply_early_statuses(self, conn: Any, mdr_id: int, telnyx_id: str) -> None:
        """Apply the status updates that arrived before Telnyx's answer to the send (in a transaction).
        A status a profile verified applies only to that profile's MDR."""
        early = conn.execute(
            "SELECT status, error FROM delivery_events WHERE telnyx_id = ? AND (profile IS NULL OR"
            " profile = (SELECT profile FROM mdrs WHERE id = ?)) ORDER BY id", (telnyx_id, mdr_id)
        ).fetchall()  # fmt: skip
        for event_status, error in early:
            self._advance_status(mdr_id, event_status, error)

    def mark_retry(self, mdr_id: int, attempts: int, next_attempt_at: float, error: str,
                   owner: str | None = None) -> None:  # fmt: skip
        """A failed attempt; its holder keeps the lease and tries again at ``next_attempt_at``."""
        self._update(mdr_id, owner, status=PENDING, attempts=attempts, next_attempt_at=next_attempt_at, error=error)

    def mark_final(self, mdr_id: int, status: str, error: str | None, attempts: int | None = None,
                   owner: str | None = None) -> None:  # fmt: skip
        """Take a message out of the outbox for good (failed, blocked, sandbox)."""
        fields: dict[str, Any] = {"status": status, "error": self.redact(error)}
        if attempts is not None:
            fields["attempts"] = attempts
        with self.transaction():
            self._finish("mdrs", mdr_id, owner, **fields, updated_at=self.now())

    def _update(self, mdr_id: int, owner: str | None = None, **fields: Any) -> None:
        if "error" in fields:
            fields["error"] = self.redact(fields["error"])
        columns = ", ".join(f"{name} = ?" for name in fields)
        sql, params = f"UPDATE mdrs SET {columns}, updated_at = ? WHERE id = ?", [*fields.values(), self.now(), mdr_id]
        if owner is not None:
            sql += " AND lease_owner = ?"
            params.append(owner)
        if not self._statement(sql, params).rowcount and owner is not None:
            raise LeaseLost(f"MDR {mdr_id} is no longer held by {owner}")

    # -- delivery statuses -------------------------------------------------------------------

    def apply_status(self, status: DeliveryStatus, *, profile: str | None = None, hook: bool = False) -> int | None:
        """Record a delivery status webhook; returns the MDR it moved, if it is known yet.

        ``profile`` is the profile whose secret verified a V1 status: it may only move an MDR
        that profile sent, else :class:`ForeignStatusError` and nothing is recorded. A status
        that arrives before its MDR is known keeps ``profile`` and is applied only if the MDR
        turns out to be that profile's. With ``hook`` the row also owes a ``delivery_status``
        hook call (a unit of work).
        """
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT id, profile FROM mdrs WHERE direction = 'outbound' AND telnyx_id = ?", (status.telnyx_id,)
            ).fetchone()
            if row is not None and profile is not None and row[1] != profile:
                raise ForeignStatusError(f"message {status.telnyx_id} was not sent by messaging profile {profile!r},"
                                         " whose secret signed this status: refused, nothing changed")  # fmt: skip
            mdr_id = row[0] if row else None
            conn.execute(
                "INSERT INTO delivery_events (telnyx_id, status, error, received_at, profile, from_number, to_number,"
                " mdr_id, hook) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (status.telnyx_id, status.status, self.redact(status.error), self.now(), profile,
                 status.from_number or "", status.to_number or "", mdr_id, "pending" if hook else None),
            )  # fmt: skip
            if mdr_id is not None:
                self._advance_status(mdr_id, status.status, status.error)
            return mdr_id

    def finish_status_hook(self, event_id: int, *, error: str | None = None, effects: Sequence[Effect] = (),
                           owner: str | None = None) -> bool:  # fmt: skip
        """The hook calls of one delivery status are done: record them with their effects."""
        now = self.now()
        with self.transaction():
            self._finish("delivery_events", event_id, owner, hook="done", hook_error=self.redact(error))
            self._apply(effects, now)
        return True

    def _advance_status(self, mdr_id: int, status: str, error: str | None) -> None:
        current = self.conn.execute("SELECT status FROM mdrs WHERE id = ?", (mdr_id,)).fetchone()[0]
        if _STATUS_RANK.get(status, _FINAL_RANK) > _STATUS_RANK.get(current, _FINAL_RANK):
            failed = status not in ("queued", "sending", "sent", "delivered")
            self._update(mdr_id, status=status, error=error if failed else None)

    # -- opt-outs ----------------------------------------------------------------------------

    def is_opted_out(self, profile: str | None, number: str) -> bool:
        """Whether ``number`` opted out of ``profile``, or of the whole account (``profile`` None),
        which covers every profile, as Telnyx's account-wide opt-outs do."""
        row = self._aggregate(
            "SELECT max(opted_out) FROM optouts WHERE profile IN (?, ?) AND number = ?",
            (ACCOUNT if profile is None else profile, ACCOUNT, number),
        )
        return bool(row[0])

    def consent_record(self, profile: str | None, number: str) -> bool:
        """The opt-out record of ``profile`` alone (None: the account-wide one)."""
        row = self._read_one("SELECT opted_out FROM optouts WHERE profile = ? AND number = ?",
                             (ACCOUNT if profile is None else profile, number))  # fmt: skip
        return bool(row and row[0])

    def consent_records(self, profile: str | None, number: str) -> tuple[bool, bool]:
        """(the opt-out record of ``profile``, the account-wide one) in one read."""
        key = ACCOUNT if profile is None else profile
        records: dict[str, int] = dict(self._read("SELECT profile, opted_out FROM optouts WHERE profile IN (?, ?) AND number = ?",
                                  (key, ACCOUNT, number)))  # fmt: skip
        return bool(records.get(key)), bool(records.get(ACCOUNT))

    def set_opted_out(self, profile: str | None, number: str, opted_out: bool, source: str) -> bool:
        """Record a consent change for ``profile`` (None: the whole account); returns False when
        that record already had that state."""
        with self.transaction():
            return self._set_opted_out(profile, number, opted_out, source, self.now())

    def _set_opted_out(self, profile: str | None, number: str, opted_out: bool, source: str, now: str) -> bool:
        profile = ACCOUNT if profile is None else profile
        row = self.conn.execute("SELECT opted_out FROM optouts WHERE profile = ? AND number = ?",
                                (profile, number)).fetchone()  # fmt: skip
        if bool(row and row[0]) == opted_out:
            return False
        self.conn.execute("INSERT INTO optouts (profile, number, opted_out, updated_at) VALUES (?, ?, ?, ?)"
                          " ON CONFLICT (profile, number) DO UPDATE SET opted_out = excluded.opted_out,"
                          " updated_at = excluded.updated_at", (profile, number, int(opted_out), now))  # fmt: skip
        self.conn.execute("INSERT INTO consent_log (profile, number, action, source, at) VALUES (?, ?, ?, ?, ?)",
                          (profile, number, "opt_out" if opted_out else "opt_in", source, now))  # fmt: skip
        return True

    def optouts(self) -> list[dict[str, Any]]:
        """Every number currently opted out, with the latest consent change (profile None: all)."""
        return self._rows(
            f"SELECT NULLIF(o.profile, '{ACCOUNT}') AS profile, o.number, o.updated_at AS opted_out_at,"
            " (SELECT source FROM consent_log c WHERE c.profile = o.profile"
            "  AND c.number = o.number ORDER BY c.id DESC LIMIT 1) AS source"
            " FROM optouts o WHERE o.opted_out = 1 ORDER BY o.updated_at DESC"
        )

    def consent_log(self) -> list[dict[str, Any]]:
        return self._rows(
            f"SELECT id, NULLIF(profile, '{ACCOUNT}') AS profile, number, action, source, at"
            " FROM consent_log ORDER BY id"
        )

    # -- timers ------------------------------------------------------------------------------

    def add_timer(self, conversation_id: int, due_at: float, *, plugin: str | None = None,
                  name: str | None = None, text: str | None = None,
                  payload: dict[str, Any] | None = None) -> int:  # fmt: skip
        effect = TimerEffect(conversation_id, due_at, plugin, name, text, payload or {})
        timer_id = self.apply([effect])[0]
        assert timer_id is not None, "a timer effect always makes a timer"
        return timer_id

    def due_timers(self, now: float, *, lane: tuple[str, str] | None = None) -> list[Timer]:
        """Pending timers due by ``now``, oldest first (of the conversation ``lane`` only, when given)."""
        rows = self._read(
            "SELECT t.id, t.conversation_id, t.due_at, t.plugin, t.name, t.text, t.payload FROM timers t"
            " LEFT JOIN conversations c ON c.id = t.conversation_id WHERE t.status = 'pending' AND t.due_at <= ?"
            + (" AND c.our_number = ? AND c.their_number = ?" if lane else "") + " ORDER BY t.due_at, t.id",
            (now, *(lane or ())),
        )  # fmt: skip
        return [Timer(*row[:6], json.loads(row[6])) for row in rows]  # type: ignore[call-arg]  # mypy lets *row[:n] fill every field

    def timers(self, conversation_id: int) -> list[Timer]:
        """A conversation's pending timers."""
        rows = self._read(
            "SELECT id, conversation_id, due_at, plugin, name, text, payload FROM timers"
            " WHERE status = 'pending' AND conversation_id = ? ORDER BY due_at, id",
            (conversation_id,),
        )
        return [Timer(*row[:6], json.loads(row[6])) for row in rows]  # type: ignore[call-arg]  # mypy lets *row[:n] fill every field

    def cancel_timers(self, conversation_id: int, *, plugin: str | None = None, name: str | None = None) -> int:
        """Cancel a conversation's pending timers, those of one plugin or name if given."""
        with self.transaction():
            return self._cancel_timers(conversation_id, plugin, name)

    def _cancel_timers(self, conversation_id: int, plugin: str | None, name: str | None) -> int:
        # A timer being fired is not cancelled from under its handler: its finish ends it.
        sql = ("UPDATE timers SET status = 'cancelled' WHERE status = 'pending' AND conversation_id = ?"
               " AND lease_owner IS NULL")  # fmt: skip
        params: list[Any] = [conversation_id]
        for column, value in (("plugin", plugin), ("name", name)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        return self.conn.execute(sql, params).rowcount

    def finish_timer(self, timer_id: int, conversation: Conversation | None, replies: Sequence[OutboundDraft],
                     error: str | None = None, *, effects: Sequence[Effect] = (),
                     owner: str | None = None) -> list[int]:  # fmt: skip
        """Mark a timer fired, with its state change, effects and replies, atomically.

        The guard on its lease (and on ``status = 'pending'``) is what makes a timer fire once."""
        now = self.now()
        with self.transaction() as conn:
            sql = ("UPDATE timers SET status = ?, fired_at = ?, lease_owner = NULL, lease_until = NULL"
                   " WHERE id = ? AND status = 'pending'")  # fmt: skip
            params: list[Any] = ["failed" if error else "fired", now, timer_id]
            if owner is not None:
                sql += " AND lease_owner = ?"
                params.append(owner)
            if not conn.execute(sql, params).rowcount:
                raise LeaseLost(f"timer {timer_id} is no longer held by {owner}")
            if conversation is None:
                return []
            self._save_state(conversation, now)
            self._apply(effects, now)
            return [self._add_outbound(d, conversation.id, None, now) for d in replies]

    # -- plugin data (bot.plugin_store) -------------------------------------------------------

    def plugin_get(self, plugin: str, key: str) -> str | None:
        row = self._read_one("SELECT value FROM plugin_data WHERE plugin = ? AND key = ?", (plugin, key))
        return row[0] if row else None

    def plugin_put(self, plugin: str, key: str, value: str, *, only_new: bool = False) -> bool:
        """Write one value (JSON text); with ``only_new``, only if the key has none (else False)."""
        on_conflict = (
            "DO NOTHING" if only_new else "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
        )
        cursor = self._statement(
            f"INSERT INTO plugin_data (plugin, key, value, updated_at) VALUES (?, ?, ?, ?)"
            f" ON CONFLICT (plugin, key) {on_conflict}", (plugin, key, value, self.now()),
        )  # fmt: skip
        return bool(cursor.rowcount)

    def plugin_delete(self, plugin: str, key: str) -> bool:
        return bool(self._statement("DELETE FROM plugin_data WHERE plugin = ? AND key = ?", (plugin, key)).rowcount)

    def plugin_items(self, plugin: str, prefix: str = "") -> list[tuple[str, str]]:
        """(key, value) of every key of ``plugin`` that starts with ``prefix``, by key."""
        rows = self._read("SELECT key, value FROM plugin_data WHERE plugin = ? AND substr(key, 1, ?) = ? ORDER BY key",
                          (plugin, len(prefix), prefix))  # fmt: skip
        return [(key, value) for key, value in rows]

    def copy_conversation(self, target: Store, our_number: str, their_number: str) -> None:
        """Copy what handling a message of one conversation reads (its state, the customer's
        consent, every plugin's data) into ``target``, a scratch database (``bot-core explain``)."""
        conversation = self._rows("SELECT profile, state, created_at FROM conversations"
                                  " WHERE our_number = ? AND their_number = ?", (our_number, their_number))  # fmt: skip
        optouts = self._read("SELECT profile, number, opted_out, updated_at FROM optouts WHERE number = ?",
                             (their_number,))  # fmt: skip
        data = self._read("SELECT plugin, key, value, updated_at FROM plugin_data")
        with target.transaction() as conn:
            for row in conversation:
                conn.execute("INSERT INTO conversations (profile, our_number, their_number, state, created_at,"
                             " updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                             (row["profile"], our_number, their_number, row["state"], row["created_at"],
                              row["created_at"]))  # fmt: skip
            for consent in optouts:
                conn.execute(
                    "INSERT INTO optouts (profile, number, opted_out, updated_at) VALUES (?, ?, ?, ?)", consent
                )
            for datum in data:
                conn.execute("INSERT INTO plugin_data (plugin, key, value, updated_at) VALUES (?, ?, ?, ?)", datum)

    # -- MDR queries -------------------------------------------------------------------------

    def mdrs(
        self,
        *,
        limit: int | None = 50,
        mdr_id: int | None = None,
        after_id: int | None = None,
        profile: str | None = None,
        direction: str | None = None,
        status: str | None = None,
        number: str | None = None,
        since: str | None = None,
        conversation_id: int | None = None,
    ) -> list[dict[str, Any]]:
        """MDRs newest first, as dicts keyed like ``bot-core messages --json``.

        Each filter given narrows the list: ``number`` matches either end, ``since`` is an ISO
        8601 UTC time (:func:`iso`), ``after_id`` keeps ids above it. Filters are values, never
        SQL text.
        """
        filters = {"id = :mdr_id": mdr_id, "id > :after_id": after_id, "profile = :profile": profile,
                   "direction = :direction": direction, "status = :status": status,
                   "(from_number = :number OR to_number = :number)": number, "created_at >= :since": since,
                   "conversation_id = :conversation_id": conversation_id}  # fmt: skip
        where = " AND ".join(clause for clause, value in filters.items() if value is not None)
        sql = (
            'SELECT id, direction, profile, from_number AS "from", to_number AS "to", text,'
            " status, parts, encoding, telnyx_id, error, operator, created_at, updated_at FROM mdrs"
            + (f" WHERE {where}" if where else "")
            + " ORDER BY id DESC"
            + (" LIMIT :limit" if limit is not None else "")
        )
        params = {"mdr_id": mdr_id, "after_id": after_id, "profile": profile, "direction": direction,
                  "status": status, "number": number, "since": since, "conversation_id": conversation_id,
                  "limit": limit}  # fmt: skip
        return self._rows(sql, params)

    def _rows(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        """Rows as dicts. Not sqlite-utils' query(): its SAVEPOINT would open a transaction."""
        with self._read_lock:
            cursor = self._reader.execute(sql, params)
            keys = [d[0] for d in cursor.description]
            return [dict(zip(keys, row, strict=True)) for row in cursor.fetchall()]

    def mdr(self, mdr_id: int) -> dict[str, Any] | None:
        rows = self.mdrs(limit=1, mdr_id=mdr_id)
        return rows[0] if rows else None

    def mdr_columns(self, mdr_id: int) -> dict[str, Any] | None:
        """Every column of one MDR, by the names the table gives them."""
        rows = self._rows("SELECT * FROM mdrs WHERE id = ?", (mdr_id,))
        return rows[0] if rows else None

    def delivery_events(self, telnyx_id: str) -> list[dict[str, Any]]:
        """The delivery statuses Telnyx reported for one sent message, in arrival order."""
        return self._rows("SELECT status, error, received_at FROM delivery_events WHERE telnyx_id = ? ORDER BY id",
                          (telnyx_id,))  # fmt: skip

    def counts(self, column: str) -> dict[tuple[Any, str], int]:
        """MDR counts keyed by (``column`` value, direction); ``column`` is ours, never user input."""
        rows = self._read(f"SELECT {column}, direction, count(*) FROM mdrs GROUP BY {column}, direction")
        return {(key, direction): count for key, direction, count in rows}

    def opted_out_counts(self, profiles: Iterable[str]) -> dict[str, int]:
        """How many numbers are opted out, per profile: an account-wide opt-out counts for every one."""
        return {name: self._aggregate(
            "SELECT count(DISTINCT number) FROM optouts WHERE opted_out = 1 AND profile IN (?, ?)", (name, ACCOUNT)
        )[0] for name in profiles}  # fmt: skip

    # -- conversations for operators (bot-core conversations) ----------------------------------

    def conversation_rows(self, *, limit: int | None = 50, conversation_id: int | None = None,
                          profile: str | None = None, number: str | None = None, our_number: str | None = None,
                          their_number: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
        """Conversations, most recently active first, with their state (decoded), message and
        pending timer counts, as ``bot-core conversations --json`` prints them.

        Each filter given narrows the list (``number`` matches either end); filters are values,
        never SQL text, as in :meth:`mdrs`.
        """
        filters = {"c.id = :conversation_id": conversation_id, "c.profile = :profile": profile,
                   "(c.our_number = :number OR c.their_number = :number)": number,
                   "c.our_number = :our_number": our_number, "c.their_number = :their_number": their_number}  # fmt: skip
        where = " AND ".join(clause for clause, value in filters.items() if value is not None)
        params = {"conversation_id": conversation_id, "profile": profile, "number": number, "our_number": our_number,
                  "their_number": their_number}  # fmt: skip
        sql = (
            "SELECT c.id, c.profile, c.our_number, c.their_number, c.state, c.created_at, c.updated_at,"
            " (SELECT count(*) FROM mdrs m WHERE m.conversation_id = c.id) AS messages,"
            " (SELECT count(*) FROM timers t WHERE t.conversation_id = c.id AND t.status = 'pending') AS timers"
            " FROM conversations c" + (f" WHERE {where}" if where else "")
            + " ORDER BY c.updated_at DESC, c.id DESC" + (" LIMIT :limit" if limit is not None else "")
        )  # fmt: skip
        rows = self._rows(sql, {**params, "limit": limit})
        for row in rows:
            row["state"] = json.loads(row["state"])
        return rows

    def reset_conversation(self, conversation_id: int) -> int:
        """Empty a conversation's state and cancel its pending timers, in one transaction, so
        that its next message starts afresh; returns how many timers were cancelled."""
        with self.transaction() as conn:
            conn.execute("UPDATE conversations SET state = '{}', updated_at = ? WHERE id = ?",
                         (self.now(), conversation_id))  # fmt: skip
            return self._cancel_timers(conversation_id, None, None)

    # -- the operator inbox's reads (bot_core/inbox) --------------------------------------------
    # A page query takes milliseconds: the inbox calls these from worker threads (never the event
    # loop), and on SQLite each thread reads on a read-only connection of its own, so neither the
    # event loop's reads (the shared reader connection) nor another operator's page waits for it.
    # The SQL is shared with the PostgreSQL engine, which runs it on its pool.

    _INBOX_LIKE = "LIKE"  # a case-insensitive LIKE: SQLite's is (for ASCII); PostgreSQL's is ILIKE

    def _inbox_rows(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        return self._inbox_readers.rows(sql, params)

    def inbox_conversations(self, profiles: Sequence[str], *, limit: int, waiting: bool = False,
                            before: tuple[str, int] | None = None, number: str | None = None,
                            number_part: str | None = None, text: str | None = None,
                            searched: int = 200_000) -> list[dict[str, Any]]:  # fmt: skip
        """A page of conversations of ``profiles`` (all when empty), latest message first, with
        that message. ``before``: (last_message_at, id) of the previous page's last row;
        ``number``: a whole E.164 number (one index entry); ``number_part``: digits anywhere in
        it; ``text``: in one of the latest ``searched`` messages (a bounded scan)."""
        params: dict[str, Any] = {"limit": limit}
        where = "c.last_message_at IS NOT NULL" + _profiles_in(profiles, params)
        if waiting:
            where += " AND c.waiting = 1"  # verbatim: the partial index conversations_waiting
        if before is not None:  # ties in a millisecond stay in order
            where += " AND (c.last_message_at < :at OR (c.last_message_at = :at AND c.id < :id))"
            params.update(at=before[0], id=before[1])
        if number is not None:
            where += " AND c.their_number = :number"
            params["number"] = number
        if number_part is not None:
            # As a subquery SQLite scans the compact their_number index, not the table in date order.
            where += " AND c.id IN (SELECT id FROM conversations WHERE their_number LIKE :part ESCAPE '\\')"
            params["part"] = _like(number_part)
        if text is not None:
            where += (" AND c.id IN (SELECT conversation_id FROM mdrs WHERE id > (SELECT MAX(id) FROM mdrs) - :window"
                      f" AND text {self._INBOX_LIKE} :text ESCAPE '\\')")  # fmt: skip
            params.update(text=_like(text), window=searched)
        return self._inbox_rows(
            "SELECT c.id, c.profile, c.our_number, c.their_number, c.with_person, c.operator AS handler,"
            " c.waiting, c.last_message_at, m.direction, m.text, m.status, m.operator"
            " FROM conversations c LEFT JOIN mdrs m ON m.id = c.last_mdr_id"
            f" WHERE {where} ORDER BY c.last_message_at DESC, c.id DESC LIMIT :limit", params)  # fmt: skip

    def inbox_conversation(self, profiles: Sequence[str], conversation_id: int, *,
                           messages: int) -> dict[str, Any] | None:  # fmt: skip
        """One conversation with its latest ``messages`` (oldest first), or None when it does not
        exist or is not of ``profiles`` (all when empty)."""
        params: dict[str, Any] = {"id": conversation_id, "account": ACCOUNT}
        rows = self._inbox_rows(
            "SELECT c.id, c.profile, c.our_number, c.their_number, c.with_person, c.operator AS handler,"
            " c.handoff_reason, c.waiting, COALESCE((SELECT MAX(opted_out) FROM optouts WHERE number = c.their_number"
            " AND profile IN (c.profile, :account)), 0) AS opted_out FROM conversations c"  # or account-wide
            f" WHERE c.id = :id{_profiles_in(profiles, params)}", params)  # fmt: skip
        if not rows:
            return None
        thread = self._inbox_rows(
            "SELECT id, direction, text, status, error, operator, created_at FROM mdrs WHERE conversation_id = ?"
            " ORDER BY id DESC LIMIT ?", (conversation_id, messages))  # fmt: skip
        return {**rows[0], "messages": thread[::-1]}

    def inbox_operators(self, name: str | None = None) -> list[dict[str, Any]]:
        """Operators (``name``'s alone if given) with their password hashes and profiles (JSON)."""
        where, params = ("WHERE name = ?", (name,)) if name is not None else ("", ())
        return self._inbox_rows(f"SELECT name, password_hash, profiles, created_at FROM operators {where} ORDER BY name",
                                params)  # fmt: skip

    def inbox_version(self) -> int | None:
        """A number that changes whenever the database commits (SQLite's ``data_version``), so the
        change feed skips its query while nothing happened; None where no such number exists."""
        return self._inbox_readers.version()

    def inbox_latest_change(self) -> str:
        """Where the change feed starts: the latest ``updated_at`` of an MDR ('' for none)."""
        rows = self._inbox_rows("SELECT MAX(updated_at) AS at FROM mdrs")
        return rows[0]["at"] or ""

    def inbox_changes(self, since: str) -> Iterator[Row]:
        """(kind 'm' or 'c', row id, updated_at, conversation id, profile) of the MDRs and
        conversations written at or after ``since`` (two index range scans), one at a time: a
        busy poll reads hundreds, which held all at once would set off a garbage collection at
        nearly every poll (and a collection in any thread stops the event loop too)."""
        return self._inbox_each(
            "SELECT 'm' AS kind, m.id, m.updated_at, c.id AS conversation_id, c.profile FROM mdrs m JOIN conversations c"
            " ON c.id = m.conversation_id WHERE m.updated_at >= :since"
            " UNION ALL SELECT 'c', id, updated_at, id, profile FROM conversations WHERE updated_at >= :since",
            {"since": since},
        )  # fmt: skip

    def _inbox_each(self, sql: str, params: Params) -> Iterator[Row]:
        return self._inbox_readers.each(sql, params)


_ENOUGH = 32  # heads among the oldest units that spare a claim the scan of every lane
_WINDOW = 256  # how many oldest units a claim looks at, past _ENOUGH: those other claims hold, mostly


@cache
def _lane_heads(where: str, lane: tuple[str, str], ready: str) -> tuple[str, str, str]:
    """The selects of :meth:`Store._claim_heads` for the units of ``mdrs`` matching ``where``,
    in lanes of the columns ``lane``, claimable when ``ready`` (on ``m``) holds: the heads
    among the oldest ``:window`` units, the head of every lane (one pass over the lane index,
    grouped), and whether any unit is older than ``:window`` others."""
    first, second = lane
    walk = (
        f"SELECT m.id FROM (SELECT id FROM mdrs WHERE {where} ORDER BY id LIMIT :window) AS w"
        f" JOIN mdrs m ON m.id = w.id WHERE (m.lease_owner IS NULL OR m.lease_until < :now)"
        f" AND NOT EXISTS (SELECT 1 FROM mdrs e WHERE {where} AND e.{first} = m.{first}"
        f" AND e.{second} = m.{second} AND e.id < m.id) AND {ready} ORDER BY m.id LIMIT :limit"
    )
    grouped = (
        f"SELECT m.id FROM (SELECT MIN(id) AS id FROM mdrs WHERE {where} GROUP BY {first}, {second}) AS head"
        f" JOIN mdrs m ON m.id = head.id WHERE (m.lease_owner IS NULL OR m.lease_until < :now) AND {ready}"
        " ORDER BY m.id LIMIT :limit"
    )
    beyond = f"SELECT id FROM mdrs WHERE {where} ORDER BY id LIMIT 1 OFFSET :window"
    return walk, grouped, beyond


# A conversation's message waits while one of its timers is held (see claim_timers).
_TIMER_HELD = (
    "NOT EXISTS (SELECT 1 FROM timers t JOIN conversations c ON c.id = t.conversation_id"
    " WHERE t.lease_owner IS NOT NULL AND t.status = 'pending' AND t.lease_until >= :now"
    " AND c.our_number = m.to_number AND c.their_number = m.from_number)"
)
_CONVERSATION_SQL = "SELECT id, profile, state FROM conversations WHERE our_number = ? AND their_number = ?"
_CONTEXT_SQL = (  # ACCOUNT is '*'
    "SELECT c.id, c.profile, c.our_number, c.their_number, c.state, c.with_person, c.operator, c.handoff_reason,"
    " c.handoff_at, (SELECT o.opted_out FROM optouts o WHERE o.profile = COALESCE(c.profile, '*')"
    " AND o.number = c.their_number), (SELECT o.opted_out FROM optouts o WHERE o.profile = '*'"
    " AND o.number = c.their_number) FROM conversations c WHERE "
)
_INBOUND_COLUMNS = "id, telnyx_id, text, from_number, to_number, profile, media, created_at, other_recipients"


def schema_version(path: Path) -> tuple[int, int]:
    """(the file's schema version, the newest this code knows), read only: 0 for no file yet."""
    if not path.exists():
        return 0, len(MIGRATIONS)
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0], len(MIGRATIONS)
    finally:
        conn.close()


def _inbound(row: Row) -> InboundMessage:
    media = tuple(Media(**m) for m in json.loads(row[6])) if row[6] else ()
    return InboundMessage(
        id=row[1], text=row[2], from_number=row[3], to_number=row[4], profile=row[5],
        media=media, mdr_id=row[0], received_at=row[7], other_recipients=tuple(json.loads(row[8] or "[]")),
    )  # fmt: skip


def _profiles_in(profiles: Sequence[str], params: dict[str, Any]) -> str:
    """A WHERE term limiting conversations ``c`` to ``profiles`` (empty: every profile)."""
    if not profiles:
        return ""
    names = []
    for i, profile in enumerate(profiles):
        params[f"p{i}"] = profile
        names.append(f":p{i}")
    return f" AND c.profile IN ({', '.join(names)})"


def _like(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, its own ``%``, ``_`` and ``\\`` taken literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class _InboxReaders:
    """The inbox's read-only connections: one per worker thread, and one for the change feed,
    whose ``data_version`` must come from the same connection every time to mean anything."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._feed: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA query_only = ON")
        with self._lock:
            self._all.append(conn)
        return conn

    def _thread_conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def rows(self, sql: str, params: Params) -> list[dict[str, Any]]:
        cursor = self._thread_conn().execute(sql, params)
        keys = [d[0] for d in cursor.description]
        return [dict(zip(keys, row, strict=True)) for row in cursor.fetchall()]

    def each(self, sql: str, params: Params) -> Iterator[Row]:
        """The rows of ``sql`` as the cursor reads them (consume them in the calling thread)."""
        yield from self._thread_conn().execute(sql, params)

    def version(self) -> int:
        if self._feed is None:  # the change feed polls from one task at a time
            self._feed = self._connect()
        version: int = self._feed.execute("PRAGMA data_version").fetchone()[0]
        return version

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


class _JobFailed(Exception):
    """Job ``index`` of a group commit raised ``error``: run the others again, each in a savepoint."""

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(index, error)
        self.index = index
        self.error = error


_Job = tuple[Callable[[], Any], asyncio.Future[Any], asyncio.AbstractEventLoop]
_Results = list[tuple[asyncio.Future[Any], Any, BaseException | None]]


def _run_bare(conn: sqlite3.Connection, jobs: list[_Job]) -> _Results:
    results: _Results = []
    for index, (job, future, _) in enumerate(jobs):
        try:
            results.append((future, job(), None))
        except Exception as exc:
            raise _JobFailed(index, exc) from exc
        if not conn.in_transaction:  # SQLite rolled it all back (disk full) and the job swallowed it
            raise sqlite3.OperationalError("the group commit was rolled back")
    return results


def _settle(results: _Results) -> None:
    for future, result, exc in results:
        if future.done():  # its waiter gave up
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
