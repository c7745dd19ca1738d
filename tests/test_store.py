"""The store contract on both engines: atomic outcomes, claims and leases, effects, pacing, migrations;
SQLite's WAL, partial indexes and two processes at once."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from functools import partial

import psycopg
import pytest
import sqlite_utils

from bot_core.messages import InboundMessage
from bot_core.store import (
    FAILED,
    HANDLED,
    PENDING,
    RECEIVED,
    SENDING,
    CancelEffect,
    ConsentEffect,
    LeaseLost,
    OutboundDraft,
    SendEffect,
    Store,
    TimerEffect,
    WorkStore,
    open_store,
)  # fmt: skip
from bot_core.store.schema import MIGRATIONS

OURS, THEIRS = "+13125550100", "+13125550123"


@pytest.fixture
def store(database_url):
    store = open_store(database_url, secrets=["hush-secret"])
    yield store
    store.close()


@pytest.fixture
def sqlite_store(tmp_path):
    store = Store(tmp_path / "bot.db", secrets=["hush-secret"])
    yield store
    store.close()


def inbound(store: Store, sms_id: str = "m1") -> InboundMessage:
    message = InboundMessage(sms_id, "hi", THEIRS, OURS, "main")
    mdr_id = store.add_inbound(message)
    return InboundMessage(sms_id, "hi", THEIRS, OURS, "main", mdr_id=mdr_id)


def reply(text: str = "hello") -> OutboundDraft:
    return OutboundDraft("main", OURS, THEIRS, text)


def test_the_database_is_in_wal_mode_with_a_busy_timeout(sqlite_store):
    store = sqlite_store
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.busy_timeout >= 5


def test_a_write_takes_the_lock_soon_after_another_process_lets_go(tmp_path):
    """The store's own wait, not SQLite's busy handler (whose sleeps grow to 100 ms): the write
    lands within a few ms of the release, and fails as locked once busy_timeout is over."""
    store = Store(tmp_path / "bot.db", busy_timeout=0.3)
    other = sqlite3.connect(tmp_path / "bot.db", isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            inbound(store, "refused")
        released = []
        timer = threading.Timer(0.15, lambda: (released.append(time.monotonic()), other.execute("ROLLBACK")))
        timer.start()
        assert inbound(store, "waited").mdr_id is not None
        assert time.monotonic() - released[0] < 0.05
        timer.join()
    finally:
        other.close()
        store.close()


def test_a_lane_whose_messages_all_came_late_is_claimed_past_the_window(store, monkeypatch):
    """Claims look among the oldest units first; a conversation behind a long held one is not starved."""
    monkeypatch.setattr("bot_core.store.sqlite._WINDOW", 2)
    for i in range(6):
        store.add_inbound(InboundMessage(f"a{i}", "hi", THEIRS, OURS, "main"))
    late = store.add_inbound(InboundMessage("b0", "hi", "+13125550177", OURS, "main"))
    (first,) = store.claim_inbound("x", 1, 60)
    assert first.id == "a0"
    assert [m.mdr_id for m in store.claim_inbound("y", 1, 60)] == [late]  # a1..a2 fill the window: not heads
    assert store.claim_inbound("y", 5, 60) == []


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
    with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)):
        store.finish_inbound(message.mdr_id, status=HANDLED, conversation=conversation, replies=[reply(), bad])
    assert store.conversation("main", OURS, THEIRS).state == {}
    assert store.mdr(message.mdr_id)["status"] == RECEIVED
    assert store.pending_outbound() == []
    store.finish_inbound(message.mdr_id, status=HANDLED, conversation=conversation, replies=[reply("a"), reply("b")])
    assert store.conversation("main", OURS, THEIRS).state == {"n": 1}
    assert [o.text for o in store.pending_outbound()] == ["a", "b"]
    assert store.pending_inbound() == []


def test_a_send_cut_off_in_flight_is_claimed_again_and_counted(store):
    message = inbound(store)
    ids = store.finish_inbound(message.mdr_id, status=HANDLED, replies=[reply("a"), reply("b")])
    (first,) = store.claim_sends("dead", 10, 60)
    assert first.id == ids[0] and not first.in_flight  # "b" waits behind "a" in its lane
    assert store.unheld_in_flight() == 0
    store.start_send(first.id, "dead")
    assert store.claim_sends("other", 10, 60) == []  # held: not handed out twice
    store.expire("dead")
    assert store.unheld_in_flight() == 1  # its request had started: it may have reached Telnyx
    (again,) = store.claim_sends("other", 10, 60)
    assert (again.id, again.in_flight) == (ids[0], True)


def test_a_claim_hands_out_only_the_head_of_each_conversation(store):
    first, second = inbound(store, "m1"), inbound(store, "m2")
    other = store.add_inbound(InboundMessage("m3", "hey", "+13125550999", OURS, "main"))
    claimed = store.claim_inbound("a", 10, 60)
    assert [m.mdr_id for m in claimed] == [first.mdr_id, other]
    assert store.claim_inbound("b", 10, 60) == []  # m2 waits for m1, whoever holds it
    with pytest.raises(LeaseLost):
        store.finish_inbound(first.mdr_id, status=HANDLED, owner="b")
    assert store.mdr(first.mdr_id)["status"] == RECEIVED
    store.finish_inbound(first.mdr_id, status=HANDLED, owner="a")
    assert [m.mdr_id for m in store.claim_inbound("b", 10, 60)] == [second.mdr_id]


def test_a_lease_that_ran_out_is_taken_over_and_the_old_holder_commits_nothing(store):
    message = inbound(store)
    store.claim_inbound("a", 10, 60)
    assert store.claim_inbound("b", 10, 60) == []
    store.lease_clock = lambda: 10**10  # a minute... or a century later: "a" stopped renewing
    assert [m.mdr_id for m in store.claim_inbound("b", 10, 60)] == [message.mdr_id]
    with pytest.raises(LeaseLost):
        store.finish_inbound(message.mdr_id, status=HANDLED, replies=[reply()], owner="a")
    assert store.pending_outbound() == []


def test_renewal_keeps_a_lease_and_release_gives_it_back(store):
    message = inbound(store)
    store.claim_inbound("a", 10, 60)
    store.renew("a", 60)
    assert store.owners() == {"a"}
    store.release("a")
    assert store.owners() == set()
    assert [m.mdr_id for m in store.claim_inbound("b", 10, 60)] == [message.mdr_id]


def test_sends_have_lanes_of_their_own(store):
    """A reply waiting for a retry never holds up the handling of the conversation's next message."""
    message = inbound(store)
    store.finish_inbound(message.mdr_id, status=HANDLED, replies=[reply("a")])
    (send,) = store.claim_sends("sender", 10, 60)
    store.mark_retry(send.id, 1, store.clock() + 3600, "503")
    later = inbound(store, "m2")
    assert [m.mdr_id for m in store.claim_inbound("handler", 10, 60)] == [later.mdr_id]


