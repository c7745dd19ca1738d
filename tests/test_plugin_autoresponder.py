"""The autoresponder plugin: business hours in the profile's time zone, the window, keywords."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from bot_core import ConfigError
from bot_core.testing import BotTester, FakeClock

# Each test runs on both engines (the config names $BOT_CORE_DATABASE).
pytestmark = pytest.mark.usefixtures("database")

NUMBER = "+13125550100"
CHICAGO = ZoneInfo("America/Chicago")
OPEN = "Thanks! An agent will text you back shortly."
CLOSED = "We're closed. We'll reply when we open at 9am."
WEEKDAYS = {day: "09:00-17:00" for day in ("mon", "tue", "wed", "thu", "fri")}


def chicago(*args) -> FakeClock:
    return FakeClock(datetime(*args, tzinfo=CHICAGO))


def config(plugins=("autoresponder", "fallback"), **settings):
    autoresponder = {"timezone": "America/Chicago", "hours": WEEKDAYS, "holidays": ["2026-12-25"],
                     "open_message": OPEN, "closed_message": CLOSED,
                     "keywords": {"HOURS": "Mon-Fri 9am-5pm", "ADDRESS": "1 Main St, Chicago"}}  # fmt: skip
    autoresponder.update(settings)
    return {"bot": {"database": "${BOT_CORE_DATABASE:-bot.db}"}, "profiles": {"support": {
        "secret": "s", "numbers": [NUMBER], "plugins": list(plugins),
        "plugin_config": {"autoresponder": autoresponder, "fallback": {"text": "fallback answered"}},
    }}}  # fmt: skip


@pytest.mark.parametrize("when, expected", [
    ((2026, 3, 2, 8, 59), CLOSED),   # Monday, before opening
    ((2026, 3, 2, 9, 0), OPEN),      # opening time is inside
    ((2026, 3, 2, 16, 59), OPEN),
    ((2026, 3, 2, 17, 0), CLOSED),   # the close time is exclusive
    ((2026, 3, 7, 12, 0), CLOSED),   # Saturday is not listed: closed
    ((2026, 12, 25, 10, 0), CLOSED), # a holiday (a Friday)
    ((2026, 12, 24, 10, 0), OPEN),
])  # fmt: skip
def test_the_auto_reply_follows_business_hours(tmp_path, when, expected):
    with BotTester(config(), tmp_path=tmp_path, clock=chicago(*when)) as bot:
        assert bot.text("Is anyone there?") == [expected]


def test_hours_are_local_wall_clock_time_across_daylight_saving(tmp_path):
    clock = FakeClock(datetime(2026, 3, 2, 14, 59, tzinfo=ZoneInfo("UTC")))  # 08:59 CST
    with BotTester(config(window="0s"), tmp_path=tmp_path, clock=clock) as bot:
        assert bot.text("hi") == [CLOSED]
        clock.set(datetime(2026, 3, 2, 15, 0, tzinfo=ZoneInfo("UTC")))  # 09:00 CST
        assert bot.text("hi") == [OPEN]
        clock.set(datetime(2026, 3, 9, 14, 0, tzinfo=ZoneInfo("UTC")))  # 09:00 CDT, after the change
        assert bot.text("hi") == [OPEN]
        clock.set(datetime(2026, 3, 9, 22, 0, tzinfo=ZoneInfo("UTC")))  # 17:00 CDT
        assert bot.text("hi") == [CLOSED]


def test_24_00_ends_the_day_and_a_day_may_have_several_ranges(tmp_path):
    hours = {"sat": "10:00-24:00", "sun": "08:00-12:00, 13:00-15:00"}
    with BotTester(config(hours=hours, window="0s"), tmp_path=tmp_path, clock=chicago(2026, 3, 7, 23, 59)) as bot:
        assert bot.text("late") == [OPEN]
        bot.clock.set(datetime(2026, 3, 8, 0, 0, tzinfo=CHICAGO))  # Sunday midnight
        assert bot.text("later") == [CLOSED]
        bot.clock.set(datetime(2026, 3, 8, 12, 30, tzinfo=CHICAGO))  # Sunday lunch
        assert bot.text("lunch?") == [CLOSED]
        bot.clock.set(datetime(2026, 3, 8, 13, 0, tzinfo=CHICAGO))
        assert bot.text("after lunch") == [OPEN]


def test_one_auto_reply_per_window_and_nothing_else_answers_the_rest(tmp_path):
    with BotTester(config(), tmp_path=tmp_path, clock=chicago(2026, 3, 2, 10, 0)) as bot:
        replies = [bot.text(f"message {i}") for i in range(5)]
        assert replies == [[OPEN], [], [], [], []]
        inbound = bot.messages(direction="inbound")
        assert [r["status"] for r in inbound] == ["handled"] * 5  # claimed: fallback never answered
        assert len(bot.messages(direction="outbound")) == 1
        assert bot.text("hi", from_="+13125550124") == [OPEN]  # the window is per conversation
        bot.clock.advance(11 * 3600 + 59 * 60)  # 11:59 later: still inside the window
        assert bot.text("still there?") == []
        bot.clock.advance("60s")
        assert bot.text("hello?") == [CLOSED]  # 22:00, a new window, after hours


def test_the_window_is_configurable_and_survives_a_restart(tmp_path):
    with BotTester(config(window="30m"), tmp_path=tmp_path, clock=chicago(2026, 3, 2, 10, 0)) as bot:
        assert bot.text("one") == [OPEN]
        bot.restart()
        bot.clock.advance("29m")
        assert bot.text("two") == []
        bot.clock.advance("1m")
        assert bot.text("three") == [OPEN]


def test_keywords_are_always_answered_and_do_not_reset_the_window(tmp_path):
    with BotTester(config(), tmp_path=tmp_path, clock=chicago(2026, 3, 2, 10, 0)) as bot:
        assert bot.text("hi") == [OPEN]
        assert bot.text("Hours?") == ["Mon-Fri 9am-5pm"]  # inside the window
        assert bot.text("address please") == ["1 Main St, Chicago"]
        assert bot.text("office hours") == []  # a keyword only as the first word
        bot.clock.advance("11h")
        assert bot.text("HOURS") == ["Mon-Fri 9am-5pm"]  # after hours too
        bot.clock.advance("1h")
        assert bot.text("hi again") == [CLOSED]  # 12 h after the auto-reply, keywords or not


def test_a_period_without_a_message_is_left_to_the_next_plugin(tmp_path):
    cfg = config(open_message="")
    with BotTester(cfg, tmp_path=tmp_path, clock=chicago(2026, 3, 2, 10, 0)) as bot:
        assert bot.text("hi") == ["fallback answered"]
        assert bot.text("hours") == ["Mon-Fri 9am-5pm"]
        bot.clock.set(datetime(2026, 3, 2, 18, 0, tzinfo=CHICAGO))
        assert bot.text("hi") == [CLOSED]


def test_without_hours_the_line_is_always_closed(tmp_path):
    cfg = config()
    del cfg["profiles"]["support"]["plugin_config"]["autoresponder"]["hours"]
    with BotTester(cfg, tmp_path=tmp_path, clock=chicago(2026, 3, 2, 10, 0)) as bot:
        assert bot.text("hi") == [CLOSED]


def test_flows_listed_before_it_get_the_answers_of_an_active_flow(tmp_path):
    cfg = config(plugins=("flows", "autoresponder"))
    cfg["profiles"]["support"]["plugin_config"]["flows"] = {
        "signup": {"trigger": "JOIN", "steps": [{"ask": "Name?", "save_as": "name"}], "done": "Hi {name}"}
    }
    with BotTester(cfg, tmp_path=tmp_path, clock=chicago(2026, 3, 2, 10, 0)) as bot:
        assert bot.text("join") == ["Name?"]
        assert bot.text("Hours") == ["Hi Hours"]  # an active flow gets the answer, keyword or not
        assert bot.text("thanks") == [OPEN]


@pytest.mark.parametrize("settings, key, rule", [
    ({"timezone": "Mars/Olympus"}, "timezone", "unknown time zone 'Mars/Olympus'"),
    ({"hours": {"mon": "9-5"}}, "hours.mon", "is not a time range"),
    ({"hours": {"mon": "17:00-09:00"}}, "hours.mon", "closes before it opens"),
    ({"hours": {"mon": "09:00-24:30"}}, "hours.mon", "does not exist"),
    ({"hours": {"monday": "09:00-17:00"}}, "hours.monday", "unknown day"),
    ({"holidays": ["12/25/2026"]}, r"holidays\[0\]", "is not a date"),
    ({"holidays": ["2026-02-30"]}, r"holidays\[0\]", "is not a date"),
    ({"window": "12 hours"}, "window", "is not a duration"),
    ({"keywords": {"HOURS": ""}}, "keywords.HOURS", "must be the answer"),
    ({"open_mesage": "x"}, "open_mesage", "unknown setting"),
])  # fmt: skip
def test_bad_settings_are_config_errors_naming_the_key(tmp_path, settings, key, rule):
    with pytest.raises(ConfigError, match=rf"profiles\.support\.plugin_config\.autoresponder\.{key}: .*{rule}"):
        BotTester(config(**settings), tmp_path=tmp_path)


def test_a_keyword_equal_to_an_opt_out_word_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"INFO is a reserved opt-out keyword.*'autoresponder' \(keywords.Info\)"):
        BotTester(config(keywords={"Info": "We sell widgets"}), tmp_path=tmp_path)


def test_holidays_may_be_toml_dates(tmp_path):
    path = tmp_path / "bot.toml"
    path.write_text(f'''
[profiles.support]
secret = "s"
numbers = ["{NUMBER}"]
plugins = ["autoresponder"]
[profiles.support.plugin_config.autoresponder]
timezone = "America/Chicago"
hours = {{ fri = "09:00-17:00" }}
holidays = [2026-12-25]
open_message = "open"
closed_message = "closed"
''')
    with BotTester(path, tmp_path=tmp_path, clock=chicago(2026, 12, 25, 10, 0)) as bot:
        assert bot.text("merry?") == ["closed"]
