"""The inbox's reads: what a page asks for, turned into the store's inbox queries.

The SQL lives in the store (``Store.inbox_*``), one set per engine; these functions are
synchronous and block on the database, so the pages call them through :func:`run`, in a worker
thread, never on the event loop that acknowledges webhooks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread

from ..phone import normalize_number
from ..store import Store
from .operators import Operator

T = TypeVar("T")
PAGE = 50  # conversations a list page shows
THREAD = 200  # the latest messages a conversation page shows
SEARCHED = 200_000  # text search reads this many latest messages: a bounded scan, not the whole history
_NUMBER = re.compile(r"[0-9+()\s.-]*[0-9][0-9+()\s.-]*")  # a search that is (part of) a phone number


async def run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a worker thread."""
    return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))


def conversations(store: Store, operator: Operator, *, waiting: bool = False, query: str = "",
                  before: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """A page of conversations, latest message first, with that message. ``before`` is
    "<last_message_at> <id>" of the previous page's last row."""
    after = None
    if before:
        at, _, after_id = before.rpartition(" ")
        after = (at, int(after_id) if after_id.isdigit() else 0)
    search: dict[str, str] = {}
    query = query.strip()
    if _NUMBER.fullmatch(query):
        try:  # a whole number (+ and country code) reads one index entry; part of one scans
            if not query.startswith("+"):
                raise ValueError("part of a number")
            search["number"] = normalize_number(query)
        except ValueError:
            search["number_part"] = re.sub(r"[^0-9]", "", query)
    elif query:
        search["text"] = query
    return store.inbox_conversations(operator.profiles, limit=PAGE, waiting=waiting, before=after,
                                     searched=SEARCHED, **search)  # fmt: skip


def conversation(store: Store, operator: Operator, conversation_id: int) -> dict[str, Any] | None:
    """One conversation with its latest messages (oldest first), or None if the operator may not see it."""
    return store.inbox_conversation(operator.profiles, conversation_id, messages=THREAD)
