"""The promise end to end, on a real `bot-core serve`: duplicates at the same instant, and SQLite
shared with CLI processes while the server is under load."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from bot_core.webhooks import sign_v1

from .conftest import wait_for
from .harness import Running, make_config, plugin, v1_inbound
from .test_e2e import SECRET, config_text, inbound, signed


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
from bot_core.store import OutboundDraft, Store
store = Store(sys.argv[1])
for i in range(200):
    with store.transaction():  # a big transaction: the server must wait for it, not fail
        for j in range(20):
            store.set_opted_out("support", f"+1312556{i:02d}{j:02d}", True, "cli")
    store.add_outbound(OutboundDraft("support", "+13125550100", "+13125550177", f"cli {i}"))
store.close()
"""


@pytest.mark.slow  # a soak: 40 s of concurrent writers
def test_cli_processes_writing_beside_a_loaded_server_never_see_database_is_locked(
    server_factory, fake_telnyx_server, tmp_path
):
    server = server_factory(config_text(fake_telnyx_server.url)).start()
    database = tmp_path / "bot.db"
    statuses: list[int] = []

    def texter(customer: int) -> None:
        with httpx.Client(timeout=30) as client:
            for i in range(40):
                body = json.dumps(inbound(f"load {i}", sms_id=f"load-{customer}-{i}", from_=f"+131255502{customer:02d}")).encode()
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
        commands.append(subprocess.run(
            [sys.executable, "-m", "bot_core", "send", "--config", str(tmp_path / "bot.toml"), "--profile", "support",
             "--to", "+13125550188", "--wait", "10s", f"proactive {i}"], capture_output=True, text=True, timeout=60))
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
