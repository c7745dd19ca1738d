"""The operator inbox's figures: list render time on a large database, and what ten open inboxes
cost the webhook path. Prints; asserts nothing.

    python bench/inbox.py                                   # 100,000 conversations, 1,000,000 MDRs
    python bench/inbox.py --conversations 10000 --mdrs 100000 --messages 2000   # quicker
    python bench/inbox.py --postgres postgresql://postgres@127.0.0.1:5432/postgres --rounds 0   # list, on PostgreSQL

1. Builds a database with ``--conversations`` conversations and ``--mdrs`` MDRs (bench/seed.py;
   1% of the conversations wait for a person), starts ``bot-core serve`` on it with the inbox on,
   signs in and times ``GET /inbox/`` over loopback: the whole list page (session check, query,
   template), for an operator who sees every profile and one limited to one profile, the "Needs
   a human" filter, the next page, and a conversation page.
   With ``--postgres URL``, the database built is copied into a schema of its own on that server
   (dropped at the end) and the bot serves from there; the list query's plan is printed.
2. Sends webhooks at a fixed rate and reports the acknowledgement p50/p99 with no inbox open
   and with ten inboxes open, each on the list's event stream, which sends it the list after
   changes, as inbox.js does in a browser; runs alternate (``--rounds`` pairs, 8 by default:
   about 10 minutes), after a warm-up run. Each run also prints the server's CPU time a
   webhook, and the inboxes' own CPU time (they share the machine's cores, where real browsers
   would not). The summary gives the median of the runs' p99s, the median of the pairs' ratios
   and the p99 of every webhook of each side together, the steadiest of the three.
   ``--database PATH`` builds the database there once and keeps it: later runs copy it.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import re
import secrets
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import httpx

sys.path.insert(0, str(Path(__file__).parent))

from load import Plan, run_in_process  # noqa: E402
from run import SECRET, ms, percentile  # noqa: E402
from seed import OUR_NUMBER, customer, seed  # noqa: E402
from services import Fake, Process, run_loop, start_server  # noqa: E402

from bot_core.inbox import operators  # noqa: E402
from bot_core.store import Store  # noqa: E402

PASSWORD = "bench password"
BROWSERS = 10


def config_text(fake_url: str, database: str) -> str:
    return f"""
[bot]
database = "{database}"
shutdown_grace = "1s"

[telnyx]
api_base = "{fake_url}"

[inbox]
enabled = true

[profiles.bench]
secret = "{SECRET}"
numbers = ["{OUR_NUMBER}"]
plugins = ["echo"]

