"""Parsing and verifying Telnyx webhooks (V1 and V2) into messages and delivery statuses.

Pure functions: no I/O and no configuration. Parsing comes first because a V1 webhook is signed
with the secret of the profile owning one of its numbers, so the caller needs the parsed number
(:attr:`Webhook.number`) to look the secret up before it can call :func:`verify_v1`.

Parsing is liberal about what it ignores and strict about what bot-core needs: a refused webhook
is a lost message once Telnyx stops retrying, so unknown or ill-typed optional fields are dropped,
while a missing or wrong required field is refused with a reason that names it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass
from typing import Any

import nacl.exceptions
import nacl.signing

from .errors import SignatureError, WebhookError
from .messages import DeliveryStatus, InboundMessage, Media
from .phone import normalize_number

V1_SIGNATURE_HEADER = "X-Telnyx-Signature"
V2_SIGNATURE_HEADER = "telnyx-signature-ed25519"
V2_TIMESTAMP_HEADER = "telnyx-timestamp"

_TIMESTAMP = re.compile(r"[0-9]{1,15}")
_STATUS_EVENTS = frozenset({"message.sent", "message.finalized"})


@dataclass(frozen=True)
class Webhook:
    """One parsed Telnyx webhook, before its signature is checked.

    ``kind`` is ``"message"`` (an inbound message, in ``message``), ``"status"`` (a delivery
    status of a message we sent, in ``status``) or ``"ignored"`` (a well-formed V2 event of
    another type, to be acknowledged and dropped).
    """

    version: int
    kind: str
    message: InboundMessage | None
    status: DeliveryStatus | None
    event_id: str | None = None
    event_type: str | None = None

    @property
    def number(self) -> str | None:
        """The number whose messaging profile secret signs a V1 webhook.

        Telnyx signs an inbound message with the profile owning ``to`` and a status update with
        the profile owning the sending number.
        """
        if self.message is not None:
            return self.message.to_number
        if self.status is not None:
            return self.status.from_number
        return None


def parse_webhook(body: bytes) -> Webhook:
    """Parse the raw body of a V1 or V2 webhook, or raise :class:`WebhookError` (400) saying why.

    Raises nothing else, whatever the bytes, so the web layer can answer every bad request.
    """
    try:
        text = body.decode("utf-8")
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad UTF-8, bad JSON and over-long integers; RecursionError, deep nesting.
        raise WebhookError(f"body is not valid JSON: {exc}") from None
    if "\\u" in text:  # only a JSON escape can spell a lone surrogate; skip the walk otherwise
        document = _without_surrogates(document)
    if not isinstance(document, dict):
        raise WebhookError("body must be a JSON object")
    data = document.get("data")
    if isinstance(data, dict) and "event_type" in data:
        return _parse_v2(data)
    if _is_v1_status(document):
        return Webhook(1, "status", None, _parse_v1_status(document))
    return Webhook(1, "message", _parse_v1_inbound(document, body), None)


def verify_v1(
    body: bytes, header: str | None, secret: str, *, now: float | None = None, tolerance: float = 300
) -> None:
    """Check a V1 ``X-Telnyx-Signature`` header (``t=<unix seconds>,h=<base64 HMAC-SHA256>``).

    The HMAC is keyed with the messaging profile secret over ``b"<t>." + body``. Raises
    :class:`SignatureError` if the header is missing, malformed, wrong or stale, and
    ``ValueError`` for an empty ``secret``: that is a configuration error, and an empty key
    would accept anything signed with an empty key.
    """
    if not secret:
        raise ValueError("no profile secret to verify the webhook signature with")
    if header is None or not header.strip():
        raise SignatureError(f"missing {V1_SIGNATURE_HEADER} header")
    fields: dict[str, str] = {}  # parts other than t and h are ignored, for Telnyx to add to
    for part in header.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key in fields:
            raise SignatureError(
                f"malformed {V1_SIGNATURE_HEADER} header: expected t=<unix seconds>,h=<base64>"
            )
        fields[key] = value.strip()
    if "t" not in fields or "h" not in fields:
        raise SignatureError(f"malformed {V1_SIGNATURE_HEADER} header: it needs both t= and h=")
    timestamp = _timestamp(fields["t"], f"{V1_SIGNATURE_HEADER} header (t)")
    received = _base64(fields["h"], 32, f"{V1_SIGNATURE_HEADER} header (h)", "HMAC-SHA256")
    expected = hmac.new(secret.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256).digest()
    if not hmac.compare_digest(received, expected):
        raise SignatureError("signature does not match")
    _check_window(timestamp, now, tolerance)


def verify_v2(
    body: bytes,
    signature: str | None,
    timestamp: str | None,
    public_key: str,
    *,
    now: float | None = None,
    tolerance: float = 300,
) -> None:
    """Check a V2 Ed25519 signature over ``b"<timestamp>|" + body`` with the account public key.

    ``signature`` and ``timestamp`` are the ``telnyx-signature-ed25519`` and ``telnyx-timestamp``
    headers. Raises :class:`SignatureError` if either is missing, malformed, wrong or stale, and
    ``ValueError`` if ``public_key`` is not a base64 Ed25519 key, a configuration error.
    """
    try:
        verify_key = nacl.signing.VerifyKey(base64.b64decode(public_key, validate=True))
    except (ValueError, TypeError):
        raise ValueError("the Telnyx public key is not a base64 Ed25519 public key (32 bytes)") from None
    if signature is None or not signature.strip():
        raise SignatureError(f"missing {V2_SIGNATURE_HEADER} header")
    if timestamp is None or not timestamp.strip():
        raise SignatureError(f"missing {V2_TIMESTAMP_HEADER} header")
    signed_at = _timestamp(timestamp.strip(), f"{V2_TIMESTAMP_HEADER} header")
    raw_signature = _base64(signature.strip(), 64, f"{V2_SIGNATURE_HEADER} header", "Ed25519 signature")
    try:
        verify_key.verify(f"{timestamp.strip()}|".encode() + body, raw_signature)
    except nacl.exceptions.BadSignatureError:
        raise SignatureError("signature does not match") from None
    _check_window(signed_at, now, tolerance)


def sign_v1(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``X-Telnyx-Signature`` value Telnyx would send, for tests and the test harness."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).digest()
    return f"t={t},h={base64.b64encode(digest).decode()}"


def sign_v2(
    body: bytes, signing_key: nacl.signing.SigningKey, timestamp: int | None = None
) -> dict[str, str]:
    """The V2 signature headers Telnyx would send, for tests and the test harness."""
    t = int(time.time()) if timestamp is None else timestamp
    signed = signing_key.sign(f"{t}|".encode() + body)
    return {V2_SIGNATURE_HEADER: base64.b64encode(signed.signature).decode(), V2_TIMESTAMP_HEADER: str(t)}


def _without_surrogates(value: Any) -> Any:
    """``value`` with lone UTF-16 surrogates (``"\\ud800"``, half an emoji) made U+FFFD.

    SQLite cannot store them, and refusing the webhook would lose the message once Telnyx
    stops retrying.
    """
    if isinstance(value, str):
        if not _has_surrogate(value):
            return value
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in value)
    if isinstance(value, list):
        return [_without_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
    return value


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# Signatures


def _timestamp(text: str, where: str) -> int:
    if not _TIMESTAMP.fullmatch(text):
        raise SignatureError(f"malformed {where}: {text[:20]!r} is not unix seconds")
    return int(text)


def _base64(text: str, size: int, where: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != size:
        raise SignatureError(f"malformed {where}: not a base64 {what} ({size} bytes)")
    return raw


def _check_window(timestamp: int, now: float | None, tolerance: float) -> None:
    """Refuse replays of an old, correctly signed webhook."""
    skew = (time.time() if now is None else now) - timestamp
    if abs(skew) > tolerance:
        when = f"{skew:.0f} s old" if skew > 0 else f"{-skew:.0f} s in the future"
        raise SignatureError(f"timestamp outside the {tolerance:g} s window ({when})")


# V1 parsing: error messages quote top-level field names as Telnyx's V1 docs do ('from').


def _parse_v1_inbound(document: dict[str, Any], body: bytes) -> InboundMessage:
    from_number = _number(_v1_string(document, "from"), "'from'")
    to_number = _number(_v1_string(document, "to"), "'to'")
    text = _v1_string(document, "body")
    sms_id = document.get("sms_id")
    if sms_id is not None and not isinstance(sms_id, str):
        raise WebhookError("'sms_id' must be a string")
    # Without an id, the body's hash stands in, so a retried identical delivery is still deduped.
    message_id = sms_id or "sha256:" + hashlib.sha256(body).hexdigest()
    media = _media(document.get("media"), "media", "hash_sha256", quote=True)
    return InboundMessage(message_id, text, from_number, to_number, None, media)


def _is_v1_status(document: dict[str, Any]) -> bool:
    """A V1 delivery status, in either documented shape, rather than an inbound message.

    Telnyx posts the send response's shape (``msg`` {src, dst, body}, ``status``,
    ``delivery_status``) or, per its messaging migration guide, "the current MDR": top-level
    ``from``/``to``, ``direction: "outbound"``, ``status``, ``errors`` and ``body`` as an object
    (``samples/v1-delivery-status*.json``). An inbound message has none of these.
    """
    return (isinstance(document.get("msg"), dict) or bool(document.get("delivery_status")) or "status" in document
            or document.get("direction") == "outbound" or isinstance(document.get("body"), dict))  # fmt: skip


def _parse_v1_status(document: dict[str, Any]) -> DeliveryStatus:
    key = "sms_id" if "sms_id" in document or "id" not in document else "id"
    sms_id = _v1_string(document, key)
    if not sms_id:
        raise WebhookError(f"{key!r} is empty")
    delivery_status = document.get("delivery_status")
    if delivery_status not in (None, "") and not isinstance(delivery_status, str):
        raise WebhookError("'delivery_status' must be a string")
    status = delivery_status or _v1_string(document, "status")
    if not status:
        raise WebhookError("'status' is empty")
    msg = document.get("msg")
    if msg is not None and not isinstance(msg, dict):
        raise WebhookError("'msg' must be an object")
    msg = msg or {}
    errors = (_error_text(document.get(key)) for key in ("errors", "error", "message"))
    return DeliveryStatus(
        telnyx_id=sms_id,
        status=status,
        from_number=_lenient_number(msg.get("src") or document.get("from")),  # send-response or MDR shape
        to_number=_lenient_number(msg.get("dst") or document.get("to")),
        error=next(filter(None, errors), None),
    )


def _v1_string(document: dict[str, Any], key: str) -> str:
    if key not in document:
        raise WebhookError(f"missing {key!r}")
    value = document[key]
    if not isinstance(value, str):
        raise WebhookError(f"{key!r} must be a string")
    return value


def _error_text(value: object) -> str | None:
    """Telnyx's error text, whether it is a string, an error object or a list of either."""
    texts = (_one_error_text(item) for item in (value if isinstance(value, list) else [value]))
    return "; ".join(text for text in texts if text) or None


