"""The harness plugin authors test with: a real bot, in-process, driven from plain sync code.

::

    from bot_core.testing import BotTester

    def test_echo(tmp_path):
        config = {"profiles": {"main": {"secret": "s", "numbers": ["+13125550100"], "plugins": ["echo"]}}}
        with BotTester(config, tmp_path=tmp_path) as bot:
            assert bot.text("hi") == ["echo hi #1"]

Each message goes through the real pipeline: a signed V1 webhook into the ASGI app, the inbox,
plugins, state, opt-outs, the outbox and the sender. Sending is sandboxed unless a
:class:`~bot_core.fake_telnyx.FakeTelnyx` is given. Only bot-core's bundled plugins, the
``plugins`` passed in and ``installed`` names are loaded: nothing installed on the machine leaks
in. This module does not import pytest (fixtures are in ``bot_core.pytest_plugin``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal

from .asgi import create_app
from .bot import Bot
from .config import Config, load_config, parse_duration
from .fake_telnyx import FakeTelnyx
from .plugins import load_plugins
from .store import BLOCKED, FAILED
from .webhooks import sign_v1

CUSTOMER = "+13125550123"


class FakeClock:
    """A clock that moves only when told: pass it to a bot, then ``advance`` it."""

    def __init__(self, start: datetime | float | None = None) -> None:
        self.now = _epoch(start) if start is not None else time.time()

    def __call__(self) -> float:
        return self.now

    def set(self, when: datetime | float) -> None:
        self.now = _epoch(when)

    def advance(self, delta: float | str) -> None:
        self.now += parse_duration(delta)


def _epoch(when: datetime | float) -> float:
    if isinstance(when, datetime):
        return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()
    return float(when)


def build_config(config: Config | Mapping[str, Any] | str | os.PathLike, directory: Path, *, fake: bool) -> Config:
    """The config to test with: its database in ``directory``, sending sandboxed or to a fake."""
    if isinstance(config, (str, os.PathLike)):
        config = load_config(config)
    elif not isinstance(config, Config):
        config = Config.from_dict(config, base_dir=directory)
    database = config.bot.database
    if not database.is_relative_to(directory):
        database = directory / database.name
    bot = dataclasses.replace(config.bot, database=database, sandbox=not fake)
    telnyx = config.telnyx
    if fake:
        api_base = "http://fake-telnyx/v2" if telnyx.api_version == 2 else "http://fake-telnyx"
        telnyx = dataclasses.replace(telnyx, api_base=api_base)
    return dataclasses.replace(config, bot=bot, telnyx=telnyx)


class BotTester:
    """A started bot plus helpers to text it and read what it sent. Use it as a context manager."""

    def __init__(
        self,
        config: Config | Mapping[str, Any] | str | os.PathLike,
        *,
        tmp_path: str | os.PathLike | None = None,
        plugins: Iterable[ModuleType | object] = (),
        installed: Sequence[str] = (),
        clock: FakeClock | None = None,
        telnyx: FakeTelnyx | None = None,
        customer: str = CUSTOMER,
    ) -> None:
        self._tmp = None if tmp_path is not None else tempfile.TemporaryDirectory()
        directory = Path(tmp_path if tmp_path is not None else self._tmp.name)
        self.config = build_config(config, directory, fake=telnyx is not None)
        self.clock = clock or FakeClock()
        self.telnyx = telnyx
        self.customer = customer
        registry = load_plugins(None, installed=list(installed))
        for plugin in plugins:
            name = getattr(plugin, "__name__", type(plugin).__name__).rsplit(".", 1)[-1]
            registry.manager.register(plugin, name=name)
            registry.sources[name] = "test"
        registry.check(self.config)
        self.bot = Bot(self.config, plugins=registry, clock=self.clock,
                       transport=telnyx.transport if telnyx else None)  # fmt: skip
        self._portal_cm = None
        self.portal: BlockingPortal | None = None
        self._seen = 0

    def __enter__(self) -> BotTester:
        self._portal_cm = start_blocking_portal()
        self.portal = self._portal_cm.__enter__()
        self.portal.call(self.bot.start)
        self._http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(self.bot)), base_url="http://bot")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.portal.call(self._http.aclose)
            self.portal.call(self.bot.stop)
        finally:
            self._portal_cm.__exit__(None, None, None)
            if self._tmp is not None:
                self._tmp.cleanup()

    def restart(self) -> None:
        """Stop and start the bot on the same database, as a process restart would."""
        self.portal.call(self.bot.stop)
        self.bot = Bot(self.config, plugins=self.bot.plugins, clock=self.clock,
                       transport=self.telnyx.transport if self.telnyx else None)  # fmt: skip
        self.portal.call(self.bot.start)
        self._http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(self.bot)), base_url="http://bot")

    # -- texting ----------------------------------------------------------------------------

    def post(self, payload: Mapping[str, Any] | bytes, headers: Mapping[str, str] | None = None) -> httpx.Response:
        """POST a raw webhook to the bot's ``/webhooks/telnyx`` (signed V1 unless headers given)."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        if headers is None:
            headers = {"x-telnyx-signature": self.sign(body)}
        return self.portal.call(lambda: self._http.post("/webhooks/telnyx", content=body,
                                                        headers={"content-type": "application/json", **headers}))  # fmt: skip

    def sign(self, body: bytes, number: str | None = None) -> str:
        """The V1 signature header for ``body``, keyed with ``number``'s profile secret."""
        profile = self.config.profile_for_sender(number or self.config.enabled_numbers()[0])
        return sign_v1(body, profile.secret if profile else "", int(self.clock()))

    def text(self, text: str, *, from_: str | None = None, to: str | None = None,
             message_id: str | None = None) -> list[str]:  # fmt: skip
        """Text the bot as a customer; returns the replies sent back, in order."""
        to = to or self.config.enabled_numbers()[0]
        payload = {"sms_id": message_id or str(uuid.uuid4()), "direction": "inbound",
                   "from": from_ or self.customer, "to": to, "body": text}  # fmt: skip
        body = json.dumps(payload).encode()
        response = self.post(body, {"x-telnyx-signature": self.sign(body, to)})
        if response.status_code != 200:
            raise AssertionError(f"the bot refused the message: {response.status_code} {response.text}")
        return self.replies()

    def advance(self, delta: float | str) -> list[str]:
        """Move the clock on, fire the timers now due; returns the messages that went out."""
        self.clock.advance(delta)
        self.bot.timers.poke()
        self.portal.call(self._settle)
        return self.replies()

    def replies(self) -> list[str]:
        """Messages sent since the last call (blocked and failed ones are not sent)."""
        self.portal.call(self._settle)
        rows = self.bot.store.mdrs(limit=None, where="direction = 'outbound' AND id > :seen",
                                   params={"seen": self._seen})  # fmt: skip
        if rows:
            self._seen = max(r["id"] for r in rows)
        return [r["text"] for r in reversed(rows) if r["status"] not in (BLOCKED, FAILED)]

    def transcript(self, steps: Sequence[tuple[str, str | Sequence[str]]], **kwargs: Any) -> None:
        """Check a conversation: each (customer text, expected replies) in order."""
        for number, (text, expected) in enumerate(steps, 1):
            expected = [expected] if isinstance(expected, str) else list(expected)
            got = self.text(text, **kwargs)
            if got != expected:
                raise AssertionError(f"step {number}: after {text!r} expected {expected!r}, got {got!r}")

    def messages(self, **filters: Any) -> list[dict[str, Any]]:
        """Every MDR, oldest first (``direction="outbound"`` etc. filter by column)."""
        rows = list(reversed(self.bot.store.mdrs(limit=None)))
        return [r for r in rows if all(r.get(k) == v for k, v in filters.items())]

    def state(self, *, from_: str | None = None, to: str | None = None) -> dict[str, Any]:
        """The conversation state kept for a customer."""
        conversation = self.bot.store.conversation(None, to or self.config.enabled_numbers()[0], from_ or self.customer)
        return conversation.state

    async def _settle(self) -> None:
        # Timers fire through the timer loop; give it a moment to hand them over.
        for _ in range(3):
            if not await self.bot.idle(30):
                raise AssertionError("the bot did not settle within 30 s")
            await asyncio.sleep(0.01)
