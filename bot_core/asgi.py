"""The Starlette app: routes and lifespan, nothing else.

``POST /webhooks/telnyx`` is served by a plain ASGI function ahead of Starlette's router: the
acknowledgement path is the one a burst of webhooks runs thousands of times a second, and
Starlette's middleware, routing, Request and JSONResponse cost ≈ 20 µs of its ≈ 190. The answers
are the same bytes and headers a JSONResponse gives; every other request goes to Starlette.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from prometheus_client import Counter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Receive, Scope, Send

from .bot import Bot
from .errors import WebhookError
from .webhooks import parse_webhook

log = logging.getLogger("bot_core.asgi")

MAX_BODY = 64 * 1024
WEBHOOK_PATH = "/webhooks/telnyx"


async def _read_body(headers: dict[str, str], receive: Receive) -> bytes:
    """The request body, refused (413) before it is read whole when it is over MAX_BODY."""
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise WebhookError("Content-Length is not a number", 400)
        if int(declared) > MAX_BODY:
            raise WebhookError(f"body is {declared} bytes; the limit is {MAX_BODY}", 413)
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise WebhookError("client disconnected before sending the whole body", 400)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise WebhookError(f"body is over the limit of {MAX_BODY} bytes", 413)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _headers(scope: Scope) -> dict[str, str]:
    """The request headers by lower-case name; the first of a repeated one wins, as in Starlette."""
    headers: dict[str, str] = {}
    for name, value in reversed(scope["headers"]):
        headers[name.decode("latin-1").lower()] = value.decode("latin-1")
    return headers


async def _answer(send: Send, content: dict[str, Any], status: int = 200) -> None:
    """What ``JSONResponse(content, status)`` sends, without building one."""
    body = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


class _Endpoint:
    """A plain ASGI endpoint: Starlette's Route calls an object (not a function) as an ASGI app."""

    def __init__(self, handle: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.handle = handle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handle(scope, receive, send)


class _App(Starlette):
    """Starlette, with ``POST /webhooks/telnyx`` answered before the middleware and the router
    (the router still has the route: other methods get their 405, a trailing slash its redirect)."""

    def __init__(self, webhook: _Endpoint, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.webhook = webhook.handle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == WEBHOOK_PATH and scope["method"] == "POST":
            await self.webhook(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(bot: Bot) -> Starlette:
    """The ASGI app serving ``bot``: webhooks, health, metrics and, when enabled, the inbox."""
    counted = bot.metrics.webhooks.labels  # children cached by (kind, outcome): one dict lookup each
    children: dict[tuple[str, str], Counter] = {}

    def count(kind: str, outcome: str) -> None:
        child = children.get((kind, outcome))
        if child is None:
            child = children[kind, outcome] = counted(kind, outcome)
        child.inc()

    async def telnyx_webhook(scope: Scope, receive: Receive, send: Send) -> None:
        if not bot.started:
            return await _answer(send, {"ok": False, "error": "the bot is stopping"}, 503)
        kind = "unknown"
        try:
            headers = _headers(scope)
            body = await _read_body(headers, receive)
            webhook = parse_webhook(body)
            kind = webhook.kind
            bot.verify(webhook, body, headers)
            answer = await bot.accept(webhook)
        except WebhookError as exc:
            count(kind, str(exc.status))
            if exc.status >= 500 or exc.status in (401, 403):
                log.warning("webhook refused (%d): %s", exc.status, exc.reason)
            return await _answer(send, {"ok": False, "error": exc.reason}, exc.status)
        count(kind, "200")
        await _answer(send, answer)

    webhook = _Endpoint(telnyx_webhook)

    async def healthz(request: Request) -> Response:
        if await bot.healthy():
            return JSONResponse({"ok": True})
        return JSONResponse({"ok": False, "error": "the database cannot take a write"}, status_code=503)

    async def metrics(request: Request) -> Response:
        return Response(bot.metrics.render(), media_type="text/plain; version=0.0.4")

    routes: list[BaseRoute] = [
        Route(WEBHOOK_PATH, webhook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    inbox = None
    if bot.config.inbox.enabled:
        from .inbox.routes import Inbox  # Jinja2, Argon2 and sessions only load when it is on

        inbox = Inbox(bot)
        routes.append(Mount("/inbox", app=inbox))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await bot.start()
        try:
            yield
        finally:
            if inbox is not None:
                inbox.close()
            await bot.stop()

    return _App(webhook, routes=routes, lifespan=lifespan)
