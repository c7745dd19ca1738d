"""The harness plugin authors test with: a real bot, in-process, driven from plain sync code.

::

    from bot_core.testing import BotTester

    def test_echo(tmp_path):
        config = {"profiles": {"main": {"secret": "s", "numbers": ["+13125550100"], "plugins": ["echo"]}}}
        with BotTester(config, tmp_path=tmp_path) as bot:
            assert bot.text("hi") == ["echo hi #1"]
            bot.transcript('''
                again
                bot> echo again #2
            ''')

Each message goes through the real pipeline: a signed webhook (V1, or V2 with
``version=2``) into the ASGI app, the inbox, plugins, state, opt-outs, the outbox and the
sender. Sending is sandboxed unless a :class:`~bot_core.testing.FakeTelnyx` is given.
Only bot-core's bundled plugins, the ``plugins`` passed in, ``installed`` names and the
config's ``plugins_dir`` are loaded: nothing installed on the machine leaks in. The harness
owns the Ed25519 key V2 webhooks are signed with and puts its public half in the config
(unless the config sets its own ``[telnyx] public_key``: then only your key can sign). This
module does not import pytest (fixtures are in ``bot_core.pytest_plugin``).
"""

from __future__ import annotations

import base64
import dataclasses
import difflib
import json
import os
import tempfile
import textwrap
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import nacl.signing
from anyio.from_thread import BlockingPortal, start_blocking_portal

from ..bot import Bot
from ..chat import BOT_PREFIX, CUSTOMER, YOU_PREFIX, Exchange, Session, show, webhooks_for
from ..config import Config, load_config, parse_duration
from ..plugins import load_plugins
from ..store import is_postgres
from ..webhooks import sign_v1
from .fake_telnyx import FakeTelnyx, SignedWebhook

__all__ = [
    "BotTester",
    "CUSTOMER",
    "Exchange",
    "FakeClock",
    "FakeTelnyx",
    "SignedWebhook",
    "build_config",
    "parse_transcript",
]

Steps = Sequence[tuple[str, "str | Sequence[str]"]]


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
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    return float(when)


def build_config(config: Config | Mapping[str, Any] | str | os.PathLike[str], directory: Path, *, fake: bool,
                 public_key: str | None = None) -> Config:  # fmt: skip
    """The config to test with: its database in ``directory``, sending sandboxed or to a fake,
    V2 webhooks checked with ``public_key`` unless the config has its own."""
    if isinstance(config, (str, os.PathLike)):
        config = load_config(config)
    elif not isinstance(config, Config):
        config = Config.from_dict(config, base_dir=directory)
    database = config.bot.database
    if not is_postgres(database) and not database.is_relative_to(directory):
        database = directory / database.name
    bot = dataclasses.replace(config.bot, database=database, sandbox=not fake)
    telnyx = dataclasses.replace(config.telnyx, public_key=config.telnyx.public_key or public_key)
    if fake:
        api_base = "http://fake-telnyx/v2" if telnyx.api_version == 2 else "http://fake-telnyx"
        telnyx = dataclasses.replace(telnyx, api_base=api_base, management_base="http://fake-telnyx/v2")
    return dataclasses.replace(config, bot=bot, telnyx=telnyx)


