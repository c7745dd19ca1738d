"""The promise end to end, on a real `bot-core serve`: duplicates at the same instant, and SQLite
shared with CLI processes while the server is under load."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from bot_core.webhooks import sign_v1

from .conftest import rows, wait_for
from .harness import Running, ScriptedTelnyx, eventually, make_config, plugin, v1_inbound
from .test_e2e import SECRET, config_text, inbound, signed

# Each test runs on both engines (the config names $BOT_CORE_DATABASE).
pytestmark = pytest.mark.usefixtures("database")


def test_five_deliveries_at_the_same_instant_give_one_reply(server_factory, fake_telnyx_server):
    server = server_factory(config_text(fake_telnyx_server.url)).start()
    barrier = threading.Barrier(5)

    def deliver(_: int) -> dict:
        body, headers = signed(inbound("at once", sms_id="same-instant"))  # each signed afresh, as Telnyx does
        with httpx.Client(timeout=10) as client:
            barrier.wait()
            response = client.post(server.url + "/webhooks/telnyx", content=body,
                                   headers={"content-type": "application/json", **headers})  # fmt: skip
        return response.json()

    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(deliver, range(5)))
    for _ in range(5):  # and five more, one after another
        answers.append(server.post(*signed(inbound("at once", sms_id="same-instant"))).json())
    wait_for(server.settled)
    server.stop()
    assert sum(1 for a in answers if not a.get("duplicate")) == 1
    assert [r.json["body"] for r in fake_telnyx_server.sent] == ["echo at once #1"]


WRITER = """
import sys
from bot_core.store import OutboundDraft, open_store
store = open_store(sys.argv[1])
for i in range(200):
    with store.transaction():  # a big transaction: the server must wait for it, not fail
        for j in range(20):
            store.set_opted_out("support", f"+1312556{i:02d}{j:02d}", True, "cli")
    store.add_outbound(OutboundDraft("support", "+13125550100", "+13125550177", f"cli {i}"))
