"""The inbox's pages: login, the conversation list, a conversation, its actions, live events.

Pages are rendered on the server; ``?partial=1`` renders just the live region. On a list page
``static/inbox.js`` is sent that region over the event stream when it changes (one render serves
every open list of the same view, and no open inbox makes requests of its own); on a
conversation page it fetches the region again when the stream names that conversation. Reads
are the store's (either engine) and run in worker threads (:func:`.reader.run`); the few writes (take over, hand back, reply) are single
short statements on the bot's own connection, like a plugin's ``bot.send``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
from starlette.applications import Starlette
from starlette.datastructures import URL
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import Receive, Scope, Send

from .. import handoff
from ..bot import Bot
from ..messages import Conversation
from . import operators, reader
from .auth import SESSION_COOKIE, SESSION_SECONDS, Throttle, checked_form, csrf_token, session_key
from .notifier import Notifier, Subscription
from .operators import Operator

log = logging.getLogger("bot_core.inbox")

HERE = Path(__file__).parent
HEARTBEAT = 15.0  # seconds between keep-alive comments on an idle event stream
LIST_GAP = 1.0  # seconds at least between two lists pushed to one open inbox: a busy list changes at every poll
# No inline script or style, no framing, forms post only here.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


class Inbox:
    """The ASGI app mounted at ``/inbox``; built at its first request, once the bot has started
    (the session key may live in the database)."""

    def __init__(self, bot: Bot) -> None:
        self.bot = bot
        settings = bot.config.inbox
        self.notifier = Notifier(lambda: bot.store, settings.poll_interval)
        # The list's live region as last rendered, by what it depends on: every open inbox of a
        # view is sent it after each change, and one render serves them all (see :meth:`list_body`).
        self._lists: dict[tuple[Any, ...], tuple[int, asyncio.Task[bytes]]] = {}
        self.throttle = Throttle(settings.login_delay)
        self.templates = Jinja2Templates(directory=HERE / "templates")
        self._app: Starlette | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is None:
            self._app = self._build()
        await self._app(scope, receive, send)

    def close(self) -> None:
        self.notifier.close()

    def _build(self) -> Starlette:
        config = self.bot.config
        routes = [
            Route("/", self.index, methods=["GET"]),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/c/{id:int}", self.conversation, methods=["GET"]),
            Route("/c/{id:int}/reply", self.reply, methods=["POST"]),
            Route("/c/{id:int}/take", self.take, methods=["POST"]),
            Route("/c/{id:int}/release", self.release, methods=["POST"]),
            Route("/events", self.events, methods=["GET"]),
            Mount("/static", StaticFiles(directory=HERE / "static")),
        ]
        session = Middleware(
            SessionMiddleware, secret_key=session_key(self.bot.store, config.inbox.secret_key),
            session_cookie=SESSION_COOKIE, max_age=SESSION_SECONDS, path="/inbox", same_site="lax",
            https_only=(config.bot.public_url or "").startswith("https://"),
        )  # fmt: skip
        return Starlette(routes=routes, middleware=[session], exception_handlers={HTTPException: self.error})

    # -- helpers ------------------------------------------------------------------------------

    def render(self, request: Request, template: str, status: int = 200, **context: Any) -> Response:
        context.update(base=request.scope.get("root_path", ""), csrf=csrf_token(request))
        response = self.templates.TemplateResponse(request, template, context, status_code=status)
        response.headers.update(SECURITY_HEADERS)
        return response

    async def operator(self, request: Request) -> Operator | None:
        name = request.session.get("operator")
        return await self.find(name) if name else None

    async def find(self, name: str) -> Operator | None:
        # Every request asks (a removed operator is out at once): inline on SQLite, where one
        # indexed read costs less than a hop to a thread; off the loop on PostgreSQL.
        return await self.bot.store.read(operators.find, self.bot.store, name)

    async def require(self, request: Request) -> Operator:
        """The signed-in operator; otherwise a page goes to the login page and an action is refused."""
        operator = await self.operator(request)
        if operator is None:
            if request.method == "GET":
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                raise HTTPException(303, headers={"location": f"{self.base(request)}/login?next={quote(target)}"})
            raise HTTPException(401, "Sign in first.")
        return operator

    @staticmethod
    def base(request: Request) -> str:
        root_path: str = request.scope.get("root_path", "")
        return root_path

    async def visible(self, request: Request, operator: Operator) -> dict[str, Any]:
        """The conversation in the URL, or 404 when it does not exist or is another profile's."""
        found = await reader.run(reader.conversation, self.bot.store, operator, request.path_params["id"])
        if found is None:
            raise HTTPException(404, "No such conversation.")
        return found

    async def error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 303 and exc.headers:  # raised with the location to go to
            return RedirectResponse(exc.headers["location"], 303)
        return self.render(request, "error.html", exc.status_code, message=exc.detail, operator=None)

    def back(self, request: Request, conversation_id: int) -> Response:
        return RedirectResponse(f"{self.base(request)}/c/{conversation_id}", 303)

    # -- sign in and out ----------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        target = request.query_params.get("next", "")
        if not target.startswith(self.base(request) + "/"):  # only back into the inbox
            target = f"{self.base(request)}/"
        if request.method == "GET":
            return self.render(request, "login.html", next=target, operator=None)
        form = await checked_form(request)
        name, password = form.get("username", "").strip(), form.get("password", "")
        client = f"client:{request.client.host if request.client else '?'}"
        keys = (f"name:{name.casefold()}", client)
        wait = self.throttle.wait(*keys)
        if wait:
            return self.render(request, "login.html", 429, next=target, operator=None, username=name,
                               error=f"Too many failed sign-ins. Try again in {wait:.0f} s.")  # fmt: skip
        found = await reader.run(operators.authenticate, self.bot.store, name, password)
        if found is None:
            wait = self.throttle.failed(*keys)
            log.warning("inbox sign-in refused for %r from %s", name, client)
            return self.render(request, "login.html", 401, next=target, operator=None, username=name,
                               error=f"Wrong username or password. Wait {wait:.0f} s before trying again.")  # fmt: skip
        self.throttle.succeeded(keys[0])
        request.session.clear()  # a new session: no token from before the login survives
        request.session["operator"] = found.name
        csrf_token(request)
        log.info("inbox sign-in: %s", found.name)
        return RedirectResponse(target, 303)

    async def logout(self, request: Request) -> Response:
        await checked_form(request)
        request.session.clear()
        return RedirectResponse(f"{self.base(request)}/login", 303)

    # -- pages --------------------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        operator = await self.require(request)
        base, view = self.base(request), _view(request)
        if request.query_params.get("partial"):
            body = await self.list_body(base, operator, *view)
            return Response(body, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)
        return self.render(request, "list.html", operator=operator, **await self._list(base, operator, *view))

    async def list_body(self, base: str, operator: Operator, waiting: bool, query: str, before: str | None) -> bytes:
        """The list's live region: rendered once per notifier generation for every open inbox of
        one view (ten open inboxes cost one render a change, not ten)."""
        key = (base, operator.profiles, waiting, query, before)
        generation = self.notifier.generation
        cached = self._lists.get(key)
        if cached is None or cached[0] != generation or cached[1].cancelled():
            if len(self._lists) > 256:
                self._lists.clear()

            async def render() -> bytes:
                context = await self._list(base, operator, waiting, query, before)
                return self.templates.get_template("_list.html").render(base=base, **context).encode()

            # A task of its own: those asking together await one render.
            cached = self._lists[key] = (generation, asyncio.ensure_future(render()))
        try:
            return await asyncio.shield(cached[1])
        except Exception:
            self._lists.pop(key, None)
            raise

    async def _list(self, base: str, operator: Operator, waiting: bool, query: str,
                    before: str | None) -> dict[str, Any]:  # fmt: skip
        """What the list templates show."""
        rows = await reader.run(reader.conversations, self.bot.store, operator, waiting=waiting, query=query,
                                before=before)  # fmt: skip
        older = None
        if len(rows) == reader.PAGE:
            kept = {"waiting": "1"} if waiting else {}
            if query:
                kept["q"] = query
            older = str(
                URL(f"{base}/").include_query_params(**kept, before=f"{rows[-1]['last_message_at']} {rows[-1]['id']}")
            )
        return {"rows": rows, "waiting": waiting, "query": query, "older": older}

    async def conversation(self, request: Request) -> Response:
        operator = await self.require(request)
        found = await self.visible(request, operator)
        template = "_thread.html" if request.query_params.get("partial") else "conversation.html"
        return self.render(request, template, operator=operator, c=found)

    # -- actions ------------------------------------------------------------------------------

    async def _act(self, request: Request) -> tuple[Operator, dict[str, str], Conversation]:
        form = await checked_form(request)
        operator = await self.require(request)
        found = await self.visible(request, operator)
        conversation = self.bot.store.conversation_by_id(found["id"])
        assert conversation is not None  # conversations are never deleted
        return operator, form, conversation

    async def take(self, request: Request) -> Response:
        operator, _, conversation = await self._act(request)
        handoff.hand_over(self.bot, conversation, f"taken over by {operator.name}", operator=operator.name)
        return self.back(request, conversation.id)

    async def release(self, request: Request) -> Response:
        operator, _, conversation = await self._act(request)
        handoff.hand_back(self.bot, conversation, f"handed back by {operator.name}", operator=operator.name)
        return self.back(request, conversation.id)

    async def reply(self, request: Request) -> Response:
        """Send an operator's reply from the number the customer texted, through the outbox.

        Replying takes the conversation over: the bot must not answer the customer's next
        message in the middle of a person's conversation."""
        operator, form, conversation = await self._act(request)
        text = form.get("text", "").strip()
        if not text:
            raise HTTPException(400, "Write a reply first.")
        bot = self.bot
        if bot.is_opted_out(conversation.profile, conversation.their_number):
            raise HTTPException(409, "This customer opted out (texted STOP): nothing can be sent to them.")
        handoff.hand_over(bot, conversation, f"taken over by {operator.name}", operator=operator.name)
        with bot.store.transaction() as conn:
            mdr_id = bot.send(conversation.their_number, text, profile=conversation.profile,
                              from_number=conversation.our_number)  # fmt: skip
            conn.execute("UPDATE mdrs SET operator = ? WHERE id = ?", (operator.name, mdr_id))
        handoff.touch(bot, conversation.id, operator.name)
        log.info("operator %s replied in conversation %d (MDR %d)", operator.name, conversation.id, mdr_id,
                 extra={"conversation_id": conversation.id, "mdr_id": mdr_id})  # fmt: skip
        return self.back(request, conversation.id)

    # -- live updates -------------------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        """The event stream; ``?list=1`` and a list page's query: that list's live region."""
        operator = await self.operator(request)
        if operator is None:
            raise HTTPException(401, "Sign in first.")
        subscription = self.notifier.subscribe(operator)
        if not request.query_params.get("list"):
            return EventStream(self, subscription)
        base, view = self.base(request), _view(request)
        return EventStream(self, subscription, lambda: self.list_body(base, operator, *view))


