"""What may go into the outbox: replies normalised, counted in SMS parts, checked for opt-outs.

A message that must not be sent is still recorded, as an outbound MDR with a final status
(``blocked`` for an opted-out recipient, ``failed`` for one over ``max_parts``), so an operator
can see what the bot would have said.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .messages import Reply
from .segments import count_segments
from .store import BLOCKED, FAILED, PENDING, OutboundDraft

log = logging.getLogger("bot_core.outbox")


def as_replies(result: Any) -> list[Reply]:
    """A handler's return value as a list of replies (the forms handle_message documents)."""
    if isinstance(result, (str, Reply)):
        result = [result]
    if not isinstance(result, (list, tuple)):
        raise TypeError(f"a handler must return None, a string, a Reply or a list of them, not {type(result).__name__}")
    replies = []
    for item in result:
        if isinstance(item, str):
            item = Reply(item)
        if not isinstance(item, Reply):
            raise TypeError(f"a reply must be a string or a Reply, not {type(item).__name__}")
        replies.append(item)
    return replies


def draft(
    opted_out: Callable[[str | None, str], bool],
    reply: Reply,
    *,
    profile: str | None,
    from_number: str,
    to_number: str,
    max_parts: int,
) -> OutboundDraft:
    """The outbound MDR for one reply, with the status the rules give it.

    ``opted_out(profile, number)`` answers as the unit being handled will leave things (its
    own opt-in or opt-out counts), so a START's confirmation is not blocked."""
    segments = count_segments(reply.text, from_number)  # Telnyx's encoding depends on the sender type
    status, error = PENDING, None
    if segments.parts > max_parts:
        status = FAILED
        error = f"message is {segments.parts} parts ({segments.encoding}); the limit is max_parts = {max_parts}"
        log.warning("not sending a %d-part message to %s: over max_parts = %d", segments.parts, to_number, max_parts)
    elif not reply.ignore_optout and opted_out(profile, to_number):
        status, error = BLOCKED, "recipient opted out"
    if segments.encoding == "UCS-2" and len(segments.non_gsm) == 1:
        log.warning(
            "character %r forces UCS-2 (70 characters a part instead of 160) on a message to %s",
            segments.non_gsm[0], to_number,
        )  # fmt: skip
    return OutboundDraft(
        profile=profile, from_number=from_number, to_number=to_number, text=reply.text,
        status=status, error=error, encoding=segments.encoding, parts=segments.parts,
        ignore_optout=reply.ignore_optout,
    )  # fmt: skip
