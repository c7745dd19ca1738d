"""A fake Telnyx for tests and benchmarks: in-process, or a real HTTP server on loopback.

It plays both sides of Telnyx:

- the **messaging API** bot-core calls: ``POST /messages`` (V1) and ``/v2/messages``, ``GET
  /messages/{id}``, recording every request, and misbehaving on demand: 429 with Retry-After
  (:meth:`FakeTelnyx.rate_limit`), 5xx (:meth:`~FakeTelnyx.fail`), 40300 for a recipient who
  texted STOP (:meth:`~FakeTelnyx.opt_out`) and timeouts (:meth:`~FakeTelnyx.timeout`);
- the **management API** ``bot-core telnyx sync`` calls (``/v2/messaging_profiles/{id}``,
  ``/v2/phone_numbers`` and ``/v2/phone_numbers/{id}/messaging``, as Telnyx's OpenAPI spec
  team-telnyx/openapi ``openapi/spec3.yml`` has them), with the account's profiles and numbers in
  :attr:`~FakeTelnyx.profiles` and :attr:`~FakeTelnyx.phone_numbers`;
- the **webhooks** Telnyx posts: :attr:`~FakeTelnyx.webhooks` builds signed V1 and V2 inbound
  messages and delivery statuses, :meth:`~FakeTelnyx.report` one for a message the fake
  accepted, and :meth:`~FakeTelnyx.deliver` posts them in any order, as often as asked
  (Telnyx delivers duplicates and out of order).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import nacl.signing
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..segments import count_segments
from ..webhooks import sign_v1, sign_v2

# V2 statuses after which Telnyx sends message.finalized rather than message.sent.
_FINAL_STATUSES = frozenset({"delivered", "delivery_failed", "sending_failed", "delivery_unconfirmed"})
_WEBHOOK_API_VERSIONS = ("1", "2", "2010-04-01")
_URL = re.compile(r"https?://\S+")


@dataclass(frozen=True)
class SignedWebhook:
    """One webhook as Telnyx would post it: the exact body bytes and the signature headers."""

    body: bytes
    headers: dict[str, str]

    @property
    def payload(self) -> Any:
        return json.loads(self.body)


class TelnyxWebhooks:
    """Builds and signs webhooks the way Telnyx does.

    V1 webhooks are signed with the secret of the profile owning the number (``secrets``: our
    number -> profile secret); V2 webhooks with the account's Ed25519 key, whose public half
    (:attr:`public_key`, base64) goes in ``[telnyx] public_key``. Timestamps come from ``clock``
    so that a bot running on a fake clock accepts them.
    """

    def __init__(self, *, secrets: Mapping[str, str] | None = None,
                 signing_key: nacl.signing.SigningKey | None = None,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.secrets: dict[str, str] = dict(secrets or {})
        self.signing_key = signing_key or nacl.signing.SigningKey.generate()
        self.clock = clock

    @property
    def public_key(self) -> str:
        return base64.b64encode(bytes(self.signing_key.verify_key)).decode()

    def message(self, text: str, *, from_: str, to: str, version: int = 1, id: str | None = None,
                media: Sequence[Mapping[str, Any]] = ()) -> SignedWebhook:  # fmt: skip
        """An inbound message from ``from_`` to our number ``to``."""
        message_id = id or str(uuid.uuid4())
        if version == 1:
            payload: dict[str, Any] = {"sms_id": message_id, "direction": "inbound", "from": from_, "to": to,
                                       "body": text}  # fmt: skip
            if media:
                payload["media"] = [dict(m) for m in media]
            return self.sign(payload, version=1, number=to)
        segments = count_segments(text)
        event = {
            "record_type": "message", "id": message_id, "direction": "inbound", "type": "MMS" if media else "SMS",
            "from": {"phone_number": from_}, "to": [{"phone_number": to, "status": "webhook_delivered"}],
            "text": text, "media": [dict(m) for m in media], "encoding": segments.encoding,
            "parts": segments.parts, "received_at": self._now(), "errors": [],
        }  # fmt: skip
        return self.sign(self._envelope("message.received", event), version=2)

    def status(self, telnyx_id: str, status: str, *, from_: str, to: str, version: int = 1,
               error: str | None = None, text: str = "") -> SignedWebhook:  # fmt: skip
        """A delivery status update for message ``telnyx_id`` sent from our number ``from_``."""
        if version == 1:
            payload: dict[str, Any] = {"sms_id": telnyx_id, "status": status, "delivery_status": status,
                                       "msg": {"src": from_, "dst": to, "body": text}}  # fmt: skip
            if error:
                payload["errors"] = [{"code": "40001", "title": error, "detail": error}]
            return self.sign(payload, version=1, number=from_)
        event = {
            "record_type": "message", "id": telnyx_id, "direction": "outbound", "type": "SMS",
            "from": {"phone_number": from_}, "to": [{"phone_number": to, "status": status}], "text": text,
            "errors": [{"code": "40001", "title": error, "detail": error}] if error else [],
        }  # fmt: skip
        kind = "message.finalized" if status in _FINAL_STATUSES else "message.sent"
        return self.sign(self._envelope(kind, event), version=2)

    def sign(self, payload: Mapping[str, Any], *, version: int, number: str | None = None) -> SignedWebhook:
        """Sign any payload: V1 with the secret of ``number``'s profile, V2 with the account key."""
        body = json.dumps(payload).encode()
        timestamp = int(self.clock())
        if version == 2:
            return SignedWebhook(body, sign_v2(body, self.signing_key, timestamp))
        secret = self.secrets.get(number or "")
        if not secret:
            raise ValueError(f"no profile secret is known for {number}: set webhooks.secrets[{number!r}]")
        return SignedWebhook(body, {"X-Telnyx-Signature": sign_v1(body, secret, timestamp)})

    def _envelope(self, event_type: str, payload: dict[str, Any]) -> dict[str, Any]:
        return {"data": {"record_type": "event", "id": str(uuid.uuid4()), "event_type": event_type,
                         "occurred_at": self._now(), "payload": payload},
                "meta": {"attempt": 1}}  # fmt: skip

    def _now(self) -> str:
        return datetime.fromtimestamp(self.clock(), UTC).isoformat(timespec="milliseconds")