store.close()
"""


@pytest.mark.slow  # a soak: 40 s of concurrent writers
def test_cli_processes_writing_beside_a_loaded_server_never_see_database_is_locked(
    server_factory, fake_telnyx_server, tmp_path, database
):
    server = server_factory(config_text(fake_telnyx_server.url)).start()
    statuses: list[int] = []

    def texter(customer: int) -> None:
        with httpx.Client(timeout=30) as client:
            for i in range(40):
                body = json.dumps(
                    inbound(f"load {i}", sms_id=f"load-{customer}-{i}", from_=f"+131255502{customer:02d}")
                ).encode()
                response = client.post(server.url + "/webhooks/telnyx", content=body,
                                       headers={"content-type": "application/json",
                                                "X-Telnyx-Signature": sign_v1(body, SECRET)})  # fmt: skip
                statuses.append(response.status_code)

    threads = [threading.Thread(target=texter, args=(c,)) for c in range(8)]
    for thread in threads:
        thread.start()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(database)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
    commands = []
    for i in range(4):  # the real CLI, reading and queueing beside the server
        commands.append(
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bot_core",
                    "send",
                    "--config",
                    str(tmp_path / "bot.toml"),
                    "--profile",
                    "support",
                    "--to",
                    "+13125550188",
                    "--wait",
                    "10s",
                    f"proactive {i}",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
        )
        commands.append(subprocess.run(
            [sys.executable, "-m", "bot_core", "messages", "--config", str(tmp_path / "bot.toml"), "--json"],
            capture_output=True, text=True, timeout=60))  # fmt: skip
    output, _ = writer.communicate(timeout=120)
    for thread in threads:
        thread.join()
    wait_for(lambda: len(fake_telnyx_server.sent) >= 8 * 40 + 200 + 4, timeout=60)
    server.stop()
    assert writer.returncode == 0, output
    assert statuses == [200] * 320
    for command in commands:
        assert command.returncode == 0, command.stdout + command.stderr
        assert "locked" not in command.stdout + command.stderr
    assert "locked" not in output
    assert "database is locked" not in server.log and "Traceback" not in server.log
    sent = [(r.json["to"], r.json["body"]) for r in fake_telnyx_server.sent]
    assert len(sent) == len(set(sent)) == 8 * 40 + 200 + 4  # each once
    assert {("+13125550188", f"proactive {i}") for i in range(4)} <= set(sent)
    assert ("+13125550207", "echo load 39 #40") in sent


# -- in-process ---------------------------------------------------------------------------


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_a_database_failure_answers_503_so_telnyx_delivers_again(tmp_path, caplog, monkeypatch):
    async with Running(make_config(tmp_path, ["echo"]), None, plugin("echo", handle_message=lambda: "hi")) as run:
        body, headers = v1_inbound("hello", sms_id="disk-full")
        store_inbound = run.bot.store.add_inbound

        def failing(*args, **kwargs):
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(run.bot.store, "add_inbound", failing)
        refused = await run.post(body, headers)
        assert refused.status_code == 503 and "deliver it again" in refused.json()["error"]
        assert "database or disk is full" in caplog.text
        monkeypatch.setattr(run.bot.store, "add_inbound", store_inbound)
        assert (await run.post(body, headers)).status_code == 200  # Telnyx's retry
        await run.settle()
        assert run.telnyx.texts() == ["hi"]


# -- plugin effects belong to the outcome ----------------------------------------------------


@pytest.mark.anyio
async def test_a_plugin_that_sends_schedules_and_raises_leaves_nothing_behind(tmp_path):
    def handle_message(bot, message, conversation):
        assert bot.send("+13125550777", "proactive", from_number=message.to_number) is None  # inside a handler
        assert bot.schedule(conversation, delay="1h", text="later") is None
        bot.opt_out(message.profile, "+13125550888", "test")
        conversation.state["touched"] = True
        raise RuntimeError("boom after the effects")

    async with Running(make_config(tmp_path, ["fx"]), None, plugin("fx", handle_message=handle_message)) as run:
        await run.text("hi")
        await run.settle()
        store = run.bot.store
        assert [(m["direction"], m["status"]) for m in run.mdrs()] == [("inbound", "failed")]
        assert rows(store, "SELECT COUNT(*) FROM timers") == [(0,)]
        assert not store.is_opted_out("main", "+13125550888")
        assert store.conversation("main", "+13125550100", "+13125550123").state == {}
        assert run.telnyx.calls == []


@pytest.mark.anyio
async def test_effects_of_a_handled_message_are_committed_with_its_reply(tmp_path):
    def handle_message(bot, message, conversation):
        bot.send("+13125550777", "proactive", from_number=message.to_number)
        bot.schedule(conversation, delay="1h", plugin="fx", name="check")
        bot.schedule(conversation, delay="2h", plugin="fx", name="gone")
        assert bot.cancel_timers(conversation, name="gone") == 1  # the one scheduled just above
        return "reply"

    async with Running(make_config(tmp_path, ["fx"]), None, plugin("fx", handle_message=handle_message)) as run:
        await run.text("hi")
        await run.settle()
        assert sorted(run.telnyx.texts()) == ["proactive", "reply"]
        (timer,) = run.bot.store.timers(run.bot.store.conversation("main", "+13125550100", "+13125550123").id)
        assert timer.name == "check"


# -- max_replies -----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("replies", "sends", "culprit"), [(11, 0, "flood"), (0, 11, "sender"), (5, 6, "flood"), (4, 6, None)]
)
async def test_max_replies_per_message_sends_nothing_past_the_limit(tmp_path, replies, sends, culprit):
    def send_some(bot, message):
        for i in range(sends):
            bot.send("+13125550777", f"send {i}", from_number=message.to_number)

    modules = [plugin("sender", handle_message=send_some),
               plugin("flood", handle_message=lambda: [f"r{i}" for i in range(replies)])]  # fmt: skip
    config = make_config(tmp_path, ["sender", "flood"], bot={"max_replies": 10})
    async with Running(config, None, *modules) as run:
        await run.text("hi")
        await run.settle()
        (inbound,) = run.mdrs(direction="inbound")
        if culprit is None:  # exactly 10: all of them go out
            assert inbound["status"] == "handled" and len(run.telnyx.texts()) == 10
            return
        assert inbound["status"] == "failed" and run.telnyx.calls == []
        assert f"plugin {culprit!r} went over max_replies = 10" in inbound["error"]
        assert run.mdrs(direction="outbound") == []


# -- timers and delivery statuses are claimed units ------------------------------------------


@pytest.mark.anyio
async def test_a_timer_handler_slower_than_the_poll_interval_fires_once(tmp_path):
    calls = []

    async def handle_timer(timer):
        calls.append(timer.id)
        await asyncio.sleep(0.6)  # twelve poll intervals
        return "fired"

    def handle_message(bot, conversation):
        bot.schedule(conversation, delay=0, plugin="slow")

    config = make_config(tmp_path, ["slow"], bot={"poll_interval": "50ms"})
    async with Running(config, None, plugin("slow", handle_message=handle_message, handle_timer=handle_timer)) as run:
        await run.text("hi")
        await eventually(lambda: run.telnyx.texts() == ["fired"], timeout=10)
        await run.settle()
        await asyncio.sleep(0.2)  # four more polls after it fired: still once
        assert len(calls) == 1 and run.telnyx.texts() == ["fired"]
        assert rows(run.bot.store, "SELECT status FROM timers") == [("fired",)]


@pytest.mark.anyio
async def test_delivery_status_hooks_run_in_order_with_plugin_timeout(tmp_path):
    seen = []

    async def delivery_status(status):
        seen.append(status.status)
        if status.status == "sent":
            await asyncio.sleep(3600)  # cut off by plugin_timeout; the next status still comes

    config = make_config(tmp_path, ["obs"], bot={"plugin_timeout": "200ms"})
    async with Running(config, None, plugin("obs", delivery_status=delivery_status)) as run:
        for status in ("queued", "sent", "delivered"):
            body = json.dumps({"sms_id": "out-1", "status": status, "delivery_status": status,
                               "msg": {"src": "+13125550100", "dst": "+13125550123", "body": "x"}}).encode()  # fmt: skip
            assert (
                await run.post(body, {"x-telnyx-signature": sign_v1(body, "in-process-profile-secret")})
            ).status_code == 200
        await run.settle()
        assert seen == ["queued", "sent", "delivered"]
        errors = rows(run.bot.store, "SELECT status, hook, hook_error FROM delivery_events ORDER BY id")
        assert [e[:2] for e in errors] == [("queued", "done"), ("sent", "done"), ("delivered", "done")]
        assert "timed out after 0.2s" in errors[1][2]


@pytest.mark.anyio
async def test_a_reply_waiting_for_a_retry_does_not_hold_up_the_next_message(tmp_path):
    telnyx = ScriptedTelnyx()
    telnyx.then(503)
    config = make_config(tmp_path, ["echo"], sending={"backoff_initial": "1s", "backoff_max": "1s"})
    async with Running(config, telnyx, plugin("echo", handle_message=lambda message: "re: " + message.text)) as run:
        await run.text("one")
        await eventually(lambda: len(telnyx.calls) == 1)  # its first attempt failed: waiting to retry
        await run.text("two")
        await eventually(lambda: [m["status"] for m in run.mdrs(direction="inbound")] == ["handled", "handled"])
        assert len(telnyx.calls) == 1  # "re: two" waits behind "re: one" in their own lane
        await run.settle()
        assert telnyx.texts() == ["re: one", "re: two"]


@pytest.mark.anyio
async def test_two_bots_on_one_database_share_the_work_once_and_in_order(tmp_path):
    """Two processes' worth of bots (two owners) on one SQLite file: any may take any webhook;
    each message is handled by one of them, once, after the one before it in its conversation."""
    calls: list[str] = []

    async def handle_message(message, conversation):
        calls.append(message.id)
        n = conversation.state.get("n", 0) + 1
        conversation.state["n"] = n
        await asyncio.sleep(0.01 * (n % 3))  # uneven handling times invite overtaking
        return f"{message.text} #{n}"

    telnyx = ScriptedTelnyx()
    config = make_config(tmp_path, ["count"])
    module = plugin("count", handle_message=handle_message)
    async with Running(config, telnyx, module) as one, Running(config, telnyx, module) as two:
        customers = [f"+131255506{i:02d}" for i in range(5)]
        for i in range(8):
            for c, customer in enumerate(customers):
                await (one if (i + c) % 2 else two).text(f"m{i}", from_=customer, sms_id=f"{customer}-{i}")
        await eventually(lambda: len(telnyx.accepted) == 40, timeout=30)
        await one.settle()
        await two.settle()
    assert sorted(calls) == sorted(f"{c}-{i}" for c in customers for i in range(8))  # each once
    for customer in customers:
        assert telnyx.texts(to=customer) == [f"m{i} #{i + 1}" for i in range(8)]
