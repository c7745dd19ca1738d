"""Three `bot-core serve` replicas on one PostgreSQL database, as on three machines.

The load is spread over the replicas (each webhook to any of them, as a load balancer does),
some webhooks are delivered twice at the same instant to two different replicas or again later
to another one, the fake Telnyx misbehaves all along, and one replica is killed with SIGKILL
every few seconds and started again (as an orchestrator does). The promise holds across them:
every acknowledged message handled once and answered once (a send repeated only when a kill
cut its request off or its request timed out, each logged), in per-conversation order.
``FAST`` runs in the default suite; ``FULL`` is ``pytest -m chaos``. The texters, the fault
script and the checks are those of the ``--workers`` chaos run (tests/chaos.py).
"""

from __future__ import annotations

import random
import signal
import threading
from pathlib import Path

import pytest

from bot_core.store import open_store
from bot_core.testing import FakeTelnyx

from .chaos import IN_FLIGHT_SEND, TIMED_OUT_SEND, Chaos, Texters, check_promise, config_text, under_chaos
from .conftest import Server, rows

FAST = Chaos(conversations=20, messages=3, duration=6, kill_every=2, processes=3, settle=90, ack_within=60)
FULL = Chaos(conversations=300, messages=3, duration=30, kill_every=3, processes=3, ack_within=60)
# Replicas claim work by lease: short, so a killed replica's units pass to another soon.
BOT = 'lease = "3s"\npoll_interval = "250ms"'


class Replicas:
    """N `bot-core serve` processes on one config (one database), each on a port of its own."""

    def __init__(self, config: Path, tmp_path: Path, n: int) -> None:
        self.servers = [Server(config, tmp_path / f"replica-{i}.log") for i in range(n)]
        self.lock = threading.Lock()

    def start(self) -> None:
        for server in self.servers:
            server.start(timeout=90)

    def url(self, rng: random.Random, other_than: str | None = None) -> str:
        with self.lock:
            urls = [s.url for s in self.servers if s.url != other_than]
        return rng.choice(urls)

    def kill_one(self, rng: random.Random) -> int:
        """SIGKILL a replica, then start it again (on a new port), as an orchestrator does."""
        server = rng.choice(self.servers)
        with self.lock:
            server.stop(signal.SIGKILL)
        try:
            server.start(timeout=90)  # a loaded 2-core machine may take a while
        except RuntimeError:
            if server.process is None or server.process.poll() is not None:
                raise  # it exited: a real failure
            # Running but its health check (a database write within store_timeout) is slow to
            # pass under this load: the proxy (here, the texters' retries) waits for it.
        return 1

    @property
    def log(self) -> str:
        return "".join(s.log for s in self.servers)

    def stop(self) -> list[int]:
        return [server.stop(signal.SIGTERM, timeout=30) for server in self.servers]


def chaos(run: Chaos, fake: FakeTelnyx, tmp_path: Path, database: str) -> None:
    config = tmp_path / "bot.toml"
    config.write_text(config_text(tmp_path, fake.url, database=database, bot=BOT))
    replicas = Replicas(config, tmp_path, run.processes)
    try:
        replicas.start()
        texters = Texters(replicas.url, run, random.Random(9))  # each webhook to any replica
        duplicates, kills = under_chaos(texters, fake, replicas.kill_one)

        logged: list[int] = []

        def stop() -> tuple[int, set[int]]:
            # A graceful stop: uvicorn re-raises the SIGTERM it handled once the bot has stopped.
            assert set(replicas.stop()) <= {0, -signal.SIGTERM}
            assert all(server.log.rstrip().endswith(f"Finished server process [{server.process.pid}]")
                       for server in replicas.servers)  # fmt: skip
            log = replicas.log
            assert "Traceback" not in log
            logged.extend([int(i) for i in IN_FLIGHT_SEND.findall(log)] + [int(i) for i in TIMED_OUT_SEND.findall(log)])
            return len(logged), set(logged)

        store = open_store(database)
        try:
            outcome = check_promise(texters, fake, lambda sql: rows(store, sql), run.settle, stop)
        finally:
            store.close()
        print(f"chaos on PostgreSQL: {len(outcome.ids)} messages over {run.processes} replicas, {duplicates}"
              f" duplicate deliveries, {len(kills)} kills, {len(fake.sent)} sends, {len(outcome.repeated)} repeated"
              f" (logged: {len(set(logged))} in flight at a kill or timed out)")  # fmt: skip
    finally:
        for server in replicas.servers:
            if server.process is not None and server.process.poll() is None:
                server.stop(signal.SIGKILL)


def test_chaos_three_replicas_on_postgresql_fast(fake_telnyx_server, tmp_path, postgres_url):
    chaos(FAST, fake_telnyx_server, tmp_path, postgres_url)


@pytest.mark.chaos
def test_chaos_three_replicas_on_postgresql_kill_9_duplicates_and_telnyx_faults(
    fake_telnyx_server, tmp_path, postgres_url
):
    chaos(FULL, fake_telnyx_server, tmp_path, postgres_url)
