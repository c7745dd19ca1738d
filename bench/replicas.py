"""Figure 6 of bench/run.py: end to end on one and two processes, SQLite beside PostgreSQL.

Four set-ups in one run, each on an empty database: ``bot-core serve`` on a SQLite file,
``serve --workers 2`` on it (two processes on one port), one replica on PostgreSQL, two
replicas on the same PostgreSQL database (as on two machines behind a load balancer: the load
is split between them, each customer always to the same one). Printed per set-up: the burst's
replies/s (webhook in to reply received by the fake Telnyx) and the acknowledgement p99 during
it, then what bounds them: the CPU each process used during the burst (from /proc), beside the
machine's cores.

All servers start at once, before the first set-up runs (a start-up is mostly imports: CPU that
two cores share better side by side than in turn); those waiting for their turn idle, and their
CPU is shown. One fake Telnyx and one load generator process serve every set-up; each set-up
is warmed up first (not counted).

PostgreSQL comes from ``BOT_CORE_BENCH_POSTGRES`` (default: the test server,
postgresql://postgres@127.0.0.1:5432/postgres); each set-up gets a schema of its own, dropped
after. Without a server the PostgreSQL rows say so and the SQLite rows still print.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from load import Plan
from seed import OUR_NUMBER
from services import Fake, LoadGenerator, Process, cpu_seconds, machine_busy, start_server

from bot_core.testing.postgres import schema_of_its_own, unreachable

POSTGRES = os.environ.get("BOT_CORE_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
WARM_UP = 200  # webhooks per set-up before its burst, split between its processes
CORES = os.cpu_count() or 1
BOUNDS = """\
  How to read the bounds: every process here (the servers, the load generator, the fake Telnyx,
  and PostgreSQL itself) shares this machine's cores, so a second server process adds CPU
  contention as much as capacity. Where the cores are near full, the figure is the machine's, not
  bot-core's. Where they are not, it is bounded by waits: on SQLite the file's one write lock
  serialises the writes of both workers; on PostgreSQL each unit costs round trips to the
  database (claim, finish, send start, sent) that SQLite does in-process, and the claims of all
  replicas take turns on one advisory lock. The fake Telnyx answers in about a millisecond; a
  real one adds its latency to each send but not to the acknowledgements."""


@dataclass
class SetUp:
    """One row: its servers (one process, a supervisor and its workers, or replicas)."""

    label: str
    tag: str
    engine: str
    processes: int
    directory: Path
    database: str = ""
    servers: list[Process] = field(default_factory=list)


def figure_6(report: Any, work: Path, fake: Fake, args: argparse.Namespace, senders: list[str],
             config_text: Callable[[str], str], secret: str) -> None:  # fmt: skip
    began = time.monotonic()
    postgres_error = unreachable(POSTGRES)
    setups = []
    for engine, processes in (("sqlite", 1), ("sqlite", 2), ("postgres", 1), ("postgres", 2)):
        label = (f"SQLite, serve --workers {processes}" if engine == "sqlite"
                 else f"PostgreSQL, {processes} replica{'s' * (processes > 1)}")  # fmt: skip
        if engine == "postgres" and postgres_error:
            report.line(label, f"skipped: no PostgreSQL at {POSTGRES} ({postgres_error})")
            continue
        directory = work / f"replicas-{engine}-{processes}"
        directory.mkdir()
        setups.append(SetUp(label, f"{engine[0]}{processes}", engine, processes, directory))
    generator = LoadGenerator()
    with ExitStack() as stack:
        stack.callback(generator.stop)
        for setup in setups:
            setup.database = (stack.enter_context(schema_of_its_own(POSTGRES, "bench")) if setup.engine == "postgres"
                              else str(setup.directory / "bot.db"))  # fmt: skip
            (setup.directory / "bot.toml").write_text(
                config_text(fake.url).replace('database = "bot.db"', f'database = "{setup.database}"')
            )
        _start_all(setups, stack)
        report.line("all servers started in", f"{time.monotonic() - began:8.1f} s")
        for setup in setups:
            _run(report, setup, [s for s in setups if s is not setup], fake, generator, args, senders, secret)
            for server in setup.servers:
                server.stop()
    report.line("figure 6 took", f"{time.monotonic() - began:8.1f} s")
    print(BOUNDS)


def _start_all(setups: list[SetUp], stack: ExitStack) -> None:
    """Every set-up's servers at once; each stopped on leaving ``stack`` if still running."""

    def start(setup: SetUp, i: int) -> Process:
        config, log = setup.directory / "bot.toml", setup.directory / f"server-{i}.log"
        if setup.engine == "sqlite":  # one server, its workers on one port
            server = start_server(config, log, setup.processes)
            _wait_for_workers(log, setup.processes)
            return server
        return start_server(config, log)

    jobs = [(setup, i) for setup in setups for i in range(1 if setup.engine == "sqlite" else setup.processes)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [(setup, pool.submit(start, setup, i)) for setup, i in jobs]
    for setup, future in futures:  # every start has ended: keep each server to stop, then raise any failure
        if future.exception() is None:
            setup.servers.append(future.result())
            stack.callback(_stop_quietly, future.result())
    for _, future in futures:
        future.result()


def _run(report: Any, setup: SetUp, waiting: list[SetUp], fake: Fake, generator: LoadGenerator,
         args: argparse.Namespace, senders: list[str], secret: str) -> None:  # fmt: skip
    servers, tag = setup.servers, setup.tag
    n = len(servers)
    shares = [senders[i::n] for i in range(n)]  # each customer always to the same server
    generator.run([Plan(s.port, secret, OUR_NUMBER, shares[i], WARM_UP // n, concurrency=8, prefix=f"w{tag}{i}")
                   for i, s in enumerate(servers)])  # fmt: skip
    fake.wait_for(WARM_UP // n * n, 120)
    fake.take()
    plans = [Plan(s.port, secret, OUR_NUMBER, shares[i], args.replica_messages // n, args.concurrency // n,
                  prefix=f"b{tag}{i}") for i, s in enumerate(servers)]  # fmt: skip
    idle = [server for other in waiting for server in other.servers if server.process and server.process.poll() is None]
    cpu = Snapshot.take(servers, generator, fake, idle)
    results = generator.run(plans)
    expected = sum(p.count for p in plans)
    if not fake.wait_for(expected, 120):
        report.line("", f"only {fake.count()} of {expected} replies arrived")
    used = Snapshot.take(servers, generator, fake, idle) - cpu
    arrivals: dict[str, float] = {}
    for at, body in fake.take():  # a reply Telnyx received twice counts once, at its first arrival
        arrivals.setdefault(body, at)
    if not arrivals:
        report.line(setup.label, "no reply arrived")
        return
    started = min(r.started for r in results)
    elapsed = max(arrivals.values()) - started
    rate = len(arrivals) / elapsed
    latencies = sorted(x for r in results for x in r.latency)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    bad = sum(1 for r in results for s in r.status if s != 200)
    report.figures[f"replicas-{tag}"] = rate
    report.line(setup.label, f"{rate:8.0f} replies/s   ack p99 {p99 * 1000:7.1f} ms   ({len(arrivals)} in"
                             f" {elapsed:.1f} s)" + (f"   ({bad} not 200!)" if bad else ""))  # fmt: skip
    report.line("", used.bounds(setup, len(arrivals)))


def _stop_quietly(server: Process) -> None:
    if server.process is not None and server.process.poll() is None:
        server.stop()


@dataclass(frozen=True)
class Snapshot:
    """CPU seconds used so far by each process of a set-up and by the whole machine (/proc)."""

    wall: float
    servers: dict[int, float]  # per server process (a supervisor and each worker apart), by pid
    generator: float
    fake: float
    postgres: float
    idle: float  # servers of set-ups waiting for their turn
    machine: float  # busy CPU seconds of all cores, every process on the machine

    @staticmethod
    def take(servers: list[Process], generator: LoadGenerator, fake: Fake, idle: list[Process]) -> Snapshot:
        pids = [pid for server in servers for pid in server.pids()]
        return Snapshot(time.monotonic(), {pid: cpu_seconds(pid, reaped=True) for pid in pids},
                        cpu_seconds(generator.process.pid), cpu_seconds(fake.process.pid), _postgres_cpu(),
                        sum(server.cpu_seconds() for server in idle), machine_busy())  # fmt: skip

    def __sub__(self, before: Snapshot) -> Snapshot:
        servers = {pid: cpu - before.servers.get(pid, 0.0) for pid, cpu in self.servers.items()}
        return Snapshot(self.wall - before.wall, servers,
                        self.generator - before.generator, self.fake - before.fake, self.postgres - before.postgres,
                        self.idle - before.idle, self.machine - before.machine)  # fmt: skip

    def bounds(self, setup: SetUp, replies: int) -> str:
        """The cores each process kept busy on average during the burst, the CPU a reply cost the
        servers (and PostgreSQL), and what that says bounds the figure."""
        cores = [s / self.wall for s in self.servers.values()]
        postgres = self.postgres if setup.engine == "postgres" else 0.0  # else another's, if any
        ours = sum(self.servers.values()) + self.generator + self.fake + postgres + self.idle
        other = max(0.0, self.machine - ours) / self.wall
        busy = self.machine / self.wall
        parts = [f"server{'s' * (len(cores) > 1)} {'+'.join(f'{c:.2f}' for c in cores if c >= 0.005)}",
                 f"load generator {self.generator / self.wall:.2f}", f"fake Telnyx {self.fake / self.wall:.2f}"]  # fmt: skip
        if setup.engine == "postgres":
            parts.append(f"PostgreSQL (all clients) {postgres / self.wall:.2f}")
        parts += [f"idle servers {self.idle / self.wall:.2f}", f"other processes {other:.2f}"]
        if busy >= 0.9 * CORES:
            verdict = f"CPU: the machine's {CORES} cores are full" + (
                f", {other:.2f} of them by other processes: a figure of a busy machine, rerun on a quiet one"
                if other >= 0.2 else "")  # fmt: skip
        elif max(cores) >= 0.9:
            verdict = "CPU of one server process (one Python thread runs at a time)"
        else:
            verdict = ("waits, not CPU: the SQLite write lock" if setup.engine == "sqlite"
                       else "waits, not CPU: round trips to PostgreSQL and its claim lock")  # fmt: skip
        cost = f"CPU a reply: servers {sum(self.servers.values()) / replies * 1000:.2f} ms" + (
            f", PostgreSQL {postgres / replies * 1000:.2f} ms" if postgres else "")  # fmt: skip
        indent = f"\n  {'':<44} "
        return f"cores busy {busy:.2f} of {CORES}: {', '.join(parts)}{indent}{cost}{indent}bound: {verdict}"


def _postgres_cpu() -> float:
    """CPU seconds of every PostgreSQL process (the postmaster's reaped children included); 0
    where PostgreSQL runs elsewhere or its processes are not visible."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().startswith("postgres"):
                    total += cpu_seconds(int(entry.name), reaped=True)
            except OSError:
                continue
    return total


def _wait_for_workers(log: Path, workers: int) -> None:
    deadline = time.monotonic() + 60
    while log.read_text(errors="replace").count("bot-core started") < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the {workers} workers did not start; see {log}")
        time.sleep(0.1)
