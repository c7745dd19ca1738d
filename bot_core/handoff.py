"""Handoff: whether the bot or a person has a conversation, and the gate that follows from it.

While a person has a conversation, inbound messages reach no plugin but the ALWAYS_FIRST ones
(``optout``: STOP must keep working) and are stored as ``waiting``. A conversation goes to a
person by an operator's "Take over", an operator's reply, or a plugin's ``bot.handoff``; it
comes back by "Hand back" or after ``[inbox] handback_after`` with no operator activity. Each
change is committed, then announced to the plugins through the ``handoff`` hook.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .messages import Conversation
from .plugins import ALWAYS_FIRST
from .store import UNHANDLED, WAITING, Context

if TYPE_CHECKING:
    from .bot import Bot

log = logging.getLogger("bot_core.handoff")

BOT = "bot"
PERSON = "person"


@dataclass(frozen=True)
class Handler:
    """Who has a conversation: ``operator`` is None for the bot, and for a person not yet named."""

    with_person: bool
    operator: str | None = None
    reason: str | None = None
    since: float | None = None  # the handoff, or the last operator activity after it

    @classmethod
    def of(cls, context: Context) -> Handler:
        """The handler that ``context`` (read with the conversation) names."""
        if not context.with_person:
            return cls(False)
        return cls(True, context.operator, context.handoff_reason, context.handoff_at)


def handler(bot: Bot, conversation_id: int) -> Handler:
    row = bot.store._read_one(
        "SELECT with_person, operator, handoff_reason, handoff_at FROM conversations WHERE id = ?", (conversation_id,)
    )
    return Handler(bool(row[0]), *row[1:]) if row and row[0] else Handler(False)


async def gate(bot: Bot, conversation: Conversation, active: list[str],
               current: Handler | None = None) -> tuple[list[str], str]:  # fmt: skip
    """The plugins a message of ``conversation`` may reach, and its status if none claims it.

    ``current``: the handler read with the conversation (else one read here). A handoff idle
    past ``handback_after`` ends here, at once, rather than at the next sweep of :func:`expire`
    (the heartbeat's, every few seconds)."""
    if current is None:
        current = handler(bot, conversation.id)
    if not current.with_person:
        return active, UNHANDLED
    after = bot.config.inbox.handback_after
    if after and current.since is not None and current.since < bot.clock() - after:
        if await bot.stored(_release, bot, conversation.id):  # off the event loop
            _announce(bot, conversation, BOT, f"no operator reply for {after:g} s", None)
        return active, UNHANDLED
    return [name for name in active if name in ALWAYS_FIRST], WAITING


def hand_over(bot: Bot, conversation: Conversation, reason: str, operator: str | None = None) -> bool:
    """Give ``conversation`` to a person (``operator`` when one takes it); False if a person
    already had it and nothing changed. A plugin's handoff leaves it waiting for someone."""
    # One statement, the check in its WHERE (one round trip on PostgreSQL, where this runs on the
    # event loop when a plugin calls bot.handoff): a person who has it already keeps it, unless
    # ``operator`` takes it from whoever else had it.
    changed = bot.store._statement(
        "UPDATE conversations SET with_person = 1, operator = ?, handoff_reason = ?, handoff_at = ?, waiting = ?,"
        " updated_at = ? WHERE id = ? AND (with_person = 0 OR (? = 1 AND COALESCE(operator, '') <> ?))",
        (operator, reason, bot.clock(), int(operator is None), bot.store.now(), conversation.id,
         int(operator is not None), operator or ""),
    ).rowcount  # fmt: skip
    if changed:
        _announce(bot, conversation, PERSON, reason, operator)
    return bool(changed)


def hand_back(bot: Bot, conversation: Conversation, reason: str, operator: str | None = None) -> bool:
    """Give ``conversation`` back to the bot; False if the bot already had it."""
    changed = _release(bot, conversation.id)
    if changed:
        _announce(bot, conversation, BOT, reason, operator)
    return changed


def _release(bot: Bot, conversation_id: int) -> bool:
    """The write of :func:`hand_back` (one statement); False if the bot already had it."""
    return bool(bot.store._statement(
        "UPDATE conversations SET with_person = 0, operator = NULL, handoff_reason = NULL, handoff_at = NULL,"
        " waiting = 0, updated_at = ? WHERE id = ? AND with_person = 1", (bot.store.now(), conversation_id),
    ).rowcount)  # fmt: skip


def touch(bot: Bot, conversation_id: int, operator: str) -> None:
    """An operator acted (replied): the customer no longer waits and the handback clock restarts."""
    bot.store._statement(
        "UPDATE conversations SET waiting = 0, operator = ?, handoff_at = ?, updated_at = ?"
        " WHERE id = ? AND with_person = 1",
        (operator, bot.clock(), bot.store.now(), conversation_id),
    )


def expire(bot: Bot) -> int:
    """Hand back every conversation idle past ``handback_after``; returns how many."""
    after = bot.config.inbox.handback_after
    if not after:
        return 0
    rows = bot.store._read(  # reads the partial index conversations_with_person
        "SELECT id FROM conversations WHERE with_person = 1 AND handoff_at < ?", (bot.clock() - after,)
    )
    for (conversation_id,) in rows:
        conversation = bot.store.conversation_by_id(conversation_id)
        if conversation is not None:
            hand_back(bot, conversation, f"no operator reply for {after:g} s")
    return len(rows)


def _announce(bot: Bot, conversation: Conversation, to: str, reason: str, operator: str | None) -> None:
    log.info("conversation %d handed to %s: %s", conversation.id, operator or to, reason,
             extra={"conversation_id": conversation.id})  # fmt: skip
    number = bot.config.number(conversation.our_number)
    plugins = bot.plugins.active(number) if number else bot.plugins.names
    bot.observe("handoff", plugins, bot=bot, conversation=conversation, to=to, reason=reason, operator=operator)
