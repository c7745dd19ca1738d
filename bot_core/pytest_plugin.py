"""pytest fixtures for plugin authors, loaded through the ``pytest11`` entry point.

With bot-core installed, every pytest run has them; ``pytest --fixtures`` lists them:

- ``bot_tester``: a factory, ``bot_tester(config, **kwargs)`` -> a started
  :class:`~bot_core.testing.BotTester` in ``tmp_path``, stopped after the test.
- ``fake_telnyx``: a :class:`~bot_core.testing.FakeTelnyx`, in-process (pass it as
  ``bot_tester(config, telnyx=fake_telnyx)``; ``with fake_telnyx:`` serves it on loopback).
- ``fake_clock``: a :class:`~bot_core.testing.FakeClock` (pass it as ``clock=fake_clock``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .testing import BotTester, FakeClock, FakeTelnyx


@pytest.fixture
def fake_telnyx() -> FakeTelnyx:
    """A fake Telnyx API: records requests, answers 429/5xx/40300/timeouts on demand, signs webhooks."""
    return FakeTelnyx()


@pytest.fixture
def fake_clock() -> FakeClock:
    """A clock that moves only when told (``fake_clock.advance("15m")``), starting now."""
    return FakeClock()


@pytest.fixture
def bot_tester(tmp_path: Path) -> Iterator[Callable[..., BotTester]]:
    """A factory of started BotTesters: ``bot = bot_tester(config, plugins=[my_plugin])``."""
    started: list[BotTester] = []

    def make(config: Any, **kwargs: Any) -> BotTester:
        directory = tmp_path / f"bot{len(started)}"
        directory.mkdir()
        tester = BotTester(config, tmp_path=directory, **kwargs).__enter__()
        started.append(tester)
        return tester

    yield make
    for tester in reversed(started):
        tester.__exit__(None, None, None)
