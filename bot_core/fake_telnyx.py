"""A fake Telnyx messaging API for tests and benchmarks: in-process, or a real server on loopback.

It answers ``POST /messages`` the way V1 does (and V2 under ``/v2``), records every request,
and can be told to misbehave: answer 429 or 5xx, refuse an opted-out recipient (40300), or
stall past the client's timeout.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


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
    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    delay: float


class FakeTelnyx:
    """The fake. ``requests`` lists what it received; ``sent`` the messages it accepted."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.sent: list[Recorded] = []
        self.opted_out: set[str] = set()
        self.messages: dict[str, dict[str, Any]] = {}
        self._faults: deque[_Fault] = deque()
        self._lock = threading.Lock()
        self.app = Starlette(routes=[
            Route("/messages", self._send, methods=["POST"]),
            Route("/v2/messages", self._send, methods=["POST"]),
            Route("/messages/{sms_id}", self._get, methods=["GET"]),
            Route("/v2/messages/{sms_id}", self._get, methods=["GET"]),
        ])  # fmt: skip
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- scripting --------------------------------------------------------------------------

    def fail(self, status: int = 500, times: int = 1, *, retry_after: float | None = None,
             code: str = "10007", delay: float = 0.0) -> None:  # fmt: skip
        """Answer the next ``times`` sends with ``status`` (after ``delay`` seconds)."""
        headers = {"retry-after": str(retry_after)} if retry_after is not None else {}
        body = {"success": False, "status": status, "code": code, "message": f"fake error {status}"}
        with self._lock:
            self._faults.extend(_Fault(status, body, headers, delay) for _ in range(times))

    def stall(self, seconds: float, times: int = 1) -> None:
        """Answer the next ``times`` sends only after ``seconds`` (to provoke client timeouts)."""
        with self._lock:
            self._faults.extend(_Fault(0, {}, {}, seconds) for _ in range(times))

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self.sent.clear()
            self._faults.clear()

    # -- the API ----------------------------------------------------------------------------

    async def _send(self, request: Request) -> Response:
        try:
            payload = json.loads(await request.body())
        except ValueError:
            payload = None
        record = Recorded(request.method, request.url.path, dict(request.headers), payload)
        v2 = request.url.path.startswith("/v2")
        with self._lock:
            self.requests.append(record)
            fault = self._faults.popleft() if self._faults else None
        if fault is not None:
            await asyncio.sleep(fault.delay)
            if fault.status:
                return JSONResponse(_v2_error(fault) if v2 else fault.body, fault.status, fault.headers)
        if not isinstance(payload, dict) or not all(isinstance(payload.get(k), str) for k in ("from", "to")):
            return JSONResponse({"success": False, "status": 400, "code": "10002", "message": "bad request"}, 400)
        if payload["to"] in self.opted_out:
            fault = _Fault(400, {"success": False, "status": 400, "code": "40300",
                                 "message": "Blocked due to STOP message"}, {}, 0)  # fmt: skip
            return JSONResponse(_v2_error(fault) if v2 else fault.body, 400)
        sms_id = str(uuid.uuid4())
        text = payload.get("text" if v2 else "body", "")
        with self._lock:
            self.sent.append(record)
            self.messages[sms_id] = {"sms_id": sms_id, "status": "queued",
                                     "msg": {"src": payload["from"], "dst": payload["to"], "body": text}}  # fmt: skip
        if v2:
            return JSONResponse({"data": {"id": sms_id, "to": [{"phone_number": payload["to"], "status": "queued"}],
                                          "parts": 1, "text": text}})  # fmt: skip
        return JSONResponse({**self.messages[sms_id], "parts": 1, "coding": 0,
                             "delivery_status_webhook_url": payload.get("delivery_status_webhook_url", "")})  # fmt: skip

    async def _get(self, request: Request) -> Response:
        with self._lock:
            self.requests.append(Recorded("GET", request.url.path, dict(request.headers), None))
        message = self.messages.get(request.path_params["sms_id"])
        if message is None:
            return JSONResponse({"success": False, "status": 404, "code": "10005", "message": "not found"}, 404)
        return JSONResponse({"data": message} if request.url.path.startswith("/v2") else message)

    # -- serving ----------------------------------------------------------------------------

    @property
    def transport(self) -> httpx.AsyncBaseTransport:
        """An in-process transport: point ``[telnyx] api_base`` anywhere, e.g. ``http://fake``."""
        return httpx.ASGITransport(app=self.app)

    def start(self) -> str:
        """Serve on a free loopback port in a thread; returns the base URL."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
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
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(10)
            self._server = None

    def __enter__(self) -> FakeTelnyx:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _v2_error(fault: _Fault) -> dict[str, Any]:
    return {"errors": [{"code": fault.body.get("code"), "title": fault.body.get("message"),
                        "detail": fault.body.get("message")}]}  # fmt: skip
