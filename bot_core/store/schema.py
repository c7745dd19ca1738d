"""The SQLite schema as a list of migrations: ``PRAGMA user_version`` counts those applied.

Never edit a migration that has shipped: add the next one, so every existing database upgrades.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlite_utils

from . import PENDING, RECEIVED, SENDING, WAITING

# The WHERE clause of the outbox's partial indexes. SQLite uses a partial index only for a query
# that repeats its WHERE clause, so every outbox query includes this text verbatim.
IN_OUTBOX = f"status IN ('{PENDING}', '{SENDING}')"


def _migration_1(db: sqlite_utils.Database) -> None:
    db.table("mdrs").create(
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
    db.execute(f"CREATE INDEX mdrs_outbox ON mdrs(id) WHERE {IN_OUTBOX}")
    db.execute("CREATE INDEX mdrs_created_at ON mdrs(created_at)")
    db.execute("CREATE INDEX mdrs_conversation ON mdrs(conversation_id)")
    db.table("conversations").create(
        {"id": int, "profile": str, "our_number": str, "their_number": str, "state": str,
         "created_at": str, "updated_at": str},
        pk="id",
        not_null={"our_number", "their_number", "state"},
    )  # fmt: skip
    db.execute("CREATE UNIQUE INDEX conversations_pair ON conversations(our_number, their_number)")
    db.table("optouts").create(
        {"profile": str, "number": str, "opted_out": int, "updated_at": str},
        pk=("profile", "number"),
    )
    db.table("consent_log").create(
        {"id": int, "profile": str, "number": str, "action": str, "source": str, "at": str}, pk="id"
    )
    db.table("delivery_events").create(
        {"id": int, "telnyx_id": str, "status": str, "error": str, "received_at": str}, pk="id"
    )
    db.execute("CREATE INDEX delivery_events_telnyx_id ON delivery_events(telnyx_id)")
    db.table("timers").create(
        {"id": int, "conversation_id": int, "plugin": str, "name": str, "due_at": float,
         "text": str, "payload": str, "status": str, "created_at": str, "fired_at": str},
        pk="id",
    )  # fmt: skip
    db.execute("CREATE INDEX timers_due ON timers(due_at) WHERE status = 'pending'")


def _migration_recipients_and_status_profile(db: sqlite_utils.Database) -> None:
    """A group message keeps its other recipients; a delivery status, the profile that verified it."""
    db.execute("ALTER TABLE mdrs ADD COLUMN other_recipients TEXT")  # a JSON array of E.164 numbers
    db.execute("ALTER TABLE delivery_events ADD COLUMN profile TEXT")  # NULL: not profile-signed (V2, CLI)


def _migration_claimed_work(db: sqlite_utils.Database) -> None:
    """Claimed work: leases on every unit, lane indexes for the claim queries, stored pacing."""
    for table in ("mdrs", "timers", "delivery_events"):
        db.execute(f"ALTER TABLE {table} ADD COLUMN lease_owner TEXT")
        db.execute(f"ALTER TABLE {table} ADD COLUMN lease_until REAL")
        db.execute(f"CREATE INDEX {table}_leased ON {table}(lease_owner) WHERE lease_owner IS NOT NULL")
    db.execute(f"CREATE INDEX mdrs_inbox_lane ON mdrs(to_number, from_number, id) WHERE status = '{RECEIVED}'")
    db.execute(f"CREATE INDEX mdrs_outbox_lane ON mdrs(from_number, to_number, id) WHERE {IN_OUTBOX}")
    db.execute("CREATE INDEX timers_lane ON timers(conversation_id, due_at, id) WHERE status = 'pending'")
    # A delivery status owes a hook call ('pending') only when some plugin implements the hook.
    for column in ("from_number TEXT", "to_number TEXT", "mdr_id INTEGER", "hook TEXT", "hook_error TEXT"):
        db.execute(f"ALTER TABLE delivery_events ADD COLUMN {column}")
    db.execute("CREATE INDEX delivery_events_lane ON delivery_events(from_number, to_number, id) WHERE hook = 'pending'")
    # The next free send slot of each sending number, shared by every process on the database.
    db.execute("CREATE TABLE pacing (number TEXT PRIMARY KEY, next_at REAL NOT NULL)")
    # One row per process, rewritten by the health check: a write that fails when the disk is full.
    db.execute("CREATE TABLE heartbeats (owner TEXT PRIMARY KEY, at REAL NOT NULL)")


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
    db.table("operators").create({"name": str, "password_hash": str, "profiles": str, "created_at": str}, pk="name",
                           not_null={"password_hash", "profiles", "created_at"})  # fmt: skip
    db.table("inbox_keys").create({"name": str, "value": str}, pk="name")  # the generated session signing key


def _migration_plugin_data(db: sqlite_utils.Database) -> None:
    """The plugins' key-value store (``bot.plugin_store``): data of a plugin that is not per conversation."""
    db.execute(PLUGIN_DATA)


