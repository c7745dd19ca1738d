"""Telnyx messaging API clients behind one interface: V1 (profile secret), V2 (API key), sandbox.

Every client turns Telnyx's answers into a :class:`SendResult` or a :class:`SendError` that says
whether to retry. Nothing here logs or raises a secret.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import httpx

from .config import Config
from .errors import SendError

log = logging.getLogger("bot_core.telnyx")

OPTED_OUT_CODE = "40300"


@dataclass(frozen=True)
class SendResult:
    """Telnyx accepted a message: its id and first status (``queued``, ``sending``, ``sandbox``)."""

    telnyx_id: str | None
    status: str
    parts: int | None = None


class TelnyxClient(Protocol):
    """What the sender needs from a Telnyx API version.

    ``messaging_profile_id`` is Telnyx's id of the sending profile: V2 sends it (Telnyx's
    OpenAPI spec, CreateMessageRequest: "required if sending via number pool or with an
    alphanumeric sender ID"); V1 knows the profile from its secret.
    """

    async def send(self, *, secret: str, from_: str, to: str, text: str, webhook_url: str | None,
                   messaging_profile_id: str | None = None) -> SendResult: ...

    async def fetch(self, *, secret: str, telnyx_id: str) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


# Requests to Telnyx at once: CLIENTS httpx clients of CONNECTIONS connections each. One
# client with a big pool would spend more CPU than the send itself: httpx's pool scans all its
# connections several times per request (encode/httpcore#1035), so pools stay small and a
# request waits for a free client here, never inside a pool.
CLIENTS = 16
CONNECTIONS = 4


class _HttpClient:
    def __init__(self, base_url: str, timeout: float, transport: httpx.AsyncBaseTransport | None) -> None:
        self.base_url = base_url.rstrip("/")
        limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
        tls = httpx.create_ssl_context()  # loading the CA bundle takes 25 ms: once, not per client
        self._clients = [
            httpx.AsyncClient(timeout=timeout, transport=transport, limits=limits, verify=tls,
                              headers={"user-agent": "bot-core"})  # fmt: skip
            for _ in range(CLIENTS)
        ]
        self._free: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
        for _ in range(CONNECTIONS):
            for client in self._clients:
                self._free.put_nowait(client)

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()

    async def _request(self, method: str, path: str, headers: dict[str, str], json: Any = None) -> dict[str, Any]:
        client = await self._free.get()
        try:
            response = await client.request(method, self.base_url + path, headers=headers, json=json)
        except httpx.TimeoutException as exc:
            raise SendError(f"Telnyx did not answer in time ({type(exc).__name__})", retryable=True) from None
        except httpx.TransportError as exc:
            raise SendError(f"cannot reach Telnyx: {type(exc).__name__}: {exc}", retryable=True) from None
        finally:
            self._free.put_nowait(client)
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 300:
            raise _error(response, body)
        if not isinstance(body, dict):
            raise SendError(f"Telnyx answered {response.status_code} with a body that is not a JSON object",
                            status=response.status_code, retryable=True)  # fmt: skip
        return body


def _error(response: httpx.Response, body: Any) -> SendError:
    """Telnyx's error, in plain words, classified for retrying."""
    status = response.status_code
    code = detail = None
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):  # V2
            code = errors[0].get("code")
            detail = errors[0].get("detail") or errors[0].get("title")
        else:  # V1
            code = body.get("code")
            detail = body.get("message")
    code = str(code) if code is not None else None
    opted_out = code == OPTED_OUT_CODE
    retryable = not opted_out and (status == 429 or status >= 500)
    reason = f"Telnyx answered {status}"
    if code:
        reason += f" (code {code})"
    if detail:
        reason += f": {detail}"
    return SendError(
        reason, status=status, code=code, retryable=retryable, opted_out=opted_out,
        retry_after=_retry_after(response.headers.get("retry-after")),
    )  # fmt: skip


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from datetime import datetime

        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


class V1Client(_HttpClient):
    """``POST {api_base}/messages`` with ``x-profile-secret``: the API bot-core is built around."""

    async def send(self, *, secret: str, from_: str, to: str, text: str, webhook_url: str | None,
                   messaging_profile_id: str | None = None) -> SendResult:
        payload = {"from": from_, "to": to, "body": text}
        if webhook_url:
            payload["delivery_status_webhook_url"] = webhook_url
        body = await self._request("POST", "/messages", {"x-profile-secret": secret}, payload)
        return SendResult(_str(body.get("sms_id")), _str(body.get("status")) or "queued", body.get("parts"))

    async def fetch(self, *, secret: str, telnyx_id: str) -> dict[str, Any]:
        return await self._request("GET", f"/messages/{telnyx_id}", {"x-profile-secret": secret})


class V2Client(_HttpClient):
    """``POST {api_base}/messages`` with a Bearer API key (Telnyx's current API)."""

    def __init__(self, base_url: str, timeout: float, transport: httpx.AsyncBaseTransport | None, api_key: str) -> None:
        super().__init__(base_url, timeout, transport)
        self._auth = {"authorization": f"Bearer {api_key}"}

    async def send(self, *, secret: str, from_: str, to: str, text: str, webhook_url: str | None,
                   messaging_profile_id: str | None = None) -> SendResult:
        payload = {"from": from_, "to": to, "text": text}
        if webhook_url:
            payload["webhook_url"] = webhook_url
        if messaging_profile_id:  # given for an alphanumeric sender ID, where the spec requires it
            payload["messaging_profile_id"] = messaging_profile_id
        body = await self._request("POST", "/messages", self._auth, payload)
        data = body.get("data")
        if not isinstance(data, dict):
            data = {}
        recipients = data.get("to") if isinstance(data.get("to"), list) else []
        status = recipients[0].get("status") if recipients and isinstance(recipients[0], dict) else None
        return SendResult(_str(data.get("id")), _str(status) or "queued", data.get("parts"))

    async def fetch(self, *, secret: str, telnyx_id: str) -> dict[str, Any]:
        body = await self._request("GET", f"/messages/{telnyx_id}", self._auth)
        data = body.get("data")
        return data if isinstance(data, dict) else body


class SandboxClient:
    """Sends nothing: every message is accepted with status ``sandbox`` and logged."""

    async def send(self, *, secret: str, from_: str, to: str, text: str, webhook_url: str | None,
                   messaging_profile_id: str | None = None) -> SendResult:
        log.info("sandbox: not sending %s -> %s: %r", from_, to, text)
        return SendResult(f"sandbox-{uuid.uuid4()}", "sandbox")

    async def fetch(self, *, secret: str, telnyx_id: str) -> dict[str, Any]:
        raise SendError("sandbox mode: there is no Telnyx to ask")

    async def aclose(self) -> None:
        pass


def make_client(config: Config, transport: httpx.AsyncBaseTransport | None = None) -> TelnyxClient:
    """The client the config asks for: sandbox, V1 (the default) or V2."""
    if config.bot.sandbox:
        return SandboxClient()
    telnyx = config.telnyx
    if telnyx.api_version == 2:
        return V2Client(telnyx.api_base, config.sending.timeout, transport, telnyx.api_key or "")
    return V1Client(telnyx.api_base, config.sending.timeout, transport)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
