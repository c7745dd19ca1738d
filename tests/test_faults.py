"""Faults that pass while the server keeps running: a full disk, a lock held by another process,
a plugin that never returns. Real processes, a real SQLite file, the faults injected for real.

After each one, with no restart: every acknowledged message is handled once and answered once,
in conversation order; what could not be stored was answered 503, so Telnyx delivers it again.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from bot_core.webhooks import sign_v1

from .conftest import wait_for
from .test_crash import SECRET, config_text, rows, webhook

OURS = "+13125550100"


class Texter:
    """Customers texting in threads, as Telnyx would: a webhook answered 503 (or not answered)
    is delivered again a little later until it is taken. Records every answer and its latency."""

    def __init__(self, server, customers: list[str], per_customer: int) -> None:
        self.server = server
        self.customers = customers
        self.per_customer = per_customer
        self.answers: list[tuple[str, int, float]] = []  # (sms id, status, seconds)
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._text, args=(c,)) for c in customers]

    def start(self) -> Texter:
        for thread in self.threads:
            thread.start()
        return self

    def join(self, timeout: float = 120) -> None:
        for thread in self.threads:
            thread.join(timeout)
        assert not any(t.is_alive() for t in self.threads), "some webhooks were never taken"

    def _text(self, customer: str) -> None:
        deadline = time.monotonic() + 120
        with httpx.Client(timeout=10) as client:
            for i in range(self.per_customer):
                sms_id = f"{customer}-{i}"
                body, headers = webhook(f"{customer[-2:]}m{i}", sms_id, customer)
                while time.monotonic() < deadline:
                    started = time.monotonic()
                    response = client.post(self.server.url + "/webhooks/telnyx", content=body,
                                           headers={"content-type": "application/json", **headers})  # fmt: skip
                    with self.lock:
                        self.answers.append((sms_id, response.status_code, time.monotonic() - started))
                    if response.status_code == 200:
                        break
                    assert response.status_code == 503, response.text
                    time.sleep(0.2)  # Telnyx's retry, much sooner

    def statuses(self) -> Counter:
        return Counter(status for _, status, _ in self.answers)


def assert_each_answered_once_in_order(database: Path, fake, customers: list[str], tmp_path: Path) -> None:
    """Every stored message handled once (one plugin call), each reply sent once, in order."""
    stored = rows(database, "SELECT telnyx_id, text, from_number FROM mdrs WHERE direction = 'inbound' ORDER BY id")
    expected: dict[str, list[str]] = {}
    for customer in customers:
        mine = [text for _, text, sender in stored if sender == customer]
        expected[customer] = [f"{text} #{n}" for n, text in enumerate(mine, 1)]
    total = sum(map(len, expected.values()))
    wait_for(lambda: len(fake.sent) >= total, timeout=60)
    for customer in customers:
        assert [r.json["body"] for r in fake.sent if r.json["to"] == customer] == expected[customer]
    assert len(fake.sent) == total
    calls = Counter((tmp_path / "calls.txt").read_text().split())
    assert set(calls) == {sms_id for sms_id, _, _ in stored} and set(calls.values()) == {1}
    # Telnyx's answers are recorded a moment after it took the messages.
    wait_for(lambda: rows(database, "SELECT COUNT(*) FROM mdrs WHERE status NOT IN ('handled', 'queued')") == [(0,)])
    assert rows(database, "PRAGMA integrity_check") == [("ok",)]


def health(server) -> int:
    return httpx.get(server.url + "/healthz", timeout=10).status_code


# -- a full disk ------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 16 MB tmpfs of the test's own, to fill up."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mountpoint)],
                            capture_output=True, text=True)  # fmt: skip
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {result.stderr.strip()}")
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(directory: Path) -> Path:
    """Take every free byte of the filesystem ``directory`` is on."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9):
            while True:
                try:
                    os.write(fd, bytes(size))
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler


def test_a_disk_full_during_a_burst_loses_nothing_and_needs_no_restart(server_factory, fake_telnyx_server,
                                                                        tmp_path, small_disk):  # fmt: skip
    fake = fake_telnyx_server
    text = config_text(tmp_path, fake.url).replace('database = "bot.db"', f'database = "{small_disk / "bot.db"}"')
    server = server_factory(text).start()
    pid = server.process.pid
    customers = [f"+131255503{i:02d}" for i in range(8)]
    filler = fill(small_disk)
    texter = Texter(server, customers, 12).start()
    wait_for(lambda: texter.statuses()[503] >= 5, timeout=30)  # the fault is real: webhooks refused
    assert health(server) == 503
    filler.unlink()  # space returns
    texter.join()
    wait_for(lambda: health(server) == 200)
    assert_each_answered_once_in_order(small_disk / "bot.db", fake, customers, tmp_path)
    assert server.process.pid == pid and server.process.poll() is None  # no restart
    acked = {sms_id for sms_id, status, _ in texter.answers if status == 200}
    assert acked == {f"{c}-{i}" for c in customers for i in range(12)}
    server.stop()


# -- a lock held by another process -----------------------------------------------------------

LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


