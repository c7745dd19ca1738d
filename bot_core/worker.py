"""The sender: drains the outbox through the Telnyx client, with retries, backoff and pacing.

A conversation's messages go out one at a time in order (its lane); conversations, and so
sending numbers, never wait for each other, except through the optional per-number pacing.
Each message is marked ``sending_local`` before the HTTP request and gets Telnyx's answer after
it: a crash in between is the one case where a message can be sent twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from .config import Config
from .errors import SendError
from .lanes import Lanes
from .metrics import Metrics
from .store import BLOCKED, FAILED, Outbound, Store
from .telnyx import TelnyxClient

log = logging.getLogger("bot_core.sender")

POLL_SECONDS = 1.0


class Pacer:
    """At most ``rate`` sends per second per sending number (0: unpaced)."""

    def __init__(self, rate_for: Callable[[str], float]) -> None:
        self._rate_for = rate_for
        self._next: dict[str, float] = {}

    async def wait(self, number: str) -> None:
        rate = self._rate_for(number)
        if rate <= 0:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        slot = max(now, self._next.get(number, now))
        self._next[number] = slot + 1 / rate
        if slot > now:
            await asyncio.sleep(slot - now)


class Sender:
    """Sends what the outbox holds; woken when something is added, and polls once a second."""

    def __init__(self, store: Store, client: TelnyxClient, config: Config, metrics: Metrics,
                 clock: Callable[[], float]) -> None:  # fmt: skip
        self.store = store
        self.client = client
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.lanes: Lanes[Outbound] = Lanes(self._send)
        self.pacer = Pacer(config.send_rate_for)
        self._wake = asyncio.Event()
        self._seen = 0  # the highest outbox id handed to a lane
        public_url = config.bot.public_url
        self._status_url = f"{public_url}/webhooks/telnyx" if public_url else None
        self._accepting = True
        self._sleepers: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while self._accepting:
            try:
                for message in self.store.pending_outbound(after=self._seen):
                    self._seen = max(self._seen, message.id)
                    self.lanes.submit((message.from_number, message.to_number), message)
            except Exception:
                log.exception("cannot read the outbox; trying again")
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
            except TimeoutError:
                pass
            self._wake.clear()

    async def stop(self, grace: float) -> bool:
        """Finish sends in flight within ``grace``; messages waiting to retry stay queued."""
        self._accepting = False
        for task in self._sleepers:
            task.cancel()
        finished = await self.lanes.join(grace)
        if not finished:
            await self.lanes.cancel()
        return finished

    async def _send(self, message: Outbound) -> None:
        attempts = message.attempts
        due = message.next_attempt_at
        settings = self.config.sending
        while self._accepting:
            if due > self.clock() and not await self._sleep(due - self.clock()):
                return
            if not message.ignore_optout and self.store.is_opted_out(message.profile, message.to_number):
                self.store.mark_final(message.id, BLOCKED, "recipient opted out")
                self.metrics.sends.labels(BLOCKED).inc()
                return
            profile = self.config.profile_for_sender(message.from_number)
            if profile is None:
                self.store.mark_final(message.id, FAILED, f"no profile sends from {message.from_number}")
                self.metrics.sends.labels(FAILED).inc()
                return
            await self.pacer.wait(message.from_number)
            attempts += 1
            self.store.mark_sending(message.id)
            try:
                result = await self.client.send(
                    secret=profile.secret, from_=message.from_number, to=message.to_number,
                    text=message.text, webhook_url=self._status_url,
                )  # fmt: skip
            except SendError as exc:
                if exc.opted_out:
                    self.store.set_opted_out(message.profile, message.to_number, True, "telnyx 40300")
                if not exc.retryable or attempts >= settings.max_attempts:
                    log.warning("send %d to %s failed for good after %d attempt(s): %s",
                                message.id, message.to_number, attempts, exc.reason)  # fmt: skip
                    self.store.mark_final(message.id, FAILED, exc.reason, attempts)
                    self.metrics.sends.labels(FAILED).inc()
                    return
                delay = backoff(attempts, settings.backoff_initial, settings.backoff_max, exc.retry_after)
                log.info("send %d to %s failed (%s); retry %d in %.1fs",
                         message.id, message.to_number, exc.reason, attempts + 1, delay)  # fmt: skip
                due = self.clock() + delay
                self.store.mark_retry(message.id, attempts, due, exc.reason)
                self.metrics.retries.inc()
                continue
            self.store.mark_sent(message.id, result.telnyx_id, result.status)
            self.metrics.sends.labels(result.status).inc()
            return

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; False when the sender stopped meanwhile."""
        task = asyncio.ensure_future(asyncio.sleep(seconds))
        self._sleepers.add(task)
        try:
            await task
        except asyncio.CancelledError:
            if self._accepting:
                raise
            return False
        finally:
            self._sleepers.discard(task)
        return self._accepting


def backoff(attempt: int, initial: float, maximum: float, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter; Telnyx's Retry-After wins when it is longer."""
    ceiling = min(maximum, initial * 2 ** (attempt - 1))
    delay = random.uniform(ceiling / 2, ceiling)
    return max(delay, retry_after or 0.0)
