"""Timers: messages and plugin callbacks due at a time, kept in SQLite so they survive restarts.

The loop wakes when a timer is scheduled or at least once a second, and hands each due timer
to the dispatcher, into its conversation's lane: a timer never races the conversation's
messages. A timer fires once: it is marked fired in the transaction that commits its outcome.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("bot_core.timers")

POLL_SECONDS = 1.0


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


class TimerLoop:
    """Submits due timers to ``submit`` until stopped."""

    def __init__(self, due: Callable[[], list[tuple[Timer, tuple[str, str]]]],
                 submit: Callable[[Timer, tuple[str, str]], None]) -> None:  # fmt: skip
        self._due = due
        self._submit = submit
        self._wake = asyncio.Event()
        self._submitted: set[int] = set()

    def poke(self) -> None:
        """Look for due timers now (a timer was scheduled, or a test moved the clock)."""
        self._wake.set()

    def done(self, timer_id: int) -> None:
        self._submitted.discard(timer_id)

    async def run(self) -> None:
        while True:
            try:
                for timer, key in self._due():
                    if timer.id not in self._submitted:
                        self._submitted.add(timer.id)
                        self._submit(timer, key)
            except Exception:
                log.exception("cannot read due timers; trying again")
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
            except TimeoutError:
                pass
            self._wake.clear()
