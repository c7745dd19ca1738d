"""The processes a benchmark run needs: the real server, the bare floor, and a fake Telnyx.

Each runs in a process of its own so that its CPU time is its own and the server under test
gets a core, as it would in production.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

BARE_APP = Path(__file__).with_name("bare.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """A server process on a loopback port, with its log in a file."""

    def __init__(self, argv: list[str], log: Path, health: str) -> None:
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                [*argv, "--port", str(self.port)], stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{argv} exited:\n{log.read_text()}")
            try:
                if httpx.get(self.url + health, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{argv} did not start:\n{log.read_text()}")

    def cpu_seconds(self) -> float:
        """User + system CPU time the process and its workers have used so far (Linux /proc).

        A worker that exited counts too (its parent's cutime/cstime once reaped).
        """
        own = _stat(self.popen.pid)
        total = sum(int(f) for f in own[11:15])  # utime, stime, cutime, cstime
        for pid in _children(self.popen.pid):
            fields = _stat(pid)
            total += int(fields[11]) + int(fields[12]) if fields else 0
        return total / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        """The peak resident memory of the process, plus its workers' (``serve --workers``)."""
        total = 0.0
        for pid in [self.popen.pid, *_children(self.popen.pid)]:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                continue
            total += sum(int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:"))
        return total

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


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
    argv = [sys.executable, "-m", "bot_core", "serve", "--config", str(config), "--workers", str(workers)]
    return Process(argv, log, "/healthz")


def start_bare(database: Path, log: Path) -> Process:
    return Process([sys.executable, str(BARE_APP), "--database", str(database)], log, "/healthz")


def _fake_main(pipe) -> None:
    from bot_core.testing import FakeTelnyx

    fake = FakeTelnyx()
    pipe.send(fake.start())
    while (command := pipe.recv()) != "stop":
        if command == "count":  # distinct messages: a message sent twice counts once
            pipe.send(len({r.json.get("body") for r in fake.sent}))
        elif command == "take":
            pipe.send([(r.at, r.json.get("body", "")) for r in fake.sent])
            fake.clear()
    fake.stop()


class Fake:
    """bot_core.testing.FakeTelnyx serving in a process of its own."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self.process = context.Process(target=_fake_main, args=(child,), daemon=True)
        self.process.start()
        child.close()
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

    def stop(self) -> None:
        self._pipe.send("stop")
        self.process.join(10)
