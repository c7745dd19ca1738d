"""The inbound pipeline: take a stored message (or a due timer), consult plugins, record the outcome.

Work is run in lanes keyed by conversation, so a conversation's messages and timers are handled
one at a time in arrival order while other conversations proceed. The outcome of one item (new
state, replies, status) is committed in one transaction; until then the item stays in the
database as work to do, so a crash at any point loses nothing.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import handoff
from .lanes import Lanes
from .messages import Conversation, InboundMessage, Reply
from .outbox import as_replies, draft
from .plugins import call_impl
from .store import FAILED, HANDLED, IGNORED
from .timers import Timer

if TYPE_CHECKING:
    from .bot import Bot

log = logging.getLogger("bot_core.dispatch")


@dataclass(frozen=True)
class Outcome:
    """What handling one message came to; ``explain`` shows it without committing anything."""

    status: str
    plugins: list[str]
    claimed_by: str | None = None
    replies: tuple[Reply, ...] = ()
    error: str | None = None


class Dispatcher:
    """Hands stored inbound messages and due timers to plugins, one lane per conversation."""

    def __init__(self, bot: Bot, on_outbox: Callable[[], None]) -> None:
        self.bot = bot
        self._on_outbox = on_outbox
        self.lanes: Lanes[InboundMessage | Timer] = Lanes(self._process)

    def submit(self, item: InboundMessage | Timer, key: tuple[str, str]) -> None:
        """Queue a stored message or a due timer behind earlier work of its conversation."""
        self.lanes.submit(key, item)

    async def stop(self, grace: float) -> bool:
        """Let plugin calls in flight finish within ``grace`` seconds and commit their outcome.

        Messages not started yet stay ``received`` for the next start; a call still running
        when the grace ends is cancelled, and its message is handled again at the next start.
        """
        return await self.lanes.close(grace)

    async def _process(self, item: InboundMessage | Timer) -> None:
        if isinstance(item, Timer):
            await self._fire(item)
        else:
            await self._handle(item)

    async def _handle(self, message: InboundMessage) -> None:
        store = self.bot.store
        number = self.bot.config.number(message.to_number)
        if number is None or not number.enabled:
            reason = number.reason if number else "number is not in the configuration"
            log.warning("message %s to %s reaches no plugin: %s", message.id, message.to_number, reason,
                        extra={"message_id": message.id, "mdr_id": message.mdr_id})
            store.finish_inbound(message.mdr_id, status=IGNORED, error=reason)
            return
        conversation = store.conversation(number.profile, message.to_number, message.from_number)
        outcome = await self.consult(message, conversation)
        self._commit(message.mdr_id, conversation, outcome, message_id=message.id)

    async def consult(self, message: InboundMessage, conversation: Conversation) -> Outcome:
        """Ask the profile's plugins in order; the first non-None answer claims the message.

        While a person has the conversation only ``optout`` is asked (see handoff.gate).

        On failure ``conversation.state`` is put back as it was and the fallback reply (if
        any) is the only reply.
        """
        bot = self.bot
        number = bot.config.number(message.to_number)
        assert number is not None
        active, unclaimed = await handoff.gate(bot, conversation, bot.plugins.active(number))
        before = copy.deepcopy(conversation.state)
        for name in active:
            impl = bot.plugins.impl("handle_message", name)
            if impl is None:
                continue
            kwargs = {"bot": bot, "message": message, "conversation": conversation,
                      "config": number.plugin_config.get(name, {})}  # fmt: skip
            try:
                result = await self._call(name, impl, kwargs)
                if result is None:
                    continue
                replies = _sendable(result)
                json.dumps(conversation.state)
            except Exception as exc:
                conversation.state = before
                return self._failure(name, exc, active, message.id)
            return Outcome(HANDLED, active, name, replies)
        return Outcome(unclaimed, active)

    async def _call(self, name: str, impl: Any, kwargs: dict[str, Any]) -> Any:
        timeout = self.bot.config.bot.plugin_timeout
        started = time.monotonic()
        # asyncio.timeout, unlike wait_for, runs the call in this task instead of a new one.
        deadline = asyncio.timeout(timeout or None)
        try:
            async with deadline:
                result = await call_impl(impl, kwargs)
        except TimeoutError as exc:
            if not deadline.expired():  # the plugin's own timeout, not ours
                raise
            # Chained: the traceback shows where the plugin was waiting.
            raise TimeoutError(f"timed out after {timeout:g}s") from exc
        finally:
            self.bot.metrics.plugin_seconds.labels(name).observe(time.monotonic() - started)
        if timeout and time.monotonic() - started > timeout:  # a blocking `def` hook
            raise TimeoutError(f"ran {time.monotonic() - started:.1f}s, past its {timeout:g}s timeout")
        return result

    def _failure(self, name: str, exc: Exception, active: list[str], item: str) -> Outcome:
        reason = f"plugin {name!r} failed: {type(exc).__name__}: {exc}"
        log.error("%s on %s", reason, item, exc_info=exc, extra={"plugin": name})
        self.bot.metrics.plugin_failures.labels(name).inc()
        fallback = self.bot.config.bot.fallback_reply
        return Outcome(FAILED, active, name, (Reply(fallback),) if fallback else (), reason)

    def _commit(self, mdr_id: int | None, conversation: Conversation, outcome: Outcome, timer: Timer | None = None,
                message_id: str | None = None) -> None:  # fmt: skip
        drafts = [
            draft(self.bot.store, reply, profile=conversation.profile, from_number=conversation.our_number,
                  to_number=conversation.their_number, max_parts=self.bot.config.bot.max_parts)
            for reply in outcome.replies
        ]  # fmt: skip
        store = self.bot.store
        if timer is not None:
            store.finish_timer(timer.id, conversation, drafts, error=outcome.error)
        else:
            store.finish_inbound(mdr_id, status=outcome.status, conversation=conversation, replies=drafts,
                                 claimed_by=outcome.claimed_by, error=outcome.error)  # fmt: skip
        self.bot.metrics.handled.labels(outcome.status if timer is None else "timer").inc()
        self.bot.metrics.count_refused(drafts)
        log.info("%s %s%s, %d reply(ies)", f"timer {timer.id}" if timer else f"MDR {mdr_id}", outcome.status,
                 f" by {outcome.claimed_by}" if outcome.claimed_by else "", len(drafts),
                 extra={"mdr_id": mdr_id, "message_id": message_id, "conversation_id": conversation.id,
                        "plugin": outcome.claimed_by})
        if drafts:
            self._on_outbox()

    async def _fire(self, timer: Timer) -> None:
        try:
            await self._fire_once(timer)
        finally:
            self.bot.timers.done(timer.id)

    async def _fire_once(self, timer: Timer) -> None:
        bot = self.bot
        conversation = bot.store.conversation_by_id(timer.conversation_id)
        if conversation is None:
            bot.store.finish_timer(timer.id, None, [], error="conversation no longer exists")
            return
        if timer.text is not None:
            outcome = Outcome(HANDLED, [], None, (Reply(timer.text),))
        else:
            outcome = await self._timer_callback(timer, conversation)
        self._commit(None, conversation, outcome, timer)

    async def _timer_callback(self, timer: Timer, conversation: Conversation) -> Outcome:
        bot = self.bot
        impl = bot.plugins.impl("handle_timer", timer.plugin or "")
        if impl is None:
            return Outcome(FAILED, [], error=f"plugin {timer.plugin!r} has no handle_timer hook")
        number = bot.config.number(conversation.our_number)
        config = number.plugin_config.get(timer.plugin, {}) if number else {}
        before = copy.deepcopy(conversation.state)
        kwargs = {"bot": bot, "timer": timer, "conversation": conversation, "config": config}
        try:
            result = await self._call(timer.plugin, impl, kwargs)
            replies = _sendable(result) if result is not None else ()
            json.dumps(conversation.state)
        except Exception as exc:
            conversation.state = before
            failure = self._failure(timer.plugin, exc, [timer.plugin], f"timer {timer.id}")
            return Outcome(FAILED, [timer.plugin], timer.plugin, (), failure.error)
        return Outcome(HANDLED, [timer.plugin], timer.plugin, replies)


def _sendable(result: Any) -> tuple[Reply, ...]:
    """A handler's result as replies, refused (as the plugin's fault) unless each is text.

    Checked here, inside the plugin call's error handling, so a bad reply fails its message
    instead of breaking the commit and leaving the message to fail again at every start.
    """
    replies = tuple(as_replies(result))
    for reply in replies:
        if not isinstance(reply.text, str):
            raise TypeError(f"a reply's text must be a string, not {type(reply.text).__name__}")
        reply.text.encode()  # UnicodeEncodeError for a lone surrogate, which SQLite cannot store
    return replies
