"""The sender: drains the outbox through the Telnyx client, with retries, backoff and pacing.

A conversation's messages go out one at a time in order (its lane): a message waiting for a
retry holds back the ones behind it, never the other conversations, and so never another
sending number, except through the optional per-number pacing. Each message is marked
``sending_local`` before the HTTP request and gets Telnyx's answer after it: a crash in between
is the one case where a message can be sent twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from .config import Config, Profile
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
    """Sends what the outbox holds; woken when something is added, and polls once a second.

    Polling finds what other processes queued (``bot-core send`` beside a server) and what an
    earlier run left. ``_seen`` is the highest outbox id handed to a lane: SQLite gives a row
    committed later a higher id, so each poll reads only rows it has not seen.
    """

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
        self._seen = 0
        public_url = config.bot.public_url
        self._status_url = f"{public_url}/webhooks/telnyx" if public_url else None
        self._draining = False
        self._sleepers: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        self._wake.set()

    def poll(self) -> int:
        """Hand outbox rows not seen yet to their conversations' lanes; returns how many."""
        rows = self.store.pending_outbound(after=self._seen)
        for message in rows:
            self._seen = message.id
            self.lanes.submit((message.from_number, message.to_number), message)
        return len(rows)

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                self.poll()
            except Exception:
                log.exception("cannot read the outbox; trying again")
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
            except TimeoutError:
                pass

    async def stop(self, grace: float) -> bool:
        """Send what is due within ``grace``, in order; what waits for a retry stays queued."""
        self._draining = True
        for task in self._sleepers:
            task.cancel()
        try:
            self.poll()  # the replies of plugin calls that finished while stopping
        except Exception:
            log.exception("cannot read the outbox; its messages wait for the next start")
        if await self.lanes.join(grace):
            return True
        await self.lanes.cancel()
        return False

    async def _send(self, message: Outbound) -> bool:
        """Send one message, retrying as long as it takes; False ends its lane (stopping)."""
        attempts, due = message.attempts, message.next_attempt_at
        while True:
            if due > self.clock() and not await self._wait(due - self.clock()):
                return False  # stopping: it and the messages behind it stay in the outbox
            requested = False
            try:
                profile = self._profile(message)
                if profile is None:
                    return True
                await self.pacer.wait(message.from_number)
                self.store.mark_sending(message.id)
                requested = True
                delay = await self._attempt(message, profile, attempts + 1)
                attempts += 1
            except Exception:
                if requested:  # it may have reached Telnyx: never send it again from here
                    log.exception("send %d: cannot record Telnyx's answer; it is sent again at the next start",
                                  message.id)  # fmt: skip
                    return True
                log.exception("send %d: unexpected error before sending; trying again", message.id)
                delay = self._backoff(attempts + 1, None)
            if delay is None:
                return True
            due = self.clock() + delay

    def _profile(self, message: Outbound) -> Profile | None:
        """The sending profile; None after settling, unsent, a message that must not go out."""
        if not message.ignore_optout and self.store.is_opted_out(message.profile, message.to_number):
            self._final(message, BLOCKED, "recipient opted out")
            return None
        profile = self.config.profile_for_sender(message.from_number)
        if profile is None:
            self._final(message, FAILED, f"no profile sends from {message.from_number}")
        return profile

    async def _attempt(self, message: Outbound, profile: Profile, attempt: int) -> float | None:
        """One HTTP request; the seconds to wait before the next one, or None when settled."""
        try:
            alphanumeric = message.from_number == profile.alphanumeric_sender_id
            result = await self.client.send(
                secret=profile.secret, from_=message.from_number, to=message.to_number,
                text=message.text, webhook_url=self._status_url,
                messaging_profile_id=profile.telnyx_profile_id if alphanumeric else None,
            )  # fmt: skip
        except SendError as exc:
            if exc.opted_out:
                self.store.set_opted_out(message.profile, message.to_number, True, "telnyx 40300")
            if not exc.retryable or attempt >= self.config.sending.max_attempts:
                log.warning("send %d to %s failed for good after %d attempt(s): %s",
                            message.id, message.to_number, attempt, exc.reason,
                            extra={"mdr_id": message.id, "conversation_id": message.conversation_id})  # fmt: skip
                self._final(message, FAILED, exc.reason, attempt)
                return None
            delay = self._backoff(attempt, exc.retry_after)
            log.info("send %d to %s failed (%s); retry %d in %.1fs",
                     message.id, message.to_number, exc.reason, attempt + 1, delay,
                     extra={"mdr_id": message.id, "conversation_id": message.conversation_id})  # fmt: skip
            self.store.mark_retry(message.id, attempt, self.clock() + delay, exc.reason)
            self.metrics.retries.inc()
            return delay
        self.store.mark_sent(message.id, result.telnyx_id, result.status, attempt)
        log.info("sent %d to %s: %s", message.id, message.to_number, result.status,
                 extra={"mdr_id": message.id, "conversation_id": message.conversation_id,
                        "telnyx_id": result.telnyx_id})  # fmt: skip
        self.metrics.sends.labels(result.status).inc()
        return None

    def _final(self, message: Outbound, status: str, error: str, attempts: int | None = None) -> None:
        self.store.mark_final(message.id, status, error, attempts)
        self.metrics.sends.labels(status).inc()

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        settings = self.config.sending
        return backoff(attempt, settings.backoff_initial, settings.backoff_max, retry_after)

    async def _wait(self, seconds: float) -> bool:
        """Sleep unless stopping; False when the sender is stopping."""
        if self._draining:
            return False
        task = asyncio.ensure_future(asyncio.sleep(seconds))
        self._sleepers.add(task)
        try:
            await task
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # the lane itself is cancelled, not just the sleep
                raise
        finally:
            self._sleepers.discard(task)
        return not self._draining


def backoff(attempt: int, initial: float, maximum: float, retry_after: float | None = None) -> float:
    """Exponential backoff with jitter; Telnyx's Retry-After wins when it is longer.

    The delay is drawn from the upper half of the exponential step, so retries of many
    messages spread out while each still waits at least half its step. Retry-After is capped
    by ``maximum`` (backoff_max) too: a header saying "a day" must not park a conversation.
    """
    ceiling = min(maximum, initial * 2 ** (max(attempt, 1) - 1))
    delay = random.uniform(ceiling / 2, ceiling)
    return max(delay, min(retry_after or 0.0, maximum))
