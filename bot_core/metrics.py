"""Prometheus metrics of one bot, in a registry of its own (two bots in one process don't clash).

``GET /metrics`` serves them. Names (the ``_total``, ``_bucket``... suffixes are Prometheus's):

- ``bot_core_webhooks_total{kind, outcome}``: webhooks received; kind ``message``, ``status``,
  ``ignored`` or ``unknown`` (unparseable), outcome the HTTP status answered.
- ``bot_core_messages_handled_total{outcome}``: inbound messages by outcome (``handled``,
  ``unhandled``, ``failed``, ...) and fired timers (``timer``).
- ``bot_core_plugin_seconds{plugin}``: time in each plugin's hooks (a histogram);
  ``bot_core_plugin_failures_total{plugin}``: calls that raised or timed out.
- ``bot_core_sends_total{status}``: outbound messages by the status they left the outbox with
  (``queued``, ``sandbox``, ``failed``, ``blocked``...), refused ones included.
- ``bot_core_send_retries_total``: send attempts that failed and will be retried.
- ``bot_core_queue_depth{queue}``: ``inbox`` messages being handled or waiting, ``outbox``
  messages being sent or waiting (for a retry too).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .store import PENDING, OutboundDraft


class Metrics:
    """The counters and histograms ``GET /metrics`` shows."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.webhooks = Counter("bot_core_webhooks", "Webhooks received, by kind and outcome",
                                ["kind", "outcome"], registry=r)  # fmt: skip
        self.handled = Counter("bot_core_messages_handled", "Inbound messages and timers handled, by outcome",
                               ["outcome"], registry=r)  # fmt: skip
        self.plugin_seconds = Histogram("bot_core_plugin_seconds", "Time spent in a plugin hook", ["plugin"],
                                        registry=r, buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30))  # fmt: skip
        self.plugin_failures = Counter("bot_core_plugin_failures", "Plugin calls that raised or timed out",
                                       ["plugin"], registry=r)  # fmt: skip
        self.sends = Counter("bot_core_sends", "Outbound messages by the status they ended in", ["status"], registry=r)
        self.retries = Counter("bot_core_send_retries", "Send attempts that will be retried", registry=r)
        self.queue_depth = Gauge("bot_core_queue_depth", "Items waiting or in progress", ["queue"], registry=r)

    def track_queue(self, name: str, depth: Callable[[], int]) -> None:
        self.queue_depth.labels(name).set_function(depth)

    def count_refused(self, drafts: Iterable[OutboundDraft]) -> None:
        """Count outbound messages the outbox policy refused (blocked, over max_parts): the sender
        never sees them, so they would be missing from ``sends`` otherwise."""
        for draft in drafts:
            if draft.status != PENDING:
                self.sends.labels(draft.status).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
