"""``bot-core explain``: which plugins a message would reach, who would claim it, and the reply.

A dry run that still runs the real plugins: a plugin may write (the opt-out plugin opts
numbers out), so the bot runs on a temporary copy of the database, in sandbox mode, and the
copy is thrown away. The real database is only read: a SQLite file through SQLite's backup
API; from PostgreSQL, what handling the message reads (the conversation, the customer's
consent, the plugins' data) is copied into a scratch SQLite file.
"""

from __future__ import annotations

import copy
import dataclasses
import sqlite3
import tempfile
import uuid
from pathlib import Path
from typing import Any

from .bot import Bot
from .chat import sandboxed
from .config import Config
from .dispatch import Outcome
from .errors import BotError
from .logs import Masker
from .messages import InboundMessage
from .outbox import draft
from .store import FAILED, IGNORED, RECEIVED, Store, is_postgres, open_store


class ExplainError(BotError):
    """The message cannot be explained (its number is not in the config)."""


async def explain(config: Config, *, to: str, from_: str, text: str) -> dict[str, Any]:
    """What the bot would do with ``text`` from ``from_`` to ``to``, committing nothing.

    Every secret of the config is masked in the result: a plugin's exception or reply may
    quote one, and the result is printed.
    """
    number = config.number(to)
    if number is None or number.profile is None:
        raise ExplainError(f"{to} is not assigned to any messaging profile in the config: Telnyx's webhook "
                           "for it would be refused (404)")  # fmt: skip
    result: dict[str, Any] = {
        "from": from_, "to": to, "text": text, "profile": number.profile, "enabled": number.enabled,
        "reason": number.reason, "plugins": [], "trace": [], "claimed_by": None, "status": IGNORED,
        "error": None, "replies": [], "state_before": None, "state_after": None,
    }  # fmt: skip
    if not number.enabled:
        return result
    with tempfile.TemporaryDirectory(prefix="bot-core-explain-") as directory:
        database = Path(directory) / "explain.db"
        if is_postgres(config.bot.database):
            _copy_conversation(config.bot.database, database, to, from_)
        else:
            _copy(config.bot.database, database)
        trial = sandboxed(dataclasses.replace(config, bot=dataclasses.replace(config.bot, database=database)))
        bot = Bot(trial)
        _quiesce(database, bot.clock())
        await bot.start()
        try:
            conversation = bot.store.conversation(number.profile, to, from_)
            result["state_before"] = copy.deepcopy(conversation.state)
            message = InboundMessage(f"explain-{uuid.uuid4()}", text, from_, to, number.profile)
            outcome = await bot.dispatcher.consult(message, conversation)
            drafts = [draft(bot.store.is_opted_out, reply, profile=number.profile, from_number=to, to_number=from_,
                            max_parts=config.bot.max_parts) for reply in outcome.replies]  # fmt: skip
        finally:
            await bot.stop()
    result.update(
        plugins=outcome.plugins, trace=_trace(bot, outcome), claimed_by=outcome.claimed_by, status=outcome.status,
        error=outcome.error, state_after=conversation.state,
        replies=[{"text": d.text, "encoding": d.encoding, "parts": d.parts, "status": d.status, "error": d.error}
                 for d in drafts],
    )  # fmt: skip
    masked: dict[str, Any] = Masker(config.secrets()).mask_data(result)
    return masked


def _trace(bot: Bot, outcome: Outcome) -> list[dict[str, str]]:
    """What each active plugin did: passed, claimed, failed, was not reached, or has no handler."""
    trace = []
    reached = True
    for name in outcome.plugins:
        if bot.plugins.impl("handle_message", name) is None:
            what = "no handle_message hook"
        elif not reached:
            what = "not reached"
        elif name == outcome.claimed_by:
            what = "failed" if outcome.status == FAILED else "claimed"
            reached = False
        else:
            what = "passed"
        trace.append({"plugin": name, "result": what})
    return trace


def _copy(source: Path, target: Path) -> None:
    """Copy a live SQLite database consistently, opening the original read-only."""
    if not source.exists():
        return
    original = sqlite3.connect(f"{source.absolute().as_uri()}?mode=ro", uri=True)
    copy_ = sqlite3.connect(target)
    try:
        original.backup(copy_)
    finally:
        copy_.close()
        original.close()


def _copy_conversation(url: str, target: Path, our_number: str, their_number: str) -> None:
    source, scratch = open_store(url), Store(target)
    try:
        source.copy_conversation(scratch, our_number, their_number)
    finally:
        source.close()
        scratch.close()


def _quiesce(database: Path, now: float) -> None:
    """Keep the copy's own unfinished work from running plugins beside the explained message."""
    store = Store(database)
    try:
        with store.transaction() as conn:
            conn.execute(f"UPDATE mdrs SET status = '{IGNORED}', error = 'explain: not handled in a dry run'"
                         f" WHERE direction = 'inbound' AND status = '{RECEIVED}'")  # fmt: skip
            conn.execute("UPDATE timers SET status = 'cancelled' WHERE status = 'pending' AND due_at <= ?", (now,))
    finally:
        store.close()

