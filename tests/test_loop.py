"""Nothing blocks the event loop: on PostgreSQL the reads made while handling a unit run on the
store's threads (each is a network round trip that would stall every webhook and lane), and a
unit's opt-out checks read the stored records once, with its conversation."""

from __future__ import annotations

import functools
import types
from contextvars import ContextVar

import psycopg
import pytest

from bot_core import hookimpl
from bot_core.dispatch import Dispatcher
from bot_core.effects import Effects
from bot_core.store import ConsentEffect, open_store
from bot_core.testing import BotTester, FakeTelnyx
from bot_core.worker import Sender

NUMBER = "+13125550100"
CUSTOMER = "+13125550123"

_in_unit: ContextVar[bool] = ContextVar("in_unit", default=False)


def _marked(work):
    """``work`` (a unit's coroutine method) with the flag set in its task: psycopg statements
    that see it ran on the event loop's thread, since the store's threads never inherit it."""

    @functools.wraps(work)
    async def marked(*args, **kwargs):
        token = _in_unit.set(True)
        try:
            return await work(*args, **kwargs)
        finally:
            _in_unit.reset(token)

    return marked


def _planner():
    module = types.ModuleType("planner")

    def handle_message(bot, message, conversation):
        if message.text == "read":  # a plugin's own synchronous read: the one kind left on the loop
            return f"read {bot.plugin_store('planner').get('k')}"
        if message.text == "later":
            bot.schedule(conversation, delay="1m", text="reminder")
        conversation.state["n"] = conversation.state.get("n", 0) + 1
        return f"#{conversation.state['n']} {message.text}"

    module.handle_message = hookimpl(handle_message)
    return module


def test_handling_units_on_postgresql_makes_no_round_trip_on_the_event_loop(postgres_url, monkeypatch):
    on_loop: list[str] = []
    execute = psycopg.Cursor.execute

    def counted(self, query, *args, **kwargs):
        if _in_unit.get():
            on_loop.append(str(query))
        return execute(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", counted)
    for cls, name in ((Dispatcher, "_handle"), (Dispatcher, "_fire"), (Sender, "_send")):
        monkeypatch.setattr(cls, name, _marked(getattr(cls, name)))
    config = {"bot": {"database": postgres_url}, "inbox": {"handback_after": "10m"},
              "profiles": {"main": {"secret": "s", "numbers": [NUMBER], "plugins": ["optout", "handoff", "planner"],
                                    "plugin_config": {"handoff": {"keywords": ["AGENT"]}}}}}  # fmt: skip
    with FakeTelnyx() as telnyx, BotTester(config, plugins=[_planner()], telnyx=telnyx, customer=CUSTOMER) as bot:
        assert bot.text("hello") == ["#1 hello"]  # the first message creates the conversation
        assert bot.text("again") == ["#2 again"]
        assert bot.text("later") == ["#3 later"]
        assert bot.advance("2m") == ["reminder"]  # a timer
        assert len(bot.text("STOP")) == 1  # the confirmation goes out despite the opt-out it records
        assert bot.text("hello") == []  # claimed by optout: nobody answers someone who opted out
        assert len(bot.text("START")) == 1
        assert len(bot.text("agent")) == 1  # handed to a person: the gate's read comes with the conversation
        assert bot.text("still there?") == []
        bot.clock.advance("11m")
        assert bot.text("hi") == ["#4 hi"]  # handed back at the gate, idle past handback_after
        # What is left on the loop is what plugins call synchronously: bot.handoff's one statement
        # (once per handoff) here, and a plugin's own read (the counter sees what runs on the loop).
        assert bot.text("read") == ["read None"]
    assert [statement.split(" SET ")[0].split(" WHERE ")[0] for statement in on_loop] == [
        "UPDATE conversations", "SELECT value FROM plugin_data"
    ]  # fmt: skip


def test_a_units_opt_out_checks_read_the_stored_records_once(database_url, monkeypatch):
    store = open_store(database_url)
    try:
        store.set_opted_out(None, CUSTOMER, True, "test")  # account-wide
        reads: list[str] = []
        read = store._read

        def counted(statement, params=()):
            reads.append(statement)
            return read(statement, params)

        monkeypatch.setattr(store, "_read", counted)
        effects = Effects(store)
        assert effects.opted_out("main", CUSTOMER) and effects.opted_out("main", CUSTOMER)
        assert effects.record(None, CUSTOMER) and not effects.record("main", CUSTOMER)
        effects.add(ConsentEffect(None, CUSTOMER, False, "START"))  # the unit's own change counts
        assert not effects.opted_out("main", CUSTOMER)
        assert len(reads) == 1
        conversation, context = store.conversation_context(
            conversation_id=store.conversation("main", NUMBER, CUSTOMER).id
        ) or pytest.fail("no conversation")
        assert context.consent == {("main", CUSTOMER): False, (None, CUSTOMER): True}
        assert (conversation.their_number, context.with_person) == (CUSTOMER, False)
        reads.clear()
        assert Effects(store, context.consent).opted_out("main", CUSTOMER) and reads == []  # read with it
    finally:
        store.close()
