"""bot-core benchmark: prints figures for this machine. Not a test; nothing here asserts.

    python bench/run.py                      # a few minutes
    python bench/run.py --mdrs 1000000 --conversations 100000   # the large-database case
    python bench/run.py --only 2 --messages 50000               # one figure, a longer burst
    python bench/run.py --only 2 --rounds 3                     # fewer rounds of --workers 1 and 2

It starts the real server (``bot-core serve``, uvicorn), a fake Telnyx and a bare
Starlette+SQLite endpoint, each in a process of its own on loopback, drives them with a raw
HTTP/1.1 load generator in another process, and prints:

1. webhook acknowledgements/s and ack latency of a burst, beside the bare floor, with every
   plugin call parked so that only the webhook path uses the CPU;
2. end to end (webhook in, reply received by the fake Telnyx): a burst's replies/s, the ack
   latency during it, the CPU time per message of the server and of the harness (load generator,
   fake Telnyx, this script), how busy the cores were, then (first round) latency at a fixed
   offered rate; ``--rounds`` rounds, each once per ``--workers`` value (``serve --workers 1``
   and ``--workers 2`` by default), alternated;
3. ack latency while a plugin awaits 1 s per message across 200 conversations;
4. figures 1 and 2 again with a large database, and the server's peak RSS;
5. side by side: end-to-end replies/s with 2 workers against 1 (each round's and the median),
   the webhook path against the bare floor (both on the same uvicorn stack: uvloop and httptools
   when installed), and the worst ack p99 of the bursts that ran with handling and sending;
6. end to end and ack p99 on one and two processes, SQLite workers beside PostgreSQL replicas
   (bench/replicas.py).

The load generator and the fake Telnyx run on the same machine as the server and share its
cores: on a 2-core machine, ``--workers 2`` competes with them. Both are kept lean for that (raw
HTTP/1.1 requests signed beforehand; bench/lean_telnyx.py rather than FakeTelnyx, about a
third of its CPU per send), and figure 2 prints what they cost per message.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import astuple, dataclass
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).parent))

from load import Plan, Result, run_in_process  # noqa: E402
from replicas import figure_6  # noqa: E402
from seed import OUR_NUMBER, customer, seed  # noqa: E402
from services import (  # noqa: E402
    Fake,
    LoadGenerator,
    Process,
    connections,
    cpu_seconds,
    machine_busy,
    start_bare,
    start_server,
)

SECRET = "bench-secret"
# Figure 1 measures the webhook path alone: each plugin call waits for the whole burst, so no
# handling or sending competes with the acknowledgements for the CPU.
PARKED_PLUGIN = """
import asyncio
from bot_core import hookimpl

@hookimpl
async def handle_message(message):
    await asyncio.Event().wait()
"""
SLOW_PLUGIN = """
import asyncio
from bot_core import hookimpl

@hookimpl
async def handle_message(message):
    await asyncio.sleep(1)  # an HTTP call to some slow service
    return "slow " + message.text
"""


def config_text(fake_url: str, plugins: str = '["echo"]', plugins_dir: str | None = None) -> str:
    extra = f'plugins_dir = "{plugins_dir}"\nplugin_timeout = "1h"\nshutdown_grace = "1s"\n' if plugins_dir else ""
    return f"""
[bot]
database = "bot.db"
{extra}
[telnyx]
api_base = "{fake_url}"

