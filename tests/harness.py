"""In-process bots for the reliability tests: a real Bot and ASGI app, a scripted Telnyx.

The bot runs in the test's own event loop (anyio's pytest plugin), so a test can post webhooks,
let plugins block on events it controls, and look at the database between steps. Only the
test's plugins are loaded: no bundled or installed plugin joins in.
"""

from __future__ import annotations

import asyncio
import json
import time
import types
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pluggy

from bot_core import Bot, Config, hookimpl, hookspecs
from bot_core.asgi import create_app
from bot_core.plugins import Plugins
from bot_core.webhooks import sign_v1

SECRET = "in-process-profile-secret"
OURS = "+13125550100"
OTHER = "+13125550101"  # a second number of the same profile
THEIRS = "+13125550123"


def plugin(name: str, **hooks: Callable[..., Any]) -> types.ModuleType:
    """A plugin module named ``name`` implementing ``hooks``."""
    module = types.ModuleType(name)
    for hook, function in hooks.items():
        setattr(module, hook, hookimpl(function))
    return module


def make_config(tmp_path: Path, plugins: list[str], *, bot: dict | None = None, sending: dict | None = None,
                telnyx: dict | None = None, profiles: dict | None = None) -> Config:  # fmt: skip
    """A config with one profile owning OURS and OTHER; sending backs off in milliseconds."""
    profile = {"secret": SECRET, "numbers": [OURS, OTHER], "plugins": plugins}
    return Config.from_dict(
        {
            "bot": {"database": "${BOT_CORE_DATABASE:-bot.db}", **(bot or {})},
            "telnyx": {"api_base": "http://telnyx.test", **(telnyx or {})},
            "sending": {"backoff_initial": "10ms", "backoff_max": "50ms", **(sending or {})},
            "profiles": profiles or {"main": profile},
        },
        base_dir=tmp_path,
    )


def registry(*modules: types.ModuleType) -> Plugins:
    manager = pluggy.PluginManager("bot_core")
    manager.add_hookspecs(hookspecs)
    plugins = Plugins(manager)
    for module in modules:
        manager.register(module, name=module.__name__)
        plugins.sources[module.__name__] = "test"
    return plugins


@dataclass
class Call:
    """One request the scripted Telnyx received."""

    at: float
    json: dict[str, Any]
    headers: dict[str, str]
    answer: Any = None

    @property
    def text(self) -> str:
        return self.json.get("body", self.json.get("text"))


@dataclass
class ScriptedTelnyx:
    """Telnyx's messaging API as an httpx MockTransport that answers from a script.

    Each answer is an int (a status with a V1 error body), an ``httpx.Response``, an exception
    to raise (ConnectError, ReadTimeout), or a callable ``(request) -> answer`` (it may be a
    coroutine function, to stall). When the script is empty every send is accepted.
    """

    calls: list[Call] = field(default_factory=list)
    script: deque = field(default_factory=deque)
    by_recipient: dict[str, deque] = field(default_factory=dict)

    def then(self, *answers: Any, to: str | None = None) -> None:
        (self.script if to is None else self.by_recipient.setdefault(to, deque())).extend(answers)

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    @property
    def accepted(self) -> list[Call]:
        return [c for c in self.calls if isinstance(c.answer, httpx.Response) and c.answer.status_code == 200]

    def texts(self, to: str | None = None) -> list[str]:
        """Texts Telnyx accepted, in the order it accepted them."""
        return [c.text for c in self.accepted if to is None or c.json["to"] == to]

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        call = Call(time.monotonic(), json.loads(request.content), dict(request.headers))
        self.calls.append(call)
        queue = self.by_recipient.get(call.json["to"])
        answer = queue.popleft() if queue else self.script.popleft() if self.script else None
        while callable(answer):
            answer = answer(request)
            if asyncio.iscoroutine(answer):
                answer = await answer
        if isinstance(answer, Exception):
            call.answer = answer
            raise answer
        if isinstance(answer, int):
            answer = httpx.Response(answer, json={"success": False, "status": answer, "code": "10007",
                                                  "message": f"scripted {answer}"})  # fmt: skip
        if answer is None:
            answer = httpx.Response(200, json={"sms_id": str(uuid.uuid4()), "status": "queued", "parts": 1})
        call.answer = answer
        return answer


class Running:
    """A started bot with its ASGI app; use as ``async with Running(config, telnyx, plugins) as run``."""

    def __init__(self, config: Config, telnyx: ScriptedTelnyx | None = None, *modules: types.ModuleType) -> None:
        self.config = config
        self.telnyx = telnyx or ScriptedTelnyx()
        self.plugins = registry(*modules)
        self.plugins.check(config)
        self.bot = Bot(config, plugins=self.plugins, transport=self.telnyx.transport)
        self.http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Running:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        await self.bot.start()
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(self.bot)), base_url="http://bot")

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.aclose()
            self.http = None
        await self.bot.stop()

    async def restart(self) -> None:
        """A new Bot on the same database, as a process restart gives."""
        await self.stop()
        self.bot = Bot(self.config, plugins=self.plugins, transport=self.telnyx.transport)
        await self.start()

    async def post(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return await self.http.post("/webhooks/telnyx", content=body,
                                    headers={"content-type": "application/json", **headers})  # fmt: skip

    async def text(
        self, text: str, *, from_: str = THEIRS, to: str = OURS, sms_id: str | None = None
    ) -> httpx.Response:
        body, headers = v1_inbound(text, from_=from_, to=to, sms_id=sms_id)
        response = await self.post(body, headers)
        assert response.status_code == 200, response.text
        return response

    async def settle(self, timeout: float = 10) -> None:
        assert await self.bot.idle(timeout), "the bot did not settle"

    def mdrs(self, **filters: Any) -> list[dict[str, Any]]:
        """MDRs oldest first, filtered by column values."""
        rows = list(reversed(self.bot.store.mdrs(limit=None)))
        return [r for r in rows if all(r[k] == v for k, v in filters.items())]


def v1_inbound(text: str, *, from_: str = THEIRS, to: str = OURS, sms_id: str | None = None,
               secret: str = SECRET) -> tuple[bytes, dict[str, str]]:  # fmt: skip
    body = json.dumps({"sms_id": sms_id or str(uuid.uuid4()), "direction": "inbound", "from": from_,
                       "to": to, "body": text}).encode()  # fmt: skip
    return body, {"x-telnyx-signature": sign_v1(body, secret)}


async def eventually(predicate: Callable[[], Any], timeout: float = 10, interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")
