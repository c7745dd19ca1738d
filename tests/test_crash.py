"""Crash recovery: `bot-core serve` killed with SIGKILL, restarted, and nothing lost or repeated.

Only a reply whose HTTP request was in flight at the crash may reach Telnyx twice.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest

from bot_core.webhooks import sign_v1

from .conftest import wait_for

SECRET = "crash-test-secret"
OURS = "+13125550100"

GATED_PLUGIN = """
import asyncio
from pathlib import Path
from bot_core import hookimpl

@hookimpl
async def handle_message(message, conversation, config):
    with open(config["calls"], "a") as calls:
        calls.write(message.id + "\\n")
    if message.text.startswith("block"):
        Path(config["started"]).touch()
        while Path(config["gate"]).exists():
            await asyncio.sleep(0.02)
    await asyncio.sleep(config.get("pause", 0))
    n = conversation.state.get("n", 0) + 1
    conversation.state["n"] = n
    return [f"{message.text} #{n}" + suffix for suffix in config.get("suffixes", [""])]
"""


def config_text(tmp_path: Path, fake_url: str, bot: str = "", **plugin_config) -> str:
    plugins_dir = tmp_path / "plugins"
    plugins_dir.mkdir(exist_ok=True)
    (plugins_dir / "gated.py").write_text(GATED_PLUGIN)
    settings = {"calls": str(tmp_path / "calls.txt"), "gate": str(tmp_path / "gate"),
                "started": str(tmp_path / "started"), **plugin_config}  # fmt: skip
    table = "\n".join(f"{key} = {json.dumps(value)}" for key, value in settings.items())
    return f"""
[bot]
database = "bot.db"
plugins_dir = "plugins"
{bot}

[telnyx]
api_base = "{fake_url}"

[sending]
timeout = "60s"
backoff_initial = "100ms"
backoff_max = "200ms"

[profiles.main]
secret = "{SECRET}"
numbers = ["{OURS}"]
plugins = ["gated"]

