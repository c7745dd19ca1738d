"""The Bot: owns the config, plugins, database, Telnyx client and background loops of one bot.

Nothing starts at construction: :meth:`Bot.start` opens the database and starts the loops (the
Starlette lifespan calls it), :meth:`Bot.stop` drains and closes them. Plugins receive the Bot
as ``bot`` and use the methods below the "plugin API" banner.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

import httpx
import sqlite_utils

from . import handoff as handoffs
from .config import Config, NumberState, parse_duration
from .dispatch import Dispatcher
from .errors import SignatureError, WebhookError
from .messages import Conversation, DeliveryStatus, InboundMessage, Reply
from .metrics import Metrics
from .outbox import draft
from .phone import alphanumeric_destination_error, normalize_number, sender_kind
from .plugins import Plugins, call_impl, load_plugins
from .store import IGNORED, Store
from .telnyx import TelnyxClient, make_client
from .timers import Timer, TimerLoop
from .webhooks import Webhook, verify_v1, verify_v2
from .worker import Sender

log = logging.getLogger("bot_core")


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
        self._sender_task: asyncio.Task[None] | None = None
        self._timers_task: asyncio.Task[None] | None = None
        self._observers: set[asyncio.Task[None]] = set()
        self.started = False

    # -- lifecycle --------------------------------------------------------------------------

    def open(self) -> None:
        """Open the database without starting anything: enough to queue messages with :meth:`send`.

        A running server's sender picks such messages up within a second (``bot-core send``).
        """
        if not hasattr(self, "store"):
            self.store = Store(self.config.bot.database, clock=self.clock, secrets=self.config.secrets())

    def close(self) -> None:
        """Close the database :meth:`open` opened (:meth:`stop` does it for a started bot)."""
        if hasattr(self, "store"):
            self.store.close()
            del self.store

    async def start(self) -> None:
        """Open the database, resume unfinished work, call ``startup`` hooks, start the loops."""
        config = self.config
        self.open()
        self.client: TelnyxClient = make_client(config, self._transport)
        self.sender = Sender(self.store, self.client, config, self.metrics, self.clock)
        self.dispatcher = Dispatcher(self, on_outbox=self.sender.wake)
        self.timers = TimerLoop(self.due_timers, self.dispatcher.submit)
        self.metrics.track_queue("inbox", lambda: len(self.dispatcher.lanes))
        self.metrics.track_queue("outbox", lambda: len(self.sender.lanes))
        requeued = self.store.requeue_in_flight()
        if requeued:
            log.warning("%d send(s) were in flight at the last stop; sending them again", requeued)
        for name in self.plugins.names:
            impl = self.plugins.impl("startup", name)
            if impl is not None:
                await call_impl(impl, {"bot": self})
        pending = self.store.pending_inbound()
        for message in pending:
            self.dispatcher.submit(message, (message.to_number, message.from_number))
        if pending:
            log.info("resuming %d message(s) received before the last stop", len(pending))
        loop = asyncio.get_running_loop()
        self._sender_task = loop.create_task(self.sender.run())
        self._timers_task = loop.create_task(self.timers.run())
        self.started = True
        self._announce()

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

    def due_timers(self) -> list[tuple[Timer, tuple[str, str]]]:
        """The timers the timer loop fires now, each with its conversation's lane key."""
        return self.store.due_timers(self.clock())

    async def stop(self) -> None:
        """Finish in-flight plugin calls and sends within ``shutdown_grace``, then close.

        Webhooks get 503 from now on. Plugin calls in flight finish and their replies are
        sent; messages not started yet and sends waiting for a retry stay in the database,
        and whatever is still running when the grace ends is cut off: all of it resumes at the
        next start.
        """
        if not self.started:
            return
        self.started = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.bot.shutdown_grace
        await _cancel(self._timers_task)
        drained = await self.dispatcher.stop(max(0.0, deadline - loop.time()))
        await _cancel(self._sender_task)
        drained = await self.sender.stop(max(0.0, deadline - loop.time())) and drained
        if not drained:
            log.warning("shutdown grace ran out; unfinished work will resume at the next start")
        await asyncio.gather(*self._observers, return_exceptions=True)
        await self.plugins.call("shutdown", bot=self)
        await self.client.aclose()
        self.close()
        log.info("bot-core stopped%s", "" if drained else " (unfinished work left for the next start)")

    async def idle(self, timeout: float | None = None) -> bool:
        """Wait until no message is being handled or sent (tests and the chat simulator).

        A send waiting for a retry counts as being sent. False if ``timeout`` passed first.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout

        def remaining() -> float | None:
            return None if deadline is None else max(0.0, deadline - loop.time())

        while True:
            if not await self.dispatcher.lanes.join(remaining()):
                return False
            self.sender.poll()
            if not await self.sender.lanes.join(remaining()):
                return False
            # Sending can make more work (a delivery_status hook, a plugin's bot.send).
            await asyncio.sleep(0)
            if not len(self.dispatcher.lanes) and not self.sender.poll() and not len(self.sender.lanes):
                return True

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

    def accept(self, webhook: Webhook) -> dict[str, Any]:
        """Store a verified webhook and queue its work; returns the JSON acknowledgement.

        Raises WebhookError 503 when the database cannot take it (disk full, a lock held for
        longer than the busy timeout): Telnyx delivers it again later, so nothing is lost.
        """
        try:
            return self._accept(webhook)
        except sqlite3.Error as exc:
            log.error("cannot store a webhook (%s); answering 503 so that Telnyx delivers it again", exc)
            raise WebhookError("the bot cannot store this webhook right now; deliver it again later", 503) from None

    def _accept(self, webhook: Webhook) -> dict[str, Any]:
        if webhook.kind == "message":
            return self._accept_message(webhook.message)
        if webhook.kind == "status":
            status = webhook.status
            # A V1 status is vouched for by one profile's secret: it may move that profile's MDRs only.
            signer = self.config.profile_for_sender(status.from_number or "") if webhook.version == 1 else None
            mdr_id = self.store.apply_status(status, profile=signer.name if signer else None)
            log.info("delivery status %s for %s", status.status, status.telnyx_id,
                     extra={"telnyx_id": status.telnyx_id, "mdr_id": mdr_id})
            status = type(status)(**{**status.__dict__, "mdr_id": mdr_id})
            self._observe(status)
            return {"ok": True, "kind": "status", "mdr_id": mdr_id}
        return {"ok": True, "kind": "ignored", "event_type": webhook.event_type}

    def _accept_message(self, message: InboundMessage) -> dict[str, Any]:
        number = self.config.number(message.to_number)
        if message.other_recipients:
            message, number = self._in_group(message)
        if number is None or number.profile is None:
            recipients = ", ".join((message.to_number, *message.other_recipients))
            log.warning("message %s to %s refused: no messaging profile lists that number", message.id, recipients,
                        extra={"message_id": message.id})
            what = f"number {recipients} is" if not message.other_recipients else f"none of {recipients} is"
            raise WebhookError(f"{what} assigned to any messaging profile", 404)
        message = InboundMessage(**{**message.__dict__, "profile": number.profile})
        if not number.enabled:
            mdr_id = self.store.add_inbound(message, status=IGNORED, error=number.reason)
            log.warning("message %s to %s recorded but not handled: %s", message.id, message.to_number, number.reason,
                        extra={"message_id": message.id, "mdr_id": mdr_id})
            return {"ok": True, "kind": "message", "mdr_id": mdr_id, "handled": False, "reason": number.reason}
        mdr_id = self.store.add_inbound(message)
        if mdr_id is None:
            log.info("message %s delivered again: acknowledged, not handled twice", message.id,
                     extra={"message_id": message.id})
            return {"ok": True, "kind": "message", "duplicate": True}
        # DEBUG: this line is on the webhook's hot path (75 µs); the "handled" line follows at INFO.
        log.debug("message %s received from %s to %s", message.id, message.from_number, message.to_number,
                 extra={"message_id": message.id, "mdr_id": mdr_id, "profile": message.profile})
        message = InboundMessage(**{**message.__dict__, "mdr_id": mdr_id})
        self.dispatcher.submit(message, (message.to_number, message.from_number))
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

    def _observe(self, status: DeliveryStatus) -> None:
        """Hand a status to the plugins active on the sending number (an alphanumeric sender
        stands for its profile, so its profile's first number's plugins see it)."""
        number = self.config.number(status.from_number or "")
        if number is None and (profile := self.config.profile_for_sender(status.from_number or "")):
            number = self.config.number(profile.numbers[0]) if profile.numbers else None
        self.observe("delivery_status", self.plugins.active(number) if number else self.plugins.names, bot=self,
                     status=status)  # fmt: skip

    def observe(self, hook: str, plugins: list[str], **kwargs: Any) -> None:
        """Call an observer hook of ``plugins`` in the background; :meth:`stop` waits for it."""
        task = asyncio.get_running_loop().create_task(self.plugins.call(hook, plugins, **kwargs))
        self._observers.add(task)
        task.add_done_callback(self._observers.discard)

    # -- plugin API -------------------------------------------------------------------------

    @property
    def db(self) -> sqlite_utils.Database:
        """The bot's SQLite database, for plugins' own tables (prefix them with the plugin name)."""
        return self.store.db

    def send(
        self,
        to: str,
        text: str,
        *,
        profile: str | None = None,
        from_number: str | None = None,
        alphanumeric: bool = False,
        ignore_optout: bool = False,
    ) -> int:
        """Queue a proactive message; returns its MDR id. Opt-outs are respected.

        The sender is ``from_number``, or the profile's alphanumeric sender ID with
        ``alphanumeric=True``, or else the profile's first messaging-enabled number. ``to`` is
        normalised to E.164. Raises ValueError when ``to`` is not a phone number, no sender
        fits, or an alphanumeric sender ID cannot reach ``to``.
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
        outbound = draft(self.store, Reply(text, ignore_optout=ignore_optout), profile=name,
                         from_number=from_number, to_number=to, max_parts=self.config.bot.max_parts)  # fmt: skip
        conversation = self.store.conversation(name, from_number, to) if not alphanumeric else None
        mdr_id = self.store.add_outbound(outbound, conversation.id if conversation else None)
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
    ) -> int:
        """Schedule ``text`` to be sent, or ``plugin``'s ``handle_timer`` to be called.

        Give the time as ``at`` (a datetime or epoch seconds) or ``delay`` (seconds or a
        duration such as ``"15m"``). ``name`` lets a plugin find or cancel its timers.
        Returns the timer id.
        """
        if (text is None) == (plugin is None):
            raise ValueError("schedule needs exactly one of text= or plugin=")
        if (at is None) == (delay is None):
            raise ValueError("schedule needs exactly one of at= or delay=")
        if delay is not None:
            due = self.clock() + parse_duration(delay)
        else:
            due = at.timestamp() if isinstance(at, datetime) else float(at)
        timer_id = self.store.add_timer(conversation.id, due, plugin=plugin, name=name, text=text, payload=payload)
        self.timers.poke()
        return timer_id

    def cancel_timers(self, conversation: Conversation, *, plugin: str | None = None, name: str | None = None) -> int:
        """Cancel a conversation's pending timers (only ``plugin``'s or ``name``'s if given)."""
        return self.store.cancel_timers(conversation.id, plugin=plugin, name=name)

    def handoff(self, conversation: Conversation, reason: str) -> bool:
        """Hand ``conversation`` to a person: from now on its messages wait in the operator inbox
        and reach no plugin but ``optout``. False if a person already has it. ``reason`` is shown
        to the operators and passed to the ``handoff`` hook."""
        return handoffs.hand_over(self, conversation, reason)

    def hand_back(self, conversation: Conversation, reason: str) -> bool:
        """Give ``conversation`` back to the bot; False if the bot already has it."""
        return handoffs.hand_back(self, conversation, reason)

    def is_opted_out(self, profile: str | None, number: str) -> bool:
        """Whether ``number`` opted out of ``profile`` or of the whole account (``profile`` None)."""
        return self.store.is_opted_out(profile, _e164(number, "not a number to look up"))

    def opt_out(self, profile: str | None, number: str, source: str) -> bool:
        """Stop every message to ``number`` from ``profile`` (None: from every profile, as
        Telnyx's account-wide opt-outs do); ``source`` goes in the consent log."""
        return self.store.set_opted_out(profile, _e164(number, "cannot opt out"), True, source)

    def opt_in(self, profile: str | None, number: str, source: str) -> bool:
        """Lift the opt-out :meth:`opt_out` recorded for the same ``profile`` (None: account-wide)."""
        return self.store.set_opted_out(profile, _e164(number, "cannot opt in"), False, source)


def _e164(number: str, what: str) -> str:
    """A number a plugin gave, in E.164 (the form every table is keyed by), or ValueError saying why."""
    try:
        return normalize_number(number)
    except ValueError as exc:
        raise ValueError(f"{what} {number!r}: {exc}") from None


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