[profiles.bench]
secret = "{SECRET}"
numbers = ["{OUR_NUMBER}"]
plugins = {plugins}
"""


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else float("nan")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


class Report:
    """Prints figures as they come and keeps them for the comparisons at the end."""

    def __init__(self) -> None:
        self.figures: dict[str, float] = {}
        self.splits: dict[str, str] = {}  # how a burst's connections were dealt to the workers

    def line(self, label: str, text: str) -> None:
        print(f"  {label:<44} {text}", flush=True)

    def acks(self, key: str, label: str, result: Result) -> float:
        bad = sum(1 for s in result.status if s != 200)
        elapsed = result.finished - result.started
        rate = len(result.status) / elapsed
        self.figures[key] = rate
        self.line(label, f"{rate:8.0f} acks/s   p50 {ms(percentile(result.latency, .5))}"
                         f"   p99 {ms(percentile(result.latency, .99))}" + (f"   ({bad} not 200!)" if bad else ""))  # fmt: skip
        return rate


def replies_latency(result: Result, replies: list[tuple[float, str]], prefix: str) -> list[float]:
    """Inbound due time to the reply's arrival at the fake Telnyx, per reply."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)")
    latencies = []
    for at, body in replies:
        match = pattern.search(body)
        if match:
            latencies.append(at - result.due[int(match[1])])
    return latencies


def bot_run(work: Path, name: str, fake: Fake, plugins: str = '["echo"]', workers: int = 1) -> Process:
    directory = work / name
    directory.mkdir(exist_ok=True)
    plugins_dir = None if plugins == '["echo"]' else str(work / "plugins")
    (directory / "bot.toml").write_text(config_text(fake.url, plugins, plugins_dir))
    return start_server(directory / "bot.toml", directory / "server.log", workers)


def burst(port: int, args: argparse.Namespace, senders: list[str]) -> Result:
    run_in_process(Plan(port, SECRET, OUR_NUMBER, senders, 500, concurrency=8, prefix="w"))  # warm-up
    return run_in_process(Plan(port, SECRET, OUR_NUMBER, senders, args.messages, args.concurrency))


def figure_1(report: Report, work: Path, fake: Fake, args: argparse.Namespace, senders: list[str], tag: str,
             database: Path | None = None) -> None:  # fmt: skip
    """Acknowledgements/s of the webhook path alone (plugins parked), beside the bare floor."""
    if "bare" not in report.figures:
        bare = start_bare(work / "bare.db", work / "bare.log")
        cpu0 = bare.cpu_seconds()
        result = burst(bare.port, args, senders)
        cpu = (bare.cpu_seconds() - cpu0) / (len(result.status) + 500)
        report.acks("bare", "bare Starlette + SQLite floor", result)
        report.line("", f"server CPU {cpu * 1e6:.0f} µs/webhook")
        bare.stop()
    directory = work / f"parked{tag}"
    directory.mkdir(exist_ok=True)
    if database is not None:
        shutil.copy(database, directory / "bot.db")
    server = bot_run(work, f"parked{tag}", fake, '["parked"]')
    cpu0 = server.cpu_seconds()
    result = burst(server.port, args, senders)
    cpu = (server.cpu_seconds() - cpu0) / (len(result.status) + 500)
    rate = report.acks(f"acks{tag}", "bot-core webhook path (plugins parked)", result)
    report.line("", f"server CPU {cpu * 1e6:.0f} µs/webhook; {rate / report.figures['bare']:.2f} of the floor")
    server.stop()


@dataclass(frozen=True)
class Usage:
    """CPU seconds used so far by the server under test, by each process of the harness (load
    generator, fake Telnyx, this script) and by the whole machine (all from /proc)."""

    wall: float
    server: float
    generator: float
    fake: float
    bench: float
    machine: float

    @staticmethod
    def take(server: Process, generator: LoadGenerator, fake: Fake) -> Usage:
        return Usage(time.monotonic(), server.cpu_seconds(), cpu_seconds(generator.process.pid),
                     cpu_seconds(fake.process.pid), cpu_seconds(os.getpid()), machine_busy())  # fmt: skip

    def __sub__(self, before: Usage) -> Usage:
        return Usage(*(a - b for a, b in zip(astuple(self), astuple(before), strict=True)))

    def harness(self) -> float:
        return self.generator + self.fake + self.bench