def _one_error_text(value: object) -> str | None:
    candidates = [value]
    if isinstance(value, dict):
        candidates = [value.get(key) for key in ("detail", "title", "message")]
    return next((text.strip() for text in candidates if isinstance(text, str) and text.strip()), None)


# V2 parsing: error messages name the JSON path (data.payload.to[0].phone_number).


def _parse_v2(data: dict[str, Any]) -> Webhook:
    event_type = data["event_type"]
    if not isinstance(event_type, str):
        raise WebhookError("data.event_type must be a string")
    event_id = _optional_string(data.get("id"))
    if event_type == "message.received":
        payload = _v2_object(data, "payload", "data.payload")
        sender = _v2_object(payload, "from", "data.payload.from")
        from_path = "data.payload.from.phone_number"
        to_number, *others = _v2_recipients(payload)
        message = InboundMessage(
            id=_v2_string(payload, "id", "data.payload.id"),
            text=_v2_text(payload),
            from_number=_number(_v2_string(sender, "phone_number", from_path), from_path),
            to_number=to_number,
            profile=None,
            media=_media(payload.get("media"), "data.payload.media", "sha256"),
            received_at=_optional_string(payload.get("received_at")),
            other_recipients=tuple(others),
        )
        return Webhook(2, "message", message, None, event_id, event_type)
    if event_type in _STATUS_EVENTS:
        payload = _v2_object(data, "payload", "data.payload")
        recipient = _v2_first_to(payload)
        status_sender = payload.get("from")  # optional on a status: not every event carries it
        status = DeliveryStatus(
            telnyx_id=_v2_string(payload, "id", "data.payload.id"),
            status=_v2_string(recipient, "status", "data.payload.to[0].status"),
            from_number=_lenient_number(status_sender.get("phone_number")) if isinstance(status_sender, dict) else None,
            to_number=_lenient_number(recipient.get("phone_number")),
            error=_error_text(payload.get("errors")),
        )
        return Webhook(2, "status", None, status, event_id, event_type)
    return Webhook(2, "ignored", None, None, event_id, event_type)


