"""Texting a started Bot as Telnyx would, in-process: the engine of ``bot-core chat`` and BotTester.

A :class:`Session` posts signed webhooks to the bot's real ASGI app (the same route, checks,
inbox, lanes, plugins, state, opt-outs and outbox as in production), waits until the bot is
idle, and reads back what it sent. :func:`chat` wraps a Session in the terminal simulator.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import takewhile
from typing import Any, TextIO

import httpx

from .asgi import create_app
from .bot import Bot
from .config import Config, parse_duration
from .errors import BotError
from .runner import database_in_use
from .store import BLOCKED, FAILED, HANDLED, PENDING, SENDING, display, open_store
from .testing.fake_telnyx import SignedWebhook, TelnyxWebhooks

CUSTOMER = "+13125550123"  # the sample customer the simulator and the test harness text from
BOT_PREFIX = "bot> "
YOU_PREFIX = "you> "
NOT_SENT = (BLOCKED, FAILED)


class ChatError(BotError):
    """The simulator cannot start (the database is busy or has work a sandbox must not touch)."""


@dataclass(frozen=True)
class Exchange:
    """One customer message and what came of it: its inbound MDR and the outbound MDRs it led to."""

    inbound: dict[str, Any] | None
    outbound: list[dict[str, Any]]

    @property
    def replies(self) -> list[str]:
        """The texts that were sent (not the blocked or failed ones)."""
        return [row["text"] for row in self.outbound if row["status"] not in NOT_SENT]


class Session:
    """Texts ``bot`` through its ASGI app and reads what it sent. The bot must be started."""

    def __init__(self, bot: Bot, webhooks: TelnyxWebhooks, *, seen: int | None = None) -> None:
        self.bot = bot
        self.webhooks = webhooks
        self._http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(bot)), base_url="http://bot")
        if seen is None:  # only what is sent from now on counts
            latest = bot.store.mdrs(limit=1, direction="outbound")
            seen = latest[0]["id"] if latest else 0
        self.seen = seen

    async def aclose(self) -> None:
        await self._http.aclose()

    async def post(self, body: bytes, headers: Mapping[str, str]) -> httpx.Response:
        return await self._http.post("/webhooks/telnyx", content=body,
                                     headers={"content-type": "application/json", **headers})  # fmt: skip

    async def get(self, path: str) -> httpx.Response:
        return await self._http.get(path)

    async def deliver(self, *webhooks: SignedWebhook) -> list[httpx.Response]:
        """Post webhooks one after another in the order given (repeat one to duplicate it)."""
        return [await self.post(w.body, w.headers) for w in webhooks]

    async def text(self, text: str, *, from_: str, to: str, version: int = 1, id: str | None = None,
                   media: Sequence[Mapping[str, Any]] = ()) -> Exchange:  # fmt: skip
        """Send ``text`` as a customer; wait until the bot has handled it and sent its replies."""
        webhook = self.webhooks.message(text, from_=from_, to=to, version=version, id=id, media=media)
        (response,) = await self.deliver(webhook)
        if response.status_code != 200:
            raise AssertionError(f"the bot refused the message: {response.status_code} {response.text}")
        outbound = await self.sent()
        mdr_id = response.json().get("mdr_id")
        return Exchange(self.bot.store.mdr(mdr_id) if mdr_id else None, outbound)

    async def settle(self, timeout: float = 30) -> None:
        """Wait until nothing is being handled or sent, timers due now included."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while await self.bot.idle(max(0.0, deadline - loop.time())):
            if not self.bot.due_timers():
                return
            # A due timer reaches the dispatcher through the timer loop: let it hand it over.
            self.bot.timers.wake()
            await asyncio.sleep(0.001)
        raise AssertionError(f"the bot did not settle within {timeout:g} s")

    async def sent(self, *, settle: bool = True) -> list[dict[str, Any]]:
        """Outbound MDRs recorded since the last call, oldest first, whatever their final status.

        Without ``settle``, only those whose fate is known: up to the first still in the outbox.
        """
        if settle:
            await self.settle()
        rows = self.bot.store.mdrs(limit=None, direction="outbound", after_id=self.seen)
        done = list(takewhile(lambda row: row["status"] not in (PENDING, SENDING), reversed(rows)))
        if done:
            self.seen = done[-1]["id"]
        return done


def sandboxed(config: Config) -> Config:
    """``config`` with sandbox sending: outbound messages are recorded, never sent."""
    return dataclasses.replace(config, bot=dataclasses.replace(config.bot, sandbox=True))


def webhooks_for(config: Config, **kwargs: Any) -> TelnyxWebhooks:
    """A webhook signer that knows the profile secret of every number in ``config``."""
    secrets = {n.number: config.profiles[n.profile].secret for n in config.numbers_state() if n.profile}
    return TelnyxWebhooks(secrets=secrets, **kwargs)


def show(text: str) -> str:
    """A message on one line: line breaks are shown as ``\\n``."""
    return text.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\n")


