"""Claimed work: a loop that claims units of one kind from the store and runs each in a task.

The store decides what may run (the head of each lane, nobody else holding it), so order
survives faults, restarts and several processes; this loop only decides how much runs at once
in this process. It claims when woken (a webhook stored a message, a unit finished and the next
of its lane became claimable) and at least every ``poll`` seconds, which is how it finds work
other processes queued, retries that fell due, and units whose holder died.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from .store import ERRORS, LeaseLost

log = logging.getLogger("bot_core.lanes")

T = TypeVar("T")


class Claims(Generic[T]):
    """Claim up to ``capacity`` units at a time with ``claim(n)`` and run ``work(unit)`` for each.

    ``work`` records its own outcome (and passing failures) in the store; an exception escaping
    it is a bug: it is logged, and after a pause the unit is given back with ``release(key)``,
    so a claim retries it.
    """

    def __init__(self, name: str, claim: Callable[[int], Awaitable[list[T]]], work: Callable[[T], Awaitable[None]],
                 key: Callable[[T], Hashable], release: Callable[[Hashable], Awaitable[None]], *,
                 capacity: int = 256, poll: float = 1.0) -> None:  # fmt: skip
        self.name = name
        self._claim = claim
        self._work = work
        self._key = key
        self._release = release
        self.capacity = capacity
        self.poll = poll
        self._running: dict[Hashable, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._failing = False

    def __len__(self) -> int:
        """Units running in this process."""
        return len(self._running)

    def wake(self) -> None:
        """Claim now: there may be new work."""
        self._wake.set()

    async def run(self) -> None:
        """Claim and start units until :meth:`close`."""
        while not self._closed:
            self._wake.clear()
            await self.claim_once()
            try:
                async with asyncio.timeout(self.poll):  # unlike wait_for, no task per wake-up
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def claim_once(self) -> int:
        """Claim what is claimable now, up to the free capacity; returns how many started."""
        free = self.capacity - len(self._running)
        if free <= 0 or self._closed:
            return 0
        try:
            units = await self._claim(free)
        except ERRORS as exc:
            if not self._failing:  # once per outage, not once per poll
                log.warning("cannot claim %s work (%s); trying again every %gs", self.name, exc, self.poll)
            self._failing = True
            return 0
        if self._failing:
            log.info("claiming %s work again", self.name)
            self._failing = False
        started = 0
        for unit in units:
            key = self._key(unit)
            if key in self._running:  # ours already: its lease was renewed late, not lost
                continue
            task = asyncio.get_running_loop().create_task(self._run(key, unit))
            self._running[key] = task
            self._idle.clear()
            started += 1
        return started

    async def _run(self, key: Hashable, unit: T) -> None:
        try:
            await self._work(unit)
        except LeaseLost as exc:
            log.warning("%s work dropped: %s (another process took it over)", self.name, exc)
        except Exception:
            log.exception("unexpected error in %s work; it is tried again in %gs", self.name, self.poll)
            await self._give_back(key)
        finally:
            del self._running[key]
            if not self._running:
                self._idle.set()
            self._wake.set()  # the next unit of its lane may be claimable now

    async def _give_back(self, key: Hashable) -> None:
        await asyncio.sleep(self.poll)
        try:
            await self._release(key)
        except ERRORS:  # either engine's (this read sqlite3.Error, never imported: a NameError)
            log.warning("cannot give %s work back; its lease runs out instead", self.name)

    async def join(self, timeout: float | None = None) -> bool:
        """Wait until no unit runs here; False if ``timeout`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float) -> bool:
        """Claim no more; let running units finish within ``timeout``, then cancel the rest.

        False if some had to be cancelled (their units are released for the next claim).
        """
        self._closed = True
        self._wake.set()
        if await self.join(timeout):
            return True
        await self.cancel()
        return False

    async def cancel(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        # A plugin that swallows the cancellation must not hold the shutdown: wait briefly.
        await asyncio.wait(tasks, timeout=1.0) if tasks else None
