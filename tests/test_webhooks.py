from __future__ import annotations

import base64
import copy
import hashlib
import json
from pathlib import Path

import nacl.signing
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot_core.errors import SignatureError, WebhookError
from bot_core.messages import DeliveryStatus, InboundMessage, Media
from bot_core.webhooks import Webhook, parse_webhook, sign_v1, sign_v2, verify_v1, verify_v2

SAMPLES = Path(__file__).parent / "samples"
SAMPLE_NAMES = sorted(path.name for path in SAMPLES.glob("*.json"))
WEBHOOK_SAMPLES = [
    "v1-inbound.json",
    "v1-delivery-status.json",
    "v1-delivery-status-mdr.json",
    "v2-message-received.json",
    "v2-message-finalized.json",
]

SECRET = "profile-secret-123"
NOW = 1_764_403_200


def sample(name: str) -> dict:
    return json.loads((SAMPLES / name).read_bytes())


def encode(document: object) -> bytes:
    return json.dumps(document).encode()


def refused(document: object) -> str:
    with pytest.raises(WebhookError) as info:
        parse_webhook(document if isinstance(document, bytes) else encode(document))
    assert info.value.status == 400
    return info.value.reason


# V1


def test_v1_inbound_sample_is_a_message():
    webhook = parse_webhook((SAMPLES / "v1-inbound.json").read_bytes())
    assert webhook == Webhook(
        1,
        "message",
        InboundMessage(
            id="8f1f8a5e-3b8e-4d4c-9a39-0c6a8d1f2b11",
            text="Hi, is the store open today?",
            from_number="+13125550123",
            to_number="+13125550100",
            profile=None,
        ),
        None,
    )
    assert webhook.number == "+13125550100"


def test_v1_delivery_status_sample_is_a_status_signed_by_the_sender_profile():
    webhook = parse_webhook((SAMPLES / "v1-delivery-status.json").read_bytes())
    assert webhook == Webhook(
        1,
        "status",
        None,
        DeliveryStatus(
            telnyx_id="2b6c0bd4-4b9f-4e6b-a7e1-5b1f0d2a9c77",
            status="delivered",
            from_number="+13125550100",
            to_number="+13125550123",
        ),
    )
    assert webhook.number == "+13125550100"
    assert not webhook.status.failed


def test_v1_delivery_status_in_the_mdr_shape_is_a_status():
    # Telnyx's messaging migration guide documents the V1 status body as "the current MDR":
    # top-level from/to/status/errors, body an object, no msg (samples/v1-delivery-status-mdr.json).
    webhook = parse_webhook((SAMPLES / "v1-delivery-status-mdr.json").read_bytes())
    assert webhook == Webhook(
        1, "status", None,
        DeliveryStatus("7c1e2f3a-9b8d-4e6f-a1b2-c3d4e5f60718", "sent", "+13125550100", "+13125550123"),
    )  # fmt: skip
    assert webhook.number == "+13125550100"


def test_v1_mdr_shape_failure_carries_telnyx_errors_and_is_told_from_an_inbound_by_its_shape():
    document = sample("v1-delivery-status-mdr.json")
    del document["status"], document["delivery_status"]  # direction and the body object still say "status"
    document.update(delivery_status="delivery_failed", errors=[{"code": "40008", "title": "Undeliverable",
                                                                         "detail": "carrier rejected"}])  # fmt: skip
    status = parse_webhook(encode(document)).status
    assert (status.status, status.error, status.failed) == ("delivery_failed", "carrier rejected", True)
    document = sample("v1-delivery-status-mdr.json")
    document.update(status="delivered", **{"from": "13125550100"})  # Telnyx's digits-only spelling
    assert parse_webhook(encode(document)).status.from_number == "+13125550100"


def test_v1_status_falls_back_to_status_when_delivery_status_is_empty():
    webhook = parse_webhook((SAMPLES / "v1-send-response.json").read_bytes())
    assert webhook.kind == "status"
    assert webhook.status.status == "queued"