def _v2_object(parent: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    value = parent.get(key)
    if value is None:
        raise WebhookError(f"{path} is missing")
    if not isinstance(value, dict):
        raise WebhookError(f"{path} must be an object")
    return value


def _v2_first_to(payload: dict[str, Any]) -> dict[str, Any]:
    recipients = payload.get("to")
    if recipients is None or recipients == []:
        raise WebhookError("data.payload.to[0] is missing")
    if not isinstance(recipients, list):
        raise WebhookError("data.payload.to must be a list")
    if not isinstance(recipients[0], dict):
        raise WebhookError("data.payload.to[0] must be an object")
    return recipients[0]


def _v2_recipients(payload: dict[str, Any]) -> list[str]:
    """Every recipient of an inbound message, ``to`` then ``cc``, in E.164, without repeats.

    A group MMS lists several (Telnyx's message object: ``to`` and ``cc`` arrays of
    ``{phone_number, status, ...}``), ours not necessarily first, so the bot looks for its own
    among them. The first ``to`` must be a phone number; an unreadable other one is dropped
    rather than losing the message.
    """
    to_path = "data.payload.to[0].phone_number"
    recipients = [_number(_v2_string(_v2_first_to(payload), "phone_number", to_path), to_path)]
    for key in ("to", "cc"):
        entries = payload.get(key)
        for entry in entries if isinstance(entries, list) else ():
            number = _lenient_number(entry.get("phone_number")) if isinstance(entry, dict) else None
            if number is not None and number.startswith("+"):
                recipients.append(number)
    return list(dict.fromkeys(recipients))


def _v2_string(parent: dict[str, Any], key: str, path: str) -> str:
    value = parent.get(key)
    if value is None:
        raise WebhookError(f"{path} is missing")
    if not isinstance(value, str):
        raise WebhookError(f"{path} must be a string")
    if not value:
        raise WebhookError(f"{path} is empty")
    return value


def _v2_text(payload: dict[str, Any]) -> str:
    text = payload.get("text")
    if text is None:
        return ""
    if not isinstance(text, str):
        raise WebhookError("data.payload.text must be a string")
    return text


# Shared by both versions.


def _number(text: str, where: str) -> str:
    try:
        return normalize_number(text)
    except ValueError as exc:
        raise WebhookError(f"{where} is not a valid phone number: {exc}") from None


def _lenient_number(value: object) -> str | None:
    """A number of a status update in E.164, or as given if it is not a phone number.

    An alphanumeric sender ID stays as it is, and a status update is never refused over its
    numbers: they only label a message we sent.
    """
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return normalize_number(value)
    except ValueError:
        return value


def _optional_string(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _media(value: object, path: str, hash_key: str, *, quote: bool = False) -> tuple[Media, ...]:
    """MMS attachments; V1 calls the hash ``hash_sha256`` and V2 ``sha256``.

    Only ``url`` is needed; ill-typed metadata is dropped rather than losing the message.
    ``quote`` names fields the V1 way ('media[0].url').
    """

    def name(where: str) -> str:
        return repr(where) if quote else where

    if value is None:
        return ()
    if not isinstance(value, list):
        raise WebhookError(f"{name(path)} must be a list of objects")
    media = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise WebhookError(f"{name(f'{path}[{index}]')} must be an object")
        url = item.get("url")
        if not isinstance(url, str) or not url:
            raise WebhookError(f"{name(f'{path}[{index}].url')} must be a non-empty string")
        size = item.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            size = None
        content_type = _optional_string(item.get("content_type"))
        media.append(Media(url, content_type, _optional_string(item.get(hash_key)), size))
    return tuple(media)