[profiles.main.plugin_config.gated]
{table}
"""


def webhook(text: str, sms_id: str, customer: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"sms_id": sms_id, "direction": "inbound", "from": customer, "to": OURS, "body": text}).encode()
    return body, {"X-Telnyx-Signature": sign_v1(body, SECRET)}


def statuses(database: Path) -> Counter:
    with sqlite3.connect(database) as conn:
        return Counter(status for (status,) in conn.execute("SELECT status FROM mdrs"))


def rows(database: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(database)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_sigkill_with_unprocessed_messages_and_unsent_replies_loses_nothing(
    server_factory, fake_telnyx_server, tmp_path
):
    fake = fake_telnyx_server
    (tmp_path / "gate").touch()
    server = server_factory(config_text(tmp_path, fake.url, suffixes=["", " again"])).start()
    fake.stall(3600, times=5)  # the first reply of each of five conversations hangs in flight
    posted = []
    for text, customer in [("block a1", "+13125550131"), ("a2", "+13125550131"), ("a3", "+13125550131")]:
        posted.append(webhook(text, "id-" + text.replace(" ", "-"), customer))
    for c in "bcdef":
        for i in (1, 2):
            posted.append(webhook(f"{c}{i}", f"id-{c}{i}", f"+1312555014{'bcdef'.index(c)}"))
    for body, headers in posted:
        assert server.post(body, headers).status_code == 200
    database = tmp_path / "bot.db"
    wait_for(lambda: (tmp_path / "started").exists() and statuses(database)["sending_local"] == 5)
    wait_for(lambda: statuses(database)["handled"] == 10)
    server.stop(signal.SIGKILL)

    at_crash = statuses(database)
    assert at_crash["received"] == 3  # acknowledged, not processed
    assert at_crash["sending_local"] == 5 and at_crash["pending"] == 15  # unsent replies
    in_flight = {text for (text,) in rows(database, "SELECT text FROM mdrs WHERE status = 'sending_local'")}
    assert in_flight == {f"{c}1 #1" for c in "bcdef"}
    assert {r.json["body"] for r in fake.requests} == in_flight  # the only ones Telnyx may have seen

    (tmp_path / "gate").unlink()
    server.start()
    expected = {"+13125550131": ["block a1 #1", "block a1 #1 again", "a2 #2", "a2 #2 again", "a3 #3", "a3 #3 again"]}
    for i, c in enumerate("bcdef"):
        expected[f"+1312555014{i}"] = [f"{c}1 #1", f"{c}1 #1 again", f"{c}2 #2", f"{c}2 #2 again"]
    total = sum(len(texts) for texts in expected.values())
    wait_for(lambda: len(fake.sent) >= total, timeout=20)
    for customer, texts in expected.items():  # every reply, each once, in order
        assert [r.json["body"] for r in fake.sent if r.json["to"] == customer] == texts
    assert "5 send(s) may have reached Telnyx" in server.log  # exactly those whose request had started
    assert "resuming work left before this start: 3 messages, 20 sends" in server.log
    calls = Counter((tmp_path / "calls.txt").read_text().split())
    assert calls["id-block-a1"] == 2  # cut off by the crash, so made again
    assert all(n == 1 for key, n in calls.items() if key != "id-block-a1") and len(calls) == 13

    # Telnyx redelivering any of them now changes nothing.
    for body, _ in posted:
        answer = server.post(body, {"X-Telnyx-Signature": sign_v1(body, SECRET)}).json()
        assert answer["duplicate"] is True
    server.stop()
    assert len(fake.sent) == total
    assert statuses(database) == Counter({"handled": 13, "queued": 26})


@pytest.mark.chaos
def test_sigkill_at_a_random_moment_under_load(server_factory, fake_telnyx_server, tmp_path):
    fake = fake_telnyx_server
    server = server_factory(config_text(tmp_path, fake.url, pause=0.1)).start()
    customers = [f"+131255502{i:02d}" for i in range(20)]
    acked: list[str] = []
    lock = threading.Lock()

    def texter(customer: str) -> None:
        with httpx.Client(timeout=5) as client:
            for i in range(15):
                body, headers = webhook(f"{customer[-2:]}m{i}", f"{customer}-{i}", customer)
                try:
                    response = client.post(server.url + "/webhooks/telnyx", content=body,
                                           headers={"content-type": "application/json", **headers})  # fmt: skip
                except httpx.TransportError:
                    return  # the server died; Telnyx would retry this one later
                assert response.status_code == 200
                with lock:
                    acked.append(f"{customer}-{i}")

    threads = [threading.Thread(target=texter, args=(c,)) for c in customers]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(acked) >= 150 and fake.sent)
    server.stop(signal.SIGKILL)
    for thread in threads:
        thread.join()

    database = tmp_path / "bot.db"
    in_flight = Counter(text for (text,) in rows(database, "SELECT text FROM mdrs WHERE status = 'sending_local'"))
    assert statuses(database)["received"] > 0  # the crash did cut work off
    sent_before = Counter(r.json["body"] for r in fake.sent)
    server.start()
    stored = rows(database, "SELECT telnyx_id, text, from_number FROM mdrs WHERE direction = 'inbound' ORDER BY id")
    assert set(acked) <= {sms_id for sms_id, _, _ in stored}
    expected: list[str] = []
    for customer in customers:
        mine = [text for _, text, sender in stored if sender == customer]
        expected += [f"{text} #{n}" for n, text in enumerate(mine, 1)]
    wait_for(lambda: set(expected) <= {r.json["body"] for r in fake.sent}, timeout=30)
    server.stop()
    sent = Counter(r.json["body"] for r in fake.sent)
    assert set(sent) == set(expected)
    duplicates = {text for text, n in sent.items() if n > 1}
    assert all(sent[text] == 2 and in_flight[text] == 1 and sent_before[text] <= 1 for text in duplicates)
    for customer in customers:  # first deliveries in conversation order
        order = [r.json["body"] for r in fake.sent if r.json["to"] == customer]
        firsts = list(dict.fromkeys(order))
        assert firsts == [t for t in expected if t.startswith(customer[-2:])]
    assert rows(database, "SELECT COUNT(*) FROM mdrs WHERE status NOT IN ('handled', 'queued')") == [(0,)]