def figure_2(report: Report, work: Path, fake: Fake, generator: LoadGenerator, args: argparse.Namespace,
             senders: list[str], tag: str, database: Path | None = None, workers: int = 1,
             steady: bool = True) -> Process:  # fmt: skip
    """End to end: a burst through the whole pipeline, what it cost the server and the harness,
    then (with ``steady``) latency at a fixed offered rate."""
    directory = work / f"echo{tag}"
    directory.mkdir(exist_ok=True)
    if database is not None:
        shutil.copy(database, directory / "bot.db")
    server = bot_run(work, f"echo{tag}", fake, workers=workers)
    if workers > 1:  # every worker must be up before the burst, not just the first to answer
        deadline = time.monotonic() + 60
        while (directory / "server.log").read_text().count("bot-core started") < workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {workers} workers did not start; see {directory / 'server.log'}")
            time.sleep(0.1)
    generator.run([Plan(server.port, SECRET, OUR_NUMBER, senders, 500, concurrency=8, prefix="w")])
    fake.wait_for(500, 60)
    fake.take()
    before = Usage.take(server, generator, fake)
    split: list[int] = []  # the burst's connections held by each worker: the kernel deals them out
    [result] = generator.run([Plan(server.port, SECRET, OUR_NUMBER, senders, args.messages, args.concurrency)],
                             during=lambda: split.extend(connections(server.pids()[1:], server.port)))  # fmt: skip
    report.acks(f"acks-busy{tag}", "acks with handling and sending running", result)
    report.figures[f"ack-p99-busy{tag}"] = percentile(result.latency, 0.99)
    if not fake.wait_for(args.messages, 300):
        report.line("", f"only {fake.count()} of {args.messages} replies arrived")
    used = Usage.take(server, generator, fake) - before
    replies = first_arrivals(report, fake.take())
    rate = len(replies) / (max(at for at, _ in replies) - result.started)
    n = len(replies)
    report.figures[f"e2e{tag}"] = rate
    report.line("end to end, burst: replies/s", f"{rate:8.0f} replies/s   (server CPU {used.server / n * 1e6:.0f} µs/message,"
                                                f" {n / used.server:.0f} messages/s per server core)")  # fmt: skip
    report.line("harness CPU, the same burst", f"load generator {used.generator / n * 1e6:.0f} + fake Telnyx"
                f" {used.fake / n * 1e6:.0f} + this script {used.bench / n * 1e6:.0f} = {used.harness() / n * 1e6:.0f}"
                f" µs/message ({used.harness() / used.server:.0%} of the server's)")  # fmt: skip
    other = max(0.0, used.machine - used.server - used.harness())
    if workers > 1 and split:
        report.splits[tag] = " + ".join(map(str, split))
        report.line("connections per worker (1 s into the burst)", report.splits[tag])
    report.line("cores busy", f"{used.machine / used.wall:8.2f} of {os.cpu_count()}: server {used.server / used.wall:.2f},"
                f" harness {used.harness() / used.wall:.2f}, other processes {other / used.wall:.2f}")  # fmt: skip
    if steady:
        [result] = generator.run([Plan(server.port, SECRET, OUR_NUMBER, senders, int(args.rate * args.seconds),
                                       args.concurrency, rate=args.rate, prefix="r")])  # fmt: skip
        fake.wait_for(len(result.status), 60)
        latencies = replies_latency(result, first_arrivals(report, fake.take()), "r")
        report.figures[f"p99{tag}"] = percentile(latencies, 0.99)
        report.acks(f"acks-steady{tag}", f"acks at {args.rate:g} msgs/s", result)
        report.line(f"inbound-to-reply at {args.rate:g} msgs/s ({len(latencies)})",
                    f"p50 {ms(percentile(latencies, .5))}   p99 {ms(percentile(latencies, .99))}")  # fmt: skip
    return server


