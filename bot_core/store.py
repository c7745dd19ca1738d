"""SQLite through sqlite-utils: the schema, MDRs, the inbox and outbox, conversations, opt-outs.

One connection per process, used from the event loop's thread: every statement here takes
microseconds, so there is no lock to contend for inside a server. WAL and a busy timeout let a
second process (the CLI) read and write beside a running server.

The MDR table *is* the inbox and the outbox: an inbound row with status ``received`` is work
for the dispatcher, an outbound row with status ``pending`` is work for the sender. A row changes
status in the same transaction that records its consequences, so a crash never loses or repeats
work (a send in flight at the crash is the one exception; see the README).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlite_utils

from .errors import ForeignStatusError
from .logs import Masker
from .messages import Conversation, DeliveryStatus, InboundMessage, Media
from .timers import Timer

# Inbound MDR statuses.
RECEIVED = "received"  # in the inbox, not yet handled
HANDLED = "handled"  # a plugin claimed it
UNHANDLED = "unhandled"  # no plugin claimed it
IGNORED = "ignored"  # not for any plugin (profile disabled)
FAILED = "failed"  # a plugin raised or timed out; for outbound: the send failed for good
WAITING = "waiting"  # a person has the conversation; no plugin but optout claimed it

# Outbound MDR statuses set by bot-core; Telnyx's own words (queued, sent, delivered, ...) follow.
PENDING = "pending"  # in the outbox
SENDING = "sending_local"  # handed to the HTTP client; may have reached Telnyx
SANDBOX = "sandbox"  # recorded, never sent (sandbox mode)
BLOCKED = "blocked"  # not sent: the recipient opted out

# The profile key of an account-wide opt-out: it covers every profile.
ACCOUNT = "*"

# The WHERE clause of the outbox's partial index. SQLite uses a partial index only for a query
# that repeats its WHERE clause, so every outbox query includes this text verbatim.
_IN_OUTBOX = f"status IN ('{PENDING}', '{SENDING}')"

# Telnyx delivery statuses only move forward: a late "sent" never overwrites "delivered".
_STATUS_RANK = {PENDING: 0, SENDING: 1, "queued": 2, "sending": 3, "sent": 4}
_FINAL_RANK = 5

def iso(ts: float) -> str:
    """A UTC ISO 8601 timestamp that sorts as text."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Outbound:
    """An outbound MDR waiting in the outbox."""

    id: int
    profile: str | None
    from_number: str
    to_number: str
    text: str
    attempts: int
    next_attempt_at: float
    ignore_optout: bool
    conversation_id: int | None


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


def _migration_1(db: sqlite_utils.Database) -> None:
    db["mdrs"].create(
        {
            "id": int, "direction": str, "profile": str, "from_number": str, "to_number": str,
            "text": str, "media": str, "status": str, "parts": int, "encoding": str,
            "telnyx_id": str, "error": str, "conversation_id": int, "in_reply_to": int,
            "claimed_by": str, "attempts": int, "next_attempt_at": float, "ignore_optout": int,
            "created_at": str, "updated_at": str,
        },
        pk="id",
        not_null={"direction", "from_number", "to_number", "text", "status", "created_at", "updated_at"},
        defaults={"attempts": 0, "ignore_optout": 0},
    )  # fmt: skip
    db.execute("CREATE UNIQUE INDEX mdrs_telnyx_id ON mdrs(direction, telnyx_id)")
    db.execute(f"CREATE INDEX mdrs_inbox ON mdrs(id) WHERE status = '{RECEIVED}'")
    db.execute(f"CREATE INDEX mdrs_outbox ON mdrs(id) WHERE {_IN_OUTBOX}")
    db.execute("CREATE INDEX mdrs_created_at ON mdrs(created_at)")
    db.execute("CREATE INDEX mdrs_conversation ON mdrs(conversation_id)")
    db["conversations"].create(
        {"id": int, "profile": str, "our_number": str, "their_number": str, "state": str,
         "created_at": str, "updated_at": str},
        pk="id",
        not_null={"our_number", "their_number", "state"},
    )  # fmt: skip
    db.execute("CREATE UNIQUE INDEX conversations_pair ON conversations(our_number, their_number)")
    db["optouts"].create(
        {"profile": str, "number": str, "opted_out": int, "updated_at": str},
        pk=("profile", "number"),
    )
    db["consent_log"].create(
        {"id": int, "profile": str, "number": str, "action": str, "source": str, "at": str}, pk="id"
    )
    db["delivery_events"].create(
        {"id": int, "telnyx_id": str, "status": str, "error": str, "received_at": str}, pk="id"
    )
    db.execute("CREATE INDEX delivery_events_telnyx_id ON delivery_events(telnyx_id)")
    db["timers"].create(
        {"id": int, "conversation_id": int, "plugin": str, "name": str, "due_at": float,
         "text": str, "payload": str, "status": str, "created_at": str, "fired_at": str},
        pk="id",
    )  # fmt: skip
    db.execute("CREATE INDEX timers_due ON timers(due_at) WHERE status = 'pending'")


