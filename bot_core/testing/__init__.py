"""Testing bot-core and its plugins: the :class:`BotTester` harness, a :class:`FakeClock`, and a
fake Telnyx API (:class:`FakeTelnyx`) that also builds signed webhooks (:class:`TelnyxWebhooks`).

Names load on first use: ``bot-core chat`` builds its webhooks with
:mod:`bot_core.testing.fake_telnyx`, which must not drag in the harness built on top of chat.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_names

if TYPE_CHECKING:
    from .fake_telnyx import FakeTelnyx, Recorded, SignedWebhook, TelnyxWebhooks
    from .tester import CUSTOMER, BotTester, Exchange, FakeClock, build_config, parse_transcript

__getattr__ = lazy_names(
    __name__,
    {
        "BotTester": ".tester",
        "CUSTOMER": ".tester",
        "Exchange": ".tester",
        "FakeClock": ".tester",
        "FakeTelnyx": ".fake_telnyx",
        "Recorded": ".fake_telnyx",
        "SignedWebhook": ".fake_telnyx",
        "TelnyxWebhooks": ".fake_telnyx",
        "build_config": ".tester",
        "parse_transcript": ".tester",
    },
)

__all__ = [
    "BotTester",
    "CUSTOMER",
    "Exchange",
    "FakeClock",
    "FakeTelnyx",
    "Recorded",
    "SignedWebhook",
    "TelnyxWebhooks",
    "build_config",
    "parse_transcript",
]