[profiles.other]
secret = "other-secret"
numbers = ["+13125550199"]
"""


def build(database: Path, conversations: int, mdrs: int) -> None:
    started = time.perf_counter()
    seed(database, mdrs, conversations)
    store = Store(database)
    with store.transaction() as conn:
        conn.execute("UPDATE conversations SET waiting = 1, with_person = 1 WHERE id % 100 = 0")
        operators.add(conn, "all", PASSWORD, (), time.time())
        operators.add(conn, "limited", PASSWORD, ("bench",), time.time())
    store.close()
    with sqlite3.connect(database) as conn:
        conn.execute("ANALYZE")
    print(f"built {conversations:,} conversations and {mdrs:,} MDRs in {time.perf_counter() - started:.0f} s")


def copy_to_postgres(database: Path, url: str) -> tuple[str, str]:
    """The built SQLite database copied into a new schema at ``url``: (that schema, a URL naming it)."""
    import psycopg

    from bot_core.store import open_store

    started = time.perf_counter()
    schema = f"bench_inbox_{secrets.token_hex(4)}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    schema_url = f"{url}{'&' if '?' in url else '?'}options={quote(f'-csearch_path={schema}', safe='')}"
    open_store(schema_url).close()  # migrated: the tables, indexes and triggers
    source = sqlite3.connect(database)
    with psycopg.connect(schema_url) as conn:
        # MDRs first: their trigger finds no conversation yet, whose copied columns already say it all.
        for table in ("mdrs", "conversations", "operators"):
            cursor = source.execute(f"SELECT * FROM {table}")
            columns = ", ".join(d[0] for d in cursor.description)
            with conn.cursor().copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for row in cursor:
                    copy.write_row(row)
        for table in ("mdrs", "conversations"):
            conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))")
    with psycopg.connect(schema_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    source.close()
    print(f"copied to PostgreSQL schema {schema} in {time.perf_counter() - started:.0f} s")
    return schema, schema_url


def explain(url: str) -> None:
    """The plans of the list queries on PostgreSQL: they must read indexes, not scan the tables."""
    import psycopg

    from bot_core.store.postgres import PostgresStore

    store = PostgresStore(url)
    statements: list[tuple[str, str, dict[str, object]]] = []
    store._inbox_rows = lambda sql, params=(): statements.append(("", sql, dict(params))) or []  # type: ignore[method-assign]
    for label, kwargs in (("list", {}), ("Needs a human", {"waiting": True}), ("one profile", {"profiles": ["bench"]}),
                          ("whole number", {"number": customer(4242)}), ("part of a number", {"number_part": "4242"}),
                          ("text", {"text": "hello 99999"})):  # fmt: skip
        profiles = kwargs.pop("profiles", [])
        store.inbox_conversations(profiles, limit=50, **kwargs)  # type: ignore[arg-type]
        statements[-1] = (label, *statements[-1][1:])
    store.close()
    from bot_core.store.postgres import translate

    with psycopg.connect(url) as conn:
        for label, sql, params in statements:
            plan = conn.execute("EXPLAIN (ANALYZE, COSTS OFF) " + translate(sql), params).fetchall()
            print(f"\n   EXPLAIN ANALYZE, {label}:")
            for (line,) in plan:
                print("     " + line)


def sign_in(client: httpx.Client, name: str) -> None:
    page = client.get("/inbox/login").text
    token = re.search(r'name="csrf" value="([^"]+)"', page)[1]
    response = client.post("/inbox/login", data={"csrf": token, "username": name, "password": PASSWORD})
    assert response.status_code == 303, response.text


def timed(client: httpx.Client, path: str, repeat: int = 30) -> list[float]:
    client.get(path)  # warm the page cache and the template
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(path)
        times.append(time.perf_counter() - started)
        assert response.status_code == 200, (path, response.status_code)
    return times


def figure_1(url: str) -> None:
    print("\n1. the inbox's pages over loopback (median / p95 / max of 30)")
    with httpx.Client(base_url=url, timeout=30) as everyone, httpx.Client(base_url=url, timeout=30) as limited:
        sign_in(everyone, "all")
        sign_in(limited, "limited")
        first = everyone.get("/inbox/").text
        older = re.search(r'href="(/inbox/\?before=[^"]+)"', first)[1].replace("&amp;", "&")
        cid = re.search(r'href="/inbox/c/(\d+)"', first)[1]
        for label, client, path in (
            ("conversation list, every profile", everyone, "/inbox/"),
            ("conversation list, one profile", limited, "/inbox/"),
            ("Needs a human", everyone, "/inbox/?waiting=1"),
            ("the next page", everyone, older),
            ("the list's live region (what its event stream sends)", everyone, "/inbox/?partial=1"),
            ("a conversation", everyone, f"/inbox/c/{cid}"),
            ("search by a whole number", everyone, f"/inbox/?q=%2B{customer(4242)[1:]}"),
            ("search by part of a number", everyone, f"/inbox/?q={customer(4242)[5:]}"),
            ("search by text", everyone, "/inbox/?q=hello+99999"),
        ):
            times = timed(client, path)
            print(f"   {label:<48} {ms(statistics.median(times))} {ms(percentile(times, 0.95))} {ms(max(times))}")


async def _browsers(url: str, seconds: float, pipe) -> None:
    """Ten inboxes on the list page, as inbox.js: each reads the list's event stream, which
    sends the list's live region after changes.

    In use, the browsers run on the operators' machines; here they share the server's two
    cores, so after signing in (httpx) each reads its stream off a raw socket and only counts
    the lists sent: what they cost the machine is then the server's work, not the readers'."""
    refreshes = 0
    host, port = url.removeprefix("http://").rsplit(":", 1)

    async def browser(name: str) -> None:
        nonlocal refreshes
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            page = (await client.get("/inbox/login")).text
            token = re.search(r'name="csrf" value="([^"]+)"', page)[1]
            await client.post("/inbox/login", data={"csrf": token, "username": name, "password": PASSWORD})
            cookie = "; ".join(f"{key}={value}" for key, value in client.cookies.items())
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET /inbox/events?list=1 HTTP/1.1\r\nhost: {host}:{port}\r\ncookie: {cookie}\r\n"
                     "accept: text/event-stream\r\n\r\n".encode())  # fmt: skip
        marker, tail = b"event: list", b""
        while chunk := await reader.read(1 << 16):
            data = tail + chunk
            refreshes += data.count(marker)
            tail = data[-(len(marker) - 1) :]  # too short to hold a whole marker: none counted twice
        writer.close()

    tasks = [asyncio.create_task(browser("all")) for _ in range(BROWSERS)]
    pipe.send("ready")
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    pipe.send((refreshes, time.process_time()))


def _browsers_main(url: str, seconds: float, pipe) -> None:
    run_loop(_browsers(url, seconds, pipe))


def figure_2(server: Process, messages: int, rate: float, rounds: int) -> None:
    print(f"\n2. webhook acknowledgement latency, {messages} webhooks at {rate:g}/s a run (p50 / p99)")
    senders = [f"+1773{3_000_000 + i:07d}" for i in range(200)]
    url = server.url
    port = int(url.rsplit(":", 1)[1])
    run_in_process(Plan(port, SECRET, OUR_NUMBER, senders, messages // 4, rate=rate, prefix="warm-"))  # not counted
    p99: dict[int, list[float]] = {0: [], BROWSERS: []}
    pooled: dict[int, list[float]] = {0: [], BROWSERS: []}  # every webhook's latency, per side
    # Alternating runs, so that a change in the machine's load shows in both columns alike.
    for n, browsers in enumerate([0, BROWSERS] * rounds):
        process = pipe = None
        if browsers:
            context = multiprocessing.get_context("spawn")
            pipe, child = context.Pipe()
            process = context.Process(target=_browsers_main, args=(url, messages / rate + 5, child))
            process.start()
            assert pipe.recv() == "ready"
            time.sleep(3)  # the sign-ins (Argon2) are done before the burst
        cpu = server.cpu_seconds()
        result = run_in_process(Plan(port, SECRET, OUR_NUMBER, senders, messages, rate=rate, prefix=f"r{n}-"))
        cpu = server.cpu_seconds() - cpu
        assert set(result.status) == {200}, set(result.status)
        extra = f"   server CPU {cpu * 1e3 / messages:.2f} ms a webhook"
        if process is not None:
            refreshes, browsers_cpu = pipe.recv()
            extra += f", {refreshes} lists sent to the inboxes, their own CPU {browsers_cpu:.1f} s"
            process.join()
        label = f"{browsers} inboxes open" if browsers else "no inbox open"
        p99[browsers].append(percentile(result.latency, 0.99))
        pooled[browsers].extend(result.latency)
        print(f"   {label:<28} {ms(percentile(result.latency, 0.5))} {ms(p99[browsers][-1])}{extra}")
        time.sleep(2)  # let the replies go out before the next run
    without, with_ = statistics.median(p99[0]), statistics.median(p99[BROWSERS])
    # Each pair's two runs are next to each other: their ratio is less swayed by the machine's load drifting.
    pairs = statistics.median(b / a - 1 for a, b in zip(p99[0], p99[BROWSERS], strict=True))
    print(
        f"   median p99: {ms(without)} without, {ms(with_)} with {BROWSERS} inboxes open ({with_ / without - 1:+.0%});"
        f" median of the {rounds} pairs' ratios {pairs:+.0%}"
    )
    # One run's p99 is its 30th-slowest webhook: the p99 of every webhook of a side is steadier.
    all_without, all_with = percentile(pooled[0], 0.99), percentile(pooled[BROWSERS], 0.99)
    print(f"   p99 of all {len(pooled[0]):,} webhooks of a side: {ms(all_without)} without, {ms(all_with)} with"
          f" ({all_with / all_without - 1:+.0%})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=100_000)
    parser.add_argument("--mdrs", type=int, default=1_000_000)
    parser.add_argument("--messages", type=int, default=3000, help="webhooks per run of figure 2")
    parser.add_argument("--rate", type=float, default=100.0, help="webhooks per second in figure 2")
    parser.add_argument("--rounds", type=int, default=8,
                        help="pairs of runs (none open, ten open) in figure 2; 0 skips it")  # fmt: skip
    parser.add_argument("--postgres", metavar="URL", help="serve from a copy of the database on this PostgreSQL")
    parser.add_argument("--database", metavar="PATH", type=Path,
                        help="build the database here once and keep it; later runs serve from a copy of it")  # fmt: skip
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bot-core-inbox-bench-"))
    fake = Fake()
    schema = None
    try:
        if args.database is None:
            build(folder / "bot.db", args.conversations, args.mdrs)
        else:
            if not args.database.exists():
                build(args.database, args.conversations, args.mdrs)
            else:
                print(f"serving from a copy of {args.database} (--conversations and --mdrs are ignored)")
            shutil.copyfile(args.database, folder / "bot.db")  # the runs add to the copy, not to it
        database = "bot.db"
        if args.postgres:
            schema, database = copy_to_postgres(folder / "bot.db", args.postgres)
        config = folder / "bot.toml"
        config.write_text(config_text(fake.url, database))
        server = start_server(config, folder / "server.log")
        try:
            figure_1(server.url)
            if args.rounds:
                figure_2(server, args.messages, args.rate, args.rounds)
        finally:
            server.stop()
        if args.postgres:
            explain(database)
    finally:
        fake.stop()
        shutil.rmtree(folder, ignore_errors=True)
        if schema is not None:
            import psycopg

            with psycopg.connect(args.postgres, autocommit=True) as admin:
                admin.execute(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    main()
