"""Prometheus metrics: each is counted where it happens, and GET /metrics serves them."""

from __future__ import annotations

import asyncio
import threading
import time
import types

import pytest

from bot_core import hookimpl
from bot_core.testing import CUSTOMER, BotTester, FakeTelnyx

OURS = "+13125550100"


def config(plugins, sending=None, **bot):
    return {"bot": bot, "sending": {"backoff_initial": "10ms", "backoff_max": "20ms", **(sending or {})},
            "profiles": {"main": {"secret": "s", "numbers": [OURS], "plugins": plugins},
                         "off": {"enabled": False, "secret": "t", "numbers": ["+13125550102"]}}}  # fmt: skip


def plugin(name, **hooks):
    module = types.ModuleType(name)
    for hook, function in hooks.items():
        setattr(module, hook, hookimpl(function))
    return module


def eventually(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met")
        time.sleep(0.01)


def test_webhooks_are_counted_by_kind_and_outcome(tmp_path):
    with BotTester(config(["echo"]), tmp_path=tmp_path) as bot:
        once = bot.webhooks.message("hi", from_=CUSTOMER, to=OURS)
        bot.deliver(once, once)
        (sent,) = bot.messages(direction="outbound")
        bot.report(sent["id"], "delivered")
        bot.post(b"not json", {})
        bot.post({"sms_id": "x", "from": CUSTOMER, "to": OURS, "body": "forged"}, {"x-telnyx-signature": "t=1,h=AA=="})
        bot.post({"sms_id": "y", "from": CUSTOMER, "to": "+13125550999", "body": "nobody's"}, {})
        other = bot.webhooks.sign({"data": {"event_type": "message.something_new", "id": "e", "payload": {}}},
                                  version=2)  # fmt: skip
        bot.deliver(other)
        assert bot.metric("bot_core_webhooks_total", kind="message", outcome="200") == 2
        assert bot.metric("bot_core_webhooks_total", kind="status", outcome="200") == 1
        assert bot.metric("bot_core_webhooks_total", kind="unknown", outcome="400") == 1
        assert bot.metric("bot_core_webhooks_total", kind="message", outcome="401") == 1
        assert bot.metric("bot_core_webhooks_total", kind="message", outcome="404") == 1
        assert bot.metric("bot_core_webhooks_total", kind="ignored", outcome="200") == 1


def test_inbox_depth_counts_messages_being_handled(tmp_path):
    release = threading.Event()

    async def slow(message):
        while not release.is_set():
            await asyncio.sleep(0.005)
        return "done"

    with BotTester(config(["slow"]), tmp_path=tmp_path, plugins=[plugin("slow", handle_message=slow)]) as bot:
        assert bot.metric("bot_core_queue_depth", queue="inbox") == 0
        for text in ("one", "two"):
            webhook = bot.webhooks.message(text, from_=CUSTOMER, to=OURS)
            assert bot.portal.call(lambda w=webhook: bot.session.deliver(w))[0].status_code == 200
        eventually(lambda: bot.metric("bot_core_queue_depth", queue="inbox") == 2)
        release.set()
        assert bot.replies() == ["done", "done"]
        assert bot.metric("bot_core_queue_depth", queue="inbox") == 0


def test_outbox_depth_counts_messages_waiting_to_be_sent(tmp_path):
    fake = FakeTelnyx()
    fake.fail(503)
    cfg = config(["echo"], sending={"backoff_initial": "30s", "backoff_max": "30s"})
    with BotTester(cfg, tmp_path=tmp_path, telnyx=fake) as bot:
        webhook = bot.webhooks.message("hi", from_=CUSTOMER, to=OURS)
        bot.portal.call(lambda: bot.session.deliver(webhook))
        eventually(lambda: bot.metric("bot_core_send_retries_total") == 1)
        assert bot.metric("bot_core_queue_depth", queue="outbox") == 1  # waiting 30 s for its retry
        assert bot.metric("bot_core_queue_depth", queue="inbox") == 0


def test_plugin_time_is_observed_per_plugin(tmp_path):
    async def slow(message):
        await asyncio.sleep(0.05)

    plugins = [plugin("slow", handle_message=slow), plugin("quick", handle_message=lambda: "hi")]
    with BotTester(config(["slow", "quick"]), tmp_path=tmp_path, plugins=plugins) as bot:
        bot.text("a")
        bot.text("b")
        assert bot.metric("bot_core_plugin_seconds_count", plugin="slow") == 2
        assert bot.metric("bot_core_plugin_seconds_count", plugin="quick") == 2
        assert bot.metric("bot_core_plugin_seconds_sum", plugin="slow") >= 0.1
        assert bot.metric("bot_core_plugin_seconds_sum", plugin="quick") < 0.1


def test_plugin_failures_and_handled_outcomes_are_counted(tmp_path):
    def moody(message):
        if message.text == "boom":
            raise RuntimeError("no")
        return None if message.text == "pass" else "ok"

    with BotTester(config(["moody"]), tmp_path=tmp_path, plugins=[plugin("moody", handle_message=moody)]) as bot:
        for text in ("hi", "pass", "boom", "boom"):
            bot.text(text)
        bot.text("hi", to="+13125550102")  # a disabled profile
        assert bot.metric("bot_core_plugin_failures_total", plugin="moody") == 2
        outcomes = {o: bot.metric("bot_core_messages_handled_total", outcome=o)
                    for o in ("handled", "unhandled", "failed")}  # fmt: skip
        assert outcomes == {"handled": 1, "unhandled": 1, "failed": 2}


@pytest.mark.parametrize(("fake_setup", "status"), [
    (None, "sandbox"),
    (lambda fake: None, "queued"),
    (lambda fake: fake.fail(400, code="10002"), "failed"),
])  # fmt: skip
def test_sends_are_counted_by_the_status_they_left_with(tmp_path, fake_setup, status):
    fake = None
    if fake_setup is not None:
        fake = FakeTelnyx()
        fake_setup(fake)
    with BotTester(config(["echo"]), tmp_path=tmp_path, telnyx=fake) as bot:
        bot.text("hi")
        assert bot.messages(direction="outbound")[0]["status"] == status
        assert bot.metric("bot_core_sends_total", status=status) == 1


def test_messages_the_outbox_refuses_are_counted_too(tmp_path):
    with BotTester(config(["echo"], max_parts=1), tmp_path=tmp_path) as bot:
        bot.bot.store.set_opted_out("main", "+13125550199", True, "test")
        bot.portal.call(lambda: bot.bot.send("+13125550199", "sale", profile="main"))
        bot.portal.call(lambda: bot.bot.send(CUSTOMER, "x" * 200, profile="main"))
        bot.replies()
        assert bot.metric("bot_core_sends_total", status="blocked") == 1
        assert bot.metric("bot_core_sends_total", status="failed") == 1
        assert bot.metric("bot_core_sends_total", status="sandbox") == 0


def test_retries_are_counted(tmp_path):
    fake = FakeTelnyx()
    fake.fail(503, times=2)
    with BotTester(config(["echo"]), tmp_path=tmp_path, telnyx=fake) as bot:
        assert bot.text("hi") == ["echo hi #1"]
        assert bot.metric("bot_core_send_retries_total") == 2
        assert bot.metric("bot_core_sends_total", status="queued") == 1


def test_get_metrics_serves_the_prometheus_text_format(tmp_path):
    with BotTester(config(["echo"]), tmp_path=tmp_path) as bot:
        bot.text("hi")
        response = bot.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    lines = response.text.splitlines()
    assert 'bot_core_webhooks_total{kind="message",outcome="200"} 1.0' in lines
    assert 'bot_core_sends_total{status="sandbox"} 1.0' in lines
    assert 'bot_core_queue_depth{queue="outbox"} 0.0' in lines
    assert any(line.startswith('bot_core_plugin_seconds_bucket{le="0.001",plugin="echo"}') for line in lines)
