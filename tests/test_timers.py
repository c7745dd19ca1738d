"""Timers: scheduled messages and plugin callbacks, kept in SQLite, fired once, opt-outs respected."""

from __future__ import annotations

import logging
import time
import types
from datetime import UTC, datetime, timedelta

import pytest

from bot_core import Reply, hookimpl
from bot_core.testing import BotTester, FakeClock

from .conftest import rows, wait_for

# Each test runs on both engines (the config names $BOT_CORE_DATABASE).
pytestmark = pytest.mark.usefixtures("database")

NUMBER, CUSTOMER = "+13125550100", "+13125550123"
START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def reminder_plugin(calls=None):
    """REMIND <minutes> <text> schedules a callback; NOTE <minutes> <text> schedules a plain message."""
    module = types.ModuleType("reminder")

    def handle_message(bot, message, conversation):
        word, minutes, text = (message.text.split(" ", 2) + ["", ""])[:3]
        if word == "REMIND":
            bot.schedule(conversation, delay=f"{minutes}m", plugin="reminder", name="remind", payload={"text": text})
            return f"OK, in {minutes} min"
        if word == "NOTE":
            bot.schedule(conversation, at=START + timedelta(minutes=int(minutes)), text=text)
            return "noted"
        if word == "CANCEL-ALL":
            return f"cancelled {bot.cancel_timers(conversation, plugin='reminder', name='remind')}"
        return None

    def handle_timer(bot, timer, conversation, config):
        if calls is not None:
            calls.append((timer.name, timer.payload, timer.due_at))
        if timer.payload["text"] == "boom":
            conversation.state["touched"] = True
            raise RuntimeError("reminder exploded")
        count = conversation.state.get("reminded", 0) + 1
        conversation.state["reminded"] = count
        return [Reply(f"Reminder: {timer.payload['text']}"), f"({count} so far)"]

    module.handle_message = hookimpl(handle_message)
    module.handle_timer = hookimpl(handle_timer)
    return module


def reminder_bot(tmp_path, calls=None, **kwargs):
    config = {
        "bot": {"database": "${BOT_CORE_DATABASE:-bot.db}"},
        "profiles": {"main": {"secret": "s", "numbers": [NUMBER], "plugins": ["reminder"]}},
    }
    return BotTester(config, tmp_path=tmp_path, plugins=[reminder_plugin(calls)], clock=FakeClock(START), **kwargs)


def test_a_callback_fires_once_at_its_time_with_its_payload_and_state(tmp_path):
    calls = []
    with reminder_bot(tmp_path, calls) as bot:
        assert bot.text("REMIND 30 call mom") == ["OK, in 30 min"]
        assert bot.advance("29m") == []
        assert bot.advance("1m") == ["Reminder: call mom", "(1 so far)"]
        assert calls == [("remind", {"text": "call mom"}, START.timestamp() + 1800)]
        assert bot.state()["reminded"] == 1
        assert bot.advance("1d") == []
        assert len(calls) == 1


def test_a_scheduled_message_is_sent_at_a_given_time(tmp_path):
    with reminder_bot(tmp_path) as bot:
        assert bot.text("NOTE 90 Your table is ready") == ["noted"]
        assert bot.advance("89m") == []
        assert bot.advance("1m") == ["Your table is ready"]
        row = bot.messages(direction="outbound")[-1]
        assert (row["from"], row["to"]) == (NUMBER, CUSTOMER)


def test_timers_of_one_conversation_fire_in_time_order(tmp_path):
    with reminder_bot(tmp_path) as bot:
        bot.text("NOTE 20 second")
        bot.text("NOTE 10 first")
        bot.text("REMIND 30 third")
        assert bot.advance("1h") == ["first", "second", "Reminder: third", "(1 so far)"]


