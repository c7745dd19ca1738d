"""The optout plugin: STOP, START and HELP through the real pipeline, and the consent log.

The words and their effect follow Telnyx's opt-out handling (Telnyx's messaging docs on
opt-out keywords: STOP, STOP ALL, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT opt out, account-wide
by default; only START and UNSTOP opt back in), the CTIA's Messaging Principles and Best
Practices, and the FCC's 2024 TCPA revocation rule (REVOKE, OPT OUT).
"""

from __future__ import annotations

import json

import pytest

from bot_core import ConfigError
from bot_core.testing import BotTester

from .inprocess import bot_core

# Each test runs on both engines (the config names $BOT_CORE_DATABASE).
pytestmark = pytest.mark.usefixtures("database")

SUPPORT, SALES, CUSTOMER = "+13125550100", "+13125550101", "+13125550123"
STOP_TEXT = "You are unsubscribed and will get no more messages. Reply START to resubscribe."
START_TEXT = "You are subscribed again. Reply STOP to unsubscribe."
HELP_TEXT = "Reply STOP to unsubscribe or START to resubscribe. Msg & data rates may apply."


def config(optout=None, plugins=("echo",), sales_optout=None):
    support = {"secret": "s1", "numbers": [SUPPORT], "plugins": list(plugins)}
    if optout is not None:
        support["plugin_config"] = {"optout": optout}
    sales = {"secret": "s2", "numbers": [SALES], "plugins": ["echo"],
             "plugin_config": {"optout": sales_optout or {}}}  # fmt: skip
    return {"bot": {"database": "${BOT_CORE_DATABASE:-bot.db}"}, "profiles": {"support": support, "sales": sales}}


@pytest.mark.parametrize("word", ["STOP", "stop", "  Stop! ", "STOPALL", "STOP ALL", "stop all", "unsubscribe",
                                  "Cancel.", "END", "quit", "revoke", "opt out", "OPTOUT"])  # fmt: skip
def test_an_opt_out_word_opts_out_with_one_confirmation_and_silences_everything(tmp_path, word):
    with BotTester(config(), tmp_path=tmp_path) as bot:
        assert bot.text("hello") == ["echo hello #1"]
        assert bot.text(word) == [STOP_TEXT]
        assert bot.bot.is_opted_out("support", CUSTOMER) and bot.bot.is_opted_out(None, CUSTOMER)  # account-wide
        # Nothing else answers them: the message is claimed by optout, no reply is even drafted.
        assert bot.text("hello again") == []
        assert bot.messages(direction="inbound")[-1]["status"] == "handled"
        assert len(bot.messages(direction="outbound")) == 2  # not even a blocked reply
        assert bot.state()["n"] == 1  # echo never saw the later message
        assert bot.text(word) == []  # a repeated STOP is not confirmed again


@pytest.mark.parametrize("text", ["stop texting me", "Stopped by earlier", "please stop", "STOP STOP", "stop-loss"])
def test_a_message_that_only_contains_an_opt_out_word_is_ordinary(tmp_path, text):
    with BotTester(config(), tmp_path=tmp_path) as bot:
        assert bot.text(text) == [f"echo {text} #1"]
        assert not bot.bot.is_opted_out("support", CUSTOMER)


def test_proactive_sends_and_timers_to_an_opted_out_number_are_recorded_as_blocked(tmp_path):
    with BotTester(config(), tmp_path=tmp_path) as bot:
        bot.text("hi")
        conversation = bot.bot.store.conversation("support", SUPPORT, CUSTOMER)
        bot.portal.call(lambda: bot.bot.schedule(conversation, delay="1h", text="Your appointment is tomorrow"))
        assert bot.text("STOP") == [STOP_TEXT]
        mdr = bot.portal.call(lambda: bot.bot.send(CUSTOMER, "Big sale!", profile="support"))
        assert bot.replies() == []
        assert bot.advance("2h") == []
        blocked = bot.messages(direction="outbound", status="blocked")
        assert [(r["text"], r["error"]) for r in blocked] == [
            ("Big sale!", "recipient opted out"),
            ("Your appointment is tomorrow", "recipient opted out"),
        ]
        assert blocked[0]["id"] == mdr