def _migration_handoff_and_inbox(db: sqlite_utils.Database) -> None:
    """Handoff and the operator inbox: who has each conversation, its latest message, operators.

    Triggers keep ``last_mdr_id`` / ``last_message_at`` (the inbox lists conversations by it)
    and ``waiting`` (an inbound message left for a person) right in the same statement that
    writes the MDR, so no write path has to remember them.
    """
    for column, kind in (("with_person", "INTEGER NOT NULL DEFAULT 0"), ("operator", "TEXT"),
                         ("handoff_reason", "TEXT"), ("handoff_at", "REAL"),
                         ("waiting", "INTEGER NOT NULL DEFAULT 0"), ("last_mdr_id", "INTEGER"),
                         ("last_message_at", "TEXT")):  # fmt: skip
        db.execute(f"ALTER TABLE conversations ADD COLUMN {column} {kind}")
    db.execute("ALTER TABLE mdrs ADD COLUMN operator TEXT")  # who wrote an operator reply
    db.execute("UPDATE conversations SET last_mdr_id = (SELECT MAX(id) FROM mdrs WHERE conversation_id = conversations.id)")
    db.execute("UPDATE conversations SET last_message_at = (SELECT created_at FROM mdrs WHERE id = last_mdr_id)")
    db.execute("CREATE INDEX conversations_recent ON conversations(last_message_at)")
    db.execute("CREATE INDEX conversations_waiting ON conversations(last_message_at) WHERE waiting = 1")
    db.execute("CREATE INDEX conversations_with_person ON conversations(handoff_at) WHERE with_person = 1")
    db.execute("CREATE INDEX conversations_updated_at ON conversations(updated_at)")
    db.execute("CREATE INDEX conversations_their_number ON conversations(their_number)")  # the inbox's search
    db.execute("CREATE INDEX mdrs_updated_at ON mdrs(updated_at)")  # the inbox's change feed
    latest = ("UPDATE conversations SET last_mdr_id = NEW.id, last_message_at = NEW.created_at"
              " WHERE id = NEW.conversation_id AND (last_mdr_id IS NULL OR last_mdr_id < NEW.id);")
    db.execute(f"CREATE TRIGGER mdrs_latest_insert AFTER INSERT ON mdrs WHEN NEW.conversation_id IS NOT NULL"
               f" BEGIN {latest} END")  # fmt: skip
    db.execute(f"CREATE TRIGGER mdrs_latest_update AFTER UPDATE OF conversation_id ON mdrs"
               f" WHEN NEW.conversation_id IS NOT NULL AND OLD.conversation_id IS NULL BEGIN {latest} END")  # fmt: skip
    db.execute(f"CREATE TRIGGER mdrs_waiting AFTER UPDATE OF status ON mdrs WHEN NEW.status = '{WAITING}'"
               " BEGIN UPDATE conversations SET waiting = 1 WHERE id = NEW.conversation_id; END")  # fmt: skip
    db["operators"].create({"name": str, "password_hash": str, "profiles": str, "created_at": str}, pk="name",
                           not_null={"password_hash", "profiles", "created_at"})  # fmt: skip
    db["inbox_keys"].create({"name": str, "value": str}, pk="name")  # the generated session signing key