def test_a_timer_waits_for_its_conversations_messages_and_fires_once(store):
    conversation = store.conversation("main", OURS, THEIRS)
    timer_id = store.add_timer(conversation.id, 0.0, text="reminder")
    message = inbound(store)
    assert store.claim_timers("a", 10, 60) == []  # a received message of its conversation goes first
    store.claim_inbound("a", 10, 60)
    store.finish_inbound(message.mdr_id, status=HANDLED, owner="a")
    (timer,) = store.claim_timers("a", 10, 60)
    assert timer.id == timer_id
    assert store.claim_inbound("b", 10, 60) == [] and store.claim_timers("b", 10, 60) == []
    store.finish_timer(timer_id, conversation, [reply("reminder")], owner="a")
    with pytest.raises(LeaseLost):  # the guard in SQL: a second finish of the same timer changes nothing
        store.finish_timer(timer_id, conversation, [reply("reminder")], owner="a")
    assert [o.text for o in store.pending_outbound()] == ["reminder"]


def test_effects_are_written_with_the_outcome_in_order(store):
    message = inbound(store)
    store.claim_inbound("a", 10, 60)
    conversation = store.conversation("main", OURS, THEIRS)
    effects = [
        TimerEffect(conversation.id, 10.0, name="old"),
        CancelEffect(conversation.id),  # cancels "old", not the timer scheduled after it
        TimerEffect(conversation.id, 20.0, name="new"),
        ConsentEffect("main", "+13125550777", True, "test"),
        SendEffect(OutboundDraft("main", OURS, "+13125550888", "hi"), ("main", OURS, "+13125550888")),
    ]
    store.finish_inbound(message.mdr_id, status=HANDLED, conversation=conversation, effects=effects, owner="a")
    assert [t.name for t in store.timers(conversation.id)] == ["new"]
    assert store.is_opted_out("main", "+13125550777")
    assert [o.to_number for o in store.pending_outbound()] == ["+13125550888"]