@pytest.mark.parametrize("word", ["START", "unstop"])
def test_start_words_opt_back_in_only_someone_who_opted_out(tmp_path, word):
    with BotTester(config(), tmp_path=tmp_path) as bot:
        assert bot.text(word) == [f"echo {word} #1"]  # an ordinary message for someone opted in
        bot.text("STOP")
        assert bot.text(word) == [START_TEXT]
        assert not bot.bot.is_opted_out("support", CUSTOMER)
        assert bot.text("back") == ["echo back #2"]
        assert bot.text("STOP") == [STOP_TEXT]  # opting out again is confirmed again


@pytest.mark.parametrize("word", ["YES", "Yes!"])
def test_yes_after_stop_does_not_claim_a_resubscription_telnyx_would_not_honour(tmp_path, word):
    # Telnyx lifts its STOP block only on START or UNSTOP: a "subscribed again" answer to YES
    # would be refused with 40300, and the sender would stay blocked at Telnyx.
    with BotTester(config(), tmp_path=tmp_path) as bot:
        assert bot.text(word) == [f"echo {word} #1"]  # for someone opted in, YES is any other message
        bot.text("STOP")
        assert bot.text(word) == []
        assert bot.bot.is_opted_out("support", CUSTOMER)
        assert bot.text("START") == [START_TEXT]


@pytest.mark.parametrize("word", ["HELP", "info", "Help?"])
def test_help_is_answered_opted_out_or_not(tmp_path, word):
    with BotTester(config(), tmp_path=tmp_path) as bot:
        assert bot.text(word) == [HELP_TEXT]
        assert bot.text("help me with my order") == ["echo help me with my order #1"]  # not HELP
        bot.text("STOP")
        exchange = bot.exchange(word)
        assert exchange.replies == [HELP_TEXT]
        assert exchange.outbound[0]["status"] == "sandbox"  # sent, not blocked


def test_opting_out_is_account_wide_by_default_as_at_telnyx(tmp_path):
    with BotTester(config(), tmp_path=tmp_path) as bot:
        assert bot.text("STOP", to=SUPPORT) == [STOP_TEXT]
        assert bot.text("hi", to=SALES) == []  # claimed by optout on the other profile too
        mdr = bot.portal.call(lambda: bot.bot.send(CUSTOMER, "Big sale!", profile="sales"))
        assert bot.bot.store.mdr(mdr)["status"] == "blocked"
        assert bot.text("START", to=SALES) == [START_TEXT]  # START lifts it wherever it is texted
        assert bot.text("hi", to=SUPPORT) == ["echo hi #1"]


def test_opting_out_is_per_profile_with_scope_profile(tmp_path):
    with BotTester(config({"scope": "profile"}), tmp_path=tmp_path) as bot:
        assert bot.text("STOP", to=SUPPORT) == [STOP_TEXT]
        assert bot.text("hi", to=SALES) == ["echo hi #1"]
        assert bot.bot.is_opted_out("support", CUSTOMER) and not bot.bot.is_opted_out("sales", CUSTOMER)


def test_with_confirm_false_telnyx_alone_confirms_stop_and_start(tmp_path):
    # Telnyx sends its own opt-out and opt-in confirmations unless the account turned them off.
    with BotTester(config({"confirm": False}), tmp_path=tmp_path) as bot:
        assert bot.text("STOP") == []
        assert bot.bot.is_opted_out("support", CUSTOMER)
        assert bot.messages(direction="outbound") == []
        assert bot.text("START") == []
        assert not bot.bot.is_opted_out("support", CUSTOMER)
        assert bot.text("HELP") == [HELP_TEXT]  # HELP is still bot-core's to answer


def test_the_consent_log_says_when_and_how_each_change_happened(tmp_path):
    with BotTester(config(), tmp_path=tmp_path) as bot:
        bot.text("Stop", message_id="m-stop")
        bot.text("start", message_id="m-start")
        bot.text("QUIT", message_id="m-quit")
        log = bot.bot.store.consent_log()
        assert [(r["profile"], r["number"], r["action"], r["source"]) for r in log] == [
            (None, CUSTOMER, "opt_out", "texted STOP (message m-stop)"),  # None: account-wide
            (None, CUSTOMER, "opt_in", "texted START (message m-start)"),
            (None, CUSTOMER, "opt_out", "texted QUIT (message m-quit)"),
        ]
        assert all(r["at"] for r in log)
        [current] = bot.bot.store.optouts()
        assert (current["number"], current["source"]) == (CUSTOMER, "texted QUIT (message m-quit)")


