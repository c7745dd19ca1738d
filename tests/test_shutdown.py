"""Graceful shutdown: SIGTERM stops taking webhooks, drains what is in flight, exits by itself."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time

import httpx
import pytest

from bot_core.store import HANDLED, PENDING, RECEIVED

from .conftest import wait_for
from .harness import Running, ScriptedTelnyx, eventually, make_config, plugin, v1_inbound
from .test_crash import config_text, webhook

CUSTOMER = "+13125550131"


def inbound_status(database, sms_id: str) -> str:
    conn = sqlite3.connect(database)
    try:
        return conn.execute("SELECT status FROM mdrs WHERE telnyx_id = ?", (sms_id,)).fetchone()[0]
    finally:
        conn.close()


def text_until_refused(server, deadline: float = 3.0) -> list[str]:
    """Keep texting until the server stops taking webhooks; returns the texts it still took."""
    end = time.monotonic() + deadline
    taken: list[str] = []
    while time.monotonic() < end:
        text = f"late {len(taken)}"
        try:
            response = server.post(*webhook(text, text.replace(" ", "-"), "+13125550199"))
        except httpx.TransportError:
            return taken
        if response.status_code == 503:
            return taken
        assert response.status_code == 200
        taken.append(text)
        time.sleep(0.02)
    raise AssertionError("the server kept taking webhooks after SIGTERM")


def test_sigterm_finishes_the_plugin_call_in_flight_sends_its_reply_and_exits(
    server_factory, fake_telnyx_server, tmp_path
):
    server = server_factory(config_text(tmp_path, fake_telnyx_server.url, 'shutdown_grace = "5s"', pause=1.0)).start()
    assert server.post(*webhook("first", "s-1", CUSTOMER)).status_code == 200
    assert server.post(*webhook("second", "s-2", CUSTOMER)).status_code == 200  # queued behind it
    wait_for_calls(tmp_path, 1)
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    taken = text_until_refused(server)
    assert server.process.wait(10) in (0, -signal.SIGTERM)
    assert time.monotonic() - started < 5
    assert [r.json["body"] for r in fake_telnyx_server.sent][:1] == ["first #1"]  # sent before it exited
    assert "bot-core stopped" in server.log and "grace ran out" not in server.log
    database = tmp_path / "bot.db"
    assert inbound_status(database, "s-1") == HANDLED
    assert inbound_status(database, "s-2") == RECEIVED  # not started: left for the next start
    server.start()
    expected = ["second #2"] + [f"{text} #{n}" for n, text in enumerate(taken, 1)]
    wait_for(lambda: {r.json["body"] for r in fake_telnyx_server.sent} >= set(expected), timeout=15)
    server.stop()
    mine = [r.json["body"] for r in fake_telnyx_server.sent if r.json["to"] == CUSTOMER]
    assert mine == ["first #1", "second #2"]


def test_sigterm_waits_for_a_send_in_flight(server_factory, fake_telnyx_server, tmp_path):
    server = server_factory(config_text(tmp_path, fake_telnyx_server.url)).start()
    fake_telnyx_server.stall(1.0)
    assert server.post(*webhook("hello", "s-1", CUSTOMER)).status_code == 200
    wait_for_requests(fake_telnyx_server, 1)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(10) in (0, -signal.SIGTERM)
    assert [r.json["body"] for r in fake_telnyx_server.sent] == ["hello #1"]
    conn = sqlite3.connect(tmp_path / "bot.db")
    assert conn.execute("SELECT status FROM mdrs WHERE direction = 'outbound'").fetchone()[0] == "queued"
    conn.close()


def test_sigterm_past_the_grace_exits_anyway_and_the_rest_resumes(server_factory, fake_telnyx_server, tmp_path):
    (tmp_path / "gate").touch()
    server = server_factory(config_text(tmp_path, fake_telnyx_server.url, 'shutdown_grace = "1s"')).start()
    assert server.post(*webhook("block me", "s-1", CUSTOMER)).status_code == 200
    wait_for_calls(tmp_path, 1)
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(10) in (0, -signal.SIGTERM)
    assert time.monotonic() - started < 4
    assert "grace ran out" in server.log
    assert inbound_status(tmp_path / "bot.db", "s-1") == RECEIVED
    (tmp_path / "gate").unlink()
    server.start()
    wait_for_sent(fake_telnyx_server, 1)
    server.stop()
    assert [r.json["body"] for r in fake_telnyx_server.sent] == ["block me #1"]


# -- in-process ---------------------------------------------------------------------------


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_while_stopping_webhooks_get_503_and_in_flight_work_is_finished(tmp_path):
    release = asyncio.Event()

    async def handle_message(message):
        if message.text == "slow":
            await release.wait()
        return [f"{message.text} 1", f"{message.text} 2"]

    telnyx = ScriptedTelnyx()
    config = make_config(tmp_path, ["gate"], bot={"shutdown_grace": "5s"})
    run = Running(config, telnyx, plugin("gate", handle_message=handle_message))
    await run.start()
    await run.text("slow")
    await eventually(lambda: len(run.bot.dispatcher.inbox))  # its plugin call is running
    stopping = asyncio.get_running_loop().create_task(run.bot.stop())
    await asyncio.sleep(0.05)
    refused = await run.post(*v1_inbound("too late", from_="+13125550177"))
    assert refused.status_code == 503 and refused.json()["error"]
    release.set()
    await stopping
    await run.http.aclose()
    assert telnyx.texts() == ["slow 1", "slow 2"]


@pytest.mark.anyio
async def test_a_retry_waiting_out_its_backoff_does_not_hold_up_the_stop(tmp_path):
    telnyx = ScriptedTelnyx()
    telnyx.then(503)
    config = make_config(tmp_path, ["echo"], sending={"backoff_initial": "30s", "backoff_max": "30s"})
    async with Running(config, telnyx, plugin("echo", handle_message=lambda: "hi")) as run:
        await run.text("hello")
        await eventually(lambda: telnyx.calls)
        await asyncio.sleep(0.05)
        started = time.monotonic()
    assert time.monotonic() - started < 1
    conn = sqlite3.connect(tmp_path / "bot.db")
    assert conn.execute("SELECT status FROM mdrs WHERE direction = 'outbound'").fetchone()[0] == PENDING
    conn.close()


def wait_for_calls(tmp_path, n: int) -> None:
    wait_for(lambda: (tmp_path / "calls.txt").exists() and len((tmp_path / "calls.txt").read_text().split()) >= n)


def wait_for_sent(fake, n: int) -> None:
    wait_for(lambda: len(fake.sent) >= n, timeout=15)


def wait_for_requests(fake, n: int) -> None:
    wait_for(lambda: len(fake.requests) >= n)
