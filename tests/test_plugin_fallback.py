"""The fallback plugin: last in line, answering what nobody claimed; and what answers with no plugins list."""

from __future__ import annotations

import types

import pytest

from bot_core import ConfigError, hookimpl
from bot_core.testing import BotTester

# Each test runs on both engines (the config names $BOT_CORE_DATABASE).
pytestmark = pytest.mark.usefixtures("database")

NUMBER = "+13125550100"
SORRY = "Sorry, I didn't get that. Text HELP for help."


def keyword_plugin(name, word, answer):
    module = types.ModuleType(name)
    module.handle_message = hookimpl(lambda message: answer if message.text.upper() == word else None)
    return module


def config(plugins=None, fallback=None):
    profile = {"secret": "s", "numbers": [NUMBER], "plugin_config": {"fallback": fallback or {}}}
    if plugins is not None:
        profile["plugins"] = plugins
    return {"bot": {"database": "${BOT_CORE_DATABASE:-bot.db}"}, "profiles": {"main": profile}}


def test_it_answers_what_nobody_claimed_and_nothing_else(tmp_path):
    prices = keyword_plugin("prices", "PRICES", "From $9")
    with BotTester(config(["prices", "fallback"], {"text": SORRY}), tmp_path=tmp_path, plugins=[prices]) as bot:
        assert bot.text("prices") == ["From $9"]
        assert bot.text("what?") == [SORRY]
        assert bot.text("still confused") == [SORRY]
        inbound = bot.messages(direction="inbound")
        assert [r["status"] for r in inbound] == ["handled"] * 3


def test_without_text_it_stays_silent_and_the_message_is_unhandled(tmp_path):
    with BotTester(config(["fallback"]), tmp_path=tmp_path) as bot:
        assert bot.text("anyone?") == []
        assert bot.messages(direction="inbound")[0]["status"] == "unhandled"


def test_it_goes_last_even_when_listed_first(tmp_path):
    prices = keyword_plugin("prices", "PRICES", "From $9")
    with BotTester(config(["fallback", "prices"], {"text": SORRY}), tmp_path=tmp_path, plugins=[prices]) as bot:
        assert bot.bot.plugins.active(bot.bot.config.number(NUMBER)) == ["optout", "prices", "fallback"]
        assert bot.text("PRICES") == ["From $9"]
        assert bot.text("HELP") == ["Reply STOP to unsubscribe or START to resubscribe. Msg & data rates may apply."]


def test_with_no_plugins_list_only_optout_answers(tmp_path):
    # Loaded is not listed: neither a pip-installed plugin nor the demo echo nor the catch-all
    # answers a profile that names no plugins, so a support line never echoes "my order is late".
    eager = keyword_plugin("eager", "LATE", "echoed")
    with BotTester(config(fallback={"text": SORRY}), tmp_path=tmp_path, plugins=[eager]) as bot:
        assert bot.bot.plugins.active(bot.bot.config.number(NUMBER)) == ["optout"]
        assert bot.text("late") == []
        assert bot.messages(direction="inbound")[0]["status"] == "unhandled"
        assert bot.text("HELP") == ["Reply STOP to unsubscribe or START to resubscribe. Msg & data rates may apply."]


def test_it_answers_when_echo_is_switched_off(tmp_path):
    cfg = config(["echo", "fallback"], fallback={"text": SORRY})
    cfg["profiles"]["main"]["plugin_config"]["echo"] = {"enabled": False}
    with BotTester(cfg, tmp_path=tmp_path) as bot:
        assert bot.bot.plugins.active(bot.bot.config.number(NUMBER)) == ["optout", "fallback"]
        assert bot.text("nothing matches") == [SORRY]


@pytest.mark.parametrize("settings, message", [
    ({"text": 5}, "fallback.text: must be a string"),
    ({"txt": "hi"}, "fallback.txt: unknown setting"),
])  # fmt: skip
def test_bad_settings_are_config_errors(tmp_path, settings, message):
    with pytest.raises(ConfigError, match=rf"profiles\.main\.plugin_config\.{message}"):
        BotTester(config(["fallback"], settings), tmp_path=tmp_path)
