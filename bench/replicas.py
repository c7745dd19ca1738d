"""Figure 6 of bench/run.py: end to end on one and two processes, SQLite beside PostgreSQL.

Four set-ups in one run, each on an empty database: ``bot-core serve`` on a SQLite file,
``serve --workers 2`` on it (two processes on one port), one replica on PostgreSQL, two
replicas on the same PostgreSQL database (as on two machines behind a load balancer: the load
is split between them, each customer always to the same one, one load generator each). Printed per set-up: the burst's replies/s
(webhook in to reply received by the fake Telnyx) and the acknowledgement p99 during it.

PostgreSQL comes from ``BOT_CORE_BENCH_POSTGRES`` (default: the test server,
postgresql://postgres@127.0.0.1:5432/postgres); each set-up gets a schema of its own, dropped
after. Without a server the PostgreSQL rows say so and the SQLite rows still print.
"""

from __future__ import annotations

import argparse
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from load import Plan, Result, run_in_process
from seed import OUR_NUMBER
from services import Fake, Process, start_server

POSTGRES = os.environ.get("BOT_CORE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
BOUNDS = """\
  What bounds these figures: every process here (the servers, the load generators, the fake
  Telnyx, and PostgreSQL itself) shares this machine's cores, so a second process adds CPU
  contention as much as capacity; on SQLite the file's one write lock serialises the writes of
  both processes; on PostgreSQL each unit costs network round trips to the database (claim,
  finish, send start, sent) that SQLite does in-process, and the claims of all replicas take
  turns on one advisory lock. The fake Telnyx answers in about a millisecond; a real one adds
  its latency to each send but not to the acknowledgements."""


def figure_6(report: Any, work: Path, fake: Fake, args: argparse.Namespace, senders: list[str],
             config_text: Any, secret: str) -> None:  # fmt: skip
    postgres_error = _postgres_error()
    for engine, processes in (("sqlite", 1), ("sqlite", 2), ("postgres", 1), ("postgres", 2)):
        label = (f"SQLite, serve --workers {processes}" if engine == "sqlite"
                 else f"PostgreSQL, {processes} replica{'s' * (processes > 1)}")  # fmt: skip
        if engine == "postgres" and postgres_error:
            report.line(label, f"skipped: no PostgreSQL at {POSTGRES} ({postgres_error})")
            continue
        directory = work / f"replicas-{engine}-{processes}"
        directory.mkdir()
        schema = f"bench_{secrets.token_hex(4)}" if engine == "postgres" else None
        if schema:
            _admin(f"CREATE SCHEMA {schema}")
            separator = "&" if "?" in POSTGRES else "?"
            database = f"{POSTGRES}{separator}options={quote(f'-csearch_path={schema}', safe='')}"
        else:
            database = str(directory / "bot.db")
        (directory / "bot.toml").write_text(
            config_text(fake.url).replace('database = "bot.db"', f'database = "{database}"')
        )
        servers: list[Process] = []
        try:
            if engine == "sqlite":  # one server, its workers on one port
                servers = [start_server(directory / "bot.toml", directory / "server-0.log", processes)]
                _wait_for_workers(directory / "server-0.log", processes)
            else:
                servers = [
                    start_server(directory / "bot.toml", directory / f"server-{i}.log") for i in range(processes)
                ]
            _run(report, label, servers, fake, args, senders, secret, f"{engine[0]}{processes}")
        finally:
            for server in servers:
                server.stop()
            if schema:
                _admin(f"DROP SCHEMA {schema} CASCADE")
    print(BOUNDS)


def _run(report: Any, label: str, servers: list[Process], fake: Fake, args: argparse.Namespace,
         senders: list[str], secret: str, tag: str) -> None:  # fmt: skip
    n = len(servers)
    shares = [senders[i::n] for i in range(n)]
    warm = [Plan(s.port, secret, OUR_NUMBER, shares[i], 300 // n, concurrency=8, prefix=f"w{tag}{i}")
            for i, s in enumerate(servers)]  # fmt: skip
    _parallel(warm)
    fake.wait_for(300 // n * n, 120)
    fake.take()
    plans = [Plan(s.port, secret, OUR_NUMBER, shares[i], args.replica_messages // n, args.concurrency // n,
                  prefix=f"b{tag}{i}") for i, s in enumerate(servers)]  # fmt: skip
    results = _parallel(plans)
    expected = sum(p.count for p in plans)
    if not fake.wait_for(expected, 300):
        report.line("", f"only {fake.count()} of {expected} replies arrived")
    replies = fake.take()
    started = min(r.started for r in results)
    rate = len(replies) / (max(at for at, _ in replies) - started)
    latencies = sorted(x for r in results for x in r.latency)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    bad = sum(1 for r in results for s in r.status if s != 200)
    report.figures[f"replicas-{tag}"] = rate
    report.line(
        label, f"{rate:8.0f} replies/s   ack p99 {p99 * 1000:7.1f} ms" + (f"   ({bad} not 200!)" if bad else "")
    )


def _wait_for_workers(log: Path, workers: int) -> None:
    deadline = time.monotonic() + 60
    while log.read_text(errors="replace").count("bot-core started") < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the {workers} workers did not start; see {log}")
        time.sleep(0.1)


def _parallel(plans: list[Plan]) -> list[Result]:
    results: list[Result | None] = [None] * len(plans)

    def one(i: int) -> None:
        results[i] = run_in_process(plans[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(plans))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [r for r in results if r is not None]


def _postgres_error() -> str | None:
    import psycopg

    try:
        psycopg.connect(POSTGRES, connect_timeout=3).close()
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0]
    return None


def _admin(statement: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(statement)
