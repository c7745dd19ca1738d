"""Timers: messages and plugin callbacks due at a time, kept in SQLite so they survive restarts.

A due timer is a unit of work like an inbound message: the dispatcher claims it (only when no
message of its conversation is waiting or being handled, so a timer never races the
conversation's messages) and holds its lease while the handler runs, however long. It fires
once: the UPDATE that marks it fired, in the transaction that commits its outcome, requires
its lease and ``status = 'pending'``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Timer:
    """A scheduled message (``text``) or callback (``plugin``'s ``handle_timer``)."""

    id: int
    conversation_id: int
    due_at: float
    plugin: str | None = None
    name: str | None = None
    text: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