def first_arrivals(report: Report, replies: list[tuple[float, str]]) -> list[tuple[float, str]]:
    """Each reply once, at its first arrival; says how many Telnyx received more than once."""
    firsts: dict[str, float] = {}
    for at, body in replies:
        firsts.setdefault(body, at)
    if len(firsts) < len(replies):
        report.line("", f"!! {len(replies) - len(firsts)} replies reached the fake Telnyx more than once")
    return [(at, body) for body, at in firsts.items()]


def side_by_side(report: Report, work: Path, args: argparse.Namespace) -> None:
    """The comparisons issue 9 asks for, from the figures above."""
    figures = report.figures
    logs = sorted(work.glob("*/server.log"))
    stack = re.search(r"uvicorn [\d.]+, \w+, \w+", logs[0].read_text(errors="replace")) if logs else None
    report.line("server stack (bot-core and the floor alike)", stack[0] if stack else "unknown")
    rounds = [r for r in range(1, args.rounds + 1) if f"e2e-w1-r{r}" in figures and f"e2e-w2-r{r}" in figures]
    ratios = [figures[f"e2e-w2-r{r}"] / figures[f"e2e-w1-r{r}"] for r in rounds]
    for r, ratio in zip(rounds, ratios, strict=True):
        split = f"   (connections {report.splits[f'-w2-r{r}']})" if f"-w2-r{r}" in report.splits else ""
        report.line(f"end to end, round {r}: --workers 2 / --workers 1",
                    f"{figures[f'e2e-w2-r{r}']:8.0f} / {figures[f'e2e-w1-r{r}']:.0f} replies/s = {ratio:.2f}x{split}")  # fmt: skip
    if ratios:
        report.line(f"end to end: --workers 2 / --workers 1, median of {len(ratios)}", f"{median(ratios):8.2f}x")
    if "acks" in figures and "bare" in figures:
        report.line("ack path / bare floor (plugins parked)",
                    f"{figures['acks']:8.0f} / {figures['bare']:.0f} acks/s = {figures['acks'] / figures['bare']:.2f}x")  # fmt: skip
    for workers in args.workers:
        p99s = [value for key, value in figures.items() if key.startswith(f"ack-p99-busy-w{workers}-r")]
        if p99s:
            report.line(f"ack p99 in a burst, handling and sending (--workers {workers})",
                        f"{ms(max(p99s))}   (the worst of {len(p99s)} bursts)")  # fmt: skip
    print(
        "  (the load generator and the fake Telnyx run on the same cores as the server: with 2 cores,\n"
        "   --workers 2 shares them with both, so its gain is below what a dedicated host gives; and the\n"
        "   kernel deals the burst's 32 connections to the workers, unevenly at times: a worker with few\n"
        "   of them acknowledges few webhooks, and the one that stores a message is the first to claim it)"
    )