@dataclass
class Recorded:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any
    at: float = field(default_factory=time.time)


@dataclass
class _Fault:
    status: int  # 0: no error answer (a stall or a timeout)
    body: dict[str, Any]
    headers: dict[str, str]
    delay: float
    timeout: bool = False
    to: str | None = None  # only sends to this number; None: the next send, whoever it is to


class FakeTelnyx:
    """The fake. ``requests`` lists what it received; ``sent`` the messages it accepted."""

    def __init__(self, *, api_key: str | None = None) -> None:
        self.requests: list[Recorded] = []
        self.sent: list[Recorded] = []
        self.opted_out: set[str] = set()
        self.messages: dict[str, dict[str, Any]] = {}
        self.webhooks = TelnyxWebhooks()
        self.api_key = api_key  # when set, V2 and management calls need "Authorization: Bearer <it>"
        self.profiles: dict[str, dict[str, Any]] = {}  # messaging profiles by id
        self.phone_numbers: dict[str, dict[str, Any]] = {}  # messaging settings by E.164 number
        self._faults: deque[_Fault] = deque()
        self._lock = threading.Lock()
        self._stopping = False
        self.app = Starlette(routes=[
            Route("/messages", self._send, methods=["POST"]),
            Route("/v2/messages", self._send, methods=["POST"]),
            Route("/messages/{sms_id}", self._get, methods=["GET"]),
            Route("/v2/messages/{sms_id}", self._get, methods=["GET"]),
            Route("/v2/messaging_profiles/{id}", self._profile, methods=["GET", "PATCH"]),
            Route("/v2/phone_numbers", self._list_numbers, methods=["GET"]),
            Route("/v2/phone_numbers/{id}/messaging", self._phone_number, methods=["GET", "PATCH"]),
        ])  # fmt: skip
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- scripting the messaging API ----------------------------------------------------------

    # Every fault hits the next ``times`` sends, or with ``to`` the next ``times`` sends to that
    # number only: a test sending several replies at once can then say which one fails.

    def fail(self, status: int = 500, times: int = 1, *, retry_after: float | None = None,
             code: str = "10007", delay: float = 0.0, to: str | None = None) -> None:  # fmt: skip
        """Answer the next ``times`` sends with ``status`` (after ``delay`` seconds)."""
        headers = {"retry-after": f"{retry_after:g}"} if retry_after is not None else {}
        body = {"success": False, "status": status, "code": code, "message": f"fake error {status}"}
        self._add(_Fault(status, body, headers, delay, to=to) for _ in range(times))

    def rate_limit(self, retry_after: float = 1.0, times: int = 1, *, to: str | None = None) -> None:
        """Answer the next ``times`` sends with 429 Too Many Requests and ``Retry-After``."""
        self.fail(429, times, retry_after=retry_after, code="10011", to=to)

    def opt_out(self, number: str) -> None:
        """Refuse sends to ``number`` with code 40300, as Telnyx does after the recipient texted STOP."""
        self.opted_out.add(number)

    def stall(self, seconds: float, times: int = 1, *, to: str | None = None) -> None:
        """Answer the next ``times`` sends only after ``seconds`` (to provoke client timeouts)."""
        self._add(_Fault(0, {}, {}, seconds, to=to) for _ in range(times))

    def timeout(self, times: int = 1, *, to: str | None = None) -> None:
        """Let the next ``times`` sends time out: in-process at once, on loopback by never answering
        before the client gives up (the request may have reached Telnyx, as in real life)."""
        self._add(_Fault(0, {}, {}, 3600.0, timeout=True, to=to) for _ in range(times))

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self.sent.clear()
            self._faults.clear()

    def _add(self, faults: Any) -> None:
        with self._lock:
            self._faults.extend(faults)

    def _next_fault(self, payload: Any, *, only_timeout: bool = False) -> _Fault | None:
        """The first fault scripted for this send, taken off the queue (call with the lock held);
        with ``only_timeout``, left there unless it is a timeout."""
        to = payload.get("to") if isinstance(payload, dict) else None
        for index, fault in enumerate(self._faults):
            if fault.to is None or fault.to == to:
                if only_timeout and not fault.timeout:
                    return None
                del self._faults[index]
                return fault
        return None

    # -- webhooks Telnyx posts ----------------------------------------------------------------

    def report(self, sms_id: str, status: str, *, error: str | None = None,
               version: int | None = None) -> SignedWebhook:  # fmt: skip
        """A signed delivery status webhook for a message the fake accepted; it also becomes
        what ``GET /messages/{sms_id}`` answers. ``version`` defaults to the API it was sent by."""
        with self._lock:
            message = self.messages[sms_id]
            message["status"] = status
        msg = message["msg"]
        return self.webhooks.status(sms_id, status, from_=msg["src"], to=msg["dst"], error=error, text=msg["body"],
                                    version=version or message["version"])  # fmt: skip

    def deliver(self, url: str, *webhooks: SignedWebhook) -> list[httpx.Response]:
        """POST ``webhooks`` to ``url`` one after another, in the order given."""
        with httpx.Client(timeout=10) as client:
            return [client.post(url, content=w.body, headers={"content-type": "application/json", **w.headers})
                    for w in webhooks]  # fmt: skip

    # -- the messaging API --------------------------------------------------------------------

    async def _send(self, request: Request) -> Response:
        try:
            payload = json.loads(await request.body())
        except (ValueError, ClientDisconnect):  # a sender killed mid-request sent nothing whole
            payload = None
        record = Recorded(request.method, request.url.path, dict(request.headers), payload)
        v2 = request.url.path.startswith("/v2")
        with self._lock:
            self.requests.append(record)
            fault = self._next_fault(payload)
        if v2 and (refused := self._unauthorized(request)):
            return refused
        if fault is not None:
            await self._sleep(fault.delay)
            if fault.timeout:  # the client gave up long ago; nothing was accepted
                return Response(status_code=504)
            if fault.status:
                return JSONResponse(_v2_error(fault.body) if v2 else fault.body, fault.status, fault.headers)
        if not isinstance(payload, dict) or not all(isinstance(payload.get(k), str) for k in ("from", "to")):
            return _refuse(v2, 400, "10002", "bad request: 'from' and 'to' must be strings")
        if v2 and not payload["from"].startswith("+") and not payload.get("messaging_profile_id"):
            # Telnyx's OpenAPI spec: messaging_profile_id is "required if sending via number pool
            # or with an alphanumeric sender ID".
            return _refuse(v2, 400, "10002", "messaging_profile_id is required to send from an alphanumeric sender ID")
        if payload["to"] in self.opted_out:
            return _refuse(v2, 400, "40300", "Blocked due to STOP message")
        sms_id = str(uuid.uuid4())
        text = payload.get("text" if v2 else "body", "")
        secret = request.headers.get("x-profile-secret")
        with self._lock:
            self.sent.append(record)
            if secret:
                self.webhooks.secrets[payload["from"]] = secret
            self.messages[sms_id] = {"sms_id": sms_id, "status": "queued", "version": 2 if v2 else 1,
                                     "secret": secret,
                                     "msg": {"src": payload["from"], "dst": payload["to"], "body": text}}  # fmt: skip
        if v2:
            return JSONResponse({"data": self._v2_record(sms_id)})
        segments = count_segments(text, payload["from"])
        coding = 0 if segments.encoding == "GSM-7" else 8
        status_url = payload.get("delivery_status_webhook_url", "")
        return JSONResponse({**self._public(sms_id), "parts": segments.parts, "coding": coding,
                             "delivery_status_webhook_url": status_url})  # fmt: skip

    async def _get(self, request: Request) -> Response:
        with self._lock:
            self.requests.append(Recorded("GET", request.url.path, dict(request.headers), None))
        v2 = request.url.path.startswith("/v2")
        if v2 and (refused := self._unauthorized(request)):
            return refused
        message = self.messages.get(request.path_params["sms_id"])
        if message is None or (not v2 and message["secret"] != request.headers.get("x-profile-secret")):
            return _refuse(v2, 404, "10005", "Resource not found")
        return JSONResponse({"data": self._v2_record(message["sms_id"])} if v2 else self._public(message["sms_id"]))

    def _public(self, sms_id: str) -> dict[str, Any]:
        """A message as V1 describes it."""
        message = self.messages[sms_id]
        return {k: v for k, v in message.items() if k not in ("secret", "version")}

    def _v2_record(self, sms_id: str) -> dict[str, Any]:
        """A message as V2 describes it (``GET /v2/messages/{id}``)."""
        message = self.messages[sms_id]
        msg = message["msg"]
        segments = count_segments(msg["body"], msg["src"])
        return {"record_type": "message", "id": sms_id, "direction": "outbound", "type": "SMS",
                "from": {"phone_number": msg["src"]}, "to": [{"phone_number": msg["dst"], "status": message["status"]}],
                "text": msg["body"], "encoding": segments.encoding, "parts": segments.parts, "errors": []}  # fmt: skip

    def _unauthorized(self, request: Request) -> Response | None:
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _refuse(True, 401, "10009", "Authentication failed: the API key is missing or invalid")
        return None

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but not past :meth:`stop`, so that a stalled request never holds up shutdown."""
        deadline = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < deadline:
            await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    # -- the management API -------------------------------------------------------------------

    def add_profile(self, profile_id: str, **fields: Any) -> dict[str, Any]:
        """A messaging profile in the fake account (fields as Telnyx's V2 API names them)."""
        profile = {"record_type": "messaging_profile", "id": profile_id, "name": profile_id, "enabled": True,
                   "webhook_url": None, "webhook_failover_url": None, "webhook_api_version": "2", **fields}  # fmt: skip
        self.profiles[profile_id] = profile
        return profile

    def add_number(self, number: str, messaging_profile_id: str | None = None) -> dict[str, Any]:
        """A phone number in the fake account, assigned to a messaging profile or not."""
        # Telnyx ids a number by a numeric string of its own, not by the number (spec3.yml).
        record = {"record_type": "messaging_settings", "id": str(1293384261075731000 + len(self.phone_numbers)),
                  "phone_number": number, "messaging_profile_id": messaging_profile_id}  # fmt: skip
        self.phone_numbers[number] = record
        return record

    async def _profile(self, request: Request) -> Response:
        return await self._manage(request, self.profiles, request.path_params["id"], "messaging profile",
                                  _check_profile)  # fmt: skip

    async def _list_numbers(self, request: Request) -> Response:
        """``GET /v2/phone_numbers``; ``filter[phone_number]`` matches digits anywhere in the number."""
        with self._lock:
            self.requests.append(Recorded("GET", request.url.path, dict(request.headers), None))
        if refused := self._unauthorized(request):
            return refused
        digits = "".join(c for c in request.query_params.get("filter[phone_number]", "") if c.isdigit())
        found = [{**record, "record_type": "phone_number"} for record in self.phone_numbers.values()
                 if digits in record["phone_number"]]  # fmt: skip
        return JSONResponse({"data": found, "meta": {"total_results": len(found), "page_number": 1}})

    async def _phone_number(self, request: Request) -> Response:
        by_id = {record["id"]: record for record in self.phone_numbers.values()}
        return await self._manage(request, by_id, request.path_params["id"], "phone number", self._check_number)

    async def _manage(self, request: Request, records: dict[str, dict[str, Any]], key: str, what: str,
                      check: Callable[[dict[str, Any]], str | None]) -> Response:  # fmt: skip
        payload = None
        if request.method == "PATCH":
            try:
                payload = json.loads(await request.body())
            except ValueError:
                payload = None
        with self._lock:
            self.requests.append(Recorded(request.method, request.url.path, dict(request.headers), payload))
        if refused := self._unauthorized(request):
            return refused
        record = records.get(key)
        if record is None:
            return _refuse(True, 404, "10005", f"Resource not found: no {what} {key} in this account")
        if request.method == "PATCH":
            if not isinstance(payload, dict):
                return _refuse(True, 400, "10002", "The request body must be a JSON object")
            if problem := check(payload):
                return _refuse(True, 422, "10015", problem)
            with self._lock:
                record.update(payload)
        return JSONResponse({"data": record})

    def _check_number(self, payload: dict[str, Any]) -> str | None:
        profile_id = payload.get("messaging_profile_id")
        if profile_id not in (None, "") and profile_id not in self.profiles:
            return f"messaging_profile_id {profile_id} does not name a messaging profile of this account"
        return None

    # -- serving ----------------------------------------------------------------------------

    @property
    def transport(self) -> httpx.AsyncBaseTransport:
        """An in-process transport: point ``[telnyx] api_base`` anywhere, e.g. ``http://fake``."""
        return _Transport(self)

    def start(self) -> str:
        """Serve on a free loopback port in a thread; returns the base URL."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        self._stopping = False
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the fake Telnyx server did not start")
            time.sleep(0.01)
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def stop(self) -> None:
        self._stopping = True
        if self._server is not None:
            self._server.should_exit = True
            if self._thread is not None:
                self._thread.join(10)
            self._server = None

    def __enter__(self) -> FakeTelnyx:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Transport(httpx.AsyncBaseTransport):
    """The fake's app in-process; a scripted timeout raises at once instead of waiting."""

    def __init__(self, fake: FakeTelnyx) -> None:
        self._fake = fake
        self._app = httpx.ASGITransport(app=fake.app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        fake = self._fake
        if request.method != "POST":
            return await self._app.handle_async_request(request)
        try:
            payload = json.loads(request.content)
        except ValueError:
            payload = None
        with fake._lock:
            timed_out = fake._next_fault(payload, only_timeout=True) is not None
            if timed_out:
                fake.requests.append(Recorded(request.method, request.url.path, dict(request.headers), payload))
        if timed_out:
            raise httpx.ReadTimeout("the fake Telnyx did not answer (scripted timeout)", request=request)
        return await self._app.handle_async_request(request)

    async def aclose(self) -> None:
        await self._app.aclose()


def _check_profile(payload: dict[str, Any]) -> str | None:
    for key in ("webhook_url", "webhook_failover_url"):
        value = payload.get(key)
        if value not in (None, "") and not (isinstance(value, str) and _URL.fullmatch(value)):
            return f"{key} must be an http(s) URL"
    version = payload.get("webhook_api_version")
    if version is not None and version not in _WEBHOOK_API_VERSIONS:
        return f"webhook_api_version must be one of {', '.join(_WEBHOOK_API_VERSIONS)}"
    return None


def _refuse(v2: bool, status: int, code: str, message: str) -> JSONResponse:
    body = {"success": False, "status": status, "code": code, "message": message}
    return JSONResponse(_v2_error(body) if v2 else body, status)


def _v2_error(body: dict[str, Any]) -> dict[str, Any]:
    return {"errors": [{"code": body.get("code"), "title": body.get("message"), "detail": body.get("message")}]}
