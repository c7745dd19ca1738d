"""The fake Telnyx: the faults it can answer with, the webhooks it signs, in-process and on loopback."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from bot_core.errors import SignatureError
from bot_core.testing import FakeTelnyx, TelnyxWebhooks
from bot_core.webhooks import parse_webhook, verify_v1, verify_v2

from .conftest import wait_for
from .inprocess import bot_core

SECRET = "fake-test-secret"
OURS, THEIRS = "+13125550100", "+13125550123"


def post(fake: FakeTelnyx, path: str = "/messages", body: dict | None = None, **headers: str) -> httpx.Response:
    """One request to the in-process fake."""

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=fake.transport, base_url="http://fake") as client:
            return await client.post(path, json=body or {"from": OURS, "to": THEIRS, "body": "hi"},
                                     headers={"x-profile-secret": SECRET, **headers})  # fmt: skip

    return asyncio.run(go())


def test_scripted_5xx_is_answered_once_then_sends_succeed():
    fake = FakeTelnyx()
    fake.fail(503)
    first, second = post(fake), post(fake)
    assert first.status_code == 503 and first.json()["status"] == 503
    assert second.status_code == 200 and second.json()["status"] == "queued"
    assert len(fake.requests) == 2 and len(fake.sent) == 1


def test_rate_limit_answers_429_with_retry_after():
    fake = FakeTelnyx()
    fake.rate_limit(retry_after=2.5, times=2)
    answers = [post(fake) for _ in range(3)]
    assert [a.status_code for a in answers] == [429, 429, 200]
    assert answers[0].headers["retry-after"] == "2.5"


def test_opted_out_recipient_is_refused_with_40300_in_both_versions():
    fake = FakeTelnyx()
    fake.opt_out(THEIRS)
    v1 = post(fake)
    v2 = post(fake, "/v2/messages", {"from": OURS, "to": THEIRS, "text": "hi"})
    assert (v1.status_code, v1.json()["code"]) == (400, "40300")
    assert (v2.status_code, v2.json()["errors"][0]["code"]) == (400, "40300")
    assert fake.sent == []


def test_in_process_timeout_raises_at_once_and_the_request_is_recorded():
    fake = FakeTelnyx()
    fake.timeout()
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        post(fake)
    assert time.monotonic() - started < 1
    assert [r.json["body"] for r in fake.requests] == ["hi"] and fake.sent == []
    assert post(fake).status_code == 200


def test_loopback_timeout_makes_the_client_give_up_and_never_holds_up_stop():
    with FakeTelnyx() as fake:
        fake.timeout()
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(fake.url + "/messages", json={"from": OURS, "to": THEIRS, "body": "hi"}, timeout=0.3)
        ok = httpx.post(fake.url + "/messages", json={"from": OURS, "to": THEIRS, "body": "hi"}, timeout=5)
        assert ok.status_code == 200
        started = time.monotonic()
    assert time.monotonic() - started < 5
    assert len(fake.sent) == 1


def test_stall_answers_late_but_answers():
    fake = FakeTelnyx()
    fake.stall(0.3)
    started = time.monotonic()
    assert post(fake).status_code == 200
    assert time.monotonic() - started >= 0.3


def test_v1_webhooks_are_signed_with_the_profile_secret_of_our_number():
    webhooks = TelnyxWebhooks(secrets={OURS: SECRET})
    inbound = webhooks.message("hello", from_=THEIRS, to=OURS, id="m-1")
    verify_v1(inbound.body, inbound.headers["X-Telnyx-Signature"], SECRET)
    with pytest.raises(SignatureError):
        verify_v1(inbound.body, inbound.headers["X-Telnyx-Signature"], "another-secret")
    parsed = parse_webhook(inbound.body)
    assert (parsed.kind, parsed.message.id, parsed.message.text, parsed.message.to_number) == \
        ("message", "m-1", "hello", OURS)  # fmt: skip
    status = webhooks.status("sms-1", "delivery_failed", from_=OURS, to=THEIRS, error="carrier rejected")
    verify_v1(status.body, status.headers["X-Telnyx-Signature"], SECRET)
    parsed = parse_webhook(status.body).status
    assert (parsed.telnyx_id, parsed.status, parsed.error, parsed.failed) == \
        ("sms-1", "delivery_failed", "carrier rejected", True)  # fmt: skip


def test_v1_webhook_for_a_number_without_a_known_secret_cannot_be_signed():
    with pytest.raises(ValueError, match=r"\+13125550100"):
        TelnyxWebhooks().message("hi", from_=THEIRS, to=OURS)


def test_v2_webhooks_are_signed_with_the_account_key():
    webhooks = TelnyxWebhooks()
    inbound = webhooks.message("héllo 😀", from_=THEIRS, to=OURS, version=2,
                               media=[{"url": "https://example.com/a.jpg", "content_type": "image/jpeg"}])  # fmt: skip
    verify_v2(inbound.body, inbound.headers["telnyx-signature-ed25519"], inbound.headers["telnyx-timestamp"],
              webhooks.public_key)  # fmt: skip
    with pytest.raises(SignatureError):
        verify_v2(inbound.body, inbound.headers["telnyx-signature-ed25519"], inbound.headers["telnyx-timestamp"],
                  TelnyxWebhooks().public_key)  # fmt: skip
    message = parse_webhook(inbound.body).message
    assert (message.text, message.from_number) == ("héllo 😀", THEIRS)
    assert message.media[0].url == "https://example.com/a.jpg"
    assert inbound.payload["data"]["payload"]["encoding"] == "UCS-2"
    sent = webhooks.status("id-1", "sent", from_=OURS, to=THEIRS, version=2)
    final = webhooks.status("id-1", "delivered", from_=OURS, to=THEIRS, version=2)
    assert sent.payload["data"]["event_type"] == "message.sent"
    assert final.payload["data"]["event_type"] == "message.finalized"
    assert parse_webhook(final.body).status.status == "delivered"


def test_webhook_timestamps_follow_the_given_clock():
    webhooks = TelnyxWebhooks(secrets={OURS: SECRET}, clock=lambda: 2_000_000_000)
    inbound = webhooks.message("hi", from_=THEIRS, to=OURS)
    assert inbound.headers["X-Telnyx-Signature"].startswith("t=2000000000,")
    assert webhooks.message("hi", from_=THEIRS, to=OURS, version=2).headers["telnyx-timestamp"] == "2000000000"


def test_report_signs_with_the_secret_the_message_was_sent_with_and_updates_the_record():
    fake = FakeTelnyx()
    sms_id = post(fake).json()["sms_id"]
    report = fake.report(sms_id, "delivered")
    verify_v1(report.body, report.headers["X-Telnyx-Signature"], SECRET)
    assert parse_webhook(report.body).status.from_number == OURS

    async def fetch(secret: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=fake.transport, base_url="http://fake") as client:
            return await client.get(f"/messages/{sms_id}", headers={"x-profile-secret": secret})

    assert asyncio.run(fetch(SECRET)).json()["status"] == "delivered"
    assert asyncio.run(fetch("wrong")).status_code == 404


def test_report_of_a_v2_send_is_a_v2_webhook():
    fake = FakeTelnyx()
    sms_id = post(fake, "/v2/messages", {"from": OURS, "to": THEIRS, "text": "hi"}).json()["data"]["id"]
    assert fake.report(sms_id, "delivered").payload["data"]["event_type"] == "message.finalized"


def test_management_api_checks_the_api_key_and_validates_patches():
    fake = FakeTelnyx(api_key="KEY")
    fake.add_profile("p-1")

    async def call(method: str, path: str, key: str = "KEY", body: dict | None = None) -> httpx.Response:
        async with httpx.AsyncClient(transport=fake.transport, base_url="http://fake/v2") as client:
            return await client.request(method, path, json=body, headers={"authorization": f"Bearer {key}"})

    assert asyncio.run(call("GET", "/messaging_profiles/p-1", key="wrong")).status_code == 401
    assert asyncio.run(call("GET", "/messaging_profiles/p-2")).status_code == 404
    bad = asyncio.run(call("PATCH", "/messaging_profiles/p-1", body={"webhook_url": "not a url"}))
    assert bad.status_code == 422 and "webhook_url" in bad.json()["errors"][0]["detail"]
    good = asyncio.run(call("PATCH", "/messaging_profiles/p-1", body={"webhook_url": "https://bot.example.com/x"}))
    assert good.json()["data"]["webhook_url"] == "https://bot.example.com/x"
    assert fake.profiles["p-1"]["webhook_url"] == "https://bot.example.com/x"


def test_a_real_server_gets_duplicate_and_out_of_order_webhooks_from_the_fake(server_factory, fake_telnyx_server):
    fake = fake_telnyx_server
    server = server_factory(f"""
