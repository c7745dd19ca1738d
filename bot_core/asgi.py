"""The Starlette app: routes and lifespan, nothing else."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .bot import Bot
from .errors import WebhookError
from .webhooks import parse_webhook

log = logging.getLogger("bot_core.asgi")

MAX_BODY = 64 * 1024


async def _read_body(request: Request) -> bytes:
    """The request body, refused (413) before it is read whole when it is over MAX_BODY."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise WebhookError("Content-Length is not a number", 400)
        if int(declared) > MAX_BODY:
            raise WebhookError(f"body is {declared} bytes; the limit is {MAX_BODY}", 413)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                raise WebhookError(f"body is over the limit of {MAX_BODY} bytes", 413)
            chunks.append(chunk)
    except ClientDisconnect:
        raise WebhookError("client disconnected before sending the whole body", 400) from None
    return b"".join(chunks)


def create_app(bot: Bot) -> Starlette:
    """The ASGI app serving ``bot``: webhooks, health and metrics."""

    async def telnyx_webhook(request: Request) -> Response:
        if not bot.started:
            return JSONResponse({"ok": False, "error": "the bot is stopping"}, status_code=503)
        kind = "unknown"
        try:
            body = await _read_body(request)
            webhook = parse_webhook(body)
            kind = webhook.kind
            bot.verify(webhook, body, request.headers)
            answer = await bot.accept(webhook)
        except WebhookError as exc:
            bot.metrics.webhooks.labels(kind, str(exc.status)).inc()
            if exc.status >= 500 or exc.status in (401, 403):
                log.warning("webhook refused (%d): %s", exc.status, exc.reason)
            return JSONResponse({"ok": False, "error": exc.reason}, status_code=exc.status)
        bot.metrics.webhooks.labels(kind, "200").inc()
        return JSONResponse(answer)

    async def healthz(request: Request) -> Response:
        if await bot.healthy():
            return JSONResponse({"ok": True})
        return JSONResponse({"ok": False, "error": "the database cannot take a write"}, status_code=503)

    async def metrics(request: Request) -> Response:
        return Response(bot.metrics.render(), media_type="text/plain; version=0.0.4")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await bot.start()
        try:
            yield
        finally:
            await bot.stop()

    return Starlette(
        routes=[
            Route("/webhooks/telnyx", telnyx_webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