class ShiftedClock:
    """The real time, moved ahead by ``/wait``: timers and flow expiry can be tried in a chat."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class ChatBot(Bot):
    """The chat's bot: it fires only the chatting customer's timers. Other customers' timers
    stay pending for ``bot-core serve`` (in sandbox mode they would be recorded, never sent)."""

    def __init__(self, config: Config, *, lane: tuple[str, str], clock: ShiftedClock) -> None:
        super().__init__(config, clock=clock)
        self.timer_lane = lane


async def chat(config: Config, *, customer: str, number: str, stdin: TextIO, stdout: TextIO, stderr: TextIO,
               interactive: bool) -> None:  # fmt: skip
    """Play the customer: each line of ``stdin`` is a text; each reply is printed as ``bot> TEXT``.

    Runs the config's bot in sandbox mode on its own database until ``stdin`` ends. Notes
    (a message no plugin claimed, a reply that was blocked) go to ``stderr``. A line
    ``/wait DURATION`` moves the bot's clock ahead instead of texting (see COMMANDS).
    """
    clock = ShiftedClock()
    bot = ChatBot(sandboxed(config), lane=(number, customer), clock=clock)
    await bot.start()
    try:
        session = Session(bot, webhooks_for(config, clock=clock))
        try:
            await _converse(session, clock, customer, number, stdin, stdout, stderr, interactive)
        finally:
            await session.aclose()
    finally:
        await bot.stop()


async def _converse(session: Session, clock: ShiftedClock, customer: str, number: str, stdin: TextIO,
                    stdout: TextIO, stderr: TextIO, interactive: bool) -> None:  # fmt: skip
    def say(line: str, stream: TextIO = stdout) -> None:
        stream.write(line + "\n")
        stream.flush()

    def show_outbound(rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if row["status"] in NOT_SENT:
                say(f"(not sent, {row['status']}: {row['error']}: {show(row['text'])})", stderr)
            else:
                say(BOT_PREFIX + show(row["text"]))

    def prompt() -> None:
        if interactive:
            stdout.write(YOU_PREFIX)
            stdout.flush()

    lines = _lines(stdin)
    prompt()
    while True:
        try:
            line = await asyncio.wait_for(lines.get(), 0.25)
        except TimeoutError:  # meanwhile, timers may have sent something
            if rows := await session.sent(settle=False):
                if interactive:
                    stdout.write("\r")
                show_outbound(rows)
                prompt()
            continue
        if line is None:
            break
        text = line.rstrip("\r\n")
        if not text.strip():
            prompt()
            continue
        if not interactive:
            say(YOU_PREFIX + show(text))
        if text.startswith("/") and not text.startswith("//"):
            if note := _command(session, clock, text):
                say(note, stderr)
            else:
                show_outbound(await session.sent())  # what the timers now due sent
            prompt()
            continue
        exchange = await session.text(text[1:] if text.startswith("//") else text, from_=customer, to=number)
        inbound = exchange.inbound or {}
        if inbound.get("status") != HANDLED:
            why = inbound.get("error") or "no plugin answered"
            say(f"({inbound.get('status', 'not stored')}: {why})", stderr)
        show_outbound(exchange.outbound)
        prompt()
    if interactive:
        stdout.write("\n")
    show_outbound(await session.sent())


COMMANDS = """\
/wait DURATION   move the bot's clock ahead (30s, 15m, 2h, 1d): timers now due fire, flows expire
/help            this list
//TEXT           text TEXT, which starts with a slash"""


def _command(session: Session, clock: ShiftedClock, line: str) -> str | None:
    """Run a chat command; a note for stderr, or None when the clock moved."""
    name, _, argument = line.strip().partition(" ")
    if name == "/wait":
        try:
            seconds = parse_duration(argument.strip())
        except ValueError as exc:
            return f"(/wait: {exc})"
        clock.offset += seconds
        session.bot.timers.wake()
        return None
    if name == "/help":
        return COMMANDS
    return f"(unknown command {name}: text it as //{line[1:]}, or see /help)\n{COMMANDS}"


def _lines(stream: TextIO) -> asyncio.Queue[str | None]:
    """Lines of ``stream`` read by a daemon thread (a blocked read never holds up the exit); None at the end."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def read() -> None:
        try:
            for line in iter(stream.readline, ""):
                loop.call_soon_threadsafe(queue.put_nowait, line)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=read, name="bot-core-chat-stdin", daemon=True).start()
    return queue


def check_database(config: Config) -> None:
    """Refuse to chat on a database a server is using, or one with work a sandbox would swallow.

    The simulator runs a whole bot: it would handle the inbox and send the outbox in sandbox
    mode, so real customers' pending messages would be recorded and never sent. Their timers
    are no reason to refuse: :class:`ChatBot` fires only the chatting customer's.
    """
    path = config.bot.database
    if database_in_use(path):
        raise ChatError(f"another process (a running `bot-core serve`?) is using {display(path)}; stop it first, "
                        "or chat with a config whose database is a copy")  # fmt: skip
    store = open_store(path)
    try:
        backlog = store.backlog()
        waiting = (backlog["messages"], backlog["sends"])
    finally:
        store.close()
    if any(waiting):
        raise ChatError(
            f"{display(path)} has work waiting ({waiting[0]} message(s) to handle, {waiting[1]} to send); chat runs"
            " in sandbox mode and would record them as never sent. Let `bot-core serve` finish them, or chat "
            "with a config whose database is a copy"
        )  # fmt: skip


def is_interactive(stream: TextIO) -> bool:
    """Whether a person types into ``stream`` (then chat prompts and does not echo)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
