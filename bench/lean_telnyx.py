"""The benchmark's fake Telnyx: the one request bot-core makes in the bench, answered for little CPU.

bot_core.testing.FakeTelnyx (Starlette on uvicorn, every request recorded with its headers) costs
about as much CPU per send as a quarter of bot-core's whole pipeline. On a 2-core machine that
CPU is taken from the server under test, so the bench would partly measure its own fake. This
one is an asyncio Protocol on httptools' parser (both come with uvicorn[standard]) that answers
``POST /messages`` (Telnyx V1, what the bench's config sends) exactly as FakeTelnyx answers a
send it accepts or refuses as malformed, and keeps only (arrival time, text) per message.
tests/test_bench.py holds its answers to FakeTelnyx's, through bot-core's own client.
Anything else (V2, ``GET /messages/{id}``, scripted faults) is FakeTelnyx's job: here it is 404.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, cast

import httptools

from bot_core.segments import count_segments

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found"}


class LeanTelnyx:
    """Accepts V1 sends; :meth:`count` and :meth:`take` say what arrived, at no cost per message."""

    def __init__(self) -> None:
        self._arrivals: list[tuple[float, str]] = []
        self._texts: set[str] = set()  # distinct texts since the last take: a text sent twice counts once
        self._server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host``:``port`` (0: a free port) in the running loop; returns the base URL."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port)
        return f"http://{host}:{self._server.sockets[0].getsockname()[1]}"

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    def count(self) -> int:
        """Distinct texts accepted since the last :meth:`take`."""
        return len(self._texts)

    def take(self) -> list[tuple[float, str]]:
        """(time received, text) of every message accepted since the last call."""
        taken, self._arrivals = self._arrivals, []
        self._texts = set()
        return taken

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """The status and JSON answer FakeTelnyx gives (bot_core/testing/fake_telnyx.py, ``_send``)."""
        if method != "POST" or path != "/messages":
            return 404, _refusal(404, "10005", "Resource not found (the bench's fake Telnyx serves V1 sends only)")
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict) or not all(isinstance(payload.get(k), str) for k in ("from", "to")):
            return 400, _refusal(400, "10002", "bad request: 'from' and 'to' must be strings")
        text = payload.get("body", "")
        at = time.time()
        self._arrivals.append((at, text))
        self._texts.add(text)
        segments = count_segments(text, payload["from"])
        return 200, {"sms_id": str(uuid.uuid4()), "status": "queued",
                     "msg": {"src": payload["from"], "dst": payload["to"], "body": text},
                     "parts": segments.parts, "coding": 0 if segments.encoding == "GSM-7" else 8,
                     "delivery_status_webhook_url": payload.get("delivery_status_webhook_url", "")}  # fmt: skip


def _refusal(status: int, code: str, message: str) -> dict[str, Any]:
    return {"success": False, "status": status, "code": code, "message": message}


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: each request answered as soon as its body is complete."""

    def __init__(self, fake: LeanTelnyx) -> None:
        self._fake = fake
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._write(400, _refusal(400, "10002", "malformed HTTP request"), keep_alive=False)

    # httptools' callbacks
    def on_message_begin(self) -> None:
        self._url, self._body = b"", []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        path = httptools.parse_url(self._url).path.decode()
        status, answer = self._fake.answer(self._parser.get_method().decode(), path, b"".join(self._body))
        self._write(status, answer, keep_alive=self._parser.should_keep_alive())

    def _write(self, status: int, answer: dict[str, Any], *, keep_alive: bool) -> None:
        assert self._transport is not None
        # Starlette's JSONResponse encoding, so that the bytes match FakeTelnyx's too.
        body = json.dumps(answer, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
        head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n" + ("" if keep_alive else "connection: close\r\n") + "\r\n")  # fmt: skip
        self._transport.write(head.encode() + body)
        if not keep_alive:
            self._transport.close()
