"""The store contract: MDRs, conversations, opt-outs, timers, and the claimed units of work.

Every piece of work is a row, never only a task in memory:

==============  ===============================================  =======================
unit            row                                              lane (order kept within)
==============  ===============================================  =======================
inbound         ``mdrs`` inbound, status ``received``            (our number, theirs)
timer           ``timers`` status ``pending``, due               its conversation
send            ``mdrs`` outbound, ``pending``/``sending_local``  (from number, to number)
status hook     ``delivery_events`` with ``hook = 'pending'``    (from number, to number)
==============  ===============================================  =======================

A process *claims* units: ``claim_*(owner, limit)`` sets ``lease_owner`` and ``lease_until``
on rows nobody holds (no owner, or a lease that ran out) and returns them. The claim query
itself keeps the order: it returns only the head of each lane (no earlier unfinished unit of
the same lane), and a conversation's inbound messages and timers exclude each other (a timer
waits for the conversation's received messages; a message waits while a timer of its
conversation is held). Sends have lanes of their own, so a send waiting for a retry holds up
only the later sends of its conversation, never the handling of its next message.

A unit ends with a ``finish_*`` whose UPDATE is guarded by ``lease_owner = owner``: a process
that lost its lease (it stalled past the expiry and another process took the unit) commits
nothing (:class:`LeaseLost`). While a unit runs, its process renews every lease it holds
(:meth:`renew`) a few times per lease period, so a long plugin call keeps its unit; a
process that dies stops renewing, and others take its units over when the lease runs out
(at once, for a process of the same host whose pid is gone: :meth:`owners`, :meth:`expire`).
A step that fails for a passing reason (the disk is full, the database is locked) is retried
by the process holding the unit, after a backoff, with no restart.

Plugin effects made while handling a unit (``bot.send``, ``bot.schedule``, ``cancel_timers``,
opt-in/out) travel as :data:`Effect` values and are written in the finish transaction, with
the state and the replies, or not at all.

Engines implement :class:`WorkStore`: :mod:`.sqlite` (one file, WAL, several processes on one
host; writes serialized by SQLite's write lock, so a claim is one UPDATE ... RETURNING) and
:mod:`.postgres` (N replicas on N machines: ``SELECT ... FOR UPDATE SKIP LOCKED`` in the claim
queries, the lane-head condition as a NOT EXISTS on earlier unfinished rows, claims serialized
by an advisory lock; ``LISTEN/NOTIFY`` wake-ups). :func:`open_store` picks one from
``[bot] database``: a ``postgresql://`` URL or a file path. Nothing outside this package writes
SQL against the work tables.

Failures: :data:`ERRORS` is what any engine raises when the database fails, :data:`TRANSIENT`
the passing kind (a lock held elsewhere, a lost connection) that the unit retries.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from ..messages import Conversation, InboundMessage
    from ..timers import Timer

# Inbound MDR statuses.
RECEIVED = "received"  # in the inbox, not yet handled
HANDLED = "handled"  # a plugin claimed it
UNHANDLED = "unhandled"  # no plugin claimed it
IGNORED = "ignored"  # not for any plugin (profile disabled)
FAILED = "failed"  # a plugin raised or timed out; for outbound: the send failed for good
WAITING = "waiting"  # a person has the conversation; no plugin but optout claimed it

# Outbound MDR statuses set by bot-core; Telnyx's own words (queued, sent, delivered, ...) follow.
PENDING = "pending"  # in the outbox
SENDING = "sending_local"  # its HTTP request started; it may have reached Telnyx
SANDBOX = "sandbox"  # recorded, never sent (sandbox mode)
BLOCKED = "blocked"  # not sent: the recipient opted out

# The profile key of an account-wide opt-out: it covers every profile.
ACCOUNT = "*"


class Unavailable(Exception):
    """The database did not answer now (connection lost, pool exhausted): retry later."""


class SchemaTooNew(Exception):
    """The database was migrated by a newer bot-core than this one: refuse to touch it."""


# sqlite3.OperationalError: locked, busy, disk full, I/O; the PostgreSQL engine raises
# Unavailable for psycopg's OperationalError (connection, deadlock, serialization) and pool timeouts.
TRANSIENT: tuple[type[Exception], ...] = (sqlite3.OperationalError, Unavailable)
ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, Unavailable)


def is_postgres(database: str | Path) -> bool:
    """Whether ``[bot] database`` names a PostgreSQL server (a URL) rather than a SQLite file."""
    return isinstance(database, str) and database.startswith(("postgresql://", "postgres://"))


def schema_version(database: str | Path) -> tuple[int, int]:
    """(``database``'s schema version, the newest this code knows), without opening or migrating
    it: ``bot-core check`` reports a database newer than the code."""
    if is_postgres(database):
        from .postgres import schema_version as version
    else:
        from .sqlite import schema_version as version  # type: ignore[assignment]
    return version(database if is_postgres(database) else Path(database))  # type: ignore[arg-type]


def display(database: str | Path) -> str:
    """``database`` for messages and logs: a URL without its password."""
    if not is_postgres(database):
        return str(database)
    parts = urlsplit(str(database))
    host = parts.hostname or "localhost"
    return f"{parts.scheme}://{parts.username + '@' if parts.username else ''}{host}:{parts.port or 5432}{parts.path}"


class LeaseLost(Exception):
    """The unit's lease passed to another process: this one must not commit its outcome."""


@dataclass(frozen=True)
class Outbound:
    """A claimed send. ``in_flight``: its request had started when its last holder stopped."""

    id: int
    profile: str | None
    from_number: str
    to_number: str
    text: str
    attempts: int
    next_attempt_at: float
    ignore_optout: bool
    conversation_id: int | None
    in_flight: bool = False


@dataclass(frozen=True)
class OutboundDraft:
    """A reply about to be written to the outbox, with the status the outbox policy chose."""

    profile: str | None
    from_number: str
    to_number: str
    text: str
    status: str = PENDING
    error: str | None = None
    encoding: str | None = None
    parts: int | None = None
    ignore_optout: bool = False


@dataclass(frozen=True)
class StatusEvent:
    """A claimed delivery-status hook call: the status as its webhook reported it."""

    id: int
    telnyx_id: str
    status: str
    from_number: str | None
    to_number: str | None
    error: str | None
    mdr_id: int | None


# -- plugin effects, committed with the outcome of the unit that made them --------------------


@dataclass(frozen=True)
class SendEffect:
    """``bot.send``: ``draft`` joins the conversation (profile, our, their) unless alphanumeric."""

    draft: OutboundDraft
    conversation: tuple[str | None, str, str] | None


@dataclass(frozen=True)
class TimerEffect:
    """``bot.schedule``."""

    conversation_id: int
    due_at: float
    plugin: str | None = None
    name: str | None = None
    text: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CancelEffect:
    """``bot.cancel_timers``."""

    conversation_id: int
    plugin: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class ConsentEffect:
    """``bot.opt_out`` / ``bot.opt_in``."""

    profile: str | None
    number: str
    opted_out: bool
    source: str


Effect = SendEffect | TimerEffect | CancelEffect | ConsentEffect


@dataclass(frozen=True)
class Context:
    """What handling a unit reads with its conversation, in the same query (one round trip on
    PostgreSQL): who has the conversation (see ``handoff.gate``) and the stored opt-out records
    of its customer, keyed ``(profile, number)`` with None for the account-wide one (see
    ``effects.Effects.record``)."""

    with_person: bool
    operator: str | None
    handoff_reason: str | None
    handoff_at: float | None
    consent: dict[tuple[str | None, str], bool]


@runtime_checkable
class WorkStore(Protocol):
    """The claim and lease layer every engine implements (the rest of the store is plain CRUD).

    ``owner`` names a process (``host:pid:nonce``); ``lease`` is in seconds. Claims return at
    most ``limit`` units, each the head of its lane, none held by a live lease. Finishes and
    send marks raise :class:`LeaseLost` when ``owner`` no longer holds the unit.
    """

    def claim_inbound(self, owner: str, limit: int, lease: float) -> list[InboundMessage]: ...
    def claim_timers(self, owner: str, limit: int, lease: float, *,
                     lane: tuple[str, str] | None = None) -> list[Timer]: ...  # fmt: skip
    def claim_sends(self, owner: str, limit: int, lease: float) -> list[Outbound]: ...
    def claim_status_hooks(self, owner: str, limit: int, lease: float) -> list[StatusEvent]: ...
    def finish_inbound(self, mdr_id: int, *, status: str, conversation: Conversation | None = None,
                       replies: Sequence[OutboundDraft] = (), claimed_by: str | None = None, error: str | None = None,
                       effects: Sequence[Effect] = (), owner: str | None = None) -> list[int]: ...  # fmt: skip
    def finish_timer(self, timer_id: int, conversation: Conversation | None, replies: Sequence[OutboundDraft],
                     error: str | None = None, *, effects: Sequence[Effect] = (),
                     owner: str | None = None) -> list[int]: ...  # fmt: skip
    def finish_status_hook(self, event_id: int, *, error: str | None = None, effects: Sequence[Effect] = (),
                           owner: str | None = None) -> bool: ...  # fmt: skip
    def start_send(self, mdr_id: int, owner: str | None = None, *, rate: float = 0.0) -> float: ...
    def mark_sent(self, mdr_id: int, telnyx_id: str | None, status: str, attempts: int | None = None,
                  owner: str | None = None) -> None: ...  # fmt: skip
    def mark_retry(self, mdr_id: int, attempts: int, next_attempt_at: float, error: str,
                   owner: str | None = None) -> None: ...  # fmt: skip
    def mark_final(self, mdr_id: int, status: str, error: str | None, attempts: int | None = None,
                   owner: str | None = None) -> None: ...  # fmt: skip
    def renew(self, owner: str, lease: float) -> None: ...
    def release(self, owner: str) -> None: ...
    def release_unit(self, table: str, row_id: int, owner: str) -> None: ...
    def owners(self) -> set[str]: ...
    def expire(self, owner: str) -> None: ...
    def unheld_in_flight(self) -> int: ...


from .sqlite import Store, iso  # noqa: E402  (the engine needs the names above)


def open_store(database: str | Path, **kwargs: Any) -> Store:
    """The engine ``database`` names, migrated. psycopg is imported only for a PostgreSQL URL,
    so SQLite deployments never need it."""
    if is_postgres(database):
        from .postgres import PostgresStore

        return PostgresStore(str(database), **kwargs)
    return Store(database, **kwargs)


__all__ = [
    "ACCOUNT", "BLOCKED", "FAILED", "HANDLED", "IGNORED", "PENDING", "RECEIVED", "SANDBOX", "SENDING", "UNHANDLED",
    "WAITING",
    "ERRORS", "TRANSIENT", "CancelEffect", "ConsentEffect", "Context", "Effect", "LeaseLost", "Outbound", "OutboundDraft",
    "SchemaTooNew", "SendEffect", "StatusEvent", "Store", "TimerEffect", "Unavailable", "WorkStore", "display",
    "is_postgres", "iso", "open_store", "schema_version",
]  # fmt: skip
