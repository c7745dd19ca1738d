"""Per-key sequential work: items of one key run one at a time in order; keys run concurrently.

Both queues use it with a conversation as the key, which is what keeps a conversation's state
updates and replies in order without making one slow conversation hold up the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger("bot_core.lanes")

T = TypeVar("T")


class Lanes(Generic[T]):
    """Run ``worker(item)`` for submitted items, one lane per key.

    An item stays at the head of its lane while its worker runs, so ``len()`` counts it. A
    worker that returns False ends its lane: the items behind it are dropped from memory, so
    none of them overtakes it (their rows stay in the database for the next start). An
    exception from the worker is a bug (workers record their own failures): it is logged and
    the lane moves on.
    """

    def __init__(self, worker: Callable[[T], Awaitable[bool | None]]) -> None:
        self._worker = worker
        self._queues: dict[Hashable, deque[T]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._size = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

    def __len__(self) -> int:
        """Items waiting or running."""
        return self._size

    def __contains__(self, key: Hashable) -> bool:
        return key in self._queues

    def submit(self, key: Hashable, item: T) -> None:
        if self._closed:
            return
        self._size += 1
        queue = self._queues.get(key)
        if queue is not None:
            queue.append(item)
            return
        self._queues[key] = deque([item])
        self._idle.clear()
        task = asyncio.get_running_loop().create_task(self._run(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: Hashable) -> None:
        queue = self._queues[key]
        try:
            while queue and not self._closed:
                try:
                    go_on = await self._worker(queue[0])
                except Exception:
                    log.exception("unexpected error in a lane worker; the item stays queued in the database")
                    go_on = True
                queue.popleft()
                self._size -= 1
                if go_on is False:
                    break
        finally:
            self._size -= len(queue)
            del self._queues[key]
            if not self._queues:
                self._idle.set()

    async def join(self, timeout: float | None = None) -> bool:
        """Wait until every lane is empty; False if ``timeout`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float) -> bool:
        """Take no more items and let each lane finish only the item it is running.

        Items still waiting are dropped from memory (their rows stay in the database for the
        next start). After ``timeout`` the running ones are cancelled too; False if that happened.
        """
        self._closed = True
        if await self.join(timeout):
            return True
        await self.cancel()
        return False

    async def cancel(self) -> None:
        """Stop every lane now; unfinished items stay in the database for the next start."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
