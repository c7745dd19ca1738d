"""The dispatcher: duplicates, per-conversation order, parallel conversations, plugin faults."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import sqlite3
import time
import uuid

import nacl.signing
import pytest

from bot_core import Reply
from bot_core.store import FAILED, HANDLED, RECEIVED
from bot_core.webhooks import sign_v2

from .harness import OURS, THEIRS, Running, ScriptedTelnyx, eventually, make_config, plugin, v1_inbound

# Each test runs on both engines (the config names $BOT_CORE_DATABASE).
pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("database")]


@pytest.fixture
def anyio_backend():
    return "asyncio"


def counting_echo(calls: list):
    async def handle_message(message, conversation):
        calls.append(message.text)
        await asyncio.sleep(0)
        n = conversation.state.get("n", 0) + 1
        conversation.state["n"] = n
        return f"{message.text} #{n}"

    return plugin("echo", handle_message=handle_message)


# -- duplicates ---------------------------------------------------------------------------


async def test_same_message_five_times_in_a_row_gives_one_plugin_call_and_one_reply(tmp_path):
    calls: list[str] = []
    async with Running(make_config(tmp_path, ["echo"]), None, counting_echo(calls)) as run:
        body, headers = v1_inbound("hello", sms_id="dup-1")
        answers = [(await run.post(body, headers)).json() for _ in range(5)]
        await run.settle()
        assert answers[0]["mdr_id"] and not answers[0].get("duplicate")
        assert all(a == {"ok": True, "kind": "message", "duplicate": True} for a in answers[1:])
        assert calls == ["hello"]
        assert run.telnyx.texts() == ["hello #1"]
        assert len(run.mdrs(direction="inbound")) == 1


async def test_same_message_five_times_at_once_gives_one_plugin_call_and_one_reply(tmp_path):
    calls: list[str] = []
    async with Running(make_config(tmp_path, ["echo"]), None, counting_echo(calls)) as run:
        body, headers = v1_inbound("hello", sms_id="dup-2")
        answers = await asyncio.gather(*(run.post(body, headers) for _ in range(5)))
        await run.settle()
        assert [a.status_code for a in answers] == [200] * 5
        assert sum(1 for a in answers if not a.json().get("duplicate")) == 1
        assert calls == ["hello"]
        assert run.telnyx.texts() == ["hello #1"]


async def test_duplicate_after_a_restart_is_not_handled_again(tmp_path):
    calls: list[str] = []
    async with Running(make_config(tmp_path, ["echo"]), None, counting_echo(calls)) as run:
        body, _ = v1_inbound("hello", sms_id="dup-3")
        await run.text("hello", sms_id="dup-3")
        await run.settle()
        await run.restart()
        for _ in range(5):  # Telnyx signs each retry afresh
            _, headers = v1_inbound("hello", sms_id="dup-3")
            assert (await run.post(body, headers)).json()["duplicate"] is True
        await run.settle()
        assert calls == ["hello"]
        assert run.telnyx.texts() == ["hello #1"]


async def test_v2_redelivery_with_a_new_event_id_and_attempt_is_a_duplicate(tmp_path):
    key = nacl.signing.SigningKey.generate()
    config = make_config(tmp_path, ["echo"], telnyx={"public_key": base64.b64encode(bytes(key.verify_key)).decode()})
    calls: list[str] = []
    async with Running(config, None, counting_echo(calls)) as run:

        def event(attempt: int) -> tuple[bytes, dict[str, str]]:
            body = json.dumps({
                "data": {"record_type": "event", "id": str(uuid.uuid4()), "event_type": "message.received",
                         "occurred_at": "2024-01-01T00:00:00Z",
                         "payload": {"id": "v2-message-1", "direction": "inbound", "type": "SMS",
                                     "from": {"phone_number": THEIRS}, "to": [{"phone_number": OURS}],
                                     "text": "over v2"}},
                "meta": {"attempt": attempt, "delivered_to": "https://bot.example.com/webhooks/telnyx"},
            }).encode()  # fmt: skip
            return body, sign_v2(body, key)

        sequential = [(await run.post(*event(attempt))).json() for attempt in (1, 2, 3)]
        concurrent = await asyncio.gather(*(run.post(*event(attempt)) for attempt in (4, 5)))
        await run.settle()
        assert [a.get("duplicate", False) for a in sequential] == [False, True, True]
        assert all(a.json()["duplicate"] for a in concurrent)
        assert calls == ["over v2"]
        assert run.telnyx.texts() == ["over v2 #1"]


# -- order and parallelism ----------------------------------------------------------------


async def test_one_conversation_is_handled_one_message_at_a_time_in_arrival_order(tmp_path):
    active, seen, peak = set(), [], [0]
    rng = random.Random(7)

    async def handle_message(message, conversation):
        key = message.from_number
        assert key not in active, "two messages of one conversation were handled at once"
        active.add(key)
        peak[0] = max(peak[0], len(active))
        await asyncio.sleep(rng.uniform(0, 0.01))  # a race would show here
        n = conversation.state.get("n", 0) + 1
        conversation.state["n"] = n
        seen.append((key, message.text))
        active.discard(key)
        return [f"{message.text} reply {n}a", f"{message.text} reply {n}b"]

    telnyx = ScriptedTelnyx()
    # Slow and failing sends must not reorder a conversation's replies.
    telnyx.then(500, 503, lambda r: asyncio.sleep(0.02), 500)
    customers = ["+13125550131", "+13125550132", "+13125550133"]
    async with Running(
        make_config(tmp_path, ["ordered"]), telnyx, plugin("ordered", handle_message=handle_message)
    ) as run:
        for i in range(12):
            for customer in customers:
                await run.text(f"m{i}", from_=customer)
        await run.settle()
        for customer in customers:
            assert [text for key, text in seen if key == customer] == [f"m{i}" for i in range(12)]
            expected = [f"m{i} reply {i + 1}{part}" for i in range(12) for part in "ab"]
            assert telnyx.texts(to=customer) == expected
            assert run.bot.store.conversation("main", OURS, customer).state == {"n": 12}
        assert peak[0] > 1, "different conversations should have been handled concurrently"


async def test_a_slow_plugin_call_holds_up_neither_other_conversations_nor_the_webhook(tmp_path):
    answered = asyncio.Event()  # the slow service answers only when the test says so

    async def handle_message(message):
        if message.text == "slow":
            await answered.wait()  # an HTTP call to a slow service
        return f"re: {message.text}"

    config = make_config(tmp_path, ["slow"], bot={"plugin_timeout": "60s"})  # slow, not too slow, however loaded
    async with Running(config, None, plugin("slow", handle_message=handle_message)) as run:
        await run.text("slow", from_="+13125550140")
        for i in range(20):  # each webhook is answered while the slow call is still waiting...
            assert (await run.text(f"fast {i}", from_=f"+131255501{50 + i}")).status_code == 200
        await eventually(lambda: len(run.telnyx.texts()) == 20, timeout=10)  # ...and so is each reply
        assert "re: slow" not in run.telnyx.texts()
        answered.set()
        await run.settle()
        assert run.telnyx.texts()[-1] == "re: slow"


async def test_conversations_are_handled_concurrently(tmp_path):
    waiting, everyone_in = [], asyncio.Event()

    async def handle_message(message):
        waiting.append(message.from_number)
        if len(waiting) == 30:
            everyone_in.set()
        await everyone_in.wait()  # handled one after another, the first call would wait forever
        return "done"

    async with Running(make_config(tmp_path, ["wait"]), None, plugin("wait", handle_message=handle_message)) as run:
        for i in range(30):
            await run.text("hi", from_=f"+131255502{i:02d}")
        await asyncio.wait_for(everyone_in.wait(), 10)
        await run.settle()
        assert len(run.telnyx.texts()) == 30


# -- plugin faults ------------------------------------------------------------------------


def state_spoiler(name: str, fault):
    async def handle_message(message, conversation):
        conversation.state["n"] = conversation.state.get("n", 0) + 1
        conversation.state["spoiled"] = True
        if message.text == "fail":
            await fault()
        return f"ok #{conversation.state['n']}"

    return plugin(name, handle_message=handle_message)


async def _raise():
    raise ValueError("the plugin broke")


async def _hang():
    await asyncio.sleep(30)


async def _upstream_timeout():
    raise TimeoutError("the weather service took too long")


@pytest.mark.parametrize(
    ("fault", "reason"),
    [(_raise, "plugin 'fragile' failed: ValueError: the plugin broke"),
     (_hang, "plugin 'fragile' failed: TimeoutError: timed out after 0.2s"),
     (_upstream_timeout, "plugin 'fragile' failed: TimeoutError: the weather service took too long")],
    ids=["raises", "times out", "raises its own timeout"],
)  # fmt: skip
async def test_a_failing_plugin_is_isolated(tmp_path, caplog, fault, reason):
    config = make_config(tmp_path, ["fragile"], bot={"plugin_timeout": "200ms", "fallback_reply": "Sorry, try later."})
    async with Running(config, None, state_spoiler("fragile", fault)) as run:
        await run.text("hello")
        await run.settle()
        with caplog.at_level(logging.ERROR, logger="bot_core"):
            failing = await run.text("fail")
            await run.text("hi", from_="+13125550177")  # another conversation carries on meanwhile
            await run.settle()
        mdr = run.bot.store.mdr(failing.json()["mdr_id"])
        assert (mdr["status"], mdr["error"]) == (FAILED, reason)
        assert run.bot.store.conversation("main", OURS, THEIRS).state == {"n": 1, "spoiled": True}
        assert run.telnyx.texts(to=THEIRS) == ["ok #1", "Sorry, try later."]
        assert run.telnyx.texts(to="+13125550177") == ["ok #1"]
        (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert "'fragile'" in record.getMessage()
        trace = logging.Formatter().formatException(record.exc_info)
        assert "handle_message" in trace and fault.__name__ in trace  # the plugin's own frames
        await run.text("again")
        await run.settle()
        assert run.telnyx.texts(to=THEIRS)[-1] == "ok #2"


async def test_a_blocking_def_plugin_past_its_timeout_fails_the_message(tmp_path):
    def handle_message(message, conversation):
        conversation.state["touched"] = True
        time.sleep(0.3)
        return "too late"

    config = make_config(tmp_path, ["blocking"], bot={"plugin_timeout": "100ms"})
    async with Running(config, None, plugin("blocking", handle_message=handle_message)) as run:
        mdr_id = (await run.text("hi")).json()["mdr_id"]
        await run.settle()
        mdr = run.bot.store.mdr(mdr_id)
        assert mdr["status"] == FAILED and "past its 0.1s timeout" in mdr["error"]
        assert run.telnyx.texts() == []
        assert run.bot.store.conversation("main", OURS, THEIRS).state == {}


@pytest.mark.parametrize("bad", [Reply(None), [Reply("ok"), 42], {"text": "hi"}, Reply("x" * 5000)],
                         ids=["reply-without-text", "list-with-a-number", "dict", "too-many-parts"])  # fmt: skip
async def test_a_plugin_returning_something_unsendable_is_recorded_not_stuck(tmp_path, bad):
    async with Running(make_config(tmp_path, ["odd"]), None, plugin("odd", handle_message=lambda: bad)) as run:
        mdr_id = (await run.text("hi")).json()["mdr_id"]
        await run.settle()
        assert run.bot.store.mdr(mdr_id)["status"] in (FAILED, HANDLED)
        assert run.bot.store.pending_inbound() == []
        assert run.telnyx.texts() == []
        # The next start finds nothing left to do.
        await run.restart()
        assert run.bot.store.pending_inbound() == []


async def test_a_plugin_call_cut_off_by_a_stop_is_made_again_at_the_next_start(tmp_path):
    calls: list[str] = []
    release = asyncio.Event()

    async def handle_message(message, conversation):
        calls.append(message.text)
        conversation.state["n"] = conversation.state.get("n", 0) + 1
        if len(calls) == 1:
            await release.wait()
        return f"{message.text} #{conversation.state['n']}"

    config = make_config(tmp_path, ["gate"], bot={"shutdown_grace": "100ms"})
    async with Running(config, None, plugin("gate", handle_message=handle_message)) as run:
        mdr_id = (await run.text("first")).json()["mdr_id"]
        await run.text("second")
        await eventually(lambda: calls)
        await run.restart()  # the grace runs out while the first call waits
        await run.settle()
        assert calls == ["first", "first", "second"]
        assert run.telnyx.texts() == ["first #1", "second #2"]
        assert run.bot.store.mdr(mdr_id)["status"] == HANDLED
        assert run.mdrs(direction="inbound", status=RECEIVED) == []


async def test_an_unexpected_error_gives_the_message_back_to_be_handled_again(tmp_path, caplog, monkeypatch):
    """A bug (not a passing store failure) in recording an outcome: the message is not dropped
    from memory and stranded; after a pause it is claimed and handled again."""
    calls: list[str] = []

    def handle_message(message):
        calls.append(message.text)
        return "ok"

    config = make_config(tmp_path, ["once"], bot={"poll_interval": "50ms"})
    async with Running(config, None, plugin("once", handle_message=handle_message)) as run:
        finish = run.bot.store.finish_inbound

        def broken_once(*args, **kwargs):
            monkeypatch.setattr(run.bot.store, "finish_inbound", finish)
            raise sqlite3.IntegrityError("a bug")

        monkeypatch.setattr(run.bot.store, "finish_inbound", broken_once)
        mdr_id = (await run.text("hi")).json()["mdr_id"]
        await run.settle()
        assert calls == ["hi", "hi"] and run.telnyx.texts() == ["ok"]
        assert run.bot.store.mdr(mdr_id)["status"] == HANDLED
        assert "unexpected error in inbound work" in caplog.text
