"""Completed flows: recorded in the plugin's store, and POSTed to a flow's ``post_to`` until it accepts them.

A submission is one value of ``bot.plugin_store("flows")`` under the key ``submission:<id of the
inbound message that completed the flow>`` (so a message handled again after a crash records
nothing twice, on any replica), with its delivery state in the same value. Each delivery attempt is a timer of the plugin (``bot.schedule(...,
name="post")``), so it is a claimed unit of work like any other: durable, made by one process
at a time, in the conversation's order, and taken over by another process if this one dies.
5xx, 408, 429, timeouts and connection errors schedule the next attempt with exponential
backoff and jitter, up to the flow's ``post_attempts``; any other answer is final. In sandbox
mode nothing leaves the machine: a submission is recorded with ``post_status = 'sandbox'``, and
an attempt that falls due while sandboxed waits for a start without sandbox. An attempt cut off
by a crash is made again, so each request carries an ``Idempotency-Key`` header.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from bot_core.plugin_store import PluginStore

log = logging.getLogger("bot_core.plugins.flows")

PREFIX = "submission:"
PENDING, DELIVERED, FAILED, SANDBOX = "pending", "delivered", "failed", "sandbox"
BACKOFF_MAX = 3600.0
POST_TIMEOUT = 10.0


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def payload(row: dict[str, Any]) -> dict[str, Any]:
    """What ``post_to`` receives: the documented fields, nothing else."""
    return {"flow": row["flow"], "profile": row["profile"], "from": row["from_number"], "to": row["to_number"],
            "answers": row["answers"], "completed_at": row["completed_at"]}  # fmt: skip


class Poster:
    """Records submissions of one bot and makes their delivery attempts; ``start`` in startup,
    ``close`` in shutdown."""

    def __init__(self, data: PluginStore, clock: Callable[[], float], *, sandbox: bool,
                 timeout: float = POST_TIMEOUT) -> None:  # fmt: skip
        self.data = data
        self.clock = clock
        self.sandbox = sandbox
        self.timeout = timeout
        self.client: httpx.AsyncClient | None = None

    def start(self) -> None:
        self.client = httpx.AsyncClient(timeout=self.timeout)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    def record(self, *, message_id: str, conversation_id: int, flow: Any, profile: str | None,
               from_number: str, to_number: str, answers: dict[str, Any]) -> tuple[str, bool]:  # fmt: skip
        """Store a completed flow (once per message); returns its id and whether to deliver it."""
        now = self.clock()
        row = {"id": message_id, "message_id": message_id, "conversation_id": conversation_id, "flow": flow.name, "profile": profile,
               "from_number": from_number, "to_number": to_number, "answers": answers, "completed_at": iso(now),
               "post_to": flow.post_to, "post_status": self._initial_status(flow), "post_attempts": 0,
               "post_max_attempts": flow.post_attempts, "post_backoff": flow.post_backoff, "post_next_at": now,
               "post_error": None, "posted_at": None}  # fmt: skip
        if not self.data.add(PREFIX + message_id, row):  # handled before (a crash cut its commit off): deliver it, once
            return message_id, self.data.get(PREFIX + message_id)["post_status"] == PENDING
        if flow.post_to and self.sandbox:
            log.info("sandbox: flow %r submission %s recorded, not posted", flow.name, message_id)
        return message_id, bool(flow.post_to) and not self.sandbox

    def _initial_status(self, flow: Any) -> str | None:
        if not flow.post_to:
            return None
        return SANDBOX if self.sandbox else PENDING

    def submissions(self) -> list[dict[str, Any]]:
        """Every submission recorded, by id."""
        return [row for _, row in self.data.items(PREFIX)]

    def _row(self, row_id: str) -> dict[str, Any] | None:
        return self.data.get(PREFIX + row_id)

    def _update(self, row_id: str, **fields: Any) -> None:
        # One delivery attempt at a time per submission (its timer is a claimed unit): no lost update.
        self.data.put(PREFIX + row_id, {**self.data.get(PREFIX + row_id), **fields})

    async def attempt(self, row_id: str) -> float | None:
        """One delivery attempt; the seconds until the next one, or None when settled."""
        row = self._row(row_id)
        if row is None or row["post_status"] != PENDING:
            return None
        if self.sandbox:
            return row["post_backoff"]  # wait for a start without sandbox
        attempts = row["post_attempts"] + 1
        error, retryable = await self._post(row)
        host = httpx.URL(row["post_to"]).host  # the full URL may carry a token: never logged
        if error is None:
            self._update(row_id, post_status=DELIVERED, post_attempts=attempts, post_error=None,
                         posted_at=iso(self.clock()))  # fmt: skip
            log.info("flow %r submission %s delivered to %s", row["flow"], row_id, host)
            return None
        if not retryable or attempts >= row["post_max_attempts"]:
            self._update(row_id, post_status=FAILED, post_attempts=attempts, post_error=error)
            log.warning("flow %r submission %s not delivered to %s after %d attempt(s): %s",
                        row["flow"], row_id, host, attempts, error)  # fmt: skip
            return None
        delay = backoff(attempts, row["post_backoff"])
        self._update(row_id, post_attempts=attempts, post_error=error, post_next_at=self.clock() + delay)
        log.info("flow %r submission %s: %s from %s; retry in %.1fs", row["flow"], row_id, error, host, delay)
        return delay

    async def _post(self, row: dict[str, Any]) -> tuple[str | None, bool]:
        """(None, _) when accepted; else (the error, whether to retry)."""
        assert self.client is not None
        try:
            response = await self.client.post(row["post_to"], json=payload(row),
                                              headers={"idempotency-key": f"bot-core-flows-{row['id']}"})  # fmt: skip
        except httpx.TransportError as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, True
        if response.is_success:
            return None, False
        return f"HTTP {response.status_code}", response.status_code >= 500 or response.status_code in (408, 429)


def backoff(attempt: int, initial: float) -> float:
    """Exponential backoff with jitter: about ``initial``, 2x, 4x ... up to an hour."""
    ceiling = min(BACKOFF_MAX, initial * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)