def test_timers_survive_a_restart_and_overdue_ones_fire_at_startup(tmp_path):
    with reminder_bot(tmp_path) as bot:
        bot.text("REMIND 10 stretch")
        bot.text("NOTE 20 drink water")
        bot.restart()
        assert bot.advance("10m") == ["Reminder: stretch", "(1 so far)"]
        bot.portal.call(bot.bot.stop)
        bot.clock.advance("1h")  # the note fell due while the bot was down
        bot.portal.call(bot.bot.start)
        row = wait_for(lambda: bot.messages(direction="outbound", text="drink water"))  # no poke: startup finds it
        assert len(row) == 1
        # Sent before this bot stops: the next one starts its clock 70 minutes earlier, where a
        # send left pending here (its pacing slot stamped by this clock) would not be due yet.
        assert bot.portal.call(bot.bot.idle, 30)
    with reminder_bot(tmp_path) as bot:  # and it never fires again
        bot.replies()  # what the first bot sent
        assert bot.advance("1d") == [] and len(bot.messages(text="drink water")) == 1


def test_a_due_timer_fires_by_itself_within_a_few_seconds(tmp_path):
    with reminder_bot(tmp_path) as bot:
        bot.text("REMIND 1 now")
        bot.clock.advance("1m")  # no poke: the timer loop's own polling must find it
        started = time.monotonic()
        wait_for(lambda: bot.messages(direction="outbound", text="Reminder: now"), timeout=5)
        assert time.monotonic() - started < 5


def test_opt_outs_are_checked_when_a_timer_fires_not_when_it_was_scheduled(tmp_path):
    config = {
        "bot": {"database": "${BOT_CORE_DATABASE:-bot.db}"},
        "profiles": {"main": {"secret": "s", "numbers": [NUMBER], "plugins": ["reminder"]}},
    }
    with BotTester(config, tmp_path=tmp_path, plugins=[reminder_plugin()], clock=FakeClock(START)) as bot:
        bot.text("REMIND 10 before STOP")
        bot.text("NOTE 20 note before STOP")
        bot.text("STOP")
        assert bot.advance("30m") == []
        assert [r["text"] for r in bot.messages(direction="outbound", status="blocked")] == [
            "Reminder: before STOP",
            "(1 so far)",
            "note before STOP",
        ]
        # Scheduled while opted out, fired after START: it goes out.
        bot.portal.call(lambda: bot.bot.schedule(bot.bot.store.conversation("main", NUMBER, CUSTOMER),
                                                 delay="10m", text="welcome back"))  # fmt: skip
        bot.replies()
        bot.text("START")
        assert bot.advance("10m") == ["welcome back"]


def test_cancelled_timers_never_fire(tmp_path):
    with reminder_bot(tmp_path) as bot:
        bot.text("REMIND 10 one")
        bot.text("REMIND 20 two")
        bot.text("NOTE 15 a note")
        assert bot.text("CANCEL-ALL 0") == ["cancelled 2"]  # only the plugin's named timers
        assert bot.advance("1h") == ["a note"]


def test_a_failing_callback_is_logged_and_its_state_change_discarded(tmp_path, caplog):
    with reminder_bot(tmp_path) as bot:
        bot.text("REMIND 5 boom")
        with caplog.at_level(logging.ERROR):
            assert bot.advance("5m") == []
        assert "reminder exploded" in caplog.text and "reminder" in caplog.text
        assert "touched" not in bot.state()
        assert bot.advance("1h") == []  # fired once, even though it failed
        assert rows(bot.bot.store, "SELECT status FROM timers") == [("failed",)]


def test_schedule_needs_one_time_and_one_action(tmp_path):
    with reminder_bot(tmp_path) as bot:
        conversation = bot.bot.store.conversation("main", NUMBER, CUSTOMER)
        with pytest.raises(ValueError, match="exactly one of text= or plugin="):
            bot.bot.schedule(conversation, delay=5, text="x", plugin="reminder")
        with pytest.raises(ValueError, match="exactly one of at= or delay="):
            bot.bot.schedule(conversation, text="x")
        with pytest.raises(ValueError, match="not a duration"):
            bot.bot.schedule(conversation, delay="soon", text="x")
