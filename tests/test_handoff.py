"""Handoff to a person: the gate in the dispatcher, the keyword plugin, bot.handoff, handing back.
On both engines (``database``: a SQLite file, or a PostgreSQL schema of the test's own)."""

from __future__ import annotations

import time
import types

import pytest

from bot_core import ConfigError, hookimpl
from bot_core.handoff import handler
from bot_core.testing import BotTester

NUMBER = "+13125550100"
CUSTOMER = "+13125550123"
pytestmark = pytest.mark.usefixtures("database")


def config(handoff: dict | None = None, inbox: dict | None = None, watch: bool = False) -> dict:
    plugin_config = {"handoff": handoff if handoff is not None else {"keywords": ["AGENT"]}}
    return {
        "bot": {"database": "${BOT_CORE_DATABASE:-bot.db}"},
        "inbox": inbox or {},
        "profiles": {"main": {"secret": "s", "numbers": [NUMBER], "plugins": ["handoff", "parrot"] + ["watcher"] * watch,
                              "plugin_config": plugin_config}},
    }  # fmt: skip


parrot = types.ModuleType("parrot")
parrot.handle_message = hookimpl(lambda message: f"bot: {message.text}")


def recorder() -> tuple[types.ModuleType, list[tuple]]:
    """A plugin recording every handoff hook call."""
    calls: list[tuple] = []
    module = types.ModuleType("watcher")

    def handoff(conversation, to, reason, operator):
        calls.append((conversation.their_number, to, reason, operator))

    module.handoff = hookimpl(handoff)
    return module, calls


def conversation_row(bot: BotTester) -> dict:
    return bot.portal.call(lambda: bot.bot.store._rows("SELECT * FROM conversations")[0])


def test_keyword_hands_the_conversation_to_a_person_and_the_bot_goes_quiet(tmp_path):
    watcher, calls = recorder()
    with BotTester(config(watch=True), tmp_path=tmp_path, plugins=[watcher, parrot]) as bot:
        assert bot.text("hello") == ["bot: hello"]
        assert bot.text("agent please") == ["Thanks. A person will text you back shortly."]
        assert bot.text("are you there?") == []
        assert bot.text("agent") == []  # the keyword plugin is not consulted either
        inbound = bot.messages(direction="inbound")
        assert [m["status"] for m in inbound] == ["handled", "handled", "waiting", "waiting"]
        row = conversation_row(bot)
        assert (row["with_person"], row["waiting"], row["operator"], row["handoff_reason"]) == (
            1,
            1,
            None,
            "texted AGENT",
        )
        assert calls == [(CUSTOMER, "person", "texted AGENT", None)]


def test_stop_still_works_while_a_person_has_the_conversation(tmp_path):
    with BotTester(config(), tmp_path=tmp_path, plugins=[parrot]) as bot:
        bot.text("AGENT")
        assert bot.text("STOP") == ["You are unsubscribed and will get no more messages. Reply START to resubscribe."]
        assert bot.messages(direction="inbound")[-1]["status"] == "handled"
        assert bot.portal.call(bot.bot.is_opted_out, "main", CUSTOMER)


def test_handing_back_lets_the_bot_answer_again(tmp_path):
    watcher, calls = recorder()
    with BotTester(config(watch=True), tmp_path=tmp_path, plugins=[watcher, parrot]) as bot:
        bot.text("AGENT")
        conversation = bot.portal.call(bot.bot.store.conversation, "main", NUMBER, CUSTOMER)
        assert bot.portal.call(bot.bot.hand_back, conversation, "resolved")
        assert not bot.portal.call(bot.bot.hand_back, conversation, "again")  # nothing to do
        assert bot.text("thanks") == ["bot: thanks"]
        assert conversation_row(bot)["waiting"] == 0
        bot.portal.call(bot.bot.idle, 5)
        assert calls[-1] == (CUSTOMER, "bot", "resolved", None)


def test_a_handoff_nobody_answers_returns_to_the_bot_after_handback_after(tmp_path):
    watcher, calls = recorder()
    with BotTester(
        config(inbox={"handback_after": "10m"}, watch=True), tmp_path=tmp_path, plugins=[watcher, parrot]
    ) as bot:
        bot.text("AGENT")
        bot.clock.advance("9m")
        assert bot.text("hello?") == []
        bot.clock.advance("2m")
        assert bot.text("hello??") == ["bot: hello??"]
        assert calls[-1] == (CUSTOMER, "bot", "no operator reply for 600 s", None)


def test_an_idle_handoff_returns_to_the_bot_without_a_new_message(tmp_path):
    """The heartbeat sweeps handoffs idle past handback_after: no inbound message or open inbox needed."""
    watcher, calls = recorder()
    cfg = config(inbox={"handback_after": "10m"}, watch=True)
    cfg["bot"]["lease"] = "1s"  # the heartbeat runs every lease/4
    with BotTester(cfg, tmp_path=tmp_path, plugins=[watcher, parrot]) as bot:
        bot.text("AGENT")
        assert conversation_row(bot)["with_person"] == 1
        bot.clock.advance("11m")
        bot.portal.call(bot.bot.idle, 5)
        deadline = time.monotonic() + 10
        while conversation_row(bot)["with_person"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert conversation_row(bot)["with_person"] == 0
        bot.portal.call(bot.bot.idle, 5)
        assert calls[-1] == (CUSTOMER, "bot", "no operator reply for 600 s", None)


def test_any_plugin_can_hand_over_with_bot_handoff(tmp_path):
    angry = types.ModuleType("angry")

    def handle_message(bot, message, conversation):
        if "!!!" in message.text:
            assert bot.handoff(conversation, "customer is upset")
            assert not bot.handoff(conversation, "twice")  # a person already has it
            return "Sorry! Someone will call you."
        return None

    angry.handle_message = hookimpl(tryfirst=True)(handle_message)
    cfg = config()
    cfg["profiles"]["main"]["plugins"] = ["angry", "parrot"]
    with BotTester(cfg, tmp_path=tmp_path, plugins=[angry, parrot]) as bot:
        assert bot.text("this is broken!!!") == ["Sorry! Someone will call you."]
        assert bot.text("hello") == []
        state = bot.portal.call(handler, bot.bot, conversation_row(bot)["id"])
        assert (state.with_person, state.reason) == (True, "customer is upset")


def test_without_keywords_the_plugin_does_nothing(tmp_path):
    with BotTester(config(handoff={}), tmp_path=tmp_path, plugins=[parrot]) as bot:
        assert bot.text("AGENT") == ["bot: AGENT"]


@pytest.mark.parametrize(
    ("settings", "problem"),
    [({"keywords": "AGENT"}, "keywords: must be an array"), ({"keyword": ["AGENT"]}, "unknown setting"),
     ({"keywords": ["STOP"]}, "reserved opt-out keyword")],
)  # fmt: skip
def test_bad_settings_are_refused(tmp_path, settings, problem):
    with pytest.raises(ConfigError, match=problem):
        BotTester(config(handoff=settings), tmp_path=tmp_path, plugins=[parrot])


def test_the_latest_message_is_kept_on_the_conversation(tmp_path):
    with BotTester(config(), tmp_path=tmp_path, plugins=[parrot]) as bot:
        bot.text("first")
        last = bot.messages()[-1]
        row = conversation_row(bot)
        assert (row["last_mdr_id"], row["last_message_at"]) == (last["id"], last["created_at"])
        assert last["direction"] == "outbound"