def _migration_recipients_and_status_profile(db: sqlite_utils.Database) -> None:
    """A group message keeps its other recipients; a delivery status, the profile that verified it."""
    db.execute("ALTER TABLE mdrs ADD COLUMN other_recipients TEXT")  # a JSON array of E.164 numbers
    db.execute("ALTER TABLE delivery_events ADD COLUMN profile TEXT")  # NULL: not profile-signed (V2, CLI)


MIGRATIONS: tuple[Callable[[sqlite_utils.Database], None], ...] = (
    _migration_1,
    _migration_recipients_and_status_profile,
    _migration_handoff_and_inbox,
)


class Store:
    """The bot's SQLite database. Create one per process; call :meth:`close` when done."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time, secrets: Iterable[str] = ()) -> None:
        self.path = Path(path)
        self.clock = clock
        # Error texts come from plugins and from Telnyx; whatever they quote, no secret is stored.
        self._masker = Masker(secrets)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL survives a process crash (the kill -9 case); only power loss can lose
        # the last transactions. FULL would fsync every webhook.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA foreign_keys = ON")
        self.conn = conn
        self._lock = threading.RLock()
        self.db = sqlite_utils.Database(conn)
        self._migrate()

    def close(self) -> None:
        self.conn.close()

    def _migrate(self) -> None:
        with self.transaction():
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
                migration(self.db)
                self.conn.execute(f"PRAGMA user_version = {number}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; nested use joins the outer one."""
        with self._lock:  # a test or CLI thread beside the event loop must not join its transaction
            if self.conn.in_transaction:
                yield self.conn
                return
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def _statement(self, sql: str, params: tuple) -> sqlite3.Cursor:
        """One write that is its own transaction (or joins the open one): no BEGIN/COMMIT
        round trips for the hot path's single-statement writes."""
        with self._lock:
            return self.conn.execute(sql, params)

    def now(self) -> str:
        return iso(self.clock())

    def redact(self, text: str | None) -> str | None:
        """``text`` with every configured secret masked."""
        return self._masker.mask(text) if text else text

    def healthy(self) -> bool:
        try:
            return self.conn.execute("SELECT 1").fetchone() == (1,)
        except sqlite3.Error:
            return False

    # -- inbox -------------------------------------------------------------------------------

    def add_inbound(
        self, message: InboundMessage, *, status: str = RECEIVED, error: str | None = None
    ) -> int | None:
        """Store an inbound MDR keyed by Telnyx's id; None if that id is already stored."""
        now = self.now()
        media = json.dumps([m.__dict__ for m in message.media]) if message.media else None
        others = json.dumps(message.other_recipients) if message.other_recipients else None
        cursor = self._statement(
            "INSERT OR IGNORE INTO mdrs (direction, profile, from_number, to_number, text,"
            " media, status, telnyx_id, error, other_recipients, created_at, updated_at)"
            " VALUES ('inbound', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (message.profile, message.from_number, message.to_number, message.text, media,
             status, message.id, self.redact(error), others, now, now),
        )  # fmt: skip
        return cursor.lastrowid if cursor.rowcount else None

    def pending_inbound(self) -> list[InboundMessage]:
        """Inbound messages acknowledged but not yet handled, oldest first."""
        rows = self.conn.execute(  # only inbound MDRs are ever 'received': this reads mdrs_inbox
            "SELECT id, telnyx_id, text, from_number, to_number, profile, media, created_at, other_recipients"
            f" FROM mdrs WHERE status = '{RECEIVED}' ORDER BY id"
        ).fetchall()
        return [_inbound(row) for row in rows]

    def inbound(self, mdr_id: int) -> InboundMessage | None:
        row = self.conn.execute(
            "SELECT id, telnyx_id, text, from_number, to_number, profile, media, created_at, other_recipients"
            " FROM mdrs WHERE id = ? AND direction = 'inbound'",
            (mdr_id,),
        ).fetchone()
        return _inbound(row) if row else None

    def finish_inbound(
        self,
        mdr_id: int,
        *,
        status: str,
        conversation: Conversation | None = None,
        replies: list[OutboundDraft] = (),  # type: ignore[assignment]
        claimed_by: str | None = None,
        error: str | None = None,
    ) -> list[int]:
        """Record the outcome of handling one message: state, replies and status, atomically."""
        now = self.now()
        with self.transaction() as conn:
            if conversation is not None:
                conn.execute(
                    "UPDATE conversations SET state = ?, updated_at = ? WHERE id = ?",
                    (json.dumps(conversation.state), now, conversation.id),
                )
            conn.execute(
                "UPDATE mdrs SET status = ?, claimed_by = ?, error = ?, conversation_id = ?,"
                " updated_at = ? WHERE id = ?",
                (status, claimed_by, self.redact(error), conversation.id if conversation else None, now, mdr_id),
            )
            conversation_id = conversation.id if conversation else None
            return [self._add_outbound(d, conversation_id, mdr_id, now) for d in replies]

    # -- conversations -----------------------------------------------------------------------

    def conversation(self, profile: str | None, our_number: str, their_number: str) -> Conversation:
        """The conversation between two numbers, created on first use."""
        sql = "SELECT id, profile, state FROM conversations WHERE our_number = ? AND their_number = ?"
        row = self.conn.execute(sql, (our_number, their_number)).fetchone()
        if row is None:
            now = self.now()
            with self.transaction() as conn:
                conn.execute(
                    "INSERT OR IGNORE INTO conversations (profile, our_number, their_number, state,"
                    " created_at, updated_at) VALUES (?, ?, ?, '{}', ?, ?)",
                    (profile, our_number, their_number, now, now),
                )
            row = self.conn.execute(sql, (our_number, their_number)).fetchone()
        return Conversation(
            id=row[0], profile=row[1], our_number=our_number, their_number=their_number,
            state=json.loads(row[2]),
        )  # fmt: skip

    def conversation_by_id(self, conversation_id: int) -> Conversation | None:
        row = self.conn.execute(
            "SELECT id, profile, our_number, their_number, state FROM conversations WHERE id = ?",
            (conversation_id,),
        ).fetchone()
        if row is None:
            return None
        return Conversation(row[0], row[1], row[2], row[3], json.loads(row[4]))

    def save_state(self, conversation: Conversation) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE conversations SET state = ?, updated_at = ? WHERE id = ?",
                (json.dumps(conversation.state), self.now(), conversation.id),
            )

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
        return cursor.lastrowid

    def pending_outbound(self, after: int = 0) -> list[Outbound]:
        """Messages in the outbox with ids above ``after``, oldest first (so in reply order)."""
        rows = self.conn.execute(
            "SELECT id, profile, from_number, to_number, text, attempts, next_attempt_at,"
            f" ignore_optout, conversation_id FROM mdrs WHERE {_IN_OUTBOX} AND status = '{PENDING}'"
            " AND id > ? ORDER BY id",
            (after,),
        ).fetchall()
        return [Outbound(*row[:7], bool(row[7]), row[8]) for row in rows]

    def requeue_in_flight(self) -> int:
        """At startup: sends cut off by a crash go back to the outbox (they may repeat)."""
        with self.transaction() as conn:
            return conn.execute(
                f"UPDATE mdrs SET status = '{PENDING}' WHERE {_IN_OUTBOX} AND status = '{SENDING}'"
            ).rowcount

    def mark_sending(self, mdr_id: int) -> None:
        self._update(mdr_id, status=SENDING)

    def mark_sent(self, mdr_id: int, telnyx_id: str | None, status: str, attempts: int | None = None) -> None:
        """Record Telnyx's acceptance, then apply any status update that arrived before it."""
        fields: dict[str, Any] = {"status": status, "telnyx_id": telnyx_id, "error": None}
        if attempts is not None:
            fields["attempts"] = attempts
        early = self.conn.execute(  # a status a profile verified applies only to that profile's MDR
            "SELECT status, error FROM delivery_events WHERE telnyx_id = ? AND (profile IS NULL OR"
            " profile = (SELECT profile FROM mdrs WHERE id = ?)) ORDER BY id", (telnyx_id, mdr_id)
        ).fetchall() if telnyx_id else []  # fmt: skip
        if not early:  # the usual case: one statement
            self._update(mdr_id, **fields)
            return
        with self.transaction():
            self._update(mdr_id, **fields)
            for event_status, error in early:
                self._advance_status(mdr_id, event_status, error)

    def mark_retry(self, mdr_id: int, attempts: int, next_attempt_at: float, error: str) -> None:
        self._update(
            mdr_id, status=PENDING, attempts=attempts, next_attempt_at=next_attempt_at, error=error
        )

    def mark_final(self, mdr_id: int, status: str, error: str | None, attempts: int | None = None) -> None:
        """Take a message out of the outbox for good (failed, blocked, sandbox)."""
        fields: dict[str, Any] = {"status": status, "error": error}
        if attempts is not None:
            fields["attempts"] = attempts
        self._update(mdr_id, **fields)

    def _update(self, mdr_id: int, **fields: Any) -> None:
        if "error" in fields:
            fields["error"] = self.redact(fields["error"])
        columns = ", ".join(f"{name} = ?" for name in fields)
        self._statement(f"UPDATE mdrs SET {columns}, updated_at = ? WHERE id = ?",
                        (*fields.values(), self.now(), mdr_id))  # fmt: skip

    # -- delivery statuses -------------------------------------------------------------------

    def apply_status(self, status: DeliveryStatus, *, profile: str | None = None) -> int | None:
        """Record a delivery status webhook; returns the MDR it moved, if it is known yet.

        ``profile`` is the profile whose secret verified a V1 status: it may only move an MDR
        that profile sent, else :class:`ForeignStatusError` and nothing is recorded. A status
        that arrives before its MDR is known keeps ``profile`` and is applied only if the MDR
        turns out to be that profile's.
        """
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT id, profile FROM mdrs WHERE direction = 'outbound' AND telnyx_id = ?",
                (status.telnyx_id,),
            ).fetchone()
            if row is not None and profile is not None and row[1] != profile:
                raise ForeignStatusError(f"message {status.telnyx_id} was not sent by messaging profile {profile!r},"
                                         " whose secret signed this status: refused, nothing changed")  # fmt: skip
            conn.execute(
                "INSERT INTO delivery_events (telnyx_id, status, error, received_at, profile)"
                " VALUES (?, ?, ?, ?, ?)",
                (status.telnyx_id, status.status, self.redact(status.error), self.now(), profile),
            )
            if row is None:
                return None
            self._advance_status(row[0], status.status, status.error)
            return row[0]

    def _advance_status(self, mdr_id: int, status: str, error: str | None) -> None:
        current = self.conn.execute("SELECT status FROM mdrs WHERE id = ?", (mdr_id,)).fetchone()[0]
        if _STATUS_RANK.get(status, _FINAL_RANK) > _STATUS_RANK.get(current, _FINAL_RANK):
            failed = status not in ("queued", "sending", "sent", "delivered")
            self._update(mdr_id, status=status, error=error if failed else None)

    # -- opt-outs ----------------------------------------------------------------------------

    def is_opted_out(self, profile: str | None, number: str) -> bool:
        """Whether ``number`` opted out of ``profile``, or of the whole account (``profile`` None),
        which covers every profile, as Telnyx's account-wide opt-outs do."""
        row = self.conn.execute(
            "SELECT max(opted_out) FROM optouts WHERE profile IN (?, ?) AND number = ?",
            (ACCOUNT if profile is None else profile, ACCOUNT, number),
        ).fetchone()
        return bool(row[0])

    def set_opted_out(self, profile: str | None, number: str, opted_out: bool, source: str) -> bool:
        """Record a consent change for ``profile`` (None: the whole account); returns False when
        that record already had that state."""
        profile = ACCOUNT if profile is None else profile
        row = self.conn.execute(
            "SELECT opted_out FROM optouts WHERE profile = ? AND number = ?", (profile, number)
        ).fetchone()
        if bool(row and row[0]) == opted_out:
            return False
        now = self.now()
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO optouts (profile, number, opted_out, updated_at)"
                " VALUES (?, ?, ?, ?)",
                (profile, number, int(opted_out), now),
            )
            conn.execute(
                "INSERT INTO consent_log (profile, number, action, source, at) VALUES (?, ?, ?, ?, ?)",
                (profile, number, "opt_out" if opted_out else "opt_in", source, now),
            )
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
        return self._rows(f"SELECT id, NULLIF(profile, '{ACCOUNT}') AS profile, number, action, source, at"
                          " FROM consent_log ORDER BY id")

    # -- timers ------------------------------------------------------------------------------

    def add_timer(self, conversation_id: int, due_at: float, *, plugin: str | None = None,
                  name: str | None = None, text: str | None = None,
                  payload: dict[str, Any] | None = None) -> int:  # fmt: skip
        with self.transaction() as conn:
            return conn.execute(
                "INSERT INTO timers (conversation_id, plugin, name, due_at, text, payload, status,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                (conversation_id, plugin, name, due_at, text, json.dumps(payload or {}), self.now()),
            ).lastrowid

    def due_timers(self, now: float) -> list[tuple[Timer, tuple[str, str]]]:
        """Pending timers due by ``now``, oldest first, each with its conversation's lane key."""
        rows = self.conn.execute(
            "SELECT t.id, t.conversation_id, t.due_at, t.plugin, t.name, t.text, t.payload,"
            " c.our_number, c.their_number FROM timers t JOIN conversations c"
            " ON c.id = t.conversation_id WHERE t.status = 'pending' AND t.due_at <= ?"
            " ORDER BY t.due_at, t.id",
            (now,),
        ).fetchall()
        return [(Timer(*row[:6], json.loads(row[6])), (row[7], row[8])) for row in rows]

    def timers(self, conversation_id: int) -> list[Timer]:
        """A conversation's pending timers."""
        rows = self.conn.execute(
            "SELECT id, conversation_id, due_at, plugin, name, text, payload FROM timers"
            " WHERE status = 'pending' AND conversation_id = ? ORDER BY due_at, id",
            (conversation_id,),
        ).fetchall()
        return [Timer(*row[:6], json.loads(row[6])) for row in rows]

    def cancel_timers(self, conversation_id: int, *, plugin: str | None = None, name: str | None = None) -> int:
        """Cancel a conversation's pending timers, those of one plugin or name if given."""
        sql = "UPDATE timers SET status = 'cancelled' WHERE status = 'pending' AND conversation_id = ?"
        params: list[Any] = [conversation_id]
        for column, value in (("plugin", plugin), ("name", name)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        with self.transaction() as conn:
            return conn.execute(sql, params).rowcount

    def finish_timer(self, timer_id: int, conversation: Conversation | None,
                     replies: list[OutboundDraft], error: str | None = None) -> list[int]:  # fmt: skip
        """Mark a timer fired, with its state change and replies, atomically."""
        now = self.now()
        with self.transaction() as conn:
            conn.execute(
                "UPDATE timers SET status = ?, fired_at = ? WHERE id = ?",
                ("failed" if error else "fired", now, timer_id),
            )
            if conversation is None:
                return []
            conn.execute(
                "UPDATE conversations SET state = ?, updated_at = ? WHERE id = ?",
                (json.dumps(conversation.state), now, conversation.id),
            )
            return [self._add_outbound(d, conversation.id, None, now) for d in replies]

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
    ) -> list[dict]:
        """MDRs newest first, as dicts keyed like ``bot-core messages --json``.

        Each filter given narrows the list: ``number`` matches either end, ``since`` is an ISO
        8601 UTC time (:func:`iso`), ``after_id`` keeps ids above it. Filters are values, never
        SQL text.
        """
        filters = {"id = :mdr_id": mdr_id, "id > :after_id": after_id, "profile = :profile": profile,
                   "direction = :direction": direction, "status = :status": status,
                   "(from_number = :number OR to_number = :number)": number, "created_at >= :since": since}  # fmt: skip
        where = " AND ".join(clause for clause, value in filters.items() if value is not None)
        sql = (
            "SELECT id, direction, profile, from_number AS \"from\", to_number AS \"to\", text,"
            " status, parts, encoding, telnyx_id, error, created_at, updated_at FROM mdrs"
            + (f" WHERE {where}" if where else "")
            + " ORDER BY id DESC"
            + (" LIMIT :limit" if limit is not None else "")
        )
        params = {"mdr_id": mdr_id, "after_id": after_id, "profile": profile, "direction": direction,
                  "status": status, "number": number, "since": since, "limit": limit}  # fmt: skip
        return self._rows(sql, params)

    def _rows(self, sql: str, params: dict | tuple = ()) -> list[dict[str, Any]]:
        """Rows as dicts. Not sqlite-utils' query(): its SAVEPOINT would open a transaction."""
        cursor = self.conn.execute(sql, params)
        keys = [d[0] for d in cursor.description]
        return [dict(zip(keys, row)) for row in cursor.fetchall()]

    def mdr(self, mdr_id: int) -> dict | None:
        rows = self.mdrs(limit=1, mdr_id=mdr_id)
        return rows[0] if rows else None

    # -- conversations for operators (bot-core conversations) ----------------------------------

    def conversation_rows(self, *, limit: int | None = 50, where: str = "", params: dict | None = None) -> list[dict]:
        """Conversations, most recently active first, with their state (decoded), message and
        pending timer counts, as ``bot-core conversations --json`` prints them."""
        sql = (
            "SELECT c.id, c.profile, c.our_number, c.their_number, c.state, c.created_at, c.updated_at,"
            " (SELECT count(*) FROM mdrs m WHERE m.conversation_id = c.id) AS messages,"
            " (SELECT count(*) FROM timers t WHERE t.conversation_id = c.id AND t.status = 'pending') AS timers"
            " FROM conversations c" + (f" WHERE {where}" if where else "")
            + " ORDER BY c.updated_at DESC, c.id DESC" + (" LIMIT :limit" if limit is not None else "")
        )  # fmt: skip
        rows = self._rows(sql, {**(params or {}), "limit": limit})
        for row in rows:
            row["state"] = json.loads(row["state"])
        return rows

    def reset_conversation(self, conversation_id: int) -> int:
        """Empty a conversation's state and cancel its pending timers, in one transaction, so
        that its next message starts afresh; returns how many timers were cancelled."""
        with self.transaction() as conn:
            conn.execute("UPDATE conversations SET state = '{}', updated_at = ? WHERE id = ?",
                         (self.now(), conversation_id))  # fmt: skip
            return self.cancel_timers(conversation_id)


def _inbound(row: tuple) -> InboundMessage:
    media = tuple(Media(**m) for m in json.loads(row[6])) if row[6] else ()
    return InboundMessage(
        id=row[1], text=row[2], from_number=row[3], to_number=row[4], profile=row[5],
        media=media, mdr_id=row[0], received_at=row[7], other_recipients=tuple(json.loads(row[8] or "[]")),
    )  # fmt: skip
