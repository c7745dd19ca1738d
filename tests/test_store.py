"""The store: WAL and busy timeout, atomic outcomes, the outbox queries, two processes at once."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from bot_core.messages import InboundMessage
from bot_core.store import FAILED, HANDLED, PENDING, RECEIVED, OutboundDraft, Store

OURS, THEIRS = "+13125550100", "+13125550123"


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "bot.db", secrets=["hush-secret"])
    yield store
    store.close()


def inbound(store: Store, sms_id: str = "m1") -> InboundMessage:
    message = InboundMessage(sms_id, "hi", THEIRS, OURS, "main")
    mdr_id = store.add_inbound(message)
    return InboundMessage(sms_id, "hi", THEIRS, OURS, "main", mdr_id=mdr_id)


def reply(text: str = "hello") -> OutboundDraft:
    return OutboundDraft("main", OURS, THEIRS, text)


def test_the_database_is_in_wal_mode_with_a_busy_timeout(store):
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000


def test_an_inbound_message_is_stored_once_per_telnyx_id(store):
    first = inbound(store)
    assert first.mdr_id is not None
    assert store.add_inbound(InboundMessage("m1", "hi", THEIRS, OURS, "main")) is None
    assert [m.id for m in store.pending_inbound()] == ["m1"]


def test_an_outcome_is_all_or_nothing(store):
    message = inbound(store)
    conversation = store.conversation("main", OURS, THEIRS)
    conversation.state["n"] = 1
    bad = OutboundDraft("main", OURS, THEIRS, None)  # type: ignore[arg-type]  # NOT NULL text fails the insert
    with pytest.raises(sqlite3.IntegrityError):
        store.finish_inbound(message.mdr_id, status=HANDLED, conversation=conversation, replies=[reply(), bad])
    assert store.conversation("main", OURS, THEIRS).state == {}
    assert store.mdr(message.mdr_id)["status"] == RECEIVED
    assert store.pending_outbound() == []
    store.finish_inbound(message.mdr_id, status=HANDLED, conversation=conversation, replies=[reply("a"), reply("b")])
    assert store.conversation("main", OURS, THEIRS).state == {"n": 1}
    assert [o.text for o in store.pending_outbound()] == ["a", "b"]
    assert store.pending_inbound() == []


def test_sends_cut_off_by_a_crash_go_back_to_the_outbox_in_order(store):
    message = inbound(store)
    ids = store.finish_inbound(message.mdr_id, status=HANDLED, replies=[reply("a"), reply("b"), reply("c")])
    store.mark_sending(ids[0])
    store.mark_sent(ids[1], "t-1", "queued")
    store.mark_sending(ids[2])
    assert [o.id for o in store.pending_outbound()] == []  # in flight: not handed out twice
    assert store.requeue_in_flight() == 2
    assert [o.text for o in store.pending_outbound()] == ["a", "c"]
    assert store.mdr(ids[0])["status"] == PENDING


def test_the_queues_are_read_through_their_partial_indexes(store):
    """With a million MDRs a scan of the table per wake-up would cost the sender dearly."""
    plans = {
        "inbox": store.pending_inbound,
        "outbox": lambda: store.pending_outbound(after=10),
        "requeue": store.requeue_in_flight,
    }
    traced: list[str] = []
    store.conn.set_trace_callback(traced.append)
    for run in plans.values():
        run()
    store.conn.set_trace_callback(None)
    for sql in traced:
        if "FROM mdrs" in sql or "UPDATE mdrs" in sql:
            plan = " ".join(row[3] for row in store.conn.execute("EXPLAIN QUERY PLAN " + sql))
            assert "USING INDEX mdrs_inbox" in plan or "USING INDEX mdrs_outbox" in plan, (sql, plan)


def test_errors_written_to_mdrs_never_hold_a_secret(store):
    message = inbound(store)
    store.finish_inbound(message.mdr_id, status=FAILED, error="plugin 'x' failed: token=hush-secret!")
    (out,) = store.finish_inbound(inbound(store, "m2").mdr_id, status=HANDLED, replies=[reply()])
    store.mark_retry(out, 1, 0.0, "Telnyx answered 500: echo hush-secret")
    assert "hush-secret" not in str(store.mdrs(limit=None))
    assert store.mdr(message.mdr_id)["error"] == "plugin 'x' failed: token=[secret]!"
    store.mark_final(out, FAILED, "final hush-secret")
    assert store.mdr(out)["error"] == "final [secret]"


WRITER = textwrap.dedent("""
    import sys
    from bot_core.store import Store, OutboundDraft
    store = Store(sys.argv[1])
    for i in range(300):
        with store.transaction():
            store.add_outbound(OutboundDraft("main", "+13125550100", "+13125550199", f"cli {i}"))
            store.set_opted_out("main", f"+1312555{i:04d}", True, "cli")
    store.close()
""")


def test_two_processes_write_at_once_without_database_is_locked(store, tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "bot.db")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    conversation = store.conversation("main", OURS, THEIRS)
    for i in range(300):
        message = inbound(store, f"m-{i}")
        conversation.state["n"] = i
        store.finish_inbound(message.mdr_id, status=HANDLED, conversation=conversation, replies=[reply(f"r{i}")])
    output, _ = writer.communicate(timeout=60)
    assert writer.returncode == 0, output
    assert "locked" not in output
    assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert len(store.pending_outbound()) == 600
    assert store.conn.execute("SELECT COUNT(*) FROM optouts").fetchone()[0] == 300


def test_mdrs_are_filtered_by_values_never_by_sql_text(store):
    first = inbound(store, "m-1")
    inbound(store, "m-2")
    assert [r["id"] for r in store.mdrs(mdr_id=first.mdr_id)] == [first.mdr_id]
    assert [r["telnyx_id"] for r in store.mdrs(direction="inbound", after_id=first.mdr_id)] == ["m-2"]
    assert store.mdrs(number=OURS, status=RECEIVED, since="2000-01-01") != []
    # A value that would be SQL if it were pasted into a query is just a value.
    assert store.mdrs(profile="main' OR '1'='1") == [] and store.mdrs(status="x) OR (1=1") == []
    with pytest.raises(TypeError):
        store.mdrs(where="1=1")  # the old raw-SQL parameter is gone


def test_an_error_quoting_a_secret_in_repr_or_json_form_is_masked(tmp_path):
    secret = "it's\\a-secret"
    store = Store(tmp_path / "escaped.db", secrets=[secret])
    try:
        message = inbound(store)
        store.finish_inbound(message.mdr_id, status=FAILED, error=f"failed: {secret!r} {json.dumps(secret)}")
        error = store.mdr(message.mdr_id)["error"]
        assert error == 'failed: "[secret]" "[secret]"'  # repr picks double quotes for a text with a ''
    finally:
        store.close()
