"""Three `bot-core serve` replicas on one PostgreSQL database, as on three machines.

The load is spread over the replicas (each webhook to any of them, as a load balancer does),
some webhooks are delivered twice at the same instant to two different replicas or again later
to another one, the fake Telnyx misbehaves all along, and one replica is killed with SIGKILL
every few seconds and started again (as an orchestrator does). The promise holds across them:
every acknowledged message handled once and answered once (a send repeated only when a kill
cut its request off or its request timed out, each logged), in per-conversation order.
``FAST`` runs in the default suite; ``FULL`` is ``pytest -m chaos``. The approach (texters,
fault script, checks) follows the ``--workers`` chaos run of tests/test_workers.py.
"""

from __future__ import annotations

import json
import random
import re
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot_core.store import open_store
from bot_core.testing import FakeTelnyx
from bot_core.webhooks import sign_v1

from .conftest import Server, rows, wait_for

SECRET = "replicas-test-secret"
OURS = "+13125550100"

COUNTER_PLUGIN = '''
from bot_core import hookimpl

@hookimpl
def handle_message(message, conversation):
    n = conversation.state.get("n", 0) + 1
    conversation.state["n"] = n
    return f"{message.text} #{n}"
'''

# Logged for sends whose request had started when their process died: each may have reached
# Telnyx, so each may go out twice; and a send whose request timed out may have reached it too.
IN_FLIGHT_SEND = re.compile(r"send (\d+) to \S+ was in flight")
TIMED_OUT_SEND = re.compile(r"send (\d+) to \S+ failed \(Telnyx did not answer in time")


@dataclass(frozen=True)
class Chaos:
    """One chaos run: how much traffic, how many faults, how often a replica is killed."""

    conversations: int
    messages: int  # per conversation, sent in order
    duration: float  # seconds over which the webhooks are sent; kills go on that long
    kill_every: float  # seconds between two SIGKILLs of a replica
    duplicates: float = 0.2  # share of webhooks delivered twice: half at once to two replicas, half late
    fault_every: float = 0.1  # seconds between two faults scripted at the fake Telnyx
    replicas: int = 3
    settle: float = 120  # seconds allowed, after the traffic, for the last reply to go out


FAST = Chaos(conversations=20, messages=3, duration=6, kill_every=2, settle=90)
FULL = Chaos(conversations=300, messages=3, duration=30, kill_every=3)


def config_text(tmp_path: Path, fake_url: str, database: str) -> str:
    plugins_dir = tmp_path / "plugins"
    plugins_dir.mkdir(exist_ok=True)
    (plugins_dir / "counter.py").write_text(COUNTER_PLUGIN)
    return f"""
[bot]
database = "{database}"
plugins_dir = "plugins"
shutdown_grace = "2s"
lease = "3s"
poll_interval = "250ms"

[telnyx]
api_base = "{fake_url}"

[sending]
timeout = "2s"
backoff_initial = "50ms"
backoff_max = "500ms"
max_attempts = 1000

[profiles.main]
secret = "{SECRET}"
numbers = ["{OURS}"]
plugins = ["counter"]
"""


def webhook(sms_id: str, customer: str, text: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"sms_id": sms_id, "direction": "inbound", "from": customer, "to": OURS, "body": text}).encode()
    return body, {"content-type": "application/json", "X-Telnyx-Signature": sign_v1(body, SECRET)}


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

    def kill_one(self, rng: random.Random) -> None:
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

    @property
    def log(self) -> str:
        return "".join(s.log for s in self.servers)

    def stop(self) -> list[int]:
        return [server.stop(signal.SIGTERM, timeout=30) for server in self.servers]


