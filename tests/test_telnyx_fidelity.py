"""What Telnyx really posts, through the real app: V1 statuses in the MDR shape, group messages,
and a status signed by one profile that names another profile's message.

Sources: Telnyx's V1 messaging docs (a status update is signed with the secret of the profile
owning the sending number; the migration guide documents its body as "the current MDR") and
Telnyx's V2 message object (``to`` and ``cc`` list a group message's recipients).
"""

from __future__ import annotations

import base64
import json
import uuid

import httpx
import nacl.signing
import pytest

from bot_core.errors import ConfigError
from bot_core.testing import FakeTelnyx
from bot_core.webhooks import sign_v1, sign_v2

from .harness import OURS, SECRET, THEIRS, Running, ScriptedTelnyx, make_config, plugin

pytestmark = pytest.mark.anyio

SALES_SECRET = "sales-profile-secret"
SALES = "+13125550102"


@pytest.fixture
def anyio_backend():
    return "asyncio"


def echo():
    return plugin("echo", handle_message=lambda message: f"re: {message.text}")


def two_profiles(tmp_path, **telnyx):
    profiles = {"main": {"secret": SECRET, "numbers": [OURS], "plugins": ["echo"]},
                "sales": {"secret": SALES_SECRET, "numbers": [SALES], "plugins": ["echo"]}}  # fmt: skip
    return make_config(tmp_path, ["echo"], profiles=profiles, telnyx=telnyx)


def v1_status(sms_id: str, status: str, *, from_: str, secret: str, shape: str = "mdr") -> tuple[bytes, dict]:
    if shape == "mdr":  # samples/v1-delivery-status-mdr.json
        document = {"sms_id": sms_id, "from": from_, "to": THEIRS, "direction": "outbound", "status": status,
                    "delivery_status": "", "errors": [], "body": {"text": "re: hi", "parts": 1}}  # fmt: skip
    else:  # samples/v1-delivery-status.json
        document = {"sms_id": sms_id, "status": status, "delivery_status": status,
                    "msg": {"src": from_, "dst": THEIRS, "body": "re: hi"}}  # fmt: skip
    body = json.dumps(document).encode()
    return body, {"x-telnyx-signature": sign_v1(body, secret)}


async def test_v1_status_in_the_mdr_shape_moves_the_mdr(tmp_path):
    async with Running(two_profiles(tmp_path), None, echo()) as run:
        await run.text("hi")
        await run.settle()
        (sent,) = run.mdrs(direction="outbound")
        answer = await run.post(*v1_status(sent["telnyx_id"], "delivered", from_=OURS, secret=SECRET))
        assert answer.status_code == 200, answer.text
        assert run.bot.store.mdr(sent["id"])["status"] == "delivered"


@pytest.mark.parametrize("shape", ["mdr", "msg"])
async def test_a_status_signed_by_another_profile_is_refused_and_changes_nothing(tmp_path, shape):
    async with Running(two_profiles(tmp_path), None, echo()) as run:
        await run.text("hi")
        await run.settle()
        (sent,) = run.mdrs(direction="outbound")
        # Signed with sales' secret, naming a sales number, but the message is main's.
        answer = await run.post(*v1_status(sent["telnyx_id"], "delivery_failed", from_=SALES,
                                           secret=SALES_SECRET, shape=shape))  # fmt: skip
        assert answer.status_code == 403
        assert "not sent by messaging profile 'sales'" in answer.json()["error"]
        assert run.bot.store.mdr(sent["id"])["status"] == "queued"
        assert run.bot.store.conn.execute("SELECT count(*) FROM delivery_events").fetchone() == (0,)
        # The same status signed by main's secret is accepted.
        answer = await run.post(*v1_status(sent["telnyx_id"], "delivered", from_=OURS, secret=SECRET, shape=shape))
        assert answer.status_code == 200 and run.bot.store.mdr(sent["id"])["status"] == "delivered"


async def test_an_early_status_signed_by_another_profile_is_not_applied_when_the_send_is_recorded(tmp_path):
    telnyx = ScriptedTelnyx()
    sms_id = str(uuid.uuid4())
    run: Running

    async def answer_after_a_foreign_status(request: httpx.Request) -> httpx.Response:
        # Before bot-core knows the id, "sales" reports a failure for it: kept, not applied.
        early = await run.post(*v1_status(sms_id, "delivery_failed", from_=SALES, secret=SALES_SECRET))
        assert early.status_code == 200 and early.json()["mdr_id"] is None
        return httpx.Response(200, json={"sms_id": sms_id, "status": "queued", "parts": 1})

    telnyx.then(answer_after_a_foreign_status)
    async with Running(two_profiles(tmp_path), telnyx, echo()) as run:
        await run.text("hi")
        await run.settle()
        (sent,) = run.mdrs(direction="outbound")
        assert (sent["telnyx_id"], sent["status"]) == (sms_id, "queued")


