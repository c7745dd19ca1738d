"""The plugin authors' harness: BotTester, FakeClock, transcripts, webhooks, and the pytest fixtures."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types
from datetime import UTC, datetime

import pytest

from bot_core import hookimpl
from bot_core.plugins import load_plugins
from bot_core.testing import CUSTOMER, BotTester, FakeClock, FakeTelnyx, parse_transcript

OURS = "+13125550100"


def config(plugins=("echo",), **bot):
    profile = {"secret": "s3cret", "numbers": [OURS, "+13125550101"], "plugins": list(plugins)}
    return {"bot": bot, "sending": {"backoff_initial": "10ms", "backoff_max": "20ms"}, "profiles": {"main": profile}}


def plugin(name, **hooks):
    module = types.ModuleType(name)
    for hook, function in hooks.items():
        setattr(module, hook, hookimpl(function))
    return module


def test_the_harness_imports_without_pytest():
    code = "import sys; sys.modules['pytest'] = None; from bot_core.testing import *; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr


def test_text_goes_through_the_pipeline_and_returns_the_replies(tmp_path):
    with BotTester(config(), tmp_path=tmp_path) as bot:
        assert bot.text("hi") == ["echo hi #1"]
        assert bot.text("hi", from_="+13125550124") == ["echo hi #1"]
        assert bot.text("yo", to="+13125550101") == ["echo yo #1"]
        assert bot.state() == {"n": 1}
        inbound = bot.messages(direction="inbound")
        assert [(m["from"], m["to"], m["status"]) for m in inbound][0] == (CUSTOMER, OURS, "handled")


def test_v2_webhooks_are_signed_with_a_key_the_harness_put_in_the_config(tmp_path):
    with BotTester(config(), tmp_path=tmp_path) as bot:
        assert bot.config.telnyx.public_key == bot.webhooks.public_key
        assert bot.text("over v2", version=2) == ["echo over v2 #1"]
        assert bot.text("over v1") == ["echo over v1 #2"]


def test_a_config_file_with_a_plugins_dir_is_loaded(tmp_path):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "shout.py").write_text(textwrap.dedent("""
        from bot_core import hookimpl

        @hookimpl
        def handle_message(message):
            return message.text.upper()
    """))
    (tmp_path / "bot.toml").write_text(textwrap.dedent(f"""
        [bot]
        plugins_dir = "plugins"

        [profiles.main]
        secret = "s"
        numbers = ["{OURS}"]
        plugins = ["shout"]
    """))
    with BotTester(tmp_path / "bot.toml", tmp_path=tmp_path / "run") as bot:
        assert bot.text("quiet") == ["QUIET"]
        assert bot.config.bot.database.parent == tmp_path / "run"


def test_installed_plugins_stay_out_unless_asked_for(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "leaky-1.0.dist-info").mkdir(parents=True)
    (site / "leaky-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: leaky\nVersion: 1.0\n")
    (site / "leaky-1.0.dist-info" / "entry_points.txt").write_text("[bot_core]\nleaky = leaky_plugin\n")
    (site / "leaky_plugin.py").write_text(textwrap.dedent("""
        from bot_core import hookimpl

        @hookimpl(tryfirst=True)
        def handle_message():
            return "leaked"
    """))
    monkeypatch.syspath_prepend(str(site))
    assert load_plugins().sources["leaky"] == "entry point leaky"  # it really is installed
    echo = {"profiles": {"main": {"secret": "s", "numbers": [OURS], "plugins": ["echo"]}}}
    with BotTester(echo, tmp_path=tmp_path / "a") as bot:
        assert "leaky" not in bot.bot.plugins.names
        assert bot.text("hi") == ["echo hi #1"]
    leaky = {"profiles": {"main": {"secret": "s", "numbers": [OURS], "plugins": ["leaky"]}}}
    with BotTester(leaky, tmp_path=tmp_path / "b", installed=["leaky"]) as bot:
        assert bot.bot.plugins.sources["leaky"] == "entry point leaky"
        assert bot.text("hi") == ["leaked"]


def test_a_duplicate_delivery_is_answered_once(tmp_path):
    with BotTester(config(), tmp_path=tmp_path) as bot:
        webhook = bot.webhooks.message("once", from_=CUSTOMER, to=OURS)
        answers = bot.deliver(webhook, webhook, webhook)
        assert [a.json().get("duplicate", False) for a in answers] == [False, True, True]
        assert bot.replies() == ["echo once #1"]


def test_out_of_order_deliveries_are_handled_in_arrival_order(tmp_path):
    with BotTester(config(), tmp_path=tmp_path) as bot:
        first = bot.webhooks.message("first", from_=CUSTOMER, to=OURS, version=2)
        second = bot.webhooks.message("second", from_=CUSTOMER, to=OURS)
        bot.deliver(second, first)
        assert bot.replies() == ["echo second #1", "echo first #2"]


@pytest.mark.parametrize("version", [1, 2])
def test_delivery_statuses_arriving_out_of_order_never_move_a_message_back(tmp_path, version):
    fake = FakeTelnyx()
    with BotTester(config(), tmp_path=tmp_path, telnyx=fake) as bot:
        bot.text("hi")
        (sent,) = bot.messages(direction="outbound")
        assert sent["status"] == "queued"
        assert bot.report(sent["id"], "delivered", version=version).status_code == 200
        assert bot.report(sent["id"], "sent", version=version).status_code == 200
        assert bot.messages(direction="outbound")[0]["status"] == "delivered"
        # The fake can report too: it knows the message, its secret and the API it came by.
        bot.deliver(fake.report(sent["telnyx_id"], "sending"))
        assert bot.messages(direction="outbound")[0]["status"] == "delivered"


def test_a_failed_delivery_status_records_telnyx_error(tmp_path):
    with BotTester(config(), tmp_path=tmp_path, telnyx=FakeTelnyx()) as bot:
        bot.text("hi")
        (sent,) = bot.messages(direction="outbound")
        bot.report(sent["id"], "delivery_failed", error="Carrier rejected the message")
        row = bot.messages(direction="outbound")[0]
        assert (row["status"], row["error"]) == ("delivery_failed", "Carrier rejected the message")


def test_report_refuses_an_inbound_message(tmp_path):
    with BotTester(config(), tmp_path=tmp_path) as bot:
        bot.text("hi")
        with pytest.raises(ValueError, match="not an outbound message"):
            bot.report(bot.messages(direction="inbound")[0]["id"], "delivered")


def test_transcript_checks_each_step_in_order(tmp_path):
    with BotTester(config(), tmp_path=tmp_path) as bot:
        bot.transcript([("hi", "echo hi #1"), ("again", ["echo again #2"])])
        bot.transcript("""
            # the format `bot-core chat` prints
            you> three
            bot> echo three #3
            four
            bot> echo four #4
        """)


def test_a_failing_transcript_shows_the_conversation_and_a_diff(tmp_path):
    with BotTester(config(), tmp_path=tmp_path) as bot:
        with pytest.raises(AssertionError) as failure:
            bot.transcript([("hi", "echo hi #1"), ("again", "echo again #3"), ("never", "sent")])
    message = str(failure.value)
    assert message.splitlines() == [
        "transcript step 2 of 3 differs (- expected, + got):",
        "    you> hi",
        "    bot> echo hi #1",
        "    you> again",
        "  - bot> echo again #3",
        "  ?                  ^",
        "  + bot> echo again #2",
        "  ?                  ^",
    ]


def test_parse_transcript_reads_what_chat_prints():
    steps = parse_transcript("""
        you> hi
        bot> one
        bot> two\\nlines
        # a comment
        no prefix
        quiet
    """)
    assert steps == [("hi", ["one", "two\nlines"]), ("no prefix", []), ("quiet", [])]
    with pytest.raises(ValueError, match="line 1"):
        parse_transcript("bot> too early")


def test_fake_clock_fires_timers_when_advanced(tmp_path):
    def remind(bot, conversation):
        bot.schedule(conversation, delay="15m", text="Still there?")
        return "ok"

    clock = FakeClock(datetime(2025, 11, 29, 8, 0, tzinfo=UTC))
    with BotTester(config(["remind"]), tmp_path=tmp_path, clock=clock,
                   plugins=[plugin("remind", handle_message=remind)]) as bot:  # fmt: skip
        assert bot.text("hi") == ["ok"]
        assert bot.advance("14m") == []
        assert bot.advance("1m") == ["Still there?"]
        assert clock() == datetime(2025, 11, 29, 8, 15, tzinfo=UTC).timestamp()


def test_fake_clock_lets_a_plugin_see_business_hours(tmp_path):
    def hours(bot):
        hour = datetime.fromtimestamp(bot.clock(), UTC).hour
        return "open" if 9 <= hour < 17 else "closed"

    clock = FakeClock(datetime(2025, 11, 29, 8, 0))  # naive: UTC
    with BotTester(config(["hours"]), tmp_path=tmp_path, clock=clock,
                   plugins=[plugin("hours", handle_message=hours)]) as bot:  # fmt: skip
        assert bot.text("?") == ["closed"]
        clock.set(datetime(2025, 11, 29, 10, 0, tzinfo=UTC))
        assert bot.text("?") == ["open"]


def test_restart_keeps_state_and_what_was_already_read(tmp_path):
    with BotTester(config(), tmp_path=tmp_path) as bot:
        assert bot.text("a") == ["echo a #1"]
        bot.restart()
        assert bot.replies() == []
        assert bot.text("b") == ["echo b #2"]


@pytest.mark.parametrize("fault", ["rate_limit", "fail", "timeout"])
def test_transient_telnyx_faults_are_retried_until_the_reply_goes_out(tmp_path, fault):
    fake = FakeTelnyx()
    {"rate_limit": lambda: fake.rate_limit(retry_after=0.01), "fail": lambda: fake.fail(502),
     "timeout": fake.timeout}[fault]()  # fmt: skip
    with BotTester(config(), tmp_path=tmp_path, telnyx=fake) as bot:
        assert bot.text("hi") == ["echo hi #1"]
        assert bot.metric("bot_core_send_retries_total") == 1
    assert len(fake.requests) == 2 and len(fake.sent) == 1


def test_telnyx_40300_fails_the_reply_and_opts_the_recipient_out(tmp_path):
    fake = FakeTelnyx()
    fake.opt_out(CUSTOMER)
    with BotTester(config(), tmp_path=tmp_path, telnyx=fake) as bot:
        assert bot.text("hi") == []
        (row,) = bot.messages(direction="outbound")
        assert row["status"] == "failed" and "40300" in row["error"]
        assert bot.bot.is_opted_out("main", CUSTOMER)


def test_the_fixtures_reach_pytest_through_the_entry_point(pytester):
    pytester.makepyfile(test_my_plugin=textwrap.dedent(f"""
        import types
        from bot_core import hookimpl

        config = {{"profiles": {{"main": {{"secret": "s", "numbers": ["{OURS}"], "plugins": ["greet"]}}}}}}
        greet = types.ModuleType("greet")
        greet.handle_message = hookimpl(lambda message: "hello " + message.text)

        def test_greets(bot_tester):
            bot = bot_tester(config, plugins=[greet])
            assert bot.text("ann") == ["hello ann"]

        def test_clock_and_fake(bot_tester, fake_clock, fake_telnyx):
            bot = bot_tester(config, plugins=[greet], clock=fake_clock, telnyx=fake_telnyx)
            assert bot.text("bo") == ["hello bo"]
            assert fake_telnyx.sent[0].json["body"] == "hello bo"
    """))
    # In this process (a new pytest session loads the pytest11 entry points as a fresh one would):
    # two interpreters and their imports would cost far more than the test itself.
    options = ["-p", "no:cacheprovider", "-W", "error"]
    pytester.runpytest_inprocess(*options).assert_outcomes(passed=2)
    without = pytester.runpytest_inprocess(*options, "-p", "no:bot_core")
    assert "fixture 'bot_tester' not found" in without.stdout.str()