def _view(request: Request) -> tuple[bool, str, str | None]:
    """The list a request asks for: (only those waiting for a person, search, page after)."""
    params = request.query_params
    return params.get("waiting") == "1", params.get("q", ""), params.get("before")


class EventStream(Response):
    """Server-sent events: ``change`` with the ids of changed conversations the operator may see;
    or, given ``view`` (a list page's stream), ``list`` with that list's live region, at once
    and then after changes, at most once every ``LIST_GAP`` seconds.

    Ends when the browser goes away (watched on ``receive``, so a closed tab unsubscribes at
    once rather than at the next write), when the notifier closes, and, on a list's stream,
    when its operator is removed or their profiles change (the browser then reconnects, and is
    refused or sees what it now may).
    """

    media_type = "text/event-stream"

    def __init__(self, inbox: Inbox, subscription: Subscription,
                 view: Callable[[], Awaitable[bytes]] | None = None) -> None:  # fmt: skip
        self.status_code = 200
        self.background = None
        self.init_headers({**SECURITY_HEADERS, "x-accel-buffering": "no"})  # no body: no Content-Length
        self.inbox = inbox
        self.notifier = inbox.notifier
        self.subscription = subscription
        self.view = view

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async with anyio.create_task_group() as group:

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(watch)
                await self._stream(send)
                group.cancel_scope.cancel()
        except OSError:  # the connection broke mid-send
            pass
        finally:
            self.notifier.unsubscribe(self.subscription)

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.body", "body": b"retry: 2000\n\n", "more_body": True})
        queue = self.subscription.queue
        loop = asyncio.get_running_loop()
        # A list's stream starts with the list: what changed since its page was rendered.
        pushed = loop.time()
        if self.view is not None and not await self._push(send):
            return await self._end(send)
        while True:
            try:
                ids = await asyncio.wait_for(queue.get(), HEARTBEAT)
            except TimeoutError:
                await send({"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True})
                continue
            if ids is None:
                return await self._end(send)
            if self.view is None:
                body = f"event: change\ndata: {json.dumps(sorted(ids))}\n\n".encode()
                await send({"type": "http.response.body", "body": body, "more_body": True})
                continue
            await asyncio.sleep(pushed + LIST_GAP - loop.time())  # changes meanwhile make one push
            while not queue.empty():
                if queue.get_nowait() is None:
                    return await self._end(send)
            pushed = loop.time()
            if not await self._push(send):
                return await self._end(send)

    async def _push(self, send: Send) -> bool:
        """Send the list's live region; False when its operator is no longer who it was."""
        assert self.view is not None
        operator = self.subscription.operator
        if await self.inbox.find(operator.name) != operator:
            return False
        try:
            html = await self.view()
        except Exception:  # a failed read: the next change tries again
            log.exception("cannot render the inbox's list")
            return True
        await send({"type": "http.response.body", "body": _list_event(html), "more_body": True})
        return True

    @staticmethod
    async def _end(send: Send) -> None:
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@functools.lru_cache(maxsize=16)
def _list_event(html: bytes) -> bytes:
    """A rendered list as a ``list`` event: framed once for every open inbox of the view, which
    all get the same rendered bytes. One "data:" line per line; the browser joins them with
    "\\n", and CR ends a line in SSE too."""
    lines = html.decode().replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return ("event: list\n" + "".join(f"data: {line}\n" for line in lines) + "\n").encode()