class BotTester:
    """A started bot plus helpers to text it and read what it sent. Use it as a context manager.

    ``clock``: a :class:`FakeClock` for timers (default: one set to now). ``telnyx``: a
    :class:`FakeTelnyx` to send to instead of the sandbox. ``customer``: who texts by default.
    """

    def __init__(
        self,
        config: Config | Mapping[str, Any] | str | os.PathLike[str],
        *,
        tmp_path: str | os.PathLike[str] | None = None,
        plugins: Iterable[ModuleType | object] = (),
        installed: Sequence[str] = (),
        clock: FakeClock | None = None,
        telnyx: FakeTelnyx | None = None,
        customer: str = CUSTOMER,
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if tmp_path is None:
            self._tmp = tempfile.TemporaryDirectory()
            tmp_path = self._tmp.name
        directory = Path(tmp_path)
        self.clock = clock or FakeClock()
        self.telnyx = telnyx
        self.customer = customer
        signer = telnyx.webhooks.signing_key if telnyx else nacl.signing.SigningKey.generate()
        public_key = base64.b64encode(bytes(signer.verify_key)).decode()
        self.config = build_config(config, directory, fake=telnyx is not None, public_key=public_key)
        self.webhooks = webhooks_for(self.config, signing_key=signer, clock=self.clock)
        if telnyx:  # the fake signs its status webhooks for this bot, on this bot's clock
            telnyx.webhooks.secrets.update(self.webhooks.secrets)
            telnyx.webhooks.clock = self.clock
        # A config with no profiles passes the plugin-name check, which must wait for `plugins`.
        registry = load_plugins(dataclasses.replace(self.config, profiles={}, numbers={}), installed=list(installed))
        for plugin in plugins:
            registry.add(getattr(plugin, "__name__", type(plugin).__name__).rsplit(".", 1)[-1], plugin, "test")
        registry.check(self.config)
        self.bot = self._new_bot(registry)
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self.portal: BlockingPortal | None = None
        self.session: Session | None = None

    def _new_bot(self, registry: Any) -> Bot:
        transport = self.telnyx.transport if self.telnyx else None
        return Bot(self.config, plugins=registry, clock=self.clock, transport=transport)

    def __enter__(self) -> BotTester:
        self._portal_cm = portal_cm = start_blocking_portal()
        self.portal = portal_cm.__enter__()
        try:
            self._start()
        except BaseException:
            portal_cm.__exit__(None, None, None)
            if self._tmp is not None:
                self._tmp.cleanup()
            raise
        return self

    def _running(self) -> tuple[BlockingPortal, Session]:
        """The portal to the bot's event loop and the session texting it, once started."""
        if self.portal is None or self.session is None:
            raise RuntimeError("the BotTester is not started: use it in a `with` block")
        return self.portal, self.session

    def _start(self, seen: int | None = 0) -> None:
        assert self.portal is not None, "started by __enter__"
        self.portal.call(self.bot.start)
        # Built on the event loop's thread, where its HTTP client will be used and closed.
        self.session = self.portal.call(lambda: Session(self.bot, self.webhooks, seen=seen))

    def _stop(self) -> None:
        portal, session = self._running()
        try:
            portal.call(session.aclose)
        finally:
            portal.call(self.bot.stop)

    def __exit__(self, *exc: object) -> None:
        try:
            self._stop()
        finally:
            if self._portal_cm is not None:
                self._portal_cm.__exit__(None, None, None)
            if self._tmp is not None:
                self._tmp.cleanup()

    def restart(self) -> None:
        """Stop and start the bot on the same database, as a process restart would."""
        seen = self._running()[1].seen
        self._stop()
        self.bot = self._new_bot(self.bot.plugins)
        self._start(seen)

    @property
    def number(self) -> str:
        """The bot's number texted by default: the first messaging-enabled one."""
        return self.config.enabled_numbers()[0]

    # -- texting ----------------------------------------------------------------------------

    def text(self, text: str, *, from_: str | None = None, to: str | None = None, message_id: str | None = None,
             version: int = 1, media: Sequence[Mapping[str, Any]] = ()) -> list[str]:  # fmt: skip
        """Text the bot as a customer (a V1 webhook, or V2); returns the replies sent back, in order."""
        return self.exchange(text, from_=from_, to=to, message_id=message_id, version=version, media=media).replies

    def exchange(self, text: str, *, from_: str | None = None, to: str | None = None, message_id: str | None = None,
                 version: int = 1, media: Sequence[Mapping[str, Any]] = ()) -> Exchange:  # fmt: skip
        """Like :meth:`text`, returning the inbound MDR and every outbound MDR, blocked ones too."""
        portal, session = self._running()
        return portal.call(partial(session.text, text, from_=from_ or self.customer, to=to or self.number,
                                   version=version, id=message_id, media=media))  # fmt: skip

    def deliver(self, *webhooks: SignedWebhook) -> list[httpx.Response]:
        """Post webhooks in the order given, then let the bot settle; repeat one to duplicate it.

        Build them with ``bot.webhooks.message(...)``, ``bot.webhooks.status(...)``, or
        :meth:`report`'s sibling ``FakeTelnyx.report``.
        """
        portal, session = self._running()
        responses = portal.call(partial(session.deliver, *webhooks))
        portal.call(session.settle)
        return responses

    def report(self, mdr_id: int, status: str, *, error: str | None = None, version: int = 1) -> httpx.Response:
        """Deliver a signed delivery status webhook for the outbound MDR ``mdr_id``."""
        row = self._running()[0].call(self.bot.store.mdr, mdr_id)
        if row is None or row["direction"] != "outbound" or not row["telnyx_id"]:
            raise ValueError(f"MDR {mdr_id} is not an outbound message with a Telnyx id")
        webhook = self.webhooks.status(row["telnyx_id"], status, from_=row["from"], to=row["to"], error=error,
                                       text=row["text"], version=version)  # fmt: skip
        return self.deliver(webhook)[0]

    def post(self, payload: Mapping[str, Any] | bytes, headers: Mapping[str, str] | None = None) -> httpx.Response:
        """POST a raw webhook to the bot's ``/webhooks/telnyx`` (signed V1 unless headers given)."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        if headers is None:
            headers = {"x-telnyx-signature": self.sign(body)}
        portal, session = self._running()
        return portal.call(session.post, body, headers)

    def get(self, path: str) -> httpx.Response:
        """GET a path of the bot's app, e.g. ``/metrics`` or ``/healthz``."""
        portal, session = self._running()
        return portal.call(session.get, path)

    def sign(self, body: bytes, number: str | None = None) -> str:
        """The V1 signature header for ``body``, keyed with ``number``'s profile secret."""
        profile = self.config.profile_for_sender(number or self.number)
        return sign_v1(body, profile.secret if profile else "", int(self.clock()))

    def advance(self, delta: float | str) -> list[str]:
        """Move the clock on, fire the timers now due; returns the messages that went out."""
        self.clock.advance(delta)
        self.bot.timers.wake()
        return self.replies()

    def replies(self) -> list[str]:
        """Messages sent since the last call (blocked and failed ones are not sent)."""
        portal, session = self._running()
        return Exchange(None, portal.call(session.sent)).replies

    def transcript(self, steps: Steps | str, **kwargs: Any) -> None:
        """Check a conversation: each (customer text, expected replies) in order.

        ``steps`` is a list of pairs, or text in the format ``bot-core chat`` prints: a line per
        customer message (``you> `` optional), then its replies as ``bot> `` lines. On the first
        step that differs, raises AssertionError showing the conversation so far and a diff.
        """
        if isinstance(steps, str):
            steps = parse_transcript(steps)
        so_far: list[str] = []
        for number, (text, expected) in enumerate(steps, 1):
            expected = [expected] if isinstance(expected, str) else list(expected)
            got = self.text(text, **kwargs)
            so_far.append(YOU_PREFIX + show(text))
            if got != expected:
                raise AssertionError(_transcript_failure(number, len(steps), so_far, expected, got))
            so_far += [BOT_PREFIX + show(reply) for reply in got]

    def messages(self, **filters: Any) -> list[dict[str, Any]]:
        """Every MDR, oldest first (``direction="outbound"`` etc. filter by column)."""
        # On the bot's event loop thread: the store's one connection must not be used from two
        # threads at once (a transaction of the bot's could otherwise end inside this read).
        rows = list(reversed(self._running()[0].call(partial(self.bot.store.mdrs, limit=None))))
        return [r for r in rows if all(r.get(k) == v for k, v in filters.items())]

    def state(self, *, from_: str | None = None, to: str | None = None) -> dict[str, Any]:
        """The conversation state kept for a customer."""
        return self._running()[0].call(self.bot.store.conversation, None, to or self.number, from_ or self.customer).state

    def metric(self, name: str, **labels: str) -> float:
        """The current value of a Prometheus sample of this bot (0 when never recorded)."""
        return self.bot.metrics.registry.get_sample_value(name, labels) or 0.0


def parse_transcript(text: str) -> list[tuple[str, list[str]]]:
    """Steps from a transcript as ``bot-core chat`` prints it; blank lines and ``#`` comments are skipped.

    A ``bot> `` line is a reply to the customer line above it; ``\\n`` in a line is a line break.
    """
    steps: list[tuple[str, list[str]]] = []
    for number, raw in enumerate(textwrap.dedent(text).splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(BOT_PREFIX.rstrip()):
            if not steps:
                raise ValueError(f"transcript line {number}: a bot reply before any customer message")
            steps[-1][1].append(_unshow(line[len(BOT_PREFIX.rstrip()):].removeprefix(" ")))
        else:
            steps.append((_unshow(line.removeprefix(YOU_PREFIX)), []))
    return steps


def _unshow(text: str) -> str:
    return text.replace("\\n", "\n")


def _transcript_failure(number: int, total: int, so_far: list[str], expected: list[str], got: list[str]) -> str:
    diff = difflib.ndiff([BOT_PREFIX + show(r) for r in expected], [BOT_PREFIX + show(r) for r in got])
    lines = [f"transcript step {number} of {total} differs (- expected, + got):"]
    lines += ["    " + line for line in so_far]
    lines += ["  " + line.rstrip("\n") for line in diff]
    return "\n".join(lines)