PLUGIN_DATA = ("CREATE TABLE plugin_data (plugin TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
               " updated_at TEXT NOT NULL, PRIMARY KEY (plugin, key))")  # fmt: skip

MIGRATIONS: tuple[Callable[[sqlite_utils.Database], None], ...] = (
    _migration_1,
    _migration_recipients_and_status_profile,
    _migration_claimed_work,
    _migration_handoff_and_inbox,
    _migration_plugin_data,
)


# Handoff and the operator inbox on PostgreSQL: the same columns, tables and indexes as
# _migration_handoff_and_inbox, its triggers as PL/pgSQL functions.
POSTGRES_HANDOFF = f"""
    ALTER TABLE conversations ADD COLUMN with_person INTEGER NOT NULL DEFAULT 0, ADD COLUMN operator TEXT,
        ADD COLUMN handoff_reason TEXT, ADD COLUMN handoff_at DOUBLE PRECISION,
        ADD COLUMN waiting INTEGER NOT NULL DEFAULT 0, ADD COLUMN last_mdr_id BIGINT, ADD COLUMN last_message_at TEXT;
    ALTER TABLE mdrs ADD COLUMN operator TEXT;
    UPDATE conversations SET last_mdr_id = (SELECT MAX(id) FROM mdrs WHERE conversation_id = conversations.id);
    UPDATE conversations SET last_message_at = (SELECT created_at FROM mdrs WHERE id = last_mdr_id);
    CREATE INDEX conversations_recent ON conversations(last_message_at);
    CREATE INDEX conversations_waiting ON conversations(last_message_at) WHERE waiting = 1;
    CREATE INDEX conversations_with_person ON conversations(handoff_at) WHERE with_person = 1;
    CREATE INDEX conversations_updated_at ON conversations(updated_at);
    CREATE INDEX conversations_their_number ON conversations(their_number);
    CREATE INDEX mdrs_updated_at ON mdrs(updated_at);
    CREATE FUNCTION bot_core_mdrs_latest() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE conversations SET last_mdr_id = NEW.id, last_message_at = NEW.created_at
        WHERE id = NEW.conversation_id AND (last_mdr_id IS NULL OR last_mdr_id < NEW.id);
        RETURN NULL;
    END $$;
    CREATE TRIGGER mdrs_latest_insert AFTER INSERT ON mdrs FOR EACH ROW
        WHEN (NEW.conversation_id IS NOT NULL) EXECUTE FUNCTION bot_core_mdrs_latest();
    CREATE TRIGGER mdrs_latest_update AFTER UPDATE OF conversation_id ON mdrs FOR EACH ROW
        WHEN (NEW.conversation_id IS NOT NULL AND OLD.conversation_id IS NULL) EXECUTE FUNCTION bot_core_mdrs_latest();
    CREATE FUNCTION bot_core_mdrs_waiting() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE conversations SET waiting = 1 WHERE id = NEW.conversation_id;
        RETURN NULL;
    END $$;
    CREATE TRIGGER mdrs_waiting AFTER UPDATE OF status ON mdrs FOR EACH ROW
        WHEN (NEW.status = '{WAITING}') EXECUTE FUNCTION bot_core_mdrs_waiting();
    CREATE TABLE operators (name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, profiles TEXT NOT NULL,
        created_at TEXT NOT NULL);
    CREATE TABLE inbox_keys (name TEXT PRIMARY KEY, value TEXT);
"""