[bot]
database = "bot.db"
public_url = "https://bot.example.com"

[telnyx]
api_base = "{fake.url}"
public_key = "{fake.webhooks.public_key}"

[profiles.support]
secret = "{SECRET}"
numbers = ["{OURS}"]
plugins = ["echo"]
""").start()
    url = server.url + "/webhooks/telnyx"
    fake.webhooks.secrets[OURS] = SECRET
    first = fake.webhooks.message("one", from_=THEIRS, to=OURS)
    second = fake.webhooks.message("two", from_=THEIRS, to=OURS, version=2)
    answers = fake.deliver(url, first, second, first, second)
    assert [a.status_code for a in answers] == [200] * 4
    assert [a.json().get("duplicate", False) for a in answers] == [False, False, True, True]
    wait_for(server.settled)
    assert [r.json["body"] for r in fake.sent] == ["echo one #1", "echo two #2"]

    sms_id = next(k for k, m in fake.messages.items() if m["msg"]["body"] == "echo one #1")
    delivered, sent = fake.report(sms_id, "delivered"), fake.report(sms_id, "sent")
    assert [a.status_code for a in fake.deliver(url, delivered, sent, delivered)] == [200] * 3

    out = bot_core("messages", "--config", str(server.config), "--json", "--direction", "outbound")
    assert out.returncode == 0, out.stderr
    rows = {row["text"]: row for row in map(json.loads, out.stdout.splitlines())}
    assert rows["echo one #1"]["status"] == "delivered"  # a late "sent" never moves it back
    assert rows["echo two #2"]["status"] == "queued"
