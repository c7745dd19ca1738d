"""The PostgreSQL engine of the store contract: N replicas on N machines share one database.

Design. The contract stays the one the SQLite engine defines: synchronous methods, run off the
event loop with ``await store.call(fn, ...)``. Here ``call`` runs them on a small thread pool,
each thread taking a connection from a ``psycopg_pool.ConnectionPool`` for its transaction.
An async contract (psycopg's ``AsyncConnection``) would have forked every caller in two, or
pushed SQLite behind the same thread hop anyway; the thread pool costs a thread switch per
call (microseconds against a network round trip) and keeps one contract and one set of callers
for both engines. The CLI and tests call the same methods directly, as they do on SQLite. Reads
made while handling a unit go through ``await store.read(fn, ...)``: inline on SQLite (a local
reader, faster than the thread hop), on the thread pool here, so no round trip blocks the loop.

The engine inherits the contract's logic and SQL from :mod:`.sqlite`: its statements are
written in the subset both engines share (``INSERT ... ON CONFLICT``, ``RETURNING``), and
:func:`translate` turns SQLite's placeholders into psycopg's. It overrides what differs:

- **claims** lock the rows they pick with ``FOR UPDATE SKIP LOCKED``, so replicas claiming at
  once never wait for each other's rows, and take one transaction-scoped advisory lock first:
  a message and a timer of one conversation exclude each other across two tables, which only
  a serial order of claims can decide (each claim is one short statement);
- **pacing** takes the sending number's ``pacing`` row ``FOR UPDATE``: one slot per interval
  for all replicas together, not one per replica;
- **migrations** run at start under ``pg_advisory_xact_lock``, so replicas starting together
  migrate once; ``bot_core_schema`` holds the version, and a database newer than this code is
  refused (:class:`~bot_core.store.SchemaTooNew`);
- **wake-ups**: a transaction that makes new work ``NOTIFY``-s the database's channel at commit;
  :meth:`listen` wakes this replica's loops on every notification of another process (a
  dedicated connection on a thread; its own work has woken its loops already), and the loops
  still poll, so a lost notification or listener only delays work.

Opt-outs, conversation state and leases are rows like any other: every replica reads them from
the database, so an opt-out taken by one replica holds on all of them at once. Leases run on
each host's wall clock: keep replicas' clocks in sync (NTP), well within the lease time.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from ..logs import Masker
from ..messages import Conversation
from . import SENDING, LeaseLost, SchemaTooNew, Unavailable, display
from .schema import POSTGRES_MIGRATIONS
from .sqlite import Params, Row
from .sqlite import Store as SQLiteStore

T = TypeVar("T")

# pg_advisory_xact_lock(class, key) classes ("bc" in ASCII, then the next); the key is the
# schema's, so bots on different schemas of one database never wait for each other's locks.
_MIGRATION_LOCK = 0x6263
_CLAIM_LOCK = _MIGRATION_LOCK + 1
_ID_INSERT = re.compile(r"\s*INSERT INTO (mdrs|timers|conversations|consent_log|delivery_events)\b")
HEARTBEAT_WINDOW = 15.0  # seconds: three heartbeats of a started bot (Bot._heartbeat)
_ALIAS = re.compile(r"(?:FROM|JOIN) (?:mdrs|timers|delivery_events) ([a-z])\b")
_OPEN = (psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.INERROR)
_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@lru_cache(maxsize=1024)
def translate(statement: str) -> str:
    """A statement of the SQLite engine for psycopg: ``?`` and ``:name`` become ``%s`` and
    ``%(name)s`` (a literal ``%`` doubled), and an INSERT into a table with an ``id`` returns
    it (SQLite's ``lastrowid``)."""
    statement = _NAMED.sub(r"%(\1)s", statement.replace("%", "%%")).replace("?", "%s")
    if _ID_INSERT.match(statement) and "RETURNING" not in statement:
        statement += " RETURNING id"
    return statement


class _Result:
    """A statement's outcome, read in full before its connection goes back to the pool."""

    def __init__(self, cursor: psycopg.Cursor, returns_id: bool) -> None:
        self.rowcount = cursor.rowcount
        self._rows = cursor.fetchall() if cursor.description else []
        self.lastrowid = self._rows[0][0] if returns_id and self._rows else None

    def fetchone(self) -> Row | None:
        return self._rows.pop(0) if self._rows else None

    def fetchall(self) -> list[Row]:
        rows, self._rows = self._rows, []
        return rows

    def __iter__(self) -> Iterator[Row]:
        return iter(self.fetchall())


class _Connection:
    """A pooled connection that runs the SQLite engine's statements (``conn.execute``)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.raw = conn

    def execute(self, statement: str, params: Any = ()) -> _Result:
        query = translate(statement)
        with self.raw.cursor() as cursor:
            cursor.execute(query, params)  # never None: psycopg then reads %% as %
            return _Result(cursor, query.endswith(" RETURNING id"))


class PostgresStore(SQLiteStore):
    """The bot's PostgreSQL database (``url``: a libpq URL). One per process; :meth:`close` it."""

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time, secrets: Iterable[str] = (),
                 threads: int = 8, connect_timeout: float = 10.0) -> None:  # fmt: skip
        self.url = url
        self.path = url
        self.clock = clock
        self.lease_clock = time.time
        self._masker = Masker(secrets)
        self._local = threading.local()
        self._closed = threading.Event()
        self._listeners: list[Callable[[], object]] = []
        self._listener: threading.Thread | None = None
        self._token = uuid.uuid4().hex
        # One connection per worker thread, plus reads made from other threads (the event loop's).
        self.pool = ConnectionPool(url, min_size=1, max_size=threads + 4, kwargs={"autocommit": True},
                                   open=False, timeout=connect_timeout, name="bot-core")  # fmt: skip
        try:
            self.pool.open(wait=True, timeout=connect_timeout)
        except psycopg.OperationalError as exc:
            self.pool.close()
            raise Unavailable(f"cannot connect to PostgreSQL at {display(url)}: {exc}") from None
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="bot-core-store")
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._closed.set()
        self._executor.shutdown(wait=True)
        self.pool.close()

    # The SQLite engine's attributes `db` and `conn` are read-only properties here: the engine's
    # statements run through a per-thread psycopg wrapper with sqlite3.Connection's execute().
    @property
    def db(self) -> Any:  # type: ignore[override]
        raise RuntimeError("bot.db is the SQLite database of SQLite-only plugins; this bot runs on PostgreSQL: "
                           "keep a plugin's own data in bot.plugin_store(name)")  # fmt: skip

    @property
    def conn(self) -> _Connection:  # type: ignore[override]  # this thread's transaction
        current: _Connection | None = getattr(self._local, "conn", None)
        if current is None:
            raise RuntimeError("PostgresStore.conn is open only inside store.transaction()")
        return current

    def _migrate(self) -> None:
        with self.transaction() as conn:
            schema = _value(conn.execute("SELECT current_schema()").fetchone())
            if schema is None:
                raise Unavailable(f"no schema of the search_path exists in {display(self.url)}: create it first")
            crc = zlib.crc32(schema.encode())
            self._lock_key = crc - 2**32 if crc >= 2**31 else crc  # an int4
            conn.execute(
                "SELECT pg_advisory_xact_lock(?, ?)", (_MIGRATION_LOCK, self._lock_key)
            )  # replicas starting together
            conn.execute("CREATE TABLE IF NOT EXISTS bot_core_schema (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM bot_core_schema").fetchone()
            if row is None:
                conn.execute("INSERT INTO bot_core_schema (version) VALUES (0)")
            version = row[0] if row else 0
            if version > len(POSTGRES_MIGRATIONS):
                raise SchemaTooNew(f"the database at {display(self.url)} has schema version {version}; this "
                                   f"bot-core knows {len(POSTGRES_MIGRATIONS)}: upgrade bot-core")  # fmt: skip
            for script in POSTGRES_MIGRATIONS[version:]:
                conn.raw.execute(script)
            conn.execute("UPDATE bot_core_schema SET version = ?", (len(POSTGRES_MIGRATIONS),))
        # One channel per schema: bots on other schemas of the same database are not woken.
        self.channel = f"bot_core_{crc:08x}"
        # The payload names this store, whose listener skips its own notifications: the work
        # they announce has woken this process's loops already (as on SQLite), not once more.
        self._notify = f"NOTIFY \"{self.channel}\", '{self._token}'"  # hex digits: nothing to quote
        self._notify_commit = f"{self._notify}; COMMIT"  # one round trip (simple query: no parameters)

    # -- connections -------------------------------------------------------------------------

    @contextmanager
    def _unavailable(self) -> Iterator[None]:
        """psycopg's passing failures (connection lost, deadlock, pool exhausted) as Unavailable."""
        try:
            yield
        except psycopg.OperationalError as exc:
            raise Unavailable(f"PostgreSQL: {exc}") from exc

    @contextmanager
    def transaction(self) -> Iterator[_Connection]:  # type: ignore[override]
        """One transaction on a pooled connection; nested use (same thread) joins the outer one.

        BEGIN and COMMIT are plain statements rather than psycopg's ``transaction()`` (whose
        savepoint bookkeeping nothing here uses), so that a transaction that made work sends its
        NOTIFY and its COMMIT in one round trip."""
        with self._transaction() as conn:
            yield conn

    @contextmanager
    def _transaction(self, first: str = "") -> Iterator[_Connection]:
        """:meth:`transaction`, whose ``first`` statements (no parameters) run before any other:
        in the round trip of its BEGIN, or at once in the open transaction it joins."""
        current = getattr(self._local, "conn", None)
        if current is not None:
            if first:
                current.raw.execute(first)
            yield current
            return
        with self._unavailable(), self.pool.connection() as raw:
            raw.execute(f"BEGIN; {first}" if first else "BEGIN")
            self._local.conn, self._local.notify = _Connection(raw), False
            try:
                yield self._local.conn
                # delivered at commit, to every listening replica
                raw.execute(self._notify_commit if self._local.notify else "COMMIT")
            except BaseException:
                if raw.info.transaction_status in _OPEN:  # not on a lost connection: the pool drops it
                    raw.execute("ROLLBACK")
                raise
            finally:
                self._local.conn = None

    def submit(self, job: Callable[[], T]) -> asyncio.Future[T]:
        """Run ``job`` on a pool thread, in a transaction of its own. PostgreSQL commits
        transactions side by side, so SQLite's group commit would only hold row locks longer.
        Cancel the future to give up waiting: a job not started yet is then skipped."""
        return asyncio.wrap_future(self._executor.submit(job))

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A read for a unit being handled, on a pool thread: a round trip blocks no other lane."""
        return await self.call(fn, *args, **kwargs)

    def _wakes(self) -> None:
        """The open transaction makes work: notify the replicas when it commits."""
        self._local.notify = True

    def _notify_now(self) -> None:
        """Wake the replicas for work committed already."""
        with self._unavailable(), self.pool.connection() as raw:
            raw.execute(self._notify)

    def _statement(self, statement: str, params: Params) -> _Result:  # type: ignore[override]
        """One write: in the open transaction, else alone in autocommit (one statement is atomic
        by itself: no BEGIN and COMMIT round trips)."""
        current: _Connection | None = getattr(self._local, "conn", None)
        if current is not None:
            return current.execute(statement, params)
        with self._unavailable(), self.pool.connection() as raw:
            return _Connection(raw).execute(statement, params)

    def _read(self, statement: str, params: Params = ()) -> list[Row]:
        with self._unavailable(), self.pool.connection() as raw:
            return _Connection(raw).execute(statement, params).fetchall()

    def _rows(self, statement: str, params: Params = ()) -> list[dict[str, Any]]:
        with self._unavailable(), self.pool.connection() as raw, raw.cursor() as cursor:
            cursor.execute(translate(statement), params)
            keys = [d.name for d in cursor.description or ()]
            return [dict(zip(keys, row, strict=True)) for row in cursor.fetchall()]

    def healthy(self, owner: str = "") -> bool:
        try:
            with self.transaction() as conn:
                conn.execute("INSERT INTO heartbeats (owner, at) VALUES (?, ?)"
                             " ON CONFLICT (owner) DO UPDATE SET at = excluded.at", (owner, time.time()))  # fmt: skip
        except (Unavailable, psycopg.Error):
            return False
        return True

    # -- wake-ups ----------------------------------------------------------------------------

    def listen(self, wake: Callable[[], object]) -> None:
        """Call ``wake`` (on a thread of its own) whenever a replica commits new work."""
        self._listeners.append(wake)
        if self._listener is None:
            self._listener = threading.Thread(target=self._listen, name="bot-core-listen", daemon=True)
            self._listener.start()

    def _listen(self) -> None:
        while not self._closed.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    self._notify_listeners()  # work committed while (re)connecting
                    while not self._closed.is_set():
                        for notification in conn.notifies(timeout=0.25):
                            if notification.payload != self._token:  # another process's work
                                self._notify_listeners()
            except psycopg.Error:
                self._closed.wait(1.0)  # the loops poll meanwhile

    def _notify_listeners(self) -> None:
        for wake in self._listeners:
            try:
                wake()
            except RuntimeError:  # its event loop closed
                pass

    # -- what differs from SQLite ------------------------------------------------------------

    def _claim(self, table: str, select: str, params: dict[str, Any], owner: str, lease: float,
               returning: str) -> list[Row]:  # fmt: skip
        now = self.lease_clock()
        params = {**params, "now": now}
        if not self._read(select, params):  # the idle case: no lock, no write
            return []
        alias = _ALIAS.search(select).group(1)  # type: ignore[union-attr]  # the table the claim leases
        # The lock comes with BEGIN (one round trip), in a statement before the claim's own: the
        # claim's snapshot then sees every claim that held the lock before it.
        with self._transaction(f"SELECT pg_advisory_xact_lock({_CLAIM_LOCK}, {self._lock_key})") as conn:
            rows = conn.execute(
                f"UPDATE {table} SET lease_owner = :owner, lease_until = :until"
                f" WHERE id IN ({select} FOR UPDATE OF {alias} SKIP LOCKED) RETURNING {returning}",
                {**params, "owner": owner, "until": now + lease},
            ).fetchall()
        return sorted(rows)

    def conversation(self, profile: str | None, our_number: str, their_number: str) -> Conversation:
        """SQLite's ``conversation``, created in one statement (autocommit) that returns the new
        row: one round trip, not five (BEGIN, INSERT, two SELECTs, COMMIT)."""
        found = self.find_conversation(our_number, their_number)
        if found is not None:
            return found
        now = self.now()
        row = self._statement(
            "INSERT INTO conversations (profile, our_number, their_number, state, created_at, updated_at)"
            " VALUES (?, ?, ?, '{}', ?, ?) ON CONFLICT DO NOTHING RETURNING id, profile, state",
            (profile, our_number, their_number, now, now),
        ).fetchone()  # fmt: skip
        if row is None:  # another replica created it meanwhile (or the open transaction did)
            row = self._statement("SELECT id, profile, state FROM conversations WHERE our_number = ?"
                                  " AND their_number = ?", (our_number, their_number)).fetchone()  # fmt: skip
            assert row is not None, "the INSERT conflicted with it"
        return Conversation(row[0], row[1], our_number, their_number, json.loads(row[2]))

    def start_send(self, mdr_id: int, owner: str | None = None, *, rate: float = 0.0) -> float:
        now = time.time()
        if rate <= 0:  # one statement: autocommit, no BEGIN and COMMIT round trips
            self._update(mdr_id, owner, status=SENDING)
            return 0.0
        with self.transaction() as conn:
            number = _value(conn.execute("SELECT from_number FROM mdrs WHERE id = ?", (mdr_id,)).fetchone())
            conn.execute("INSERT INTO pacing (number, next_at) VALUES (?, 0) ON CONFLICT DO NOTHING", (number,))
            row = conn.execute("SELECT next_at FROM pacing WHERE number = ? FOR UPDATE", (number,)).fetchone()
            next_at = float(_value(row))
            if next_at > now:
                return next_at - now
            conn.execute("UPDATE pacing SET next_at = ? WHERE number = ?", (now + 1 / rate, number))
            self._update(mdr_id, owner, status=SENDING)
        return 0.0

    def mark_sent(self, mdr_id: int, telnyx_id: str | None, status: str, attempts: int | None = None,
                  owner: str | None = None) -> None:  # fmt: skip
        """SQLite's mark_sent in one statement (autocommit) that also says whether a status of
        this message arrived before it (rare: Telnyx answers the send first); only then a second
        transaction applies those statuses, which only move the MDR forward. A status committed
        after this statement finds the MDR by ``telnyx_id`` and applies itself."""
        fields: dict[str, Any] = {"status": status, "telnyx_id": telnyx_id, "error": None}
        if attempts is not None:
            fields["attempts"] = attempts
        if not telnyx_id or getattr(self._local, "conn", None) is not None:
            super().mark_sent(mdr_id, telnyx_id, status, attempts, owner)
            return
        columns = ", ".join(f"{name} = ?" for name in fields)
        statement = (f"UPDATE mdrs SET {columns}, updated_at = ?, lease_owner = NULL, lease_until = NULL WHERE id = ?"
                     + (" AND lease_owner = ?" if owner is not None else "")
                     + " RETURNING EXISTS (SELECT 1 FROM delivery_events e WHERE e.telnyx_id = mdrs.telnyx_id"
                     " AND (e.profile IS NULL OR e.profile = mdrs.profile))")  # fmt: skip
        params = [*fields.values(), self.now(), mdr_id, *([owner] if owner is not None else [])]
        row = self._statement(statement, params).fetchone()
        if row is None:
            raise LeaseLost(f"mdrs row {mdr_id} is no longer held by {owner}")
        if row[0] and telnyx_id:
            with self.transaction() as conn:
                self._apply_early_statuses(conn, mdr_id, telnyx_id)

    # Transactions that make claimable work notify the other replicas.

    def add_inbound(self, *args: Any, **kwargs: Any) -> int | None:
        """One INSERT in autocommit, then a NOTIFY if it stored a new message (a duplicate
        wakes nobody): two round trips, not BEGIN, INSERT, NOTIFY and COMMIT."""
        if getattr(self._local, "conn", None) is not None:  # joins an open transaction
            self._wakes()
            return super().add_inbound(*args, **kwargs)
        mdr_id = super().add_inbound(*args, **kwargs)
        if mdr_id is not None:
            self._notify_now()
        return mdr_id

    def apply_status(self, *args: Any, **kwargs: Any) -> int | None:
        with self.transaction():
            self._wakes()
            return super().apply_status(*args, **kwargs)

    def release(self, owner: str) -> None:
        with self.transaction() as conn:
            self._wakes()
            super().release(owner)
            conn.execute("DELETE FROM heartbeats WHERE owner = ?", (owner,))  # stopped: not alive

    def expire(self, owner: str) -> None:
        with self.transaction():
            self._wakes()
            super().expire(owner)

    def _add_outbound(self, *args: Any, **kwargs: Any) -> int:
        self._wakes()
        return super()._add_outbound(*args, **kwargs)

    def _apply(self, *args: Any, **kwargs: Any) -> list[int | None]:
        self._wakes()
        return super()._apply(*args, **kwargs)

    # -- the operator inbox's reads: the SQLite engine's SQL, on the pool ----------------------

    _INBOX_LIKE = "ILIKE"  # SQLite's LIKE ignores case; PostgreSQL's does not

    def _inbox_rows(self, statement: str, params: Params = ()) -> list[dict[str, Any]]:
        return self._rows(statement, params)

    def _inbox_each(self, statement: str, params: Params) -> Iterator[Row]:
        return iter(self._read(statement, params))

    def inbox_version(self) -> None:
        """No commit counter is shared across replicas: the change feed runs its query (two
        index range scans, usually empty) at every poll while someone watches."""
        return None


def schema_version(url: str) -> tuple[int, int]:
    """(the database's schema version, the newest this code knows), read only: 0 before the first start."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute("SELECT version FROM bot_core_schema").fetchone()
    except psycopg.errors.UndefinedTable:
        return 0, len(POSTGRES_MIGRATIONS)
    except psycopg.OperationalError as exc:
        raise Unavailable(f"cannot connect to PostgreSQL at {display(url)}: {exc}") from None
    return (row[0] if row else 0), len(POSTGRES_MIGRATIONS)


def replicas_alive(url: str, within: float = HEARTBEAT_WINDOW) -> bool:
    """Whether a bot of this database wrote its heartbeat in the last ``within`` seconds (a
    started bot writes one every few seconds, and deletes it when it stops)."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute("SELECT EXISTS (SELECT 1 FROM heartbeats WHERE at > %s)", (time.time() - within,))
            return bool(_value(row.fetchone()))
    except psycopg.errors.UndefinedTable:  # a database no bot has started on yet
        return False
    except psycopg.OperationalError as exc:
        raise Unavailable(f"cannot connect to PostgreSQL at {display(url)}: {exc}") from None


def _value(row: tuple[Any, ...] | None) -> Any:
    """The first column of a row a query always returns (an aggregate, a row the caller holds)."""
    if row is None:
        raise RuntimeError("the query returned no row")
    return row[0]