class Texters:
    """Customers texting through Telnyx: each webhook is posted until it is acknowledged (200),
    as Telnyx retries, to any replica; some are delivered twice, at the same instant or later."""

    def __init__(self, replicas: Replicas, run: Chaos, rng: random.Random) -> None:
        self.replicas = replicas
        self.run = run
        self.rng = rng
        self.acked: set[str] = set()
        self.refused: list[str] = []  # any answer but 200 and 503
        self._lock = threading.Lock()

    def post(self, sms_id: str, body: bytes, headers: dict[str, str], barrier: threading.Barrier | None = None,
             url: str | None = None) -> None:  # fmt: skip
        if barrier is not None:  # the duplicate posted at the same instant, to another replica
            try:
                barrier.wait(2)
            except threading.BrokenBarrierError:
                pass
        deadline = time.monotonic() + 60
        url = url or self.replicas.url(random.Random())
        while time.monotonic() < deadline:
            try:
                response = httpx.post(url + "/webhooks/telnyx", content=body, headers=headers, timeout=10)
            except httpx.TransportError:  # that replica was killed: Telnyx tries again, maybe elsewhere
                url = self.replicas.url(random.Random())
                time.sleep(0.05)
                continue
            if response.status_code == 200:
                with self._lock:
                    self.acked.add(sms_id)
                return
            if response.status_code != 503:
                with self._lock:
                    self.refused.append(f"{sms_id}: {response.status_code} {response.text}")
                return
            time.sleep(0.05)
        with self._lock:
            self.refused.append(f"{sms_id}: never acknowledged")

    def send_all(self) -> int:
        """Every conversation's messages in order, spread over ``run.duration``; returns the
        number of duplicate deliveries."""
        run, rng = self.run, self.rng
        customers = [f"+1312{3_000_000 + i:07d}" for i in range(run.conversations)]
        late: list[tuple[str, bytes, dict[str, str]]] = []
        duplicates = 0
        with ThreadPoolExecutor(max_workers=16) as pool:
            for round_ in range(run.messages):
                begun = time.monotonic()
                span = run.duration / run.messages
                order = rng.sample(customers, len(customers))
                futures = []
                for i, customer in enumerate(order):
                    sms_id = f"{customer}-{round_}"
                    body, headers = webhook(sms_id, customer, f"{customer[-4:]}m{round_}")
                    if (pause := begun + span * i / len(order) - time.monotonic()) > 0:
                        time.sleep(pause)
                    roll = rng.random()
                    if roll < run.duplicates / 2:
                        barrier = threading.Barrier(2)
                        first = self.replicas.url(rng)
                        second = self.replicas.url(rng, other_than=first)
                        futures += [pool.submit(self.post, sms_id, body, headers, barrier, url)
                                    for url in (first, second)]  # fmt: skip
                        duplicates += 1
                    else:
                        futures.append(pool.submit(self.post, sms_id, body, headers))
                        if roll < run.duplicates:
                            late.append((sms_id, body, headers))
                for future in futures:  # the next message of a conversation follows this one
                    future.result()
                redelivered, late = late, []  # delivered again a round later, to any replica
                for future in [pool.submit(self.post, *item) for item in redelivered]:
                    future.result()
                duplicates += len(redelivered)
        return duplicates


def script_faults(fake: FakeTelnyx, run: Chaos, stop: threading.Event, rng: random.Random) -> None:
    """Telnyx misbehaving all along: 429 with Retry-After, 500, 503, a slow answer (well under
    the 2 s client timeout), a request that times out unanswered."""
    while not stop.wait(run.fault_every):
        fault = rng.choices(["429", "500", "503", "stall", "timeout"], weights=[3, 2, 2, 3, 1])[0]
        if fault == "429":
            fake.rate_limit(retry_after=0.2)
        elif fault == "stall":
            fake.stall(0.5)
        elif fault == "timeout":
            fake.timeout()
        else:
            fake.fail(int(fault))


