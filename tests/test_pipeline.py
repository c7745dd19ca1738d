"""The core pipeline through the real webhook, store, dispatcher, outbox and sender, in-process."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import types

import nacl.signing
import pytest

from bot_core import Reply, hookimpl
from bot_core.messages import DeliveryStatus
from bot_core.store import OutboundDraft
from bot_core.testing import BotTester, FakeTelnyx
from bot_core.webhooks import sign_v1, sign_v2

from .conftest import sample

# Each test runs on both engines (the config names $BOT_CORE_DATABASE).
pytestmark = pytest.mark.usefixtures("database")

OURS = "+13125550100"
THEIRS = "+13125550123"


def config(plugins=None, **bot):
    profile = {"secret": "test-secret", "numbers": [OURS, "+13125550101"]}
    if plugins is not None:
        profile["plugins"] = plugins
    return {"bot": {"database": "${BOT_CORE_DATABASE:-bot.db}", **bot}, "profiles": {"main": profile}}


def plugin(name, **hooks):
    module = types.ModuleType(name)
    for hook, function in hooks.items():
        setattr(module, hook, hookimpl(function))
    return module


def test_the_simplest_plugin_keeps_state_per_conversation(tmp_path):
    counter = plugin("counter", handle_message=lambda message, conversation: _count(message, conversation))
    with BotTester(config(["counter"]), tmp_path=tmp_path, plugins=[counter]) as bot:
        assert bot.text("a") == ["echo a #1"]
        assert bot.text("b") == ["echo b #2"]
        assert bot.text("c", from_="+13125550124") == ["echo c #1"]
        assert bot.text("d", to="+13125550101") == ["echo d #1"]
        assert bot.state() == {"n": 2}


def _count(message, conversation):
    n = conversation.state.get("n", 0) + 1
    conversation.state["n"] = n
    return f"echo {message.text} #{n}"


def test_handler_return_forms(tmp_path):
    answers = {"none": None, "str": "one", "list": ["a", "b"], "empty": [], "reply": Reply("r"),
               "replies": [Reply("x"), "y"]}  # fmt: skip
    forms = plugin("forms", handle_message=lambda message: answers[message.text])
    backstop = plugin("backstop", handle_message=lambda message: "backstop")
    with BotTester(config(["forms", "backstop"]), tmp_path=tmp_path, plugins=[forms, backstop]) as bot:
        assert bot.text("none") == ["backstop"]
        assert bot.text("str") == ["one"]
        assert bot.text("list") == ["a", "b"]
        assert bot.text("empty") == []
        assert bot.text("reply") == ["r"]
        assert bot.text("replies") == ["x", "y"]
        claimed = {m["text"]: m["status"] for m in bot.messages(direction="inbound")}
        assert claimed["empty"] == "handled"


def test_plugins_are_consulted_in_profile_order_and_inactive_ones_never_see_messages(tmp_path):
    seen = []

    def watcher(name, answer):
        def handle_message(message):
            seen.append(name)
            return answer
        return plugin(name, handle_message=handle_message)

    plugins = [watcher("first", None), watcher("second", "from second"), watcher("third", "from third"),
               watcher("idle", "never")]  # fmt: skip
    cfg = config(["first", "second", "third"])
    cfg["numbers"] = {"+13125550101": {"plugins": ["third", "first"]}}
    with BotTester(cfg, tmp_path=tmp_path, plugins=plugins) as bot:
        assert bot.text("x") == ["from second"]
        assert seen == ["first", "second"]
        seen.clear()
        assert bot.text("y", to="+13125550101") == ["from third"]
        assert seen == ["third"]


def test_async_hooks_and_plugin_config(tmp_path):
    async def handle_message(message, config):
        await asyncio.sleep(0.01)
        return config["greeting"] + message.text

    cfg = config(["greeter"])
    cfg["profiles"]["main"]["plugin_config"] = {"greeter": {"greeting": "hello "}}
    with BotTester(cfg, tmp_path=tmp_path, plugins=[plugin("greeter", handle_message=handle_message)]) as bot:
        assert bot.text("you") == ["hello you"]


def test_a_failing_plugin_is_isolated(tmp_path, caplog):
    def handle_message(message, conversation):
        conversation.state["touched"] = True
        if message.text == "boom":
            raise RuntimeError("kaboom")
        return "fine"

    flaky = plugin("flaky", handle_message=handle_message)
    with BotTester(config(["flaky"], fallback_reply="Sorry, try later."), tmp_path=tmp_path, plugins=[flaky]) as bot:
        with caplog.at_level(logging.ERROR):
            assert bot.text("boom") == ["Sorry, try later."]
        assert bot.state() == {}  # the change made before the exception was discarded
        failed = bot.messages(direction="inbound")[-1]
        assert failed["status"] == "failed"
        assert "plugin 'flaky' failed: RuntimeError: kaboom" in failed["error"]
        assert "flaky" in caplog.text and "Traceback" in caplog.text
        assert bot.text("ok", from_="+13125550124") == ["fine"]
        assert bot.text("ok") == ["fine"]


def test_a_plugin_past_its_timeout_fails_the_message(tmp_path):
    async def handle_message(message):
        await asyncio.sleep(5)
        return "too late"

    slow = plugin("slow", handle_message=handle_message)
    with BotTester(config(["slow"], plugin_timeout="100ms"), tmp_path=tmp_path, plugins=[slow]) as bot:
        assert bot.text("hi") == []
        inbound = bot.messages(direction="inbound")[-1]
        assert inbound["status"] == "failed" and "timed out" in inbound["error"]


def test_the_webhook_acknowledges_before_plugins_run(tmp_path):
    release = asyncio.Event()

    async def handle_message(message):
        await release.wait()
        return "done"

    waiting = plugin("waiting", handle_message=handle_message)
    with BotTester(config(["waiting"]), tmp_path=tmp_path, plugins=[waiting]) as bot:
        body = json.dumps({"sms_id": "w-1", "from": THEIRS, "to": OURS, "body": "hi"}).encode()
        response = bot.post(body)  # answered while the plugin is still blocked on `release`
        assert response.status_code == 200
        assert not release.is_set()
        assert bot.messages(direction="inbound")[0]["status"] == "received"
        bot.portal.call(release.set)
        assert bot.replies() == ["done"]


def test_duplicates_are_acknowledged_and_processed_once(tmp_path):
    calls = []
    counting = plugin("counting", handle_message=lambda message: calls.append(message.id) or "once")
    with BotTester(config(["counting"]), tmp_path=tmp_path, plugins=[counting]) as bot:
        assert bot.text("hi", message_id="same") == ["once"]
        assert bot.text("hi", message_id="same") == []
        assert calls == ["same"]


def test_signatures_are_required_even_in_sandbox(tmp_path):
    with BotTester(config(["echo"], sandbox=True), tmp_path=tmp_path) as bot:
        body = json.dumps({"sms_id": "s-1", "from": THEIRS, "to": OURS, "body": "hi"}).encode()
        assert bot.post(body, {}).status_code == 401
        assert bot.post(body, {"x-telnyx-signature": sign_v1(body, "nope")}).status_code == 401
        assert bot.messages() == []


def test_wrongly_typed_fields_get_400_naming_the_field(tmp_path):
    with BotTester(config(["echo"]), tmp_path=tmp_path) as bot:
        response = bot.post({"sms_id": "t-1", "from": THEIRS, "to": OURS, "body": 42})
        assert response.status_code == 400 and "body" in response.json()["error"]
        response = bot.post({"sms_id": "t-2", "from": THEIRS, "body": "x"})
        assert response.status_code == 400 and "to" in response.json()["error"]
        assert bot.messages() == []


def test_v2_inbound_is_verified_with_ed25519_and_replied_to(tmp_path):
    key = nacl.signing.SigningKey.generate()
    cfg = config(["echo"])
    cfg["telnyx"] = {"public_key": base64.b64encode(key.verify_key.encode()).decode()}
    with BotTester(cfg, tmp_path=tmp_path) as bot:
        event = sample("v2-message-received.json")
        body = json.dumps(event).encode()
        assert bot.post(body, sign_v2(body, nacl.signing.SigningKey.generate(), int(bot.clock()))).status_code == 401
        response = bot.post(body, sign_v2(body, key, int(bot.clock())))
        assert response.status_code == 200, response.text
        assert bot.replies() == ["echo Hi, is the store open today? #1"]
        # Telnyx retries with a new event id and attempt number: the message id dedupes it.
        event["data"]["id"] = "another-event"
        event["meta"]["attempt"] = 2
        body = json.dumps(event).encode()
        assert bot.post(body, sign_v2(body, key, int(bot.clock()))).json()["duplicate"] is True
        assert bot.replies() == []


def test_replies_use_v1_with_the_profile_secret_and_record_telnyx_id_and_status(tmp_path):
    fake = FakeTelnyx()
    cfg = config(["echo"])
    cfg["bot"]["public_url"] = "https://bot.example.com"
    with BotTester(cfg, tmp_path=tmp_path, telnyx=fake) as bot:
        assert bot.text("hi") == ["echo hi #1"]
        request = fake.sent[0]
        assert request.headers["x-profile-secret"] == "test-secret"
        assert request.json == {"from": OURS, "to": THEIRS, "body": "echo hi #1",
                                "delivery_status_webhook_url": "https://bot.example.com/webhooks/telnyx"}  # fmt: skip
        reply = bot.messages(direction="outbound")[0]
        assert reply["status"] == "queued" and reply["telnyx_id"] in fake.messages
        # Statuses only move forward: a late "sent" does not undo "delivered".
        for status in ("delivered", "sent"):
            update = {**sample("v1-delivery-status.json"), "sms_id": reply["telnyx_id"], "status": status,
                      "delivery_status": status, "msg": {"src": OURS, "dst": THEIRS, "body": "echo hi #1"}}  # fmt: skip
            assert bot.post(update).status_code == 200
        assert bot.messages(direction="outbound")[0]["status"] == "delivered"
        failed = {**update, "sms_id": "unknown-id", "status": "delivery_failed", "delivery_status": "delivery_failed"}
        assert bot.post(failed).json()["mdr_id"] is None


def test_a_status_that_arrives_before_the_send_response_is_applied(tmp_path):
    with BotTester(config(["echo"]), tmp_path=tmp_path) as bot:
        store = bot.bot.store
        mdr = store.add_outbound(OutboundDraft("main", OURS, THEIRS, "early bird"))
        store.apply_status(DeliveryStatus("tx-1", "delivered", OURS, THEIRS))
        store.mark_sent(mdr, "tx-1", "queued")
        assert store.mdr(mdr)["status"] == "delivered"


def test_v2_sender_uses_bearer_key_and_text(tmp_path):
    fake = FakeTelnyx()
    cfg = config(["echo"])
    cfg["telnyx"] = {"api_version": 2, "api_key": "KEY-123"}
    with BotTester(cfg, tmp_path=tmp_path, telnyx=fake) as bot:
        assert bot.text("hi") == ["echo hi #1"]
        request = fake.sent[0]
        assert request.path == "/v2/messages"
        assert request.headers["authorization"] == "Bearer KEY-123"
        assert request.json == {"from": OURS, "to": THEIRS, "text": "echo hi #1"}
        assert bot.messages(direction="outbound")[0]["status"] == "queued"


def test_sandbox_records_outbound_with_status_sandbox(tmp_path):
    with BotTester(config(["echo"]), tmp_path=tmp_path) as bot:
        bot.text("hi")
        reply = bot.messages(direction="outbound")[0]
        assert (reply["status"], reply["from"], reply["to"]) == ("sandbox", OURS, THEIRS)


def test_replies_never_leave_from_the_alphanumeric_sender(tmp_path):
    cfg = config(["echo"])
    cfg["profiles"]["main"]["alphanumeric_sender_id"] = "ACME"
    with BotTester(cfg, tmp_path=tmp_path) as bot:
        bot.text("hi")
        assert bot.messages(direction="outbound")[0]["from"] == OURS
        mdr = bot.bot.send("+447700900123", "news", profile="main", alphanumeric=True)
        assert bot.bot.store.mdr(mdr)["from"] == "ACME"
        with pytest.raises(ValueError, match="the United States"):
            bot.bot.send(THEIRS, "news", profile="main", alphanumeric=True)


def test_bot_send_normalises_the_recipient_and_refuses_what_is_not_a_number(tmp_path):
    # Telnyx's Alphanumeric Sender ID page: no alphanumeric sender to the US, Canada or Puerto
    # Rico. A recipient without "+" used to slip past that check, and past the outbox's opt-out
    # lookup, which is keyed by E.164.
    cfg = config(["echo"])
    cfg["profiles"]["main"]["alphanumeric_sender_id"] = "ACME"
    with BotTester(cfg, tmp_path=tmp_path) as bot:
        mdr = bot.bot.send("+1 (312) 555-0123", "hi", profile="main")
        assert bot.bot.store.mdr(mdr)["to"] == THEIRS
        for bad in ("3125550123", "call me", ""):
            with pytest.raises(ValueError, match="cannot send to .*not a"):
                bot.bot.send(bad, "hi", profile="main")
        with pytest.raises(ValueError, match="Puerto Rico"):
            bot.bot.send("+1 787 555 0100", "news", profile="main", alphanumeric=True)
        with pytest.raises(ValueError, match="the United States"):  # the sender ID given as from_number
            bot.bot.send("13125550123", "news", profile="main", from_number="ACME")
        with pytest.raises(ValueError, match="cannot opt out '3125550123'"):
            bot.bot.opt_out(None, "3125550123", "a plugin")
        assert bot.bot.opt_out(None, "13125550123", "a plugin") and bot.bot.is_opted_out("main", THEIRS)
        before = len(bot.messages(direction="outbound"))
        with pytest.raises(ValueError, match="cannot send from"):
            bot.bot.send(THEIRS, "hi", profile="main", from_number="3125550100")
        assert len(bot.messages(direction="outbound")) == before


def test_lifecycle_hooks_run_once_around_the_bot(tmp_path):
    events = []

    async def startup(bot):
        bot.plugin_store("lifecycle").put("started", 1)
        events.append("startup")

    def shutdown(bot):
        events.append("shutdown")

    lifecycle = plugin("lifecycle", startup=startup, shutdown=shutdown,
                       handle_message=lambda bot: bot.plugin_store("lifecycle").get("started"))  # fmt: skip
    with BotTester(config(["lifecycle"]), tmp_path=tmp_path, plugins=[lifecycle]) as bot:
        assert events == ["startup"]
        assert bot.text("how many?") == []  # count is 1, not a str/list: the handler fails
        assert bot.messages(direction="inbound")[0]["status"] == "failed"
    assert events == ["startup", "shutdown"]


def test_a_plugins_own_data_is_kept_on_either_engine_and_bot_db_is_sqlite_only(tmp_path, engine):
    def handle_message(bot, message):
        data = bot.plugin_store("counter")
        first = data.add("first", message.text)  # once only, whichever message gets there first
        data.put("seen", data.get("seen", 0) + 1)
        return f"{data.get('first')} {data.get('seen')} {first}"

    counter = plugin("counter", handle_message=handle_message)
    with BotTester(config(["counter"]), tmp_path=tmp_path, plugins=[counter]) as bot:
        assert bot.text("a") == ["a 1 True"]
        assert bot.text("b") == ["a 2 False"]
        data = bot.bot.plugin_store("counter")
        assert data.items() == [("first", "a"), ("seen", 2)] and bot.bot.plugin_store("other").items() == []
        assert data.delete("seen") and not data.delete("seen") and data.items("se") == []
        if engine == "postgres":
            with pytest.raises(RuntimeError, match="plugin_store"):
                bot.bot.db  # noqa: B018  (the property access is what raises)
        else:
            assert bot.bot.db["plugin_data"].count == 1


def test_a_failing_startup_hook_stops_the_bot_from_starting(tmp_path):
    def startup():
        raise RuntimeError("missing API token")

    broken = plugin("broken", startup=startup)
    with pytest.raises(RuntimeError, match="missing API token"):
        with BotTester(config(["echo"]), tmp_path=tmp_path, plugins=[broken]):
            pass


def test_delivery_status_hook_observes_updates_for_its_profile(tmp_path):
    seen = []

    async def delivery_status(status):
        seen.append((status.telnyx_id, status.status, status.failed, status.mdr_id))

    observer = plugin("observer", delivery_status=delivery_status, handle_message=lambda message: "ok")
    fake = FakeTelnyx()
    with BotTester(config(["observer"]), tmp_path=tmp_path, plugins=[observer], telnyx=fake) as bot:
        bot.text("hi")
        reply = bot.messages(direction="outbound")[0]
        update = {"sms_id": reply["telnyx_id"], "status": "delivery_failed", "delivery_status": "delivery_failed",
                  "msg": {"src": OURS, "dst": THEIRS, "body": "ok"}}  # fmt: skip
        assert bot.post(update).status_code == 200
        bot.replies()
        assert seen == [(reply["telnyx_id"], "delivery_failed", True, reply["id"])]
        assert bot.messages(direction="outbound")[0]["status"] == "delivery_failed"
