"""The remind plugin, tested with bot-core's harness: the real pipeline, a fake clock, no network.

``bot_tester`` and ``fake_clock`` are fixtures bot-core gives pytest (its ``pytest11`` entry
point). ``installed=["remind"]`` loads this package through its entry point, as a real bot
would, so these tests also prove the packaging.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bot_core import ConfigError
from bot_core.testing import BotTester

BOT_TOML = Path(__file__).parent.parent / "bot.toml"


def test_a_reminder_arrives_when_it_is_due(bot_tester, fake_clock):
    bot = bot_tester(BOT_TOML, installed=["remind"], clock=fake_clock)
    bot.transcript([
        ("remind 30m call mom", "OK, I'll remind you in 30m: call mom"),
        ("REMIND", "1 reminder(s) pending. Text REMIND <when> <what>, e.g. REMIND 30m call mom (s, m, h or d)."),
        ("Remind 3d renew passport", "Sorry, I can only remind you up to 2d ahead."),
    ])  # fmt: skip
    assert bot.advance("29m") == []
    assert bot.advance("1m") == ["Reminder: call mom"]
    assert bot.state()["remind"] == {"pending": 0}


def test_reminders_survive_a_restart_and_respect_stop(bot_tester, fake_clock):
    bot = bot_tester(BOT_TOML, installed=["remind"], clock=fake_clock)
    bot.text("REMIND 1h stretch")
    bot.text("REMIND 2h drink water")
    bot.restart()
    assert bot.advance("1h") == ["Reminder: stretch"]
    bot.transcript([("STOP", "You are unsubscribed and will get no more messages. Reply START to resubscribe.")])
    assert bot.advance("1h") == []  # due, but blocked: the customer opted out
    assert [m["text"] for m in bot.messages(status="blocked")] == ["Reminder: drink water"]


def test_other_messages_are_left_to_other_plugins(bot_tester):
    bot = bot_tester(BOT_TOML, installed=["remind"])
    assert bot.text("reminders?") == []
    assert bot.text("HELP") == ["Reminder bot: text REMIND 30m call mom. Reply STOP to opt out."]


def test_a_bad_setting_is_refused_when_the_bot_loads(tmp_path):
    config = {"profiles": {"p": {"secret": "s", "numbers": ["+13125550100"], "plugins": ["remind"],
                                 "plugin_config": {"remind": {"max_delay": "a week"}}}}}  # fmt: skip
    with pytest.raises(ConfigError, match=r"profiles\.p\.plugin_config\.remind\.max_delay: 'a week' is not a duration"):
        BotTester(config, tmp_path=tmp_path, installed=["remind"])


def test_a_keyword_clash_is_refused(tmp_path):
    config = {"profiles": {"p": {"secret": "s", "numbers": ["+13125550100"], "plugins": ["remind"],
                                 "plugin_config": {"remind": {"keyword": "STOP"}}}}}  # fmt: skip
    with pytest.raises(ConfigError, match="STOP is a reserved opt-out keyword"):
        BotTester(config, tmp_path=tmp_path, installed=["remind"])