def figure_3(report: Report, work: Path, fake: Fake, args: argparse.Namespace, senders: list[str]) -> None:
    """Ack latency while every plugin call awaits 1 s, across 200 conversations."""
    server = bot_run(work, "slow", fake, '["slow"]')
    result = run_in_process(Plan(server.port, SECRET, OUR_NUMBER, senders[:200], int(args.rate * args.seconds),
                                 args.concurrency, rate=args.rate, prefix="s"))  # fmt: skip
    report.acks("acks-slow", f"acks at {args.rate:g} msgs/s", result)
    fake.wait_for(len(result.status), 120)
    latencies = replies_latency(result, fake.take(), "s")
    report.line(
        f"inbound-to-reply ({len(latencies)} replies)",
        f"p50 {ms(percentile(latencies, 0.5))}   p99 {ms(percentile(latencies, 0.99))}",
    )
    server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000, help="webhooks in a burst (figures 1, 2)")
    parser.add_argument("--concurrency", type=int, default=32, help="load generator connections")
    parser.add_argument("--senders", type=int, default=1000, help="customers (conversations) texting")
    parser.add_argument("--rate", type=float, default=200, help="offered msgs/s for latency figures")
    parser.add_argument("--seconds", type=float, default=10, help="duration of fixed-rate runs")
    parser.add_argument("--mdrs", type=int, default=200_000, help="MDRs in the large database (figure 4)")
    parser.add_argument("--conversations", type=int, default=20_000, help="conversations in the large database")
    parser.add_argument("--only", default="12346", help="figures to run, e.g. 12")
    parser.add_argument("--workers", type=lambda text: [int(n) for n in text.split(",")], default=[1, 2],
                        help="serve --workers values for figure 2, comma-separated")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5, help="rounds of figure 2, each over every --workers value")
    parser.add_argument("--fake", choices=["lean", "full"], default="lean",
                        help="the fake Telnyx: bench/lean_telnyx.py, or bot_core.testing.FakeTelnyx (heavier)")  # fmt: skip
    parser.add_argument("--replica-messages", type=int, default=2000, help="webhooks in a burst of figure 6")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, databases)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bot-core-bench-"))
    (work / "plugins").mkdir()
    (work / "plugins" / "parked.py").write_text(PARKED_PLUGIN)
    (work / "plugins" / "slow.py").write_text(SLOW_PLUGIN)
    report = Report()
    print(f"bot-core bench: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, work folder {work}")
    senders = [customer(i) for i in range(args.senders)]
    fake = Fake(full=args.fake == "full")
    generator = LoadGenerator()
    try:
        if "1" in args.only:
            print("\n1. webhook acknowledgements (empty database)")
            figure_1(report, work, fake, args, senders, "")
        if "2" in args.only:
            # Rounds alternate the --workers values (1, 2, 1, 2, ...), so that a quiet or busy spell of
            # the machine does not decide their ratio; figure 5 gives each round's and the median.
            for r in range(1, args.rounds + 1):
                for workers in args.workers:
                    print(f"\n2. end to end: webhook in, reply received by the fake Telnyx (empty database,"
                          f" --workers {workers}, round {r} of {args.rounds})")  # fmt: skip
                    server = figure_2(report, work, fake, generator, args, senders, f"-w{workers}-r{r}",
                                      workers=workers, steady=r == 1)  # fmt: skip
                    if r == 1:
                        report.line("peak RSS", f"{server.peak_rss_mb():8.0f} MB")
                    server.stop()
        if "3" in args.only:
            print("\n3. a plugin awaiting 1 s per message, 200 conversations")
            figure_3(report, work, fake, args, senders)
        if "4" in args.only:
            print(f"\n4. the same with {args.mdrs:,} MDRs and {args.conversations:,} conversations stored")
            database = work / "large.db"
            started = time.monotonic()
            seed(database, args.mdrs, args.conversations)
            report.line("seeded in", f"{time.monotonic() - started:8.1f} s")
            # Customers spread over the stored conversations, so lookups hit cold pages.
            step = max(1, args.conversations // args.senders)
            large = [customer(i * step) for i in range(min(args.senders, args.conversations))]
            if "1" in args.only:
                figure_1(report, work, fake, args, large, "-large", database)
            server = figure_2(report, work, fake, generator, args, large, "-large", database)
            report.line("peak RSS", f"{server.peak_rss_mb():8.0f} MB")
            server.stop()
            for empty, label in (("acks", "ack throughput"), ("e2e-w1-r1", "end-to-end throughput")):
                large_key = empty.split("-")[0] + "-large"  # one server process, as figure 1 and round 1
                if empty in report.figures and large_key in report.figures:
                    change = report.figures[large_key] / report.figures[empty] - 1
                    report.line(f"{label}: large vs empty database", f"{change:+8.1%}")
        if "1" in args.only or "2" in args.only:  # figure 5 compares those
            print("\n5. side by side")
            side_by_side(report, work, args)
        if "6" in args.only:
            print("\n6. end to end on one and two processes: SQLite workers, PostgreSQL replicas (empty database)")
            figure_6(report, work, fake, args, senders, config_text, SECRET)
    finally:
        generator.stop()
        fake.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
