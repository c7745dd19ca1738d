"""pytest fixtures for plugin authors, loaded through the ``pytest11`` entry point.

- ``bot_tester``: a factory, ``bot_tester(config, **kwargs)`` -> a started
  :class:`~bot_core.testing.BotTester` in ``tmp_path``, stopped after the test.
- ``fake_telnyx``: a :class:`~bot_core.fake_telnyx.FakeTelnyx`, in-process.
- ``fake_clock``: a :class:`~bot_core.testing.FakeClock`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .fake_telnyx import FakeTelnyx
from .testing import BotTester, FakeClock


@pytest.fixture
def fake_telnyx() -> FakeTelnyx:
    return FakeTelnyx()


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def bot_tester(tmp_path: Any) -> Iterator[Callable[..., BotTester]]:
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
