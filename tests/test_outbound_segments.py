"""SMS-aware sending through the whole pipeline: encoding and parts on every outbound MDR,
the max_parts limit, and the warning when one character forces UCS-2."""

from __future__ import annotations

import logging
import types

import pytest

from bot_core import hookimpl
from bot_core.testing import BotTester, FakeTelnyx

OURS = "+13125550100"


def replying(text):
    """A plugin that answers every message with ``text``."""
    module = types.ModuleType("say")
    module.handle_message = hookimpl(lambda message: text)
    return module


def config(**bot):
    return {"bot": bot, "profiles": {"main": {"secret": "s", "numbers": [OURS], "plugins": ["say"]}}}


CASES = [
    pytest.param("a" * 160, "GSM-7", 1, id="gsm7-160-fits-one-part"),
    pytest.param("a" * 161, "GSM-7", 2, id="gsm7-161-needs-two"),
    pytest.param("{" * 80, "GSM-7", 1, id="extension-chars-count-two-160"),
    pytest.param("{" * 81, "GSM-7", 2, id="extension-chars-count-two-162"),
    # 306 septets divide into 2 parts of 153, but the brace cannot straddle parts 1 and 2.
    pytest.param("a" * 152 + "{" + "a" * 152, "GSM-7", 3, id="gsm7-no-char-split"),
    # Telnyx's GSM-7 has no euro sign (its message-encoding page): UTF-16, 70 a part.
    pytest.param("€" * 70, "UCS-2", 1, id="euro-is-utf16-at-telnyx"),
    pytest.param("ç" * 70, "UCS-2", 1, id="ucs2-70-fits-one-part"),
    pytest.param("ç" * 71, "UCS-2", 2, id="ucs2-71-needs-two"),
    pytest.param("😀" * 35, "UCS-2", 1, id="astral-chars-count-two-70"),
    pytest.param("😀" * 36, "UCS-2", 2, id="astral-chars-count-two-72"),
    # 134 units divide into 2 parts of 67, but the emoji's surrogate pair cannot be split.
    pytest.param("ç" + "a" * 65 + "😀" + "a" * 66, "UCS-2", 3, id="ucs2-no-surrogate-split"),
]


@pytest.mark.parametrize(("text", "encoding", "parts"), CASES)
def test_sandboxed_reply_records_its_encoding_and_parts(tmp_path, text, encoding, parts):
    with BotTester(config(), tmp_path=tmp_path, plugins=[replying(text)]) as bot:
        assert bot.text("hi") == [text]
        (row,) = bot.messages(direction="outbound")
        assert (row["status"], row["encoding"], row["parts"]) == ("sandbox", encoding, parts)


@pytest.mark.parametrize(("text", "encoding", "parts"), CASES[:2] + CASES[7:9])
def test_sent_reply_records_its_encoding_and_parts_and_goes_out_whole(tmp_path, text, encoding, parts):
    fake = FakeTelnyx()
    with BotTester(config(), tmp_path=tmp_path, plugins=[replying(text)], telnyx=fake) as bot:
        bot.text("hi")
        (row,) = bot.messages(direction="outbound")
        assert (row["status"], row["encoding"], row["parts"]) == ("queued", encoding, parts)
        assert [r.json["body"] for r in fake.sent] == [text]  # Telnyx splits it, not bot-core


def test_reply_over_max_parts_is_recorded_failed_and_never_sent(tmp_path):
    fake = FakeTelnyx()
    long = "a" * 307  # 3 parts
    with BotTester(config(max_parts=2), tmp_path=tmp_path, plugins=[replying(long)], telnyx=fake) as bot:
        assert bot.text("hi") == []
        (row,) = bot.messages(direction="outbound")
        assert (row["status"], row["parts"], row["text"]) == ("failed", 3, long)
        assert "max_parts = 2" in row["error"] and "3 parts" in row["error"]
        assert fake.requests == []


@pytest.mark.parametrize(("length", "sent"), [(1530, True), (1531, False)])
def test_default_limit_is_telnyx_maximum_of_ten_parts(tmp_path, length, sent):
    with BotTester(config(), tmp_path=tmp_path, plugins=[replying("a" * length)]) as bot:
        bot.text("hi")
        (row,) = bot.messages(direction="outbound")
        assert row["parts"] == (10 if sent else 11)
        assert row["status"] == ("sandbox" if sent else "failed")


def test_1499_letters_and_a_euro_sign_are_refused_by_the_default_ten_part_limit(tmp_path):
    # Telnyx's message-encoding page: "€" is not in its GSM-7 set, so the text is UTF-16 and
    # 1500 units are 23 parts at Telnyx; the standard GSM table would have said 10 and sent it.
    text = "a" * 1499 + "€"
    fake = FakeTelnyx()
    with BotTester(config(), tmp_path=tmp_path, plugins=[replying(text)], telnyx=fake) as bot:
        assert bot.text("hi") == []
        (row,) = bot.messages(direction="outbound")
        assert (row["status"], row["encoding"], row["parts"]) == ("failed", "UCS-2", 23)
        assert "max_parts = 10" in row["error"]
        assert fake.requests == []


def test_proactive_send_over_max_parts_is_failed_too(tmp_path):
    with BotTester(config(max_parts=1), tmp_path=tmp_path, plugins=[replying("x")]) as bot:
        mdr_id = bot.portal.call(lambda: bot.bot.send("+13125550123", "b" * 161, profile="main"))
        assert bot.replies() == []
        row = bot.bot.store.mdr(mdr_id)
        assert (row["status"], row["parts"], row["encoding"]) == ("failed", 2, "GSM-7")
        assert "max_parts = 1" in row["error"]


def test_one_character_forcing_ucs2_is_warned_about(tmp_path, caplog):
    text = "Your order is ready, we’re open until 6pm"  # the curly apostrophe is not GSM-7
    with BotTester(config(), tmp_path=tmp_path, plugins=[replying(text)]) as bot:
        with caplog.at_level(logging.WARNING, logger="bot_core.outbox"):
            bot.text("hi")
        (row,) = bot.messages(direction="outbound")
    assert (row["encoding"], row["parts"]) == ("UCS-2", 1)
    warnings = [r.getMessage() for r in caplog.records if r.name == "bot_core.outbox"]
    assert len(warnings) == 1 and "'’'" in warnings[0] and "UCS-2" in warnings[0]


@pytest.mark.parametrize("text", ["plain GSM text", "你好，我们六点关门"], ids=["gsm7", "many-non-gsm-chars"])
def test_no_ucs2_warning_when_the_text_is_gsm7_or_needs_ucs2_throughout(tmp_path, caplog, text):
    with BotTester(config(), tmp_path=tmp_path, plugins=[replying(text)]) as bot:
        with caplog.at_level(logging.WARNING, logger="bot_core.outbox"):
            assert bot.text("hi") == [text]
    assert [r for r in caplog.records if r.name == "bot_core.outbox"] == []


def test_message_blocked_for_an_opted_out_number_still_records_its_count(tmp_path):
    with BotTester(config(), tmp_path=tmp_path, plugins=[replying("x")]) as bot:
        bot.bot.store.set_opted_out("main", bot.customer, True, "test")
        mdr_id = bot.portal.call(lambda: bot.bot.send(bot.customer, "ç" * 71, profile="main"))
        assert bot.replies() == []
        row = bot.bot.store.mdr(mdr_id)
        assert (row["status"], row["encoding"], row["parts"]) == ("blocked", "UCS-2", 2)
