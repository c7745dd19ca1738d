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
from .store import UNHANDLED, WAITING

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


def handler(bot: Bot, conversation_id: int) -> Handler:
    row = bot.store._read_one(
        "SELECT with_person, operator, handoff_reason, handoff_at FROM conversations WHERE id = ?", (conversation_id,)
    )
    return Handler(bool(row[0]), *row[1:]) if row and row[0] else Handler(False)


async def gate(bot: Bot, conversation: Conversation, active: list[str]) -> tuple[list[str], str]:
    """The plugins a message of ``conversation`` may reach, and its status if none claims it.

    One read per message: a handoff idle past ``handback_after`` ends here, at once, rather than
    at the next sweep of :func:`expire` (the heartbeat's, every few seconds)."""
    current = handler(bot, conversation.id)
    if not current.with_person:
        return active, UNHANDLED
    after = bot.config.inbox.handback_after
    if after and current.since is not None and current.since < bot.clock() - after:
        hand_back(bot, conversation, f"no operator reply for {after:g} s")
        return active, UNHANDLED
    return [name for name in active if name in ALWAYS_FIRST], WAITING


def hand_over(bot: Bot, conversation: Conversation, reason: str, operator: str | None = None) -> bool:
    """Give ``conversation`` to a person (``operator`` when one takes it); False if a person
    already had it and nothing changed. A plugin's handoff leaves it waiting for someone."""
    now = bot.clock()
    current = handler(bot, conversation.id)
    if current.with_person and (operator is None or current.operator == operator):
        return False
    with bot.store.transaction() as conn:
        conn.execute(
            "UPDATE conversations SET with_person = 1, operator = ?, handoff_reason = ?, handoff_at = ?,"
            " waiting = ?, updated_at = ? WHERE id = ?",
            (operator, reason, now, int(operator is None), bot.store.now(), conversation.id),
        )
    _announce(bot, conversation, PERSON, reason, operator)
    return True


def hand_back(bot: Bot, conversation: Conversation, reason: str, operator: str | None = None) -> bool:
    """Give ``conversation`` back to the bot; False if the bot already had it."""
    with bot.store.transaction() as conn:
        changed = conn.execute(
            "UPDATE conversations SET with_person = 0, operator = NULL, handoff_reason = NULL, handoff_at = NULL,"
            " waiting = 0, updated_at = ? WHERE id = ? AND with_person = 1",
            (bot.store.now(), conversation.id),
        ).rowcount
    if changed:
        _announce(bot, conversation, BOT, reason, operator)
    return bool(changed)


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
