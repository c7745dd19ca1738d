"""The Bot: owns the config, plugins, database, Telnyx client and background loops of one bot.

Nothing starts at construction: :meth:`Bot.start` opens the database and starts the loops (the
Starlette lifespan calls it), :meth:`Bot.stop` drains and closes them. Plugins receive the Bot
as ``bot`` and use the methods below the "plugin API" banner.

Each started Bot is one *owner* of claimed work (``host:pid:nonce``): it renews its leases a
few times per lease period, and ends the leases of owners on its host whose process is gone,
so a killed process's work is taken over at once instead of when its leases run out.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

import httpx
import sqlite_utils

from . import effects as effects_
from . import handoff as handoffs
from .config import Config, NumberState, parse_duration
from .dispatch import Dispatcher
from .errors import SignatureError, WebhookError
from .messages import Conversation, InboundMessage, Reply
from .metrics import Metrics
from .outbox import draft
from .phone import alphanumeric_destination_error, normalize_number, sender_kind
from .plugin_store import PluginStore
from .plugins import Plugins, call_impl, load_plugins
from .store import ERRORS, IGNORED, TRANSIENT, CancelEffect, ConsentEffect, SendEffect, TimerEffect, open_store
from .telnyx import TelnyxClient, make_client
from .timers import Timer
from .webhooks import Webhook, verify_v1, verify_v2
from .worker import Sender

log = logging.getLogger("bot_core")

# A store that failed, or did not answer in time (the webhook waits a bounded time).
STORE_FAILURES: tuple[type[Exception], ...] = (*ERRORS, TimeoutError)


class Bot:
    """One running bot. Build it from a :class:`Config`; start and stop it in an event loop."""

    def __init__(
        self,
        config: Config,
        *,
        plugins: Plugins | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.plugins = plugins if plugins is not None else load_plugins(config)
        self.clock = clock
        self.metrics = Metrics()
        self._transport = transport
        self._tasks: list[asyncio.Task[None]] = []
        self._observers: set[asyncio.Task[None]] = set()
        self._probe: asyncio.Future[bool] | None = None
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.stopping = threading.Event()  # set when stop() begins: `serve` bounds the exit from here
        # The one conversation (our number, theirs) whose timers this bot fires; None: every one.
        self.timer_lane: tuple[str, str] | None = None
        self.started = False

    # -- lifecycle --------------------------------------------------------------------------

    def open(self) -> None:
        """Open the database without starting anything: enough to queue messages with :meth:`send`.

        A running server's sender picks such messages up within a second (``bot-core send``).
        """
        if not hasattr(self, "store"):
            self.store = open_store(self.config.bot.database, clock=self.clock, secrets=self.config.secrets())

    def close(self) -> None:
        """Close the database :meth:`open` opened (:meth:`stop` does it for a started bot)."""
        if hasattr(self, "store"):
            self.store.close()
            del self.store

    async def start(self) -> None:
        """Open the database, take over dead processes' work, call ``startup`` hooks, start the loops."""
        config = self.config
        self.open()
        self.client: TelnyxClient = make_client(config, self._transport)
        self.sender = Sender(self.store, self.client, config, self.metrics, self.clock, self.owner, self.stored)
        self.dispatcher = Dispatcher(self)
        self.timers = self.dispatcher.timers
        # Depths count the database's backlog, what every process of the bot has left to do.
        self.metrics.track_queue("inbox", lambda: self._backlog("messages"))
        self.metrics.track_queue("outbox", lambda: self._backlog("sends"))
        self._take_over_dead()
        self.store.healthy(self.owner)  # a heartbeat: other replicas and commands see this one alive
        in_flight = self.store.unheld_in_flight()
        if in_flight:
            log.warning("%d send(s) may have reached Telnyx: their request had started when the last process "
                        "stopped; sending them again", in_flight)  # fmt: skip
        for name in self.plugins.names:
            impl = self.plugins.impl("startup", name)
            if impl is not None:
                await call_impl(impl, {"bot": self})
        backlog = self.store.backlog()
        if any(backlog.values()):
            log.info("resuming work left before this start: %s",
                     ", ".join(f"{n} {kind}" for kind, n in backlog.items() if n))  # fmt: skip
        loop = asyncio.get_running_loop()
        loops = [*self.dispatcher.loops, self.sender.claims]
        self._tasks = [loop.create_task(claims.run()) for claims in loops] + [loop.create_task(self._heartbeat())]
        # Work committed by another replica (PostgreSQL's NOTIFY); the loops poll besides.
        self.store.listen(lambda: loop.call_soon_threadsafe(self._wake_all))
        self.started = True
        self._announce()

    def _wake_all(self) -> None:
        for claims in (*self.dispatcher.loops, self.sender.claims):
            claims.wake()

    def _backlog(self, kind: str) -> int:
        return self.store.backlog()[kind] if hasattr(self, "store") else 0

    def due_timers(self) -> list[Timer]:
        """The timers this bot would fire now (those of :attr:`timer_lane` only, when set)."""
        return self.store.due_timers(self.clock(), lane=self.timer_lane)

    def _take_over_dead(self) -> bool:
        """End the leases of owners on this host whose process is gone; True if there were any."""
        host = socket.gethostname()
        dead = [o for o in self.store.owners() if o != self.owner and _gone(o, host)]
        for owner in dead:
            log.warning("process %s is gone; taking over its work", owner)
            self.store.expire(owner)
        return bool(dead)

    async def _heartbeat(self) -> None:
        """Renew this process's leases, and take over work of dead processes of this host."""
        lease = self.config.bot.lease
        while True:
            await asyncio.sleep(min(lease / 4, 5.0))
            try:
                await self.store.call(self.store.renew, self.owner, lease)
                await self.store.call(self.store.healthy, self.owner)  # alive: see database_in_use
                if await self.store.call(self._take_over_dead):
                    self._wake_all()
                handoffs.expire(self)  # on the loop: the handoff hook's calls start here
            except ERRORS as exc:
                log.warning("cannot renew the leases of this process (%s); trying again", exc)

    def _announce(self) -> None:
        config = self.config
        if not config.bot.verify_signatures:
            log.warning("!!! WEBHOOK SIGNATURES ARE NOT VERIFIED (verify_signatures = false): anyone who "
                        "can reach this server can make it send messages. Never run this way in production.")  # fmt: skip
        mode = "SANDBOX: nothing is sent" if config.bot.sandbox else f"Telnyx API v{config.telnyx.api_version}"
        log.info("bot-core started (%s); messaging-enabled numbers: %s; plugins loaded: %s", mode,
                 ", ".join(config.enabled_numbers()) or "none", ", ".join(self.plugins.names) or "none")  # fmt: skip
        for line in self.plugins.answering(config):
            log.info("%s", line)

    async def stop(self) -> None:
        """Finish in-flight plugin calls and sends within ``shutdown_grace``, then close.

        Webhooks get 503 from now on. Plugin calls in flight (delivery_status hooks too) finish
        and their replies are sent; units not started yet and sends waiting for a retry stay in
        the database, and whatever is still running when the grace ends is cut off: this
        process gives its units back, for its next start or another process.
        """
        if not self.started:
            return
        self.started = False
        self.stopping.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.bot.shutdown_grace
        drained = await self.dispatcher.stop(max(0.0, deadline - loop.time()))
        drained = await self.sender.stop(max(0.0, deadline - loop.time())) and drained
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await asyncio.wait_for(self.store.call(self.store.release, self.owner), 2.0)
        except STORE_FAILURES as exc:
            log.warning("cannot give back this process's work (%s); its leases run out instead", exc)
        if not drained:
            log.warning("shutdown grace ran out; unfinished work will resume at the next start")
        await asyncio.gather(*self._observers, return_exceptions=True)
        await self.plugins.call("shutdown", bot=self)
        await self.client.aclose()
        self.close()
        log.info("bot-core stopped%s", "" if drained else " (unfinished work left for the next start)")

    async def stored(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a store write off the event loop; a passing failure (disk full, a lock held
        elsewhere) is retried after a backoff for as long as it takes, while the unit keeps its
        lease. LeaseLost propagates: the unit's outcome is not this process's to commit."""
        delay = 0.05
        while True:
            try:
                return await self.store.call(fn, *args, **kwargs)
            except TRANSIENT as exc:
                level = logging.WARNING if delay == 0.05 else logging.DEBUG
                log.log(level, "cannot write to the database (%s); trying again", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def healthy(self) -> bool:
        """Whether the database takes a write within ``store_timeout`` (one probe at a time)."""
        if not self.started:
            return False
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self.store.call(self.store.healthy, self.owner))
        # The probe awaited, not self._probe: a request arriving meanwhile may start the next one.
        probe = self._probe
        done, _ = await asyncio.wait({probe}, timeout=self.config.bot.store_timeout)
        return bool(done) and probe.exception() is None and probe.result()

    async def idle(self, timeout: float | None = None) -> bool:
        """Wait until no message, send or status hook call is left to do (tests, the chat simulator).

        A send waiting for a retry counts as being sent. False if ``timeout`` passed first.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        loops = (*self.dispatcher.loops, self.sender.claims)
        while True:
            for claims in loops:
                await claims.claim_once()
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            for claims in loops:
                if not await claims.join(remaining):
                    return False
            if not self.store.outstanding() and not any(len(c) for c in loops):
                return True
            if deadline is not None and loop.time() >= deadline:
                return False
            await asyncio.sleep(0.01)  # work held elsewhere, or a send not due yet

    # -- webhooks ---------------------------------------------------------------------------

    def verify(self, webhook: Webhook, body: bytes, headers: Mapping[str, str]) -> None:
        """Check the signature of a parsed webhook; raise WebhookError (401, 404) if it fails."""
        if webhook.version == 1:
            if not webhook.number:  # only a status can lack it; never say "number None"
                raise WebhookError("V1 delivery status names no sending number ('from' or 'msg.src'): "
                                   "cannot tell which messaging profile's secret signs it")  # fmt: skip
            profile = self.config.profile_for_sender(webhook.number)
            if profile is None:
                log.warning("webhook for %s refused: no messaging profile lists that number", webhook.number)
                raise WebhookError(f"number {webhook.number} is not assigned to any messaging profile", 404)
            if self.config.bot.verify_signatures:
                verify_v1(body, headers.get("x-telnyx-signature"), profile.secret, now=self.clock())
            return
        if not self.config.bot.verify_signatures:
            return
        if not self.config.telnyx.public_key:
            raise SignatureError("V2 webhook refused: no [telnyx] public_key is configured to verify it")
        verify_v2(body, headers.get("telnyx-signature-ed25519"), headers.get("telnyx-timestamp"),
                  self.config.telnyx.public_key, now=self.clock())  # fmt: skip

    async def accept(self, webhook: Webhook) -> dict[str, Any]:
        """Store a verified webhook and wake the work it makes; returns the JSON acknowledgement.

        Waits for the store at most ``store_timeout``, then raises WebhookError 503 (so does a
        write that fails: disk full, a lock held elsewhere): Telnyx delivers it again later, so
        nothing is lost, and a message is never acknowledged before it is stored.
        """
        try:
            return await self._accept(webhook)
        except STORE_FAILURES as exc:
            reason = exc if str(exc) else f"no answer from the database within {self.config.bot.store_timeout:g}s"
            log.error("cannot store a webhook (%s); answering 503 so that Telnyx delivers it again", reason)
            raise WebhookError("the bot cannot store this webhook right now; deliver it again later", 503) from None

    async def _stored_within(self, future: asyncio.Future[Any]) -> Any:
        # On timeout the future is cancelled with the await: a batched insert not started yet is
        # skipped. (asyncio.timeout costs one timer; asyncio.wait, a future and callbacks more.)
        async with asyncio.timeout(self.config.bot.store_timeout):
            return await future

    async def _accept(self, webhook: Webhook) -> dict[str, Any]:
        if webhook.message is not None:  # kind "message"
            return await self._accept_message(webhook.message)
        if (status := webhook.status) is not None:  # kind "status"
            hook = any(self.plugins.impl("delivery_status", name) for name in self.plugins.names)
            # A V1 status is vouched for by one profile's secret: it may move that profile's MDRs only.
            signer = self.config.profile_for_sender(status.from_number or "") if webhook.version == 1 else None
            mdr_id = await self._stored_within(asyncio.ensure_future(self.store.call(
                self.store.apply_status, status, profile=signer.name if signer else None, hook=hook)))  # fmt: skip
            log.info(
                "delivery status %s for %s",
                status.status,
                status.telnyx_id,
                extra={"telnyx_id": status.telnyx_id, "mdr_id": mdr_id},
            )
            if hook:
                self.dispatcher.statuses.wake()
            return {"ok": True, "kind": "status", "mdr_id": mdr_id}
        return {"ok": True, "kind": "ignored", "event_type": webhook.event_type}

    async def _accept_message(self, message: InboundMessage) -> dict[str, Any]:
        number = self.config.number(message.to_number)
        if message.other_recipients:
            message, number = self._in_group(message)
        if number is None or number.profile is None:
            recipients = ", ".join((message.to_number, *message.other_recipients))
            log.warning(
                "message %s to %s refused: no messaging profile lists that number",
                message.id,
                recipients,
                extra={"message_id": message.id},
            )
            what = f"number {recipients} is" if not message.other_recipients else f"none of {recipients} is"
            raise WebhookError(f"{what} assigned to any messaging profile", 404)
        message = InboundMessage(**{**message.__dict__, "profile": number.profile})
        if not number.enabled:
            mdr_id = await self._stored_within(self.store.insert_inbound(message, status=IGNORED, error=number.reason))
            log.warning(
                "message %s to %s recorded but not handled: %s",
                message.id,
                message.to_number,
                number.reason,
                extra={"message_id": message.id, "mdr_id": mdr_id},
            )
            return {"ok": True, "kind": "message", "mdr_id": mdr_id, "handled": False, "reason": number.reason}
        mdr_id = await self._stored_within(self.store.insert_inbound(message))
        if mdr_id is None:
            log.info(
                "message %s delivered again: acknowledged, not handled twice",
                message.id,
                extra={"message_id": message.id},
            )
            return {"ok": True, "kind": "message", "duplicate": True}
        # DEBUG: this line is on the webhook's hot path (75 µs); the "handled" line follows at INFO.
        log.debug(
            "message %s received from %s to %s",
            message.id,
            message.from_number,
            message.to_number,
            extra={"message_id": message.id, "mdr_id": mdr_id, "profile": message.profile},
        )
        self.dispatcher.inbox.wake()
        return {"ok": True, "kind": "message", "mdr_id": mdr_id}

    def _in_group(self, message: InboundMessage) -> tuple[InboundMessage, NumberState | None]:
        """A group message reaches us at whichever recipient we own, not only the first ``to``;
        the others are kept on the MDR."""
        recipients = (message.to_number, *message.other_recipients)
        for recipient in recipients:
            number = self.config.number(recipient)
            if number is not None and number.profile is not None:
                others = tuple(r for r in recipients if r != recipient)
                return replace(message, to_number=recipient, other_recipients=others), number
        return message, None

    def observe(self, hook: str, plugins: list[str], **kwargs: Any) -> None:
        """Call an observer hook of ``plugins`` in the background (``handoff``); :meth:`stop` waits for it."""
        task = asyncio.get_running_loop().create_task(self.plugins.call(hook, plugins, **kwargs))
        self._observers.add(task)
        task.add_done_callback(self._observers.discard)

    # -- plugin API -------------------------------------------------------------------------

    @property
    def db(self) -> sqlite_utils.Database:
        """The bot's SQLite database, for SQLite-only plugins' own tables (prefix them with the
        plugin name). On PostgreSQL it raises RuntimeError: engine-neutral plugins keep their data
        in :meth:`plugin_store`.

        A connection of its own, on the event loop's thread: its writes take effect at once,
        not with the outcome of the message being handled, and wait for the file's write lock
        (a few seconds at most). Keep them small and idempotent."""
        return self.store.db

    def plugin_store(self, plugin: str) -> PluginStore:
        """``plugin``'s own key-value data, on either engine and shared by every replica (see
        :mod:`bot_core.plugin_store`). Opened with the database: call it from ``startup`` on."""
        return PluginStore(self.store, plugin)

    def send(
        self,
        to: str,
        text: str,
        *,
        profile: str | None = None,
        from_number: str | None = None,
        alphanumeric: bool = False,
        ignore_optout: bool = False,
    ) -> int | None:
        """Queue a proactive message; returns its MDR id, or None inside a handler. Opt-outs are respected.

        The sender is ``from_number``, or the profile's alphanumeric sender ID with
        ``alphanumeric=True``, or else the profile's first messaging-enabled number. ``to`` is
        normalised to E.164. Raises ValueError when ``to`` is not a phone number, no sender
        fits, or an alphanumeric sender ID cannot reach ``to``.

        Inside ``handle_message``, ``handle_timer`` or ``delivery_status`` the message is
        queued with the handler's outcome: it exists (and has an id) only once that outcome is
        committed, and not at all if the handler fails. Such a call returns None.
        """
        to = _e164(to, "cannot send to")
        if from_number is not None and sender_kind(from_number) != "alphanumeric":
            from_number = _e164(from_number, "cannot send from")
        sender_profile = self.config.profile_for_sender(from_number) if from_number else None
        name = profile or (sender_profile.name if sender_profile else None)
        if name not in self.config.profiles:
            raise ValueError(f"unknown messaging profile {name!r}")
        chosen = self.config.profiles[name]
        if alphanumeric:
            if not chosen.alphanumeric_sender_id:
                raise ValueError(f"profile {name!r} has no alphanumeric_sender_id")
            from_number = chosen.alphanumeric_sender_id
        elif from_number is None:
            enabled = [n for n in chosen.numbers if (s := self.config.number(n)) and s.enabled]
            if not enabled:
                raise ValueError(f"profile {name!r} has no messaging-enabled number to send from")
            from_number = enabled[0]
        elif sender_profile is None or sender_profile.name != name:
            raise ValueError(f"{from_number} does not belong to profile {name!r}")
        alphanumeric = sender_kind(from_number) == "alphanumeric"  # also when given as from_number
        if alphanumeric and (why := alphanumeric_destination_error(to)):
            raise ValueError(why)
        effects = effects_.current()
        outbound = draft(effects.opted_out if effects else self.store.is_opted_out,
                         Reply(text, ignore_optout=ignore_optout), profile=name, from_number=from_number, to_number=to,
                         max_parts=self.config.bot.max_parts)  # fmt: skip
        effect = SendEffect(outbound, None if alphanumeric else (name, from_number, to))
        if effects is not None:
            effects.add(effect)
            return None
        mdr_id = self.store.apply([effect])[0]
        self.metrics.count_refused([outbound])
        if self.started:  # else a running server's sender, or the next start, sends it
            self.sender.wake()
        return mdr_id

    def schedule(
        self,
        conversation: Conversation,
        *,
        at: datetime | float | None = None,
        delay: float | str | None = None,
        text: str | None = None,
        plugin: str | None = None,
        name: str | None = None,
        payload: dict[str, Any] | None = None,
    ) -> int | None:
        """Schedule ``text`` to be sent, or ``plugin``'s ``handle_timer`` to be called.

        Give the time as ``at`` (a datetime or epoch seconds) or ``delay`` (seconds or a
        duration such as ``"15m"``). ``name`` lets a plugin find or cancel its timers.
        Returns the timer id; inside a handler the timer is committed with the handler's
        outcome (not at all if it fails), and None is returned.
        """
        if (text is None) == (plugin is None):
            raise ValueError("schedule needs exactly one of text= or plugin=")
        if (at is None) == (delay is None):
            raise ValueError("schedule needs exactly one of at= or delay=")
        if delay is not None:
            due = self.clock() + parse_duration(delay)
        elif isinstance(at, datetime):
            due = at.timestamp()
        else:
            assert at is not None, "checked above: one of at= and delay= is given"
            due = float(at)
        effect = TimerEffect(conversation.id, due, plugin, name, text, payload or {})
        if (effects := effects_.current()) is not None:
            effects.add(effect)
            return None
        timer_id = self.store.apply([effect])[0]
        if self.started:
            self.timers.wake()
        return timer_id

    def cancel_timers(self, conversation: Conversation, *, plugin: str | None = None, name: str | None = None) -> int:
        """Cancel a conversation's pending timers (only ``plugin``'s or ``name``'s if given).

        Returns how many; inside a handler the cancel is committed with its outcome."""
        effects = effects_.current()
        if effects is None:
            return self.store.cancel_timers(conversation.id, plugin=plugin, name=name)

        def matches(t: Any) -> bool:
            return (t.conversation_id == conversation.id and plugin in (None, t.plugin)
                    and name in (None, t.name))  # fmt: skip

        count = sum(1 for t in self.store.timers(conversation.id) if matches(t))
        for _, effect in effects.items:  # this handler's own schedules and cancels so far
            if isinstance(effect, TimerEffect) and matches(effect):
                count += 1
            elif isinstance(effect, CancelEffect) and effect.conversation_id == conversation.id:
                count = 0 if (effect.plugin, effect.name) == (None, None) else count
        effects.add(CancelEffect(conversation.id, plugin, name))
        return count

    def handoff(self, conversation: Conversation, reason: str) -> bool:
        """Hand ``conversation`` to a person: from now on its messages wait in the operator inbox
        and reach no plugin but ``optout``. False if a person already has it. ``reason`` is shown
        to the operators and passed to the ``handoff`` hook."""
        return handoffs.hand_over(self, conversation, reason)

    def hand_back(self, conversation: Conversation, reason: str) -> bool:
        """Give ``conversation`` back to the bot; False if the bot already has it."""
        return handoffs.hand_back(self, conversation, reason)

    def is_opted_out(self, profile: str | None, number: str) -> bool:
        """Whether ``number`` opted out of ``profile`` or of the whole account (``profile`` None).

        Inside a handler, the handler's own opt-in or opt-out counts already."""
        number = _e164(number, "not a number to look up")
        effects = effects_.current()
        return effects.opted_out(profile, number) if effects else self.store.is_opted_out(profile, number)

    def opt_out(self, profile: str | None, number: str, source: str) -> bool:
        """Stop every message to ``number`` from ``profile`` (None: from every profile, as
        Telnyx's account-wide opt-outs do); ``source`` goes in the consent log.

        Returns False when that record had opted out already. Inside a handler the change is
        committed with its outcome."""
        return self._consent(profile, _e164(number, "cannot opt out"), True, source)

    def opt_in(self, profile: str | None, number: str, source: str) -> bool:
        """Lift the opt-out :meth:`opt_out` recorded for the same ``profile`` (None: account-wide)."""
        return self._consent(profile, _e164(number, "cannot opt in"), False, source)

    def _consent(self, profile: str | None, number: str, opted_out: bool, source: str) -> bool:
        if (effects := effects_.current()) is None:
            return self.store.set_opted_out(profile, number, opted_out, source)
        if effects.record(profile, number) == opted_out:
            return False
        effects.add(ConsentEffect(profile, number, opted_out, source))
        return True


def _e164(number: str, what: str) -> str:
    """A number a plugin gave, in E.164 (the form every table is keyed by), or ValueError saying why."""
    try:
        return normalize_number(number)
    except ValueError as exc:
        raise ValueError(f"{what} {number!r}: {exc}") from None


def _gone(owner: str, host: str) -> bool:
    """Whether ``owner`` (``host:pid:nonce``) was a process of this host that no longer runs."""
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != host or not parts[1].isdigit() or int(parts[1]) == os.getpid():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False
