"""Shared fixtures: a real `bot-core serve` process and a fake Telnyx on loopback."""

from __future__ import annotations

import compileall
import json
import os
import signal
import socket
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot_core.store import PENDING, RECEIVED, SENDING, is_postgres, open_store
from bot_core.testing import FakeTelnyx
from bot_core.testing.postgres import schema_of_its_own, unreachable
from bot_core.testing.server import Serve, healthy  # noqa: F401  (tests import healthy from here)

pytest_plugins = ["pytester"]  # test_testing runs pytest on a plugin author's tests

SAMPLES = Path(__file__).parent / "samples"

# Every development and CI machine runs PostgreSQL 15 here (trust authentication).
POSTGRES = os.environ.get("BOT_CORE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


_CHILDREN_WRITE_NO_BYTECODE = "BOT_CORE_TEST_DONTWRITEBYTECODE"  # the setting the xdist workers hand back
PYCACHE = Path(tempfile.gettempdir()) / f"bot-core-tests-pycache-{os.getuid()}"  # outside every tree


def bytecode_cached(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a child `python -m pytest` that keeps what it compiles in PYCACHE: pytest rewrites
    the asserts of bot-core's modules (a pytest plugin's package) in each run, two seconds of CPU
    when nothing may be cached. Only .pyc files are written, and not next to any source."""
    return {**{k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}, "PYTHONPYCACHEPREFIX": str(PYCACHE)}


def pytest_sessionstart(session: pytest.Session) -> None:
    """Compile bot-core and its bundled plugins once, before the workers start, and let the workers
    cache what they compile in a folder of their own: with PYTHONDONTWRITEBYTECODE=1 every one of
    the hundreds of `bot-core` processes, and every worker (pytest's assertion rewriting of the
    tests and of bot-core, a pytest plugin's package), would compile the same modules again, a few
    seconds of CPU per worker. Only .pyc files are written; nothing a test looks at changes."""
    if hasattr(session.config, "workerinput"):
        return
    root = Path(__file__).resolve().parent.parent
    for folder in ("bot_core", "plugins"):
        compileall.compile_dir(root / folder, quiet=1)
    if session.config.getoption("numprocesses", None) and os.environ.get("PYTHONDONTWRITEBYTECODE"):
        # The workers start with this environment; each hands the setting back to its own children.
        os.environ[_CHILDREN_WRITE_NO_BYTECODE] = os.environ.pop("PYTHONDONTWRITEBYTECODE")
        os.environ["PYTHONPYCACHEPREFIX"] = str(PYCACHE)


if _CHILDREN_WRITE_NO_BYTECODE in os.environ and os.environ.get("PYTEST_XDIST_WORKER"):  # a worker: see above
    os.environ["PYTHONDONTWRITEBYTECODE"] = os.environ.pop(_CHILDREN_WRITE_NO_BYTECODE)
    del os.environ["PYTHONPYCACHEPREFIX"]


def sample(name: str) -> dict:
    return json.loads((SAMPLES / name).read_text())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server(Serve):
    """`bot-core serve` as a child process on a loopback port (see bot_core.testing.server)."""

    def post(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(
            self.url + "/webhooks/telnyx",
            content=body,
            headers={"content-type": "application/json", **headers},
            timeout=10,
        )

    def settled(self, database: str = "bot.db") -> bool:
        """Whether the server has handled every message stored and finished every send: it sends
        nothing more until a new webhook (or a timer) comes."""
        if is_postgres(url := os.environ.get("BOT_CORE_DATABASE", "")):  # the config names it (`database`)
            store = open_store(url)
            try:
                backlog = store.backlog()
            finally:
                store.close()
            return backlog["messages"] + backlog["sends"] == 0
        with closing(sqlite3.connect(self.config.parent / database)) as conn:
            busy = f"SELECT 1 FROM mdrs WHERE status IN ('{RECEIVED}', '{PENDING}', '{SENDING}') LIMIT 1"
            return conn.execute(busy).fetchone() is None


@pytest.fixture
def fake_telnyx_server() -> Iterator[FakeTelnyx]:
    fake = FakeTelnyx()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator:
    servers: list[Server] = []

    def make(config_text: str, *args: str) -> Server:
        config = tmp_path / "bot.toml"
        config.write_text(config_text)
        server = Server(config, tmp_path / "server.log", *args)
        servers.append(server)
        return server

    yield make
    for server in servers:
        if server.process is not None and server.process.poll() is None:
            server.stop(signal.SIGKILL)


def wait_for(predicate, timeout: float = 10, interval: float = 0.02):
    """Poll until ``predicate()`` is truthy; return its value or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


@cache
def _postgres_error() -> str | None:
    """Why the test PostgreSQL does not answer, or None when it does."""
    return unreachable(POSTGRES)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL of the test PostgreSQL whose search_path is a schema of this test's own, dropped after it.

    No server: the test skips, saying how to run it; on CI (CI=true) it fails instead."""
    if (error := _postgres_error()) is not None:
        reason = (
            f"PostgreSQL not reachable at BOT_CORE_TEST_POSTGRES={POSTGRES} ({error}): start PostgreSQL 15 "
            "there (trust authentication) or point BOT_CORE_TEST_POSTGRES at a server to run these tests"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    with schema_of_its_own(POSTGRES) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest) -> str:
    """Each test that uses it runs once per store engine."""
    return request.param


@pytest.fixture
def database_url(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """``[bot] database`` for the engine under test: a SQLite file, or a PostgreSQL schema of its own."""
    if engine == "sqlite":
        return str(tmp_path / "bot.db")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def database(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """``database_url`` as ``$BOT_CORE_DATABASE``, which test configs name (``database =
    "${BOT_CORE_DATABASE}"``), so commands run in child processes use it too."""
    monkeypatch.setenv("BOT_CORE_DATABASE", database_url)
    return database_url


@contextmanager
def server_using(database: str) -> Iterator[None]:
    """What ``database_in_use`` sees of a running server: the SQLite file held open, or a
    replica's fresh heartbeat on PostgreSQL."""
    store = open_store(database)
    store.healthy("a running server")
    try:
        yield
    finally:
        store.close()


def rows(store: Any, statement: str, params: tuple = ()) -> list[tuple]:
    """A test's look at the store's tables, on either engine (the SQLite engine's SQL)."""
    return store._read(statement, params)
