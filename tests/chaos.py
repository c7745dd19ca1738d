"""The chaos machinery shared by the ``--workers`` run (tests/test_workers.py: N processes on one
socket and one SQLite file) and the replicas run (tests/test_postgres_chaos.py: N `bot-core serve`
on one PostgreSQL database, each on a port of its own).

Customers text through Telnyx while the fake Telnyx misbehaves and processes are killed with
SIGKILL; then the promise is checked: every acknowledged message stored, handled once and answered
once (a send repeated only when a kill cut its request off or its request timed out, each logged),
in per-conversation order.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from bot_core.testing import FakeTelnyx
from bot_core.webhooks import sign_v1

from .conftest import wait_for

SECRET = "chaos-test-secret"
OURS = "+13125550100"

COUNTER_PLUGIN = """
from bot_core import hookimpl

@hookimpl
def handle_message(message, conversation):
    n = conversation.state.get("n", 0) + 1
    conversation.state["n"] = n
    return f"{message.text} #{n}"
"""

# Logged for sends whose request had started when their process died: each may have reached
# Telnyx, so each may go out twice; and a send whose request timed out (a slow answer on a loaded
# machine) may have reached it too.
IN_FLIGHT_SEND = re.compile(r"send (\d+) to \S+ was in flight")
TIMED_OUT_SEND = re.compile(r"send (\d+) to \S+ failed \(Telnyx did not answer in time")

# Where a webhook goes: a URL picked with the run's random source, other than the one given (for
# a duplicate delivered at the same instant) when there is another.
Pick = Callable[[random.Random, str | None], str]
# Reads the store's tables after a run: SQL in, rows out.
Read = Callable[[str], list[tuple]]


@dataclass(frozen=True)
class Chaos:
    """One chaos run: how much traffic, how many faults, how often a process is killed."""

    conversations: int
    messages: int  # per conversation, sent in order
    duration: float  # seconds over which the webhooks are sent; kills go on that long
    kill_every: float  # seconds between two SIGKILLs of a process
    processes: int  # workers on one socket, or replicas on one database
    duplicates: float = 0.2  # share of webhooks delivered twice: half at once, half late
    fault_every: float = 0.1  # seconds between two faults scripted at the fake Telnyx
    settle: float = 120  # seconds allowed, after the traffic, for the last reply to go out
    ack_within: float = 120  # seconds a webhook is retried for before it counts as never acknowledged


def config_text(tmp_path: Path, fake_url: str, *, database: str = "bot.db", bot: str = "",
                plugin: str = COUNTER_PLUGIN) -> str:  # fmt: skip
    """A config with one profile whose plugin ``counter`` numbers each conversation's messages;
    ``bot`` adds lines to ``[bot]``."""
    plugins_dir = tmp_path / "plugins"
    plugins_dir.mkdir(exist_ok=True)
    (plugins_dir / "counter.py").write_text(plugin)
    return f"""
[bot]
database = "{database}"
plugins_dir = "plugins"
shutdown_grace = "2s"
{bot}

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


class Texters:
    """Customers texting through Telnyx: each webhook is posted until it is acknowledged (200),
    as Telnyx retries, to the URL ``pick`` gives (again after a connection fails: that process was
    killed); some are delivered twice, at the same instant or a round later."""

    def __init__(self, pick: Pick, run: Chaos, rng: random.Random) -> None:
        self.pick = pick
        self.run = run
        self.rng = rng
        self.acked: set[str] = set()
        self.refused: list[str] = []  # any answer but 200 and 503
        self._local = threading.local()
        self._lock = threading.Lock()
        self._clients: list[httpx.Client] = []

    def _client(self, url: str, fresh: bool = False) -> httpx.Client:
        """This thread's keep-alive connection to ``url``; ``fresh`` after the process holding it was killed."""
        clients: dict[str, httpx.Client] | None = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        if url not in clients or fresh:
            clients[url] = httpx.Client(base_url=url, timeout=10)
            with self._lock:
                self._clients.append(clients[url])
        return clients[url]

    def post(self, sms_id: str, body: bytes, headers: dict[str, str], barrier: threading.Barrier | None = None,
             url: str | None = None) -> None:  # fmt: skip
        if barrier is not None:  # the duplicate posted at the same instant
            try:
                barrier.wait(2)
            except threading.BrokenBarrierError:
                pass
        deadline = time.monotonic() + self.run.ack_within
        url = url or self.pick(random.Random(), None)
        client = self._client(url)
        while time.monotonic() < deadline:
            try:
                response = client.post("/webhooks/telnyx", content=body, headers=headers)
            except httpx.TransportError:  # that process was killed: Telnyx tries again, maybe elsewhere
                url = self.pick(random.Random(), None)
                client = self._client(url, fresh=True)
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
                    if roll < run.duplicates / 2:  # twice at the same instant, to two processes if there are two
                        barrier = threading.Barrier(2)
                        first = self.pick(rng, None)
                        second = self.pick(rng, first)
                        futures += [pool.submit(self.post, sms_id, body, headers, barrier, url)
                                    for url in (first, second)]  # fmt: skip
                        duplicates += 1
                    else:
                        futures.append(pool.submit(self.post, sms_id, body, headers))
                        if roll < run.duplicates:
                            late.append((sms_id, body, headers))
                for future in futures:  # the next message of a conversation follows this one
                    future.result()
                redelivered, late = late, []  # delivered again a round later, to any process
                for future in [pool.submit(self.post, *item) for item in redelivered]:
                    future.result()
                duplicates += len(redelivered)
        for client in self._clients:
            client.close()
        return duplicates