def test_v1_status_is_recognised_by_status_field_alone():
    webhook = parse_webhook(encode({"sms_id": "abc", "status": "delivery_failed", "error": "carrier rejected"}))
    assert webhook.status == DeliveryStatus("abc", "delivery_failed", error="carrier rejected")
    assert webhook.status.failed
    assert webhook.number is None


def test_v1_status_keeps_an_alphanumeric_sender_and_normalises_numbers():
    document = sample("v1-delivery-status.json")
    document["msg"] = {"src": "ACME Shop", "dst": "13125550123"}
    status = parse_webhook(encode(document)).status
    assert (status.from_number, status.to_number) == ("ACME Shop", "+13125550123")


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"errors": [{"code": "40001", "title": "Not routable", "detail": "Unreachable"}]}, "Unreachable"),
        ({"errors": [{"title": "Spam"}, "blocked"]}, "Spam; blocked"),
        ({"errors": [], "error": "carrier rejected"}, "carrier rejected"),
        ({"message": "Unknown destination"}, "Unknown destination"),
        ({"errors": 7}, None),
    ],
)
def test_v1_status_error_text(extra, error):
    document = {**sample("v1-delivery-status.json"), "delivery_status": "delivery_failed", **extra}
    assert parse_webhook(encode(document)).status.error == error


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"sms_id": None}, "'sms_id' must be a string"),
        ({"sms_id": ""}, "'sms_id' is empty"),
        ({"delivery_status": 3}, "'delivery_status' must be a string"),
        ({"delivery_status": "", "status": 200}, "'status' must be a string"),
        ({"msg": "+13125550100"}, "'msg' must be an object"),
    ],
)
def test_v1_status_refusals_name_the_field(change, reason):
    assert refused({**sample("v1-delivery-status.json"), **change}) == reason


def test_v1_status_without_sms_id_is_refused():
    document = sample("v1-delivery-status.json")
    del document["sms_id"]
    assert refused(document) == "missing 'sms_id'"


def test_v1_inbound_normalises_numbers_and_allows_an_empty_body():
    message = parse_webhook(encode({"from": "13125550123", "to": "+1 312-555-0100", "body": ""})).message
    assert (message.from_number, message.to_number, message.text) == ("+13125550123", "+13125550100", "")


def test_v1_inbound_without_sms_id_is_identified_by_the_body_hash():
    body = encode({"from": "+13125550123", "to": "+13125550100", "body": "hello"})
    message = parse_webhook(body).message
    assert message.id == "sha256:" + hashlib.sha256(body).hexdigest()
    assert parse_webhook(body).message.id == message.id


def test_v1_inbound_media():
    document = sample("v1-inbound.json")
    document["media"] = [
        {"url": "https://media.example/1.jpg", "content_type": "image/jpeg", "hash_sha256": "ab12", "size": 2048},
        {"url": "https://media.example/2", "size": "big", "content_type": None},
    ]
    assert parse_webhook(encode(document)).message.media == (
        Media("https://media.example/1.jpg", "image/jpeg", "ab12", 2048),
        Media("https://media.example/2"),
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"from": None}, "'from' must be a string"),
        ({"to": 13125550100}, "'to' must be a string"),
        ({"body": ["hi"]}, "'body' must be a string"),
        ({"sms_id": 5}, "'sms_id' must be a string"),
        ({"media": {"url": "x"}}, "'media' must be a list of objects"),
        ({"media": ["https://media.example/1.jpg"]}, "'media[0]' must be an object"),
        ({"media": [{"url": "https://a"}, {"content_type": "image/png"}]}, "'media[1].url' must be a non-empty string"),
    ],
)
def test_v1_inbound_refusals_name_the_field(change, reason):
    assert refused({**sample("v1-inbound.json"), **change}) == reason


@pytest.mark.parametrize("field", ["from", "to", "body"])
def test_v1_inbound_missing_field_is_refused(field):
    document = sample("v1-inbound.json")
    del document[field]
    assert refused(document) == f"missing {field!r}"


