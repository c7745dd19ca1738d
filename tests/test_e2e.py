"""End to end: `bot-core serve` as a real process, a fake Telnyx V1 API as a real server."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from bot_core.webhooks import sign_v1

from .conftest import sample, wait_for
from .inprocess import bot_core

SECRET = "support-secret-e2e"
OTHER_SECRET = "sales-secret-e2e"


def config_text(fake_url: str, database: str = "${BOT_CORE_DATABASE:-bot.db}", extra: str = "") -> str:
    return f"""
[bot]
database = "{database}"
public_url = "https://bot.example.com"

[telnyx]
api_base = "{fake_url}"

[profiles.support]
secret = "${{SUPPORT_SECRET:-{SECRET}}}"
numbers = ["+13125550100"]
plugins = ["echo"]

[profiles.sales]
secret = "{OTHER_SECRET}"
numbers = ["+13125550101"]
plugins = ["echo"]

[profiles.sales.plugin_config.echo]
prefix = "Sales heard: "

[profiles.closed]
enabled = false
secret = "closed-secret"
numbers = ["+13125550102"]
{extra}
"""


def signed(payload: dict, secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    return body, {"X-Telnyx-Signature": sign_v1(body, secret)}


def inbound(text: str, *, sms_id: str, to: str = "+13125550100", from_: str = "+13125550123") -> dict:
    return {**sample("v1-inbound.json"), "sms_id": sms_id, "body": text, "to": to, "from": from_}


def messages_json(config) -> list[dict]:
    out = bot_core("messages", "--config", str(config), "--json")
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_reply_leaves_from_the_receiving_number_with_its_profile_secret(server_factory, fake_telnyx_server):
    server = server_factory(config_text(fake_telnyx_server.url)).start()
    response = server.post(*signed(sample("v1-inbound.json")))
    assert response.status_code == 200, response.text
    request = wait_for(lambda: fake_telnyx_server.sent and fake_telnyx_server.sent[0])
    assert request.method == "POST"
    assert request.path == "/messages"
    assert request.headers["x-profile-secret"] == SECRET
    assert request.json == {
        "from": "+13125550100",
        "to": "+13125550123",
        "body": "echo Hi, is the store open today? #1",
        "delivery_status_webhook_url": "https://bot.example.com/webhooks/telnyx",
    }
    # A second profile's number answers with that profile's secret and plugin settings.
    server.post(*signed(inbound("hello", sms_id="s-2", to="+13125550101"), OTHER_SECRET))
    second = wait_for(lambda: len(fake_telnyx_server.sent) > 1 and fake_telnyx_server.sent[1])
    assert second.headers["x-profile-secret"] == OTHER_SECRET
    assert second.json["from"] == "+13125550101"
    assert second.json["body"] == "Sales heard: hello #1"
    server.stop()
    assert SECRET not in server.log and OTHER_SECRET not in server.log


def test_state_mdrs_and_statuses_survive_a_restart(server_factory, fake_telnyx_server, tmp_path):
    server = server_factory(config_text(fake_telnyx_server.url)).start()
    server.post(*signed(inbound("one", sms_id="m-1")))
    wait_for(lambda: len(fake_telnyx_server.sent) == 1)
    assert server.stop() in (0, -15)  # uvicorn re-raises SIGTERM after a clean shutdown
    assert "bot-core stopped" in server.log
    server.start()
    server.post(*signed(inbound("two", sms_id="m-2")))
    wait_for(lambda: len(fake_telnyx_server.sent) == 2)
    assert fake_telnyx_server.sent[1].json["body"] == "echo two #2"  # the counter survived
    # Telnyx's delivery status webhook moves the outbound MDR on.
    sms_id = next(iter(fake_telnyx_server.messages))
    first_reply = next(k for k, v in fake_telnyx_server.messages.items() if v["msg"]["body"] == "echo one #1")
    status = {**sample("v1-delivery-status.json"), "sms_id": first_reply}
    assert server.post(*signed(status)).status_code == 200
    server.stop()
    rows = messages_json(tmp_path / "bot.toml")
    assert [r["text"] for r in rows] == ["echo two #2", "two", "echo one #1", "one"]
    assert set(rows[0]) >= {
        "id",
        "direction",
        "profile",
        "from",
        "to",
        "text",
        "status",
        "telnyx_id",
        "created_at",
        "updated_at",
    }
    by_text = {r["text"]: r for r in rows}
    assert by_text["echo one #1"]["status"] == "delivered"
    assert by_text["echo one #1"]["telnyx_id"] == first_reply
    assert by_text["echo two #2"]["status"] == "queued"
    assert by_text["one"]["direction"] == "inbound" and by_text["one"]["status"] == "handled"
    assert sms_id in fake_telnyx_server.messages


def test_bad_webhooks_are_refused_and_leave_no_trace(server_factory, fake_telnyx_server, tmp_path):
    server = server_factory(config_text(fake_telnyx_server.url)).start()
    body, headers = signed(inbound("hello", sms_id="genuine-1"))
    cases = [
        (b"not json", headers, 400),
        (body, {}, 401),
        (body, {"X-Telnyx-Signature": sign_v1(body, "wrong-secret")}, 401),
        (body, {"X-Telnyx-Signature": sign_v1(body, SECRET, timestamp=1_000_000_000)}, 401),
        (json.dumps({"to": "+13125550100", "body": "x"}).encode(), headers, 400),
        (b"{" + b" " * 70_000 + b"}", headers, 413),
    ]
    for raw, hdrs, expected in cases:
        response = server.post(raw, hdrs)
        assert response.status_code == expected, (raw[:40], response.text)
        assert response.json()["error"]
    unknown = inbound("hello", sms_id="x-1", to="+13125550199")
    response = server.post(*signed(unknown))
    assert response.status_code == 404 and "+13125550199" in response.json()["error"]
    # The genuine message, sent after all that, is processed normally, once.
    assert server.post(body, headers).status_code == 200
    wait_for(lambda: fake_telnyx_server.sent)
    assert server.post(body, headers).json()["duplicate"] is True
    server.stop()
    rows = messages_json(tmp_path / "bot.toml")
    assert [(r["direction"], r["text"]) for r in rows] == [("outbound", "echo hello #1"), ("inbound", "hello")]
    assert len(fake_telnyx_server.sent) == 1
    assert "no messaging profile lists that number" in server.log


def test_message_to_a_disabled_profile_is_recorded_but_reaches_no_plugin(server_factory, fake_telnyx_server, tmp_path):
    server = server_factory(config_text(fake_telnyx_server.url)).start()
    response = server.post(*signed(inbound("anyone?", sms_id="c-1", to="+13125550102"), "closed-secret"))
    assert response.status_code == 200
    assert response.json()["handled"] is False
    # Its own profile's secret is what verifies it.
    bad = server.post(*signed(inbound("anyone?", sms_id="c-2", to="+13125550102"), SECRET))
    assert bad.status_code == 401
    server.stop()
    rows = messages_json(tmp_path / "bot.toml")
    assert [(r["text"], r["status"]) for r in rows] == [("anyone?", "ignored")]
    assert fake_telnyx_server.sent == []
    assert "messaging profile 'closed' is disabled" in server.log


def test_healthz_and_metrics(server_factory, fake_telnyx_server):
    server = server_factory(config_text(fake_telnyx_server.url)).start()
    assert httpx.get(server.url + "/healthz").json() == {"ok": True}
    server.post(*signed(inbound("hi", sms_id="h-1")))
    wait_for(lambda: fake_telnyx_server.sent)
    metrics = httpx.get(server.url + "/metrics").text
    assert 'bot_core_webhooks_total{kind="message",outcome="200"} 1.0' in metrics
    server.stop()


def test_healthz_answers_every_one_of_a_burst(server_factory, fake_telnyx_server):
    """Requests arriving while the write probe runs share it; one that starts the next probe
    must not make those still waiting read its unfinished result (that was a 500)."""
    server = server_factory(config_text(fake_telnyx_server.url)).start()

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            answers = await asyncio.gather(*(client.get("/healthz") for _ in range(100)))
        return [answer.status_code for answer in answers]

    for _ in range(3):
        assert set(asyncio.run(burst())) == {200}
    server.stop()


@pytest.mark.parametrize("use_env", [True, False])
def test_secret_from_environment(server_factory, fake_telnyx_server, monkeypatch, use_env):
    secret = "from-the-environment" if use_env else SECRET
    if use_env:
        monkeypatch.setenv("SUPPORT_SECRET", secret)
    server = server_factory(config_text(fake_telnyx_server.url)).start()
    assert server.post(*signed(inbound("hi", sms_id="e-1"), secret)).status_code == 200
    request = wait_for(lambda: fake_telnyx_server.sent and fake_telnyx_server.sent[0])
    assert request.headers["x-profile-secret"] == secret
    server.stop()
