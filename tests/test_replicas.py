"""Several replicas on one database (several stores, as several processes or machines have):
migration once, claims that never share a unit and keep each lane's order, wake-ups, opt-outs
seen at once, a database newer than the code refused. On both engines."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from bot_core.messages import InboundMessage
from bot_core.store import HANDLED, SchemaTooNew, is_postgres, open_store
from bot_core.store.schema import MIGRATIONS, POSTGRES_MIGRATIONS

from .conftest import rows
from .inprocess import bot_core

OURS = "+13125550100"


def test_replicas_starting_together_migrate_once(database_url):
    barrier = threading.Barrier(4)

    def start(_: int) -> int:
        barrier.wait()
        store = open_store(database_url)
        try:
            return store.add_inbound(InboundMessage(f"m-{random.random()}", "hi", "+13125550123", OURS, "main"))
        finally:
            store.close()

    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(start, range(4)))
    assert len(set(ids)) == 4  # every replica started on the same, migrated schema
    store = open_store(database_url)
    try:
        if is_postgres(database_url):
            assert rows(store, "SELECT version FROM bot_core_schema") == [(len(POSTGRES_MIGRATIONS),)]
        else:
            assert rows(store, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    finally:
        store.close()


def test_replicas_claiming_at_once_never_share_a_unit_and_keep_each_conversations_order(database_url):
    store = open_store(database_url)
    customers = [f"+131255501{c:02d}" for c in range(8)]
    for i in range(15):
        for customer in customers:
            store.add_inbound(InboundMessage(f"{customer}-{i}", str(i), customer, OURS, "main"))
    store.close()
    handled: list[tuple[str, str, int]] = []  # (replica, customer, message number), in finishing order
    lock = threading.Lock()
    all_in = threading.Barrier(3)

    def replica(name: str) -> None:
        replica_store = open_store(database_url)
        try:
            idle, first = 0, True
            while idle < 20:
                claimed = replica_store.claim_inbound(name, 1 if first else 3, 60)
                if first:  # every replica holds a unit before any goes on: the work is spread
                    all_in.wait(60)
                    first = False
                idle = 0 if claimed else idle + 1
                for message in claimed:
                    with lock:
                        handled.append((name, message.from_number, int(message.text)))
                    replica_store.finish_inbound(message.mdr_id, status=HANDLED, owner=name)
        finally:
            replica_store.close()

    threads = [threading.Thread(target=replica, args=(f"replica-{r}",)) for r in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(handled) == 8 * 15 and len({(c, n) for _, c, n in handled}) == 8 * 15  # each once
    for customer in customers:
        assert [n for _, c, n in handled if c == customer] == list(range(15))  # in order, whoever handled it
    assert len({r for r, _, _ in handled}) > 1  # the work was spread over the replicas


def test_an_opt_out_taken_by_one_replica_holds_on_every_replica_at_once(database_url):
    first, second = open_store(database_url), open_store(database_url)
    try:
        assert not second.is_opted_out("main", "+13125550177")
        first.set_opted_out("main", "+13125550177", True, "STOP")
        assert second.is_opted_out("main", "+13125550177")
    finally:
        first.close()
        second.close()


def test_a_replica_is_woken_when_another_one_commits_work(postgres_url):
    listener, writer = open_store(postgres_url), open_store(postgres_url)
    woken = threading.Event()
    try:
        listener.listen(woken.set)
        assert woken.wait(10)  # once when it starts listening: work committed meanwhile
        woken.clear()
        writer.add_inbound(InboundMessage("wake-1", "hi", "+13125550123", OURS, "main"))
        assert woken.wait(10)
    finally:
        listener.close()
        writer.close()


def test_a_notification_names_the_replica_that_made_the_work(postgres_url):
    """So that a replica's listener skips its own: that work has woken its loops already."""
    first, second = open_store(postgres_url), open_store(postgres_url)
    try:
        with psycopg.connect(postgres_url, autocommit=True) as spy:
            spy.execute(f'LISTEN "{first.channel}"')
            first.add_inbound(InboundMessage("own-1", "hi", "+13125550123", OURS, "main"))
            first.add_inbound(InboundMessage("own-1", "hi", "+13125550123", OURS, "main"))  # a duplicate: no work
            second.add_inbound(InboundMessage("other-1", "hi", "+13125550124", OURS, "main"))
            payloads = [n.payload for n in spy.notifies(timeout=10, stop_after=2)]
        assert payloads[0] != payloads[1] and "" not in payloads
        woken = threading.Event()
        first.listen(woken.set)
        assert woken.wait(10)  # once when it starts listening
        woken.clear()
        second.add_inbound(InboundMessage("other-2", "hi", "+13125550124", OURS, "main"))
        assert woken.wait(10)  # another replica's work wakes it
    finally:
        first.close()
        second.close()


def test_a_database_newer_than_the_code_is_refused_and_check_reports_it(database_url, tmp_path):
    open_store(database_url).close()
    if is_postgres(database_url):
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("UPDATE bot_core_schema SET version = version + 1")
    else:
        conn = sqlite3.connect(database_url)
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
        conn.close()
    with pytest.raises(SchemaTooNew, match="upgrade bot-core"):
        open_store(database_url)
    config = tmp_path / "bot.toml"
    config.write_text(f'[bot]\ndatabase = "{database_url}"\n\n[profiles.main]\nsecret = "s"\nnumbers = ["{OURS}"]\n')
    check = bot_core("check", "--config", str(config))
    assert check.returncode == 1 and "migrated by a newer bot-core" in check.stderr
    send = bot_core("messages", "--config", str(config))
    assert send.returncode == 1 and "upgrade bot-core" in send.stderr and "Traceback" not in send.stderr


def test_check_reads_the_database_without_creating_it(database_url, tmp_path):
    config = tmp_path / "bot.toml"
    config.write_text(f'[bot]\ndatabase = "{database_url}"\n\n[profiles.main]\nsecret = "s"\nnumbers = ["{OURS}"]\n')
    check = bot_core("check", "--config", str(config))
    assert check.returncode == 0, check.stderr
    assert is_postgres(database_url) or not Path(database_url).exists()
    if is_postgres(database_url):
        with psycopg.connect(database_url) as conn:  # no table created either
            assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()").fetchone() == (0,)


def test_an_unreachable_postgresql_is_a_clear_error_without_the_password(tmp_path):
    config = tmp_path / "bot.toml"
    url = "postgresql://bot:hunter2-secret@127.0.0.1:1/bot"  # nothing listens on port 1
    config.write_text(f'[bot]\ndatabase = "{url}"\n\n[profiles.main]\nsecret = "s"\nnumbers = ["{OURS}"]\n')
    # Each waits out the pool's connect timeout (PostgreSQL may be starting): all three at once.
    # serve on a port of the system's choosing: another test's server may hold the default one.
    processes = [subprocess.Popen([sys.executable, "-m", "bot_core", *command, "--config", str(config)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for command in (["check"], ["messages"], ["serve", "--port", "0"])]  # fmt: skip
    for process in processes:
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == 1 and "127.0.0.1:1/bot" in stderr, stderr
        assert "hunter2" not in stdout + stderr and "Traceback" not in stderr