@pytest.mark.parametrize("field", ["from", "to"])
def test_v1_inbound_number_without_country_code_is_refused_not_read_as_another_country(field):
    # "3125550123" with a "+" before it would be the Dutch +31 25550123: never rewrite a number
    # Telnyx sent into another country's; "13125550123" has its country code and is read as such.
    reason = refused({**sample("v1-inbound.json"), field: "3125550123"})
    assert reason.startswith(f"'{field}' is not a valid phone number") and "+13125550123" in reason
    message = parse_webhook(encode({**sample("v1-inbound.json"), field: "13125550123"})).message
    assert getattr(message, f"{field}_number") == "+13125550123"


@pytest.mark.parametrize("field", ["from", "to"])
def test_v1_inbound_invalid_number_is_refused(field):
    reason = refused({**sample("v1-inbound.json"), field: "not a number"})
    assert reason.startswith(f"'{field}' is not a valid phone number")


# V2


def test_v2_received_sample_is_a_message():
    webhook = parse_webhook((SAMPLES / "v2-message-received.json").read_bytes())
    assert webhook == Webhook(
        2,
        "message",
        InboundMessage(
            id="84cca175-9755-4859-b67f-4730d7f58aa3",
            text="Hi, is the store open today?",
            from_number="+13125550123",
            to_number="+13125550100",
            profile=None,
            received_at="2025-11-29T08:00:00.000+00:00",
        ),
        None,
        event_id="b301ed3f-1490-491f-995f-6e64e69674d4",
        event_type="message.received",
    )
    assert webhook.number == "+13125550100"


def test_v2_group_message_lists_every_recipient_in_to_and_cc():
    # Telnyx's V2 message object lists a group MMS's recipients in "to" and "cc" arrays.
    document = sample("v2-message-received.json")
    payload = document["data"]["payload"]
    payload["to"] = [
        {"phone_number": "+13125550177", "status": "webhook_delivered"},
        {"phone_number": "+13125550100", "status": "webhook_delivered"},
        {"status": "x"},
        "odd",
    ]
    payload["cc"] = [{"phone_number": "+1 312 555 0188"}, {"phone_number": "+13125550100"}]  # fmt: skip
    message = parse_webhook(encode(document)).message
    assert message.to_number == "+13125550177"
    assert message.other_recipients == ("+13125550100", "+13125550188")


def test_v2_finalized_sample_is_a_status():
    webhook = parse_webhook((SAMPLES / "v2-message-finalized.json").read_bytes())
    assert webhook == Webhook(
        2,
        "status",
        None,
        DeliveryStatus(
            telnyx_id="40385f64-5717-4562-b3fc-2c963f66afa6",
            status="delivered",
            from_number="+13125550100",
            to_number="+13125550123",
        ),
        event_id="4ee8c3a6-4995-4309-a3c6-38e3db9ea4be",
        event_type="message.finalized",
    )


def test_v2_sent_event_is_a_status_with_joined_errors():
    document = sample("v2-message-finalized.json")
    document["data"]["event_type"] = "message.sent"
    payload = document["data"]["payload"]
    payload["to"][0]["status"] = "sending_failed"
    payload["errors"] = [{"code": "40008", "title": "Undeliverable", "detail": "Handset off"}, {"title": "Spam"}]
    status = parse_webhook(encode(document)).status
    assert (status.status, status.error, status.failed) == ("sending_failed", "Handset off; Spam", True)


def test_v2_mms_with_null_text():
    document = sample("v2-message-received.json")
    payload = document["data"]["payload"]
    payload["text"] = None
    payload["media"] = [{"url": "https://media.example/a.png", "content_type": "image/png", "sha256": "ff", "size": 9}]
    message = parse_webhook(encode(document)).message
    assert message.text == ""
    assert message.media == (Media("https://media.example/a.png", "image/png", "ff", 9),)