def script_faults(fake: FakeTelnyx, run: Chaos, stop: threading.Event, rng: random.Random) -> None:
    """Telnyx misbehaving all along: 429 with Retry-After, 500, 503, a slow answer (well under
    the 2 s client timeout, so it is still accepted once), a request that times out unanswered."""
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


def under_chaos(texters: Texters, fake: FakeTelnyx, kill_one: Callable[[random.Random], object]) -> tuple[int, list]:
    """Send all the traffic while Telnyx misbehaves and ``kill_one`` is called every
    ``run.kill_every`` seconds; returns the duplicate deliveries and what each kill returned
    (None: nothing to kill that time), an exception ending the kills."""
    run, stop, kills = texters.run, threading.Event(), []

    def kill() -> None:
        rng = random.Random(2)
        while not stop.wait(run.kill_every):
            try:
                killed = kill_one(rng)
            except Exception as exc:  # noqa: BLE001  (reported by the test, not lost in this thread)
                kills.append(exc)
                return
            if killed is not None:
                kills.append(killed)

    threads = [threading.Thread(target=script_faults, args=(fake, run, stop, random.Random(1))),
               threading.Thread(target=kill)]  # fmt: skip
    for thread in threads:
        thread.start()
    try:
        duplicates = texters.send_all()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert texters.refused == []
    assert kills, "nothing was killed"
    assert not [kill for kill in kills if isinstance(kill, Exception)], kills
    return duplicates, kills


@dataclass(frozen=True)
class Outcome:
    """The inbound messages stored (their ids), the replies each customer must get in order, and
    the replies sent more than once (how often)."""

    ids: list[str]
    expected: dict[str, list[str]]
    repeated: dict[str, int]


# Stops the processes (checking they stopped as they must) and says, from their logs, how many
# repeated sends they allow (sends in flight at a kill or timed out) and which MDR ids those were
# (None: the log did not name them).
Stop = Callable[[], tuple[int, set[int] | None]]


def check_promise(texters: Texters, fake: FakeTelnyx, read: Read, settle: float, stop: Stop) -> Outcome:
    """Every acknowledged message stored, handled once and answered once, in conversation order;
    a reply sent more than once only as often as the logs allow, each repeat a send they name."""
    stored = read("SELECT telnyx_id, text, from_number FROM mdrs WHERE direction = 'inbound' ORDER BY id")
    assert texters.acked == {sms_id for sms_id, _, _ in stored}  # 0 lost: every acknowledged message stored
    expected: dict[str, list[str]] = {}
    for _, text, customer in stored:
        mine = expected.setdefault(customer, [])
        mine.append(f"{text} #{len(mine) + 1}")
    every = {text for texts in expected.values() for text in texts}
    wait_for(lambda: every <= {r.json["body"] for r in fake.sent}, timeout=settle, interval=0.2)
    may_repeat, named = stop()

    sent = Counter(r.json["body"] for r in fake.sent)
    assert set(sent) == every  # no reply to a message that was not stored, none twice-handled
    repeated = {text: n for text, n in sent.items() if n > 1}
    assert sum(n - 1 for n in repeated.values()) <= may_repeat, (repeated, may_repeat, named)
    if repeated and named is not None:
        ids = ",".join(map(str, named))
        assert set(repeated) <= {text for (text,) in read(f"SELECT text FROM mdrs WHERE id IN ({ids})")}
    for customer, texts in expected.items():  # first deliveries in conversation order
        assert list(dict.fromkeys(r.json["body"] for r in fake.sent if r.json["to"] == customer)) == texts
    assert read("SELECT status, COUNT(*) FROM mdrs WHERE direction = 'inbound' GROUP BY status") == [
        ("handled", len(stored))
    ]
    assert read("SELECT COUNT(*) FROM mdrs WHERE direction = 'outbound'") == [(len(every),)]
    return Outcome([sms_id for sms_id, _, _ in stored], expected, repeated)