def test_pacing_is_stored_per_sending_number(store):
    message = inbound(store)
    ids = store.finish_inbound(message.mdr_id, status=HANDLED, replies=[reply("a")])
    assert store.start_send(ids[0], rate=0.5) == 0.0  # the first takes the slot at once
    assert store.mdr(ids[0])["status"] == SENDING
    other = open_store(store.path)  # another process on the same database
    try:
        (second,) = other.finish_inbound(inbound(other, "m2").mdr_id, status=HANDLED, replies=[reply("b")])
        assert 1.5 < other.start_send(second, rate=0.5) <= 2.0  # the next slot is 2 s after the first
        assert other.mdr(second)["status"] == PENDING  # not marked in flight while it waits
    finally:
        other.close()


def test_a_database_of_the_first_schema_upgrades(tmp_path):
    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    MIGRATIONS[0](sqlite_utils.Database(conn))
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO mdrs (direction, from_number, to_number, text, status, telnyx_id, created_at, updated_at)"
                 f" VALUES ('inbound', '{THEIRS}', '{OURS}', 'old', 'received', 'old-1', 'x', 'x')")  # fmt: skip
    conn.close()
    store = Store(tmp_path / "old.db")
    try:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert [m.text for m in store.claim_inbound("a", 10, 60)] == ["old"]
    finally:
        store.close()


def test_the_claims_read_through_their_partial_indexes(sqlite_store):
    store = sqlite_store
    """With a million MDRs a scan of the table per claim would cost every process dearly."""
    inbound(store)
    store.finish_inbound(inbound(store, "m2").mdr_id, status=HANDLED, replies=[reply()])
    traced: list[str] = []
    store.conn.set_trace_callback(traced.append)
    store.claim_inbound("a", 10, 60)
    store.claim_sends("a", 10, 60)
    store.renew("a", 60)
    store.conn.set_trace_callback(None)
    checked = 0
    for sql in traced:
        if sql.startswith("UPDATE mdrs"):
            plan = [row[3] for row in store.conn.execute("EXPLAIN QUERY PLAN " + sql.replace(":now", "0"))]
            table_scans = [step for step in plan if step.startswith(("SCAN mdrs", "SCAN m")) and "INDEX" not in step]
            assert table_scans == [], (sql, plan)  # never the whole table
            assert any(name in " ".join(plan) for name in ("mdrs_inbox", "mdrs_outbox", "mdrs_leased")), (sql, plan)
            checked += 1
    assert checked >= 3


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


def test_two_processes_write_at_once_without_database_is_locked(sqlite_store, tmp_path):
    store = sqlite_store
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


def test_the_sqlite_engine_implements_the_work_contract(store):
    assert isinstance(store, WorkStore)
    for name in WorkStore.__dict__:
        if not name.startswith("_"):
            assert callable(getattr(store, name)), name


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


def test_a_failing_job_of_a_group_commit_fails_alone(sqlite_store):
    """Jobs queued together share one transaction; one that raises is undone and gets its
    error, the others commit, and the job is not run twice."""
    store = sqlite_store
    calls = []

    def half_then_fail() -> None:
        calls.append(1)
        store.add_inbound(InboundMessage("undone", "hi", THEIRS, OURS, "main"))
        raise LeaseLost("taken over")

    async def queue() -> list[object]:
        started, go = threading.Event(), threading.Event()
        busy = store.submit(lambda: (started.set(), go.wait(5)))  # the writer thread is busy: the next queue up
        await asyncio.to_thread(started.wait, 5)
        jobs = [store.submit(partial(store.add_inbound, InboundMessage(f"m{i}", "hi", THEIRS, OURS, "main")))
                for i in range(3)]  # fmt: skip
        jobs.insert(1, store.submit(half_then_fail))
        go.set()
        await busy
        return await asyncio.gather(*jobs, return_exceptions=True)

    results = asyncio.run(queue())
    assert isinstance(results[1], LeaseLost) and calls == [1]
    assert all(isinstance(r, int) for r in results[:1] + results[2:])
    assert [m.id for m in store.pending_inbound()] == ["m0", "m1", "m2"]