def test_v2_other_event_types_are_ignored():
    document = {"data": {"id": "evt-1", "event_type": "number_order.complete", "payload": 42}}
    assert parse_webhook(encode(document)) == Webhook(2, "ignored", None, None, "evt-1", "number_order.complete")


_DELETE = object()


def _set(document: dict, path: tuple, value: object) -> dict:
    target = document
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return document


@pytest.mark.parametrize(
    ("name", "path", "value", "reason"),
    [
        ("v2-message-received.json", ("data", "event_type"), 5, "data.event_type must be a string"),
        ("v2-message-received.json", ("data", "payload"), _DELETE, "data.payload is missing"),
        ("v2-message-received.json", ("data", "payload"), [], "data.payload must be an object"),
        ("v2-message-received.json", ("data", "payload", "id"), _DELETE, "data.payload.id is missing"),
        ("v2-message-received.json", ("data", "payload", "id"), 7, "data.payload.id must be a string"),
        ("v2-message-received.json", ("data", "payload", "from"), "+1312", "data.payload.from must be an object"),
        (
            "v2-message-received.json",
            ("data", "payload", "from", "phone_number"),
            _DELETE,
            "data.payload.from.phone_number is missing",
        ),
        ("v2-message-received.json", ("data", "payload", "to"), [], "data.payload.to[0] is missing"),
        ("v2-message-received.json", ("data", "payload", "to"), "+13125550100", "data.payload.to must be a list"),
        ("v2-message-received.json", ("data", "payload", "to", 0), "+1312", "data.payload.to[0] must be an object"),
        (
            "v2-message-received.json",
            ("data", "payload", "to", 0, "phone_number"),
            _DELETE,
            "data.payload.to[0].phone_number is missing",
        ),
        ("v2-message-received.json", ("data", "payload", "text"), 12, "data.payload.text must be a string"),
        ("v2-message-received.json", ("data", "payload", "media"), {}, "data.payload.media must be a list of objects"),
        (
            "v2-message-received.json",
            ("data", "payload", "media"),
            [{"url": ""}],
            "data.payload.media[0].url must be a non-empty string",
        ),
        (
            "v2-message-finalized.json",
            ("data", "payload", "to", 0, "status"),
            _DELETE,
            "data.payload.to[0].status is missing",
        ),
        ("v2-message-finalized.json", ("data", "payload", "id"), "", "data.payload.id is empty"),
    ],
)
def test_v2_refusals_name_the_json_path(name, path, value, reason):
    assert refused(_set(sample(name), path, value)) == reason


def test_v2_invalid_recipient_number_is_refused():
    document = _set(sample("v2-message-received.json"), ("data", "payload", "to", 0, "phone_number"), "+1")
    assert refused(document).startswith("data.payload.to[0].phone_number is not a valid phone number")


def test_v2_status_tolerates_missing_or_odd_numbers():
    document = sample("v2-message-finalized.json")
    del document["data"]["payload"]["from"]
    document["data"]["payload"]["to"][0]["phone_number"] = 12
    status = parse_webhook(encode(document)).status
    assert (status.from_number, status.to_number) == (None, None)


# Malformed bodies


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe{}", "body is not valid JSON: "),
        (b"{'from': 1}", "body is not valid JSON: "),
        (b"", "body is not valid JSON: "),
        (b"[" * 100_000, "body is not valid JSON: "),
        (b"1" * 5000, "body is not valid JSON: "),
        (b"[1, 2]", "body must be a JSON object"),
        (b"null", "body must be a JSON object"),
    ],
)
def test_malformed_bodies_are_refused(body, reason):
    assert refused(body).startswith(reason)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
# Values a mutation may plant: arbitrary JSON, and plausible ones that get past type checks.
# Planted values are deep-copied, as sampled_from hands out the same list and dict objects.
planted = json_values | st.sampled_from(
    ["", "+13125550100", "13125550123", "ACME", "message.received", "message.sent", "delivered", [], {}, [{}]]
)