async def test_a_v1_status_naming_no_sender_is_refused_without_printing_none(tmp_path):
    async with Running(two_profiles(tmp_path), None, echo()) as run:
        body = json.dumps({"sms_id": "abc", "status": "delivered"}).encode()
        answer = await run.post(body, {"x-telnyx-signature": sign_v1(body, SECRET)})
        assert answer.status_code == 400
        assert "names no sending number" in answer.json()["error"] and "None" not in answer.json()["error"]


async def test_a_group_message_is_answered_at_our_number_wherever_it_is_listed(tmp_path):
    key = nacl.signing.SigningKey.generate()
    public_key = base64.b64encode(bytes(key.verify_key)).decode()
    stranger, friend = "+13125550177", "+13125550188"
    async with Running(two_profiles(tmp_path, public_key=public_key), None, echo()) as run:
        payload = {
            "id": str(uuid.uuid4()),
            "direction": "inbound",
            "type": "MMS",
            "text": "hi all",
            "from": {"phone_number": THEIRS},
            "to": [{"phone_number": stranger}, {"phone_number": OURS}],
            "cc": [{"phone_number": friend}],
        }
        body = json.dumps({"data": {"event_type": "message.received", "id": str(uuid.uuid4()),
                                    "payload": payload}}).encode()  # fmt: skip
        answer = await run.post(body, sign_v2(body, key))
        assert answer.status_code == 200, answer.text
        await run.settle()
        inbound = run.bot.store.inbound(answer.json()["mdr_id"])
        assert (inbound.to_number, inbound.other_recipients) == (OURS, (stranger, friend))
        # The reply goes to the sender alone, from our number: not to the group.
        assert [(c.json["from"], c.json["to"]) for c in run.telnyx.calls] == [(OURS, THEIRS)]
        # A group none of whose numbers is ours is refused, naming them all.
        payload.update(id=str(uuid.uuid4()), to=[{"phone_number": stranger}], cc=[{"phone_number": friend}])
        body = json.dumps({"data": {"event_type": "message.received", "payload": payload}}).encode()
        answer = await run.post(body, sign_v2(body, key))
        assert answer.status_code == 404 and f"none of {stranger}, {friend} is assigned" in answer.json()["error"]


# Telnyx's OpenAPI spec (team-telnyx/openapi, openapi/spec3.yml, CreateMessageRequest):
# messaging_profile_id is "required if sending via number pool or with an alphanumeric sender ID".
TELNYX_PROFILE_ID = "4001a2b3-0000-4000-8000-000000000002"


def v2_alphanumeric(tmp_path, **profile):
    profiles = {"main": {"secret": SECRET, "numbers": [OURS], "plugins": ["echo"], "alphanumeric_sender_id": "ACME",
                         **profile}}  # fmt: skip
    return make_config(
        tmp_path,
        ["echo"],
        profiles=profiles,
        telnyx={"api_version": 2, "api_key": "KEY-v2", "api_base": "http://telnyx.test/v2"},
    )


async def test_v2_sends_from_an_alphanumeric_sender_carry_the_messaging_profile_id(tmp_path):
    telnyx = ScriptedTelnyx()
    answer = {"data": {"id": str(uuid.uuid4()), "to": [{"status": "queued"}], "parts": 1}}
    telnyx.then(httpx.Response(200, json=answer), httpx.Response(200, json=answer))
    async with Running(v2_alphanumeric(tmp_path, telnyx_profile_id=TELNYX_PROFILE_ID), telnyx, echo()) as run:
        run.bot.send("+4915123456789", "Code 1234", profile="main", alphanumeric=True)
        run.bot.send("+4915123456788", "from a number", profile="main")
        await run.settle()
    by_text = {c.json["text"]: c.json for c in telnyx.calls}
    assert by_text["Code 1234"]["from"] == "ACME"
    assert by_text["Code 1234"]["messaging_profile_id"] == TELNYX_PROFILE_ID
    assert "messaging_profile_id" not in by_text["from a number"]  # a number's profile is Telnyx's to know


def test_check_requires_the_telnyx_profile_id_where_v2_alphanumeric_sending_is_configured(tmp_path):
    with pytest.raises(ConfigError, match=r"profiles.main.telnyx_profile_id: is required with alphanumeric_sender_id"):
        v2_alphanumeric(tmp_path)
    v2_alphanumeric(tmp_path, telnyx_profile_id=TELNYX_PROFILE_ID)
    make_config(tmp_path, ["echo"], profiles={"main": {"secret": SECRET, "alphanumeric_sender_id": "ACME"}})  # V1


def test_the_fake_refuses_a_v2_alphanumeric_send_without_it_as_telnyx_does():
    with FakeTelnyx() as fake:
        answer = httpx.post(f"{fake.url}/v2/messages", json={"from": "ACME", "to": "+4915123456789", "text": "x"})
        assert answer.status_code == 400 and "messaging_profile_id is required" in answer.text
        answer = httpx.post(f"{fake.url}/v2/messages", json={"from": "ACME", "to": "+4915123456789", "text": "x",
                                                             "messaging_profile_id": TELNYX_PROFILE_ID})  # fmt: skip
        assert answer.status_code == 200