def kill_replicas(replicas: Replicas, run: Chaos, stop: threading.Event, rng: random.Random, kills: list[Any]) -> None:
    """SIGKILL a replica every ``run.kill_every`` seconds; a failure to restart it ends up in ``kills``."""
    while not stop.wait(run.kill_every):
        try:
            replicas.kill_one(rng)
        except Exception as exc:  # noqa: BLE001  (reported by the test, not lost in this thread)
            kills.append(exc)
            return
        kills.append(1)


def chaos(run: Chaos, fake: FakeTelnyx, tmp_path: Path, database: str) -> None:
    rng = random.Random(9)
    config = tmp_path / "bot.toml"
    config.write_text(config_text(tmp_path, fake.url, database))
    replicas = Replicas(config, tmp_path, run.replicas)
    try:
        replicas.start()
        texters = Texters(replicas, run, rng)
        stop = threading.Event()
        kills: list[Any] = []
        threads = [threading.Thread(target=script_faults, args=(fake, run, stop, random.Random(1))),
                   threading.Thread(target=kill_replicas, args=(replicas, run, stop, random.Random(2), kills))]  # fmt: skip
        for thread in threads:
            thread.start()
        try:
            duplicates = texters.send_all()
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert texters.refused == []
        assert kills, "no replica was killed"
        assert all(kill == 1 for kill in kills), kills

        store = open_store(database)
        try:
            stored = rows(store, "SELECT telnyx_id, text, from_number FROM mdrs WHERE direction = 'inbound' ORDER BY id")
            assert texters.acked == {sms_id for sms_id, _, _ in stored}  # 0 lost: every acknowledged message stored
            expected: dict[str, list[str]] = {}
            for _, text, customer in stored:
                mine = expected.setdefault(customer, [])
                mine.append(f"{text} #{len(mine) + 1}")
            every = {text for texts in expected.values() for text in texts}
            wait_for(lambda: every <= {r.json["body"] for r in fake.sent}, timeout=run.settle, interval=0.2)
            # A graceful stop: uvicorn re-raises the SIGTERM it handled once the bot has stopped.
            assert set(replicas.stop()) <= {0, -signal.SIGTERM}
            assert all(server.log.rstrip().endswith(f"Finished server process [{server.process.pid}]")
                       for server in replicas.servers)  # fmt: skip

            sent = Counter(r.json["body"] for r in fake.sent)
            assert set(sent) == every  # no reply to a message that was not stored, none twice-handled
            # A send is repeated only after a kill cut its request off, or its request timed out:
            # each time, logged with its MDR id. Every repeat must be one of those.
            log = replicas.log
            repeated = {text: n for text, n in sent.items() if n > 1}
            logged = {int(i) for i in IN_FLIGHT_SEND.findall(log)} | {int(i) for i in TIMED_OUT_SEND.findall(log)}
            assert sum(n - 1 for n in repeated.values()) <= len(IN_FLIGHT_SEND.findall(log)) + len(
                TIMED_OUT_SEND.findall(log)), (repeated, logged)  # fmt: skip
            if repeated:
                texts = {text for (text,) in rows(store, f"SELECT text FROM mdrs WHERE id IN ({','.join(map(str, logged))})")}
                assert set(repeated) <= texts
            for customer, texts in expected.items():  # first deliveries in conversation order
                assert list(dict.fromkeys(r.json["body"] for r in fake.sent if r.json["to"] == customer)) == texts
            assert rows(store, "SELECT status, COUNT(*) FROM mdrs WHERE direction = 'inbound' GROUP BY status") == [
                ("handled", len(stored))
            ]
            assert rows(store, "SELECT COUNT(*) FROM mdrs WHERE direction = 'outbound'") == [(len(every),)]
            assert "Traceback" not in log
        finally:
            store.close()
        print(f"chaos on PostgreSQL: {len(stored)} messages over {run.replicas} replicas, {duplicates} duplicate"
              f" deliveries, {len(kills)} kills, {sum(sent.values())} sends, {len(repeated)} repeated (logged:"
              f" {len(logged)} in flight at a kill or timed out)")  # fmt: skip
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