def _paths(value: object, prefix: tuple = ()) -> list[tuple]:
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    else:
        return []
    paths = []
    for key, child in items:
        paths.append((*prefix, key))
        paths.extend(_paths(child, (*prefix, key)))
    return paths


@st.composite
def mutated_samples(draw) -> bytes:
    document = sample(draw(st.sampled_from(WEBHOOK_SAMPLES)))
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(document)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        if isinstance(path[-1], int) or draw(st.booleans()):
            _set(document, path, copy.deepcopy(draw(planted)))
        else:
            _set(document, path, _DELETE)
    if draw(st.booleans()):
        key = draw(st.sampled_from(["status", "msg", "delivery_status", "media", "data", "errors"]))
        document[key] = copy.deepcopy(draw(planted))
    return encode(document)


def _parse_or_refuse(body: bytes) -> None:
    try:
        webhook = parse_webhook(body)
    except WebhookError as exc:
        assert exc.status == 400 and exc.reason
    else:
        assert isinstance(webhook, Webhook)
        assert (webhook.message is not None) == (webhook.kind == "message")
        assert (webhook.status is not None) == (webhook.kind == "status")


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_are_refused(body):
    _parse_or_refuse(body)


@given(json_values)
def test_any_json_value_parses_or_is_refused(value):
    _parse_or_refuse(encode(value))


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_samples())
def test_mutated_samples_parse_or_are_refused(body):
    _parse_or_refuse(body)


# V1 signatures


BODY = (SAMPLES / "v1-inbound.json").read_bytes()


def _v1_error(header: str | None, body: bytes = BODY, **kwargs) -> str:
    with pytest.raises(SignatureError) as info:
        verify_v1(body, header, SECRET, now=NOW, **kwargs)
    assert info.value.status == 401
    return info.value.reason


def test_v1_signature_round_trip():
    header = sign_v1(BODY, SECRET, NOW)
    assert header.startswith(f"t={NOW},h=")
    verify_v1(BODY, header, SECRET, now=NOW + 299)


def test_v1_signature_tolerates_spaces_and_either_order():
    signature = sign_v1(BODY, SECRET, NOW).split(",")[1]
    verify_v1(BODY, f"  {signature} , t = {NOW} ", SECRET, now=NOW)


def test_v1_signature_defaults_to_the_current_time():
    verify_v1(BODY, sign_v1(BODY, SECRET), SECRET)


@pytest.mark.parametrize("header", [None, "", "   "])
def test_v1_missing_signature(header):
    assert _v1_error(header) == "missing X-Telnyx-Signature header"


@pytest.mark.parametrize(
    "header",
    [
        "garbage",
        f"t={NOW}",
        "h=abcd",
        f"t={NOW},t={NOW},h=abcd",
        f"t=soon,h={base64.b64encode(bytes(32)).decode()}",
        f"t={NOW},h=not base64!",
        f"t={NOW},h={base64.b64encode(bytes(20)).decode()}",
        f"t={NOW},h=",
    ],
)
def test_v1_malformed_signature(header):
    assert _v1_error(header).startswith("malformed X-Telnyx-Signature header")


def test_v1_stale_or_future_signature():
    assert _v1_error(sign_v1(BODY, SECRET, NOW - 301)) == "timestamp outside the 300 s window (301 s old)"
    assert _v1_error(sign_v1(BODY, SECRET, NOW + 400)) == "timestamp outside the 300 s window (400 s in the future)"
    assert _v1_error(sign_v1(BODY, SECRET, NOW - 20), tolerance=10).startswith("timestamp outside the 10 s window")


@pytest.mark.parametrize(
    "header",
    [
        sign_v1(BODY, "another-secret", NOW),
        sign_v1(BODY + b" ", SECRET, NOW),
        # The timestamp is signed too: moving it breaks the signature.
        sign_v1(BODY, SECRET, NOW).replace(f"t={NOW}", f"t={NOW + 1}"),
    ],
)
def test_v1_wrong_signature(header):
    assert _v1_error(header) == "signature does not match"


