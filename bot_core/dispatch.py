"""The inbound pipeline: claimed messages, timers and delivery statuses, handed to plugins.

Each kind of unit is claimed from the store (:mod:`.lanes`), which hands out only the head of
each conversation's lane: a conversation's messages and timers are handled one at a time in
arrival order while other conversations proceed, across restarts and processes. The outcome
of one unit (new state, plugin effects, replies, status) is committed in one transaction
guarded by the unit's lease; until then the unit stays in the database as work to do, so a
fault at any point loses nothing. A commit that fails for a passing reason (disk full, a lock
held elsewhere) is retried after a backoff by the process holding the unit.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from . import effects as effects_
from . import handoff
from .lanes import Claims
from .messages import Conversation, DeliveryStatus, InboundMessage, Reply
from .outbox import as_replies, draft
from .plugins import call_impl
from .store import FAILED, HANDLED, IGNORED, Context, Effect, SendEffect, StatusEvent
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
    effects: tuple[Effect, ...] = ()


class Dispatcher:
    """Claims stored inbound messages, due timers and delivery statuses, and runs their plugins."""

    def __init__(self, bot: Bot) -> None:
        self.bot = bot
        store, settings = bot.store, bot.config.bot
        extra = {"timer": {"lane": bot.timer_lane}} if bot.timer_lane else {}

        def claims(name: str, claim: Any, work: Any, key: Any, table: str) -> Claims[Any]:
            more = extra.get(name, {})
            return Claims(name, lambda n: store.call(claim, bot.owner, n, settings.lease, **more), work, key,
                          lambda row_id: store.call(store.release_unit, table, row_id, bot.owner),
                          poll=settings.poll_interval)  # fmt: skip

        self.inbox: Claims[InboundMessage] = claims("inbound", store.claim_inbound, self._handle, lambda m: m.mdr_id,
                                                    "mdrs")  # fmt: skip
        self.timers: Claims[Timer] = claims("timer", store.claim_timers, self._fire, lambda t: t.id, "timers")
        self.statuses: Claims[StatusEvent] = claims("delivery status", store.claim_status_hooks, self._observe,
                                                    lambda e: e.id, "delivery_events")  # fmt: skip

    @property
    def loops(self) -> tuple[Claims[Any], ...]:
        return (self.inbox, self.timers, self.statuses)

    async def stop(self, grace: float) -> bool:
        """Let plugin calls in flight finish within ``grace`` seconds and commit their outcome.

        Units not started yet stay in the database; a call still running when the grace ends
        is cancelled, and its unit is handled again (by this process's next start or another).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        drained = True
        for claims in self.loops:
            drained = await claims.close(max(0.0, deadline - loop.time())) and drained
        return drained

    # -- inbound messages --------------------------------------------------------------------

    async def _handle(self, message: InboundMessage) -> None:
        bot, store = self.bot, self.bot.store
        number = bot.config.number(message.to_number)
        if number is None or not number.enabled:
            reason = number.reason if number else "number is not in the configuration"
            log.warning(
                "message %s to %s reaches no plugin: %s",
                message.id,
                message.to_number,
                reason,
                extra={"message_id": message.id, "mdr_id": message.mdr_id},
            )
            await bot.stored(store.finish_inbound, message.mdr_id, status=IGNORED, error=reason, owner=bot.owner)
            return
        # One read (off the event loop on PostgreSQL): the conversation, its handler, the opt-outs.
        found = await store.read(store.conversation_context, message.to_number, message.from_number)
        if found is None:  # the first message
            await bot.stored(store.conversation, number.profile, message.to_number, message.from_number)
            found = await store.read(store.conversation_context, message.to_number, message.from_number)
            assert found is not None, "created just now; conversations are never deleted while in use"
        conversation, context = found
        outcome = await self.consult(message, conversation, context)
        await self._commit(message.mdr_id, conversation, outcome, message_id=message.id, consent=context.consent)

    async def consult(self, message: InboundMessage, conversation: Conversation,
                      context: Context | None = None) -> Outcome:  # fmt: skip
        """Ask the profile's plugins in order; the first non-None answer claims the message.

        While a person has the conversation only ``optout`` is asked (see handoff.gate).
        ``context``: read with the conversation, so that the gate and the plugins' opt-out
        checks read nothing more (without it, they read what they need).

        On failure ``conversation.state`` is put back as it was, the plugins' effects are
        dropped, and the fallback reply (if any) is the only reply.
        """
        bot = self.bot
        number = bot.config.number(message.to_number)
        assert number is not None
        current = handoff.Handler.of(context) if context else None
        active, unclaimed = await handoff.gate(bot, conversation, bot.plugins.active(number), current)
        before = copy.deepcopy(conversation.state)
        with effects_.collecting(bot.store, context.consent if context else None) as effects:
            for name in active:
                impl = bot.plugins.impl("handle_message", name)
                if impl is None:
                    continue
                kwargs = {"bot": bot, "message": message, "conversation": conversation,
                          "config": number.plugin_config.get(name, {})}  # fmt: skip
                effects.plugin = name
                try:
                    result = await self._call(name, impl, kwargs)
                    if result is None:
                        continue
                    replies = _sendable(result)
                    json.dumps(conversation.state)
                except Exception as exc:
                    conversation.state = before
                    return self._failure(name, exc, active, message.id)
                return self._limited(Outcome(HANDLED, active, name, replies), effects, before, conversation)
        return self._limited(Outcome(unclaimed, active), effects, before, conversation)

    def _limited(self, outcome: Outcome, effects: effects_.Effects, before: dict[str, Any],
                 conversation: Conversation) -> Outcome:  # fmt: skip
        """The outcome with its effects, unless its replies and sends pass ``max_replies``: then
        nothing is sent, the state is put back, and the error names the plugin that went over."""
        limit = self.bot.config.bot.max_replies
        made = [(outcome.claimed_by, None)] * len(outcome.replies) + effects.sends()
        if len(made) <= limit:
            return replace(outcome, effects=tuple(effects.effects))
        by_plugin = [plugin for plugin, _ in effects.sends()] + [outcome.claimed_by] * len(outcome.replies)
        culprit = by_plugin[limit]
        conversation.state = before
        error = (f"plugin {culprit!r} went over max_replies = {limit}: {len(made)} replies and sends for one"
                 " message or timer; nothing was sent")  # fmt: skip
        log.error("%s", error, extra={"plugin": culprit, "conversation_id": conversation.id})
        self.bot.metrics.plugin_failures.labels(culprit or "").inc()
        return Outcome(FAILED, outcome.plugins, culprit, (), error)

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

    async def _commit(self, mdr_id: int | None, conversation: Conversation, outcome: Outcome, timer: Timer | None = None,
                      message_id: str | None = None,
                      consent: dict[tuple[str | None, str], bool] | None = None) -> None:  # fmt: skip
        bot, store = self.bot, self.bot.store
        effects = effects_.Effects(store, consent)
        for effect in outcome.effects:
            effects.add(effect)
        drafts = [
            draft(effects.opted_out, reply, profile=conversation.profile, from_number=conversation.our_number,
                  to_number=conversation.their_number, max_parts=bot.config.bot.max_parts)
            for reply in outcome.replies
        ]  # fmt: skip
        if timer is not None:
            await bot.stored(store.finish_timer, timer.id, conversation, drafts, error=outcome.error,
                             effects=outcome.effects, owner=bot.owner)  # fmt: skip
        else:
            await bot.stored(store.finish_inbound, mdr_id, status=outcome.status, conversation=conversation,
                             replies=drafts, claimed_by=outcome.claimed_by, error=outcome.error,
                             effects=outcome.effects, owner=bot.owner)  # fmt: skip
        sent = [e.draft for e in outcome.effects if isinstance(e, SendEffect)]
        bot.metrics.handled.labels(outcome.status if timer is None else "timer").inc()
        bot.metrics.count_refused(drafts + sent)
        log.info(
            "%s %s%s, %d reply(ies)",
            f"timer {timer.id}" if timer else f"MDR {mdr_id}",
            outcome.status,
            f" by {outcome.claimed_by}" if outcome.claimed_by else "",
            len(drafts),
            extra={
                "mdr_id": mdr_id,
                "message_id": message_id,
                "conversation_id": conversation.id,
                "plugin": outcome.claimed_by,
            },
        )
        if drafts or sent:
            bot.sender.wake()
        if len(outcome.effects) > len(sent):
            self.timers.wake()

    # -- timers ------------------------------------------------------------------------------

    async def _fire(self, timer: Timer) -> None:
        bot = self.bot
        found = await bot.store.read(bot.store.conversation_context, conversation_id=timer.conversation_id)
        if found is None:
            await bot.stored(bot.store.finish_timer, timer.id, None, [], error="conversation no longer exists",
                             owner=bot.owner)  # fmt: skip
            return
        conversation, context = found
        if timer.text is not None:
            outcome = Outcome(HANDLED, [], None, (Reply(timer.text),))
        else:
            outcome = await self._timer_callback(timer, conversation, context)
        await self._commit(None, conversation, outcome, timer, consent=context.consent)

    async def _timer_callback(self, timer: Timer, conversation: Conversation, context: Context) -> Outcome:
        bot = self.bot
        plugin = timer.plugin or ""  # no plugin has the name "": the timer's plugin from here on
        impl = bot.plugins.impl("handle_timer", plugin)
        if impl is None:
            return Outcome(FAILED, [], error=f"plugin {timer.plugin!r} has no handle_timer hook")
        number = bot.config.number(conversation.our_number)
        config = number.plugin_config.get(plugin, {}) if number else {}
        before = copy.deepcopy(conversation.state)
        kwargs = {"bot": bot, "timer": timer, "conversation": conversation, "config": config}
        with effects_.collecting(bot.store, context.consent) as effects:
            effects.plugin = plugin
            try:
                result = await self._call(plugin, impl, kwargs)
                replies = _sendable(result) if result is not None else ()
                json.dumps(conversation.state)
            except Exception as exc:
                conversation.state = before
                failure = self._failure(plugin, exc, [plugin], f"timer {timer.id}")
                return Outcome(FAILED, [plugin], plugin, (), failure.error)
        return self._limited(Outcome(HANDLED, [plugin], plugin, replies), effects, before, conversation)

    # -- delivery statuses -------------------------------------------------------------------

    async def _observe(self, event: StatusEvent) -> None:
        """Call the ``delivery_status`` hooks of the plugins active on the sending number (an
        alphanumeric sender stands for its profile, so its profile's first number's plugins);
        a failing hook is logged and its own effects dropped."""
        bot = self.bot
        status = DeliveryStatus(event.telnyx_id, event.status, event.from_number, event.to_number, event.error,
                                event.mdr_id)  # fmt: skip
        number = bot.config.number(status.from_number or "")
        if number is None and (profile := bot.config.profile_for_sender(status.from_number or "")):
            number = bot.config.number(profile.numbers[0]) if profile.numbers else None
        errors = []
        with effects_.collecting(bot.store) as effects:
            for name in bot.plugins.active(number) if number else bot.plugins.names:
                impl = bot.plugins.impl("delivery_status", name)
                if impl is None:
                    continue
                effects.plugin, mark = name, len(effects.items)
                try:
                    await self._call(name, impl, {"bot": bot, "status": status})
                except Exception as exc:
                    log.error("plugin %r failed in delivery_status: %s: %s", name, type(exc).__name__, exc,
                              exc_info=exc, extra={"plugin": name, "telnyx_id": status.telnyx_id})  # fmt: skip
                    errors.append(f"plugin {name!r} failed: {type(exc).__name__}: {exc}")
                    del effects.items[mark:]
        made = effects.effects
        await bot.stored(bot.store.finish_status_hook, event.id, error="; ".join(errors) or None, effects=made,
                         owner=bot.owner)  # fmt: skip
        if made:
            bot.sender.wake()
            self.timers.wake()


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
