"""The processes a benchmark run needs: the real server, the bare floor, a fake Telnyx and a load generator.

Each runs in a process of its own so that its CPU time is its own and the server under test
gets a core, as it would in production.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

from load import Plan, Result

from bot_core.testing.server import ServerProcess, serve_argv

T = TypeVar("T")
BARE_APP = Path(__file__).with_name("bare.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process(ServerProcess):
    """A server process on a loopback port (bot_core.testing.server), with its CPU time and memory."""

    def cpu_seconds(self) -> float:
        """User + system CPU time the process and its workers have used so far (Linux /proc).

        A worker that exited counts too (its parent's cutime/cstime once reaped).
        """
        assert self.process is not None
        return sum(cpu_seconds(pid, reaped=pid == self.process.pid) for pid in self.pids())

    def pids(self) -> list[int]:
        """The process and its workers (``serve --workers``)."""
        assert self.process is not None
        return [self.process.pid, *_children(self.process.pid)]

    def peak_rss_mb(self) -> float:
        """The peak resident memory of the process, plus its workers' (``serve --workers``)."""
        total = 0.0
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                continue
            total += sum(int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:"))
        return total


def cpu_seconds(pid: int, reaped: bool = False) -> float:
    """User + system CPU time ``pid`` has used so far (Linux /proc), with its reaped children's if
    ``reaped``; 0 once it is gone."""
    fields = _stat(pid)
    return sum(int(f) for f in fields[11 : 15 if reaped else 13]) / os.sysconf("SC_CLK_TCK") if fields else 0.0


def machine_busy() -> float:
    """Busy CPU seconds of all cores since boot: /proc/stat's first line, less idle and iowait."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def connections(pids: list[int], port: int) -> list[int]:
    """Established TCP connections to local ``port`` that each of ``pids`` holds (Linux /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":  # 01: ESTABLISHED
                inodes.add(f"socket:[{fields[9]}]")
    counts = []
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except (FileNotFoundError, ProcessLookupError):
            links = []
        counts.append(sum(link in inodes for link in links))
    return counts


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name; empty if the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return []


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (a supervisor's workers)."""
    return [int(entry.name) for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and (fields := _stat(int(entry.name))) and int(fields[1]) == pid]  # fmt: skip


def start_server(config: Path, log: Path, workers: int = 1) -> Process:
    """``bot-core serve``, exactly as a user runs it."""
    return Process(serve_argv(config, "--workers", str(workers)), log, name="bot-core serve").start()


def start_bare(database: Path, log: Path) -> Process:
    # bare.py logs nothing, so it gets a port picked beforehand.
    return Process([sys.executable, str(BARE_APP), "--database", str(database)], log, port=free_port(),
                   name="the bare floor").start()  # fmt: skip


def _fake_main(pipe: Connection) -> None:
    """The lean fake (bench/lean_telnyx.py) on an event loop (uvloop when installed, as the
    server's); the pipe's commands wait in a thread of their own and run on the loop's, between
    two requests. (The pipe stays blocking: the loop would make it non-blocking, and a big
    ``take`` could then not be sent whole.)"""
    from lean_telnyx import LeanTelnyx

    async def serve() -> None:
        fake = LeanTelnyx()
        pipe.send(await fake.start())
        loop = asyncio.get_running_loop()

        async def answer(command: str) -> int | list[tuple[float, str]]:
            return fake.count() if command == "count" else fake.take()  # distinct messages, or all of them

        def commands() -> None:
            while (command := pipe.recv()) != "stop":
                pipe.send(asyncio.run_coroutine_threadsafe(answer(command), loop).result())

        await asyncio.to_thread(commands)
        fake.close()

    run_loop(serve())


def _full_fake_main(pipe: Connection) -> None:
    """bot_core.testing.FakeTelnyx (``run.py --fake full``): what the bench used before the lean one."""
    from bot_core.testing import FakeTelnyx

    fake = FakeTelnyx()
    pipe.send(fake.start())
    while (command := pipe.recv()) != "stop":
        if command == "count":
            pipe.send(len({r.json.get("body") for r in fake.sent}))
        elif command == "take":
            pipe.send([(r.at, r.json.get("body", "")) for r in fake.sent])
            fake.clear()
    fake.stop()


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop where it is installed (it comes with uvicorn[standard])."""
    try:
        from uvloop import new_event_loop
    except ImportError:
        new_event_loop = None
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)


class _Child:
    """``target(pipe)`` in a fresh process, taking commands over the pipe until "stop"."""

    def __init__(self, target: Callable[[Connection], None]) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self.process = context.Process(target=target, args=(child,), daemon=True)
        self.process.start()
        child.close()

    def stop(self) -> None:
        self._pipe.send("stop")
        self.process.join(10)


class Fake(_Child):
    """A fake Telnyx serving in a process of its own: the lean one, or with ``full``
    bot_core.testing.FakeTelnyx."""

    def __init__(self, full: bool = False) -> None:
        super().__init__(_full_fake_main if full else _fake_main)
        self.url: str = self._pipe.recv()

    def count(self) -> int:
        self._pipe.send("count")
        return self._pipe.recv()

    def take(self) -> list[tuple[float, str]]:
        """(time received, body) of every message accepted since the last call."""
        self._pipe.send("take")
        return self._pipe.recv()

    def wait_for(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count() >= n:
                return True
            time.sleep(0.02)
        return False


def _generator_main(pipe: Connection) -> None:
    from load import _run

    async def together(plans: list[Plan]) -> list[Result]:
        return list(await asyncio.gather(*(_run(plan) for plan in plans)))

    while (plans := pipe.recv()) != "stop":
        pipe.send(run_loop(together(plans)))


class LoadGenerator(_Child):
    """bench/load.py's generator in one process kept for a whole figure: started once rather than
    per burst, and one process (one core at most) driving every server of a set-up at once."""

    def __init__(self) -> None:
        super().__init__(_generator_main)

    def run(self, plans: list[Plan], during: Callable[[], None] | None = None) -> list[Result]:
        """Send every plan at once (each on its own connections); what each measured. ``during``
        is called a second into the run, if it is still running then."""
        self._pipe.send(plans)
        if during is not None and not self._pipe.poll(1.0):
            during()
        try:
            return self._pipe.recv()
        except EOFError:
            raise RuntimeError("the load generator died; see its output above") from None