def held_lock(server_factory, fake, tmp_path: Path, hold: float) -> None:
    server = server_factory(config_text(tmp_path, fake.url)).start()
    database = tmp_path / "bot.db"
    # Three replies whose answers arrive during the hold: recorded afterwards, never sent again.
    fake.stall(1.0, times=3)
    for i in range(3):
        assert server.post(*webhook(f"early{i}", f"early-{i}", f"+13125550{400 + i}")).status_code == 200
    wait_for(lambda: len(fake.requests) == 3)
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(database), str(hold)], stdout=subprocess.PIPE, text=True
    )
    assert locker.stdout.readline().strip() == "locked"
    locked_at = time.monotonic()
    customers = [f"+131255504{i:02d}" for i in range(4)]
    texter = Texter(server, customers, 6).start()
    health_during = []
    while time.monotonic() - locked_at < hold - 2.5:  # a check that starts and ends inside the hold
        health_during.append(health(server))
        time.sleep(0.3)
    assert locker.wait(hold + 10) == 0
    locker.stdout.close()
    texter.join()
    wait_for(lambda: health(server) == 200)
    assert health_during and set(health_during) == {503}
    assert max(seconds for _, _, seconds in texter.answers) < 2.0  # Telnyx waits 2 s at most
    assert texter.statuses()[503] > 0
    assert_each_answered_once_in_order(database, fake, [f"+13125550{400 + i}" for i in range(3)] + customers,
                                       tmp_path)  # fmt: skip
    early = rows(database, "SELECT status FROM mdrs WHERE direction = 'outbound' AND text LIKE 'early%'")
    assert early == [("queued",)] * 3  # their answers were recorded once the lock was gone
    if hold > 2 * 5:  # past two busy timeouts (5 s): recording an answer did fail, and was retried
        assert "cannot write to the database" in server.log
    server.stop()


def test_a_write_lock_held_by_another_process_is_answered_503_within_2s(server_factory, fake_telnyx_server, tmp_path):
    held_lock(server_factory, fake_telnyx_server, tmp_path, hold=8.0)


@pytest.mark.slow
def test_a_write_lock_held_for_40s_is_answered_503_within_2s(server_factory, fake_telnyx_server, tmp_path):
    held_lock(server_factory, fake_telnyx_server, tmp_path, hold=40.0)


# -- a delivery_status hook that never returns ------------------------------------------------

STUCK_PLUGIN = """
import asyncio
from pathlib import Path
from bot_core import hookimpl

@hookimpl
async def delivery_status(status, bot):
    Path(bot.config.bot.database).with_name("hook-started").touch()
    while True:  # never returns, and shrugs off every cancellation
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass
"""


def test_sigterm_exits_within_the_grace_whatever_a_delivery_status_hook_does(server_factory, fake_telnyx_server,
                                                                             tmp_path):  # fmt: skip
    text = config_text(tmp_path, fake_telnyx_server.url, 'shutdown_grace = "2s"\nplugin_timeout = "1h"')
    (tmp_path / "plugins").mkdir(exist_ok=True)
    (tmp_path / "plugins" / "stuck.py").write_text(STUCK_PLUGIN)
    server = server_factory(text.replace('plugins = ["gated"]', 'plugins = ["gated", "stuck"]')).start()
    body = json.dumps({"sms_id": "out-1", "status": "delivered", "delivery_status": "delivered",
                       "msg": {"src": OURS, "dst": "+13125550131", "body": "hi"}}).encode()  # fmt: skip
    assert server.post(body, {"X-Telnyx-Signature": sign_v1(body, SECRET)}).status_code == 200
    wait_for(lambda: (tmp_path / "hook-started").exists())
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(2 + 5)
    assert time.monotonic() - started < 2 + 5
    # The status owes its hook call still: it was cut off, so the next start makes it again.
    assert rows(tmp_path / "bot.db", "SELECT hook FROM delivery_events") == [("pending",)]


def test_a_killed_process_leaves_its_claims_to_the_next_at_once(server_factory, fake_telnyx_server, tmp_path):
    """kill -9 mid-handling: the successor on this host sees the pid gone and takes the work over
    at once, not when the 60 s lease runs out."""
    fake = fake_telnyx_server
    (tmp_path / "gate").touch()
    server = server_factory(config_text(tmp_path, fake.url)).start()
    assert server.post(*webhook("block me", "k-1", "+13125550131")).status_code == 200
    wait_for(lambda: (tmp_path / "started").exists())
    server.stop(signal.SIGKILL)
    (tmp_path / "gate").unlink()
    started = time.monotonic()
    server.start()
    wait_for(lambda: [r.json["body"] for r in fake.sent] == ["block me #1"], timeout=20)
    assert time.monotonic() - started < 20  # far under the lease
    assert "is gone; taking over its work" in server.log
    server.stop()


def test_the_sigterm_drain_includes_delivery_status_hooks(server_factory, fake_telnyx_server, tmp_path):
    """A hook call in flight at SIGTERM finishes within the grace and is recorded done."""
    plugin = STUCK_PLUGIN.replace("while True:", "for _ in range(1):").replace("3600", "1")
    (tmp_path / "plugins").mkdir(exist_ok=True)
    (tmp_path / "plugins" / "stuck.py").write_text(plugin)
    text = config_text(tmp_path, fake_telnyx_server.url, 'shutdown_grace = "5s"')
    server = server_factory(text.replace('plugins = ["gated"]', 'plugins = ["gated", "stuck"]')).start()
    body = json.dumps({"sms_id": "out-1", "status": "delivered", "delivery_status": "delivered",
                       "msg": {"src": OURS, "dst": "+13125550131", "body": "hi"}}).encode()  # fmt: skip
    assert server.post(body, {"X-Telnyx-Signature": sign_v1(body, SECRET)}).status_code == 200
    wait_for(lambda: (tmp_path / "hook-started").exists())
    assert server.stop() in (0, -signal.SIGTERM)
    assert rows(tmp_path / "bot.db", "SELECT hook, hook_error FROM delivery_events") == [("done", None)]
    assert "grace ran out" not in server.log
