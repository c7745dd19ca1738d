"""The sender: claims sends from the outbox and makes them through the Telnyx client, with retries,
backoff and pacing.

A (from, to) pair's messages go out one at a time in order (the store hands out only the head
of each lane): a message waiting for a retry holds back the ones behind it, never the other
pairs, and never the handling of the next inbound message. The process holding a send keeps
its lease while it waits to retry. Pacing per sending number is a row in the store, so it
holds across processes.

A message is marked ``sending_local`` only when its HTTP request starts, and gets Telnyx's
answer after it: a process that dies in between is the one case where a message can be sent
twice (its successor logs it). When Telnyx's answer cannot be recorded (the disk is full, the
database is locked) the sender keeps the answer and retries recording it; it never sends again.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from .config import Config, Profile
from .errors import SendError
from .lanes import Claims
from .metrics import Metrics
from .store import BLOCKED, FAILED, TRANSIENT, Outbound, Store
from .telnyx import TelnyxClient

log = logging.getLogger("bot_core.sender")


class Sender:
    """Sends what the outbox holds; woken when something is added, and polls for the rest.

    ``stored(fn, *args)`` runs a store write off the event loop, retrying passing failures
    (:meth:`Bot.stored`); LeaseLost ends the send's task.
    """

    def __init__(self, store: Store, client: TelnyxClient, config: Config, metrics: Metrics,
                 clock: Callable[[], float], owner: str,
                 stored: Callable[..., Awaitable[Any]]) -> None:  # fmt: skip
        self.store = store
        self.client = client
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.owner = owner
        self._stored = stored
        settings = config.bot
        self.claims: Claims[Outbound] = Claims(
            "send", lambda n: store.call(store.claim_sends, owner, n, settings.lease), self._send, lambda m: m.id,
            lambda mdr_id: store.call(store.release_unit, "mdrs", mdr_id, owner), poll=settings.poll_interval,
        )  # fmt: skip
        public_url = settings.public_url
        self._status_url = f"{public_url}/webhooks/telnyx" if public_url else None
        self._draining = False
        self._sleepers: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        self.claims.wake()

    async def run(self) -> None:
        await self.claims.run()

    async def stop(self, grace: float) -> bool:
        """Send what is due within ``grace``, in order; what waits for a retry stays queued."""
        self._draining = True
        for task in self._sleepers:
            task.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        # Each lane's next send becomes claimable when the one before it is sent.
        while await self.claims.claim_once() or len(self.claims):
            if not await self.claims.join(max(0.0, deadline - loop.time())):
                break
        return await self.claims.close(max(0.0, deadline - loop.time()))

    async def _send(self, message: Outbound) -> None:
        """Send one message, retrying as long as it takes (or until stopping)."""
        if message.in_flight:
            log.warning("send %d to %s was in flight when its process stopped; sending it again (it may have"
                        " reached Telnyx)", message.id, message.to_number, extra={"mdr_id": message.id})  # fmt: skip
        attempts, due = message.attempts, message.next_attempt_at
        while True:
            if due > self.clock() and not await self._wait(due - self.clock()):
                return  # stopping: it and the messages behind it stay in the outbox
            try:
                profile = await self._profile(message)
                if profile is None:
                    return
                rate = self.config.send_rate_for(message.from_number)
                while wait := await self.store.call(self.store.start_send, message.id, self.owner, rate=rate):
                    await asyncio.sleep(wait)
            except TRANSIENT as exc:  # not sent: safe to try again
                delay = self._backoff(attempts + 1, None)
                log.warning("send %d: cannot prepare it (%s); trying again in %.1fs", message.id, exc, delay)
                due = self.clock() + delay
                continue
            retry_in = await self._attempt(message, profile, attempts + 1)
            attempts += 1
            if retry_in is None:
                return
            due = self.clock() + retry_in

    async def _profile(self, message: Outbound) -> Profile | None:
        """The sending profile; None after settling, unsent, a message that must not go out."""
        opted_out = self.store.is_opted_out  # checked again at each send: an opt-out stored since blocks it
        if not message.ignore_optout and await self.store.read(opted_out, message.profile, message.to_number):
            await self._final(message, BLOCKED, "recipient opted out")
            return None
        profile = self.config.profile_for_sender(message.from_number)
        if profile is None:
            await self._final(message, FAILED, f"no profile sends from {message.from_number}")
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
                await self._stored(self.store.set_opted_out, message.profile, message.to_number, True, "telnyx 40300")
            if not exc.retryable or attempt >= self.config.sending.max_attempts:
                log.warning("send %d to %s failed for good after %d attempt(s): %s",
                            message.id, message.to_number, attempt, exc.reason,
                            extra={"mdr_id": message.id, "conversation_id": message.conversation_id})  # fmt: skip
                await self._final(message, FAILED, exc.reason, attempt)
                return None
            delay = self._backoff(attempt, exc.retry_after)
            log.info("send %d to %s failed (%s); retry %d in %.1fs",
                     message.id, message.to_number, exc.reason, attempt + 1, delay,
                     extra={"mdr_id": message.id, "conversation_id": message.conversation_id})  # fmt: skip
            await self._stored(self.store.mark_retry, message.id, attempt, self.clock() + delay, exc.reason,
                               self.owner)  # fmt: skip
            self.metrics.retries.inc()
            return delay
        await self._stored(self.store.mark_sent, message.id, result.telnyx_id, result.status, attempt, self.owner)
        log.info("sent %d to %s: %s", message.id, message.to_number, result.status,
                 extra={"mdr_id": message.id, "conversation_id": message.conversation_id,
                        "telnyx_id": result.telnyx_id})  # fmt: skip
        self.metrics.sends.labels(result.status).inc()
        return None

    async def _final(self, message: Outbound, status: str, error: str, attempts: int | None = None) -> None:
        await self._stored(self.store.mark_final, message.id, status, error, attempts, self.owner)
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
            lane = asyncio.current_task()  # never None here: this coroutine runs in the lane's task
            if lane is not None and lane.cancelling():  # the lane itself is cancelled, not just the sleep
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