def test_v1_refusals_reveal_neither_secret_nor_expected_signature():
    expected = sign_v1(BODY, SECRET, NOW).split("h=")[1]
    for header in [sign_v1(BODY, "wrong", NOW), sign_v1(BODY, SECRET, NOW - 1000), f"t=x,h={expected}"]:
        reason = _v1_error(header)
        assert SECRET not in reason and expected not in reason


def test_v1_empty_secret_is_a_configuration_error():
    with pytest.raises(ValueError):
        verify_v1(BODY, sign_v1(BODY, "", NOW), "", now=NOW)


# V2 signatures


V2_BODY = (SAMPLES / "v2-message-received.json").read_bytes()
SIGNING_KEY = nacl.signing.SigningKey.generate()
PUBLIC_KEY = base64.b64encode(bytes(SIGNING_KEY.verify_key)).decode()


def _v2_error(signature: str | None, timestamp: str | None, body: bytes = V2_BODY) -> str:
    with pytest.raises(SignatureError) as info:
        verify_v2(body, signature, timestamp, PUBLIC_KEY, now=NOW)
    assert info.value.status == 401
    return info.value.reason


def _headers(body: bytes = V2_BODY, key: nacl.signing.SigningKey = SIGNING_KEY, timestamp: int = NOW) -> tuple:
    headers = sign_v2(body, key, timestamp)
    return headers["telnyx-signature-ed25519"], headers["telnyx-timestamp"]


def test_v2_signature_round_trip():
    signature, timestamp = _headers()
    assert timestamp == str(NOW)
    assert len(base64.b64decode(signature)) == 64
    verify_v2(V2_BODY, signature, timestamp, PUBLIC_KEY, now=NOW - 300)
    verify_v2(V2_BODY, f" {signature} ", f" {timestamp} ", PUBLIC_KEY, now=NOW)


def test_v2_signature_defaults_to_the_current_time():
    headers = sign_v2(V2_BODY, SIGNING_KEY)
    verify_v2(V2_BODY, headers["telnyx-signature-ed25519"], headers["telnyx-timestamp"], PUBLIC_KEY)


def test_v2_missing_headers():
    signature, timestamp = _headers()
    assert _v2_error(None, timestamp) == "missing telnyx-signature-ed25519 header"
    assert _v2_error(signature, "") == "missing telnyx-timestamp header"


@pytest.mark.parametrize(
    ("signature", "timestamp", "reason"),
    [
        ("!!!", str(NOW), "malformed telnyx-signature-ed25519 header"),
        (base64.b64encode(bytes(32)).decode(), str(NOW), "malformed telnyx-signature-ed25519 header"),
        (None, "yesterday", "malformed telnyx-timestamp header"),
        (None, "1.5e9", "malformed telnyx-timestamp header"),
    ],
)
def test_v2_malformed_headers(signature, timestamp, reason):
    assert _v2_error(signature or _headers()[0], timestamp).startswith(reason)


def test_v2_wrong_signature():
    other_key = nacl.signing.SigningKey.generate()
    assert _v2_error(*_headers(key=other_key)) == "signature does not match"
    assert _v2_error(*_headers(), body=V2_BODY + b"\n") == "signature does not match"
    assert _v2_error(_headers()[0], str(NOW + 1)) == "signature does not match"
    assert _v2_error(base64.b64encode(bytes(64)).decode(), str(NOW)) == "signature does not match"


def test_v2_stale_signature():
    assert _v2_error(*_headers(timestamp=NOW - 301)) == "timestamp outside the 300 s window (301 s old)"


@pytest.mark.parametrize("public_key", ["", "not base64", base64.b64encode(bytes(31)).decode()])
def test_v2_bad_public_key_is_a_configuration_error(public_key):
    with pytest.raises(ValueError, match="public key"):
        verify_v2(V2_BODY, *_headers(), public_key, now=NOW)