# The same tables on PostgreSQL, one SQL script per migration; ``bot_core_schema`` counts those
# applied. Types mirror what the SQLite engine stores (times as ISO text that sorts, flags as 0/1
# integers, JSON as text), so the contract's SQL runs unchanged on both.
POSTGRES_MIGRATIONS: tuple[str, ...] = (
    f"""
    CREATE TABLE mdrs (
        id BIGSERIAL PRIMARY KEY, direction TEXT NOT NULL, profile TEXT, from_number TEXT NOT NULL,
        to_number TEXT NOT NULL, text TEXT NOT NULL, media TEXT, status TEXT NOT NULL, parts INTEGER,
        encoding TEXT, telnyx_id TEXT, error TEXT, conversation_id BIGINT, in_reply_to BIGINT,
        claimed_by TEXT, attempts INTEGER DEFAULT 0, next_attempt_at DOUBLE PRECISION,
        ignore_optout INTEGER DEFAULT 0, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
        other_recipients TEXT, lease_owner TEXT, lease_until DOUBLE PRECISION);
    CREATE UNIQUE INDEX mdrs_telnyx_id ON mdrs(direction, telnyx_id);
    CREATE INDEX mdrs_created_at ON mdrs(created_at);
    CREATE INDEX mdrs_conversation ON mdrs(conversation_id);
    CREATE INDEX mdrs_leased ON mdrs(lease_owner) WHERE lease_owner IS NOT NULL;
    CREATE INDEX mdrs_inbox_lane ON mdrs(to_number, from_number, id) WHERE status = '{RECEIVED}';
    CREATE INDEX mdrs_outbox_lane ON mdrs(from_number, to_number, id) WHERE {IN_OUTBOX};
    CREATE TABLE conversations (
        id BIGSERIAL PRIMARY KEY, profile TEXT, our_number TEXT NOT NULL, their_number TEXT NOT NULL,
        state TEXT NOT NULL, created_at TEXT, updated_at TEXT);
    CREATE UNIQUE INDEX conversations_pair ON conversations(our_number, their_number);
    CREATE TABLE optouts (profile TEXT, number TEXT, opted_out INTEGER, updated_at TEXT,
        PRIMARY KEY (profile, number));
    CREATE TABLE consent_log (
        id BIGSERIAL PRIMARY KEY, profile TEXT, number TEXT, action TEXT, source TEXT, at TEXT);
    CREATE TABLE delivery_events (
        id BIGSERIAL PRIMARY KEY, telnyx_id TEXT, status TEXT, error TEXT, received_at TEXT,
        from_number TEXT, to_number TEXT, mdr_id BIGINT, hook TEXT, hook_error TEXT, profile TEXT,
        lease_owner TEXT, lease_until DOUBLE PRECISION);
    CREATE INDEX delivery_events_telnyx_id ON delivery_events(telnyx_id);
    CREATE INDEX delivery_events_leased ON delivery_events(lease_owner) WHERE lease_owner IS NOT NULL;
    CREATE INDEX delivery_events_lane ON delivery_events(from_number, to_number, id) WHERE hook = 'pending';
    CREATE TABLE timers (
        id BIGSERIAL PRIMARY KEY, conversation_id BIGINT, plugin TEXT, name TEXT,
        due_at DOUBLE PRECISION, text TEXT, payload TEXT, status TEXT, created_at TEXT, fired_at TEXT,
        lease_owner TEXT, lease_until DOUBLE PRECISION);
    CREATE INDEX timers_due ON timers(due_at) WHERE status = 'pending';
    CREATE INDEX timers_leased ON timers(lease_owner) WHERE lease_owner IS NOT NULL;
    CREATE INDEX timers_lane ON timers(conversation_id, due_at, id) WHERE status = 'pending';
    CREATE TABLE pacing (number TEXT PRIMARY KEY, next_at DOUBLE PRECISION NOT NULL);
    CREATE TABLE heartbeats (owner TEXT PRIMARY KEY, at DOUBLE PRECISION NOT NULL);
    """,
    PLUGIN_DATA,
    POSTGRES_HANDOFF,
)