def test_stop_from_someone_telnyx_already_opted_out_is_still_confirmed(tmp_path):
    with BotTester(config(), tmp_path=tmp_path) as bot:
        bot.bot.opt_out("support", CUSTOMER, "telnyx 40300")
        assert bot.text("hello") == []
        assert bot.text("STOP") == [STOP_TEXT]
        assert bot.text("STOP") == []


def test_stop_handled_again_after_a_restart_is_confirmed_once(tmp_path):
    with BotTester(config(), tmp_path=tmp_path) as bot:
        assert bot.text("STOP", message_id="m-1") == [STOP_TEXT]
        bot.restart()
        assert bot.text("STOP", message_id="m-1") == []  # Telnyx redelivered it: a duplicate
        assert bot.text("STOP", message_id="m-2") == []
        assert bot.text("START") == [START_TEXT]


def test_texts_come_from_the_profile_settings(tmp_path):
    texts = {"help_text": "ACME support. Reply STOP to opt out.", "stop_text": "Bye from ACME.",
             "start_text": "Welcome back to ACME."}  # fmt: skip
    with BotTester(config(texts), tmp_path=tmp_path) as bot:
        assert bot.text("help") == ["ACME support. Reply STOP to opt out."]
        assert bot.text("stop") == ["Bye from ACME."]
        assert bot.text("start") == ["Welcome back to ACME."]
        assert bot.text("stop", to=SALES) == [STOP_TEXT]  # the other profile keeps the defaults


def test_optout_comes_first_even_when_listed_last(tmp_path):
    with BotTester(config(plugins=["echo", "optout"]), tmp_path=tmp_path) as bot:
        assert bot.bot.plugins.active(bot.bot.config.number(SUPPORT)) == ["optout", "echo"]
        assert bot.text("STOP") == [STOP_TEXT]


def test_turned_off_it_sees_nothing_and_check_warns(tmp_path):
    with BotTester(config({"enabled": False}), tmp_path=tmp_path) as bot:
        assert bot.text("STOP") == ["echo STOP #1"]
        assert bot.text("HELP") == ["echo HELP #2"]
        assert not bot.bot.is_opted_out("support", CUSTOMER)
    path = tmp_path / "bot.toml"
    path.write_text(f'[profiles.support]\nsecret = "s"\nnumbers = ["{SUPPORT}"]\n'
                    "[profiles.support.plugin_config.optout]\nenabled = false\n")  # fmt: skip
    out = bot_core("check", "--config", str(path))
    assert out.returncode == 0, out.stderr
    assert "profile support: opt-out handling (STOP/START/HELP) is disabled" in out.stderr


@pytest.mark.parametrize("settings, key, rule", [
    ({"stop_text": ""}, "stop_text", "must be a non-empty string"),
    ({"scope": "number"}, "scope", "must be 'account' or 'profile'"),
    ({"confirm": "no"}, "confirm", "must be true or false"),
    ({"help_txt": "x"}, "help_txt", "unknown setting"),
    ({"enabled": "no"}, "enabled", "must be true or false"),
])  # fmt: skip
def test_bad_settings_are_config_errors(tmp_path, settings, key, rule):
    with pytest.raises(ConfigError, match=rf"profiles\.support\.plugin_config\.optout\.{key}: {rule}"):
        BotTester(config(settings), tmp_path=tmp_path)


def test_bot_core_optouts_lists_who_opted_out_and_how(tmp_path):
    path = tmp_path / "bot.toml"
    path.write_text(f'[bot]\ndatabase = "bot.db"\n[profiles.support]\nsecret = "s"\nnumbers = ["{SUPPORT}"]\n')
    with BotTester(path, tmp_path=tmp_path) as bot:
        bot.text("STOP", message_id="m-1")
        bot.text("stop", from_="+13125550124", message_id="m-2")
        bot.text("START", from_="+13125550124", message_id="m-3")
    out = bot_core("optouts", "--config", str(path), "--json")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["profile"], r["number"], r["source"]) for r in rows] == [(None, CUSTOMER, "texted STOP (message m-1)")]
