"""A server as a real child process on a loopback port: ``bot-core serve`` for the end-to-end
tests and the benchmark alike, so both start, wait for and stop it the same way.

By default it binds port 0 and the port the system gave it is read from uvicorn's log line: a
port picked free beforehand could be taken by another process's socket before the server binds it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import httpx

_LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")  # uvicorn's own line, port 0 resolved


def healthy(url: str, path: str = "/healthz") -> bool:
    """Whether the server at ``url`` answers its health check."""
    try:
        return httpx.get(url + path, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


class ServerProcess:
    """``argv --port PORT`` as a child process, its output in ``log``; ready once ``health`` answers 200.

    ``port`` 0 (the default) lets the system pick one, read from the log: the server must log
    uvicorn's "Uvicorn running on" line, as ``bot-core serve`` does."""

    def __init__(
        self, argv: Sequence[str], log: Path, *, port: int = 0, health: str = "/healthz", name: str = "the server"
    ) -> None:
        self.argv = list(argv)
        self.name = name
        self.log_path = log
        self.health = health
        self.requested_port = port
        self.port = 0
        self.url = ""
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> Self:
        """Start it and wait until it is healthy; a loaded machine needs many seconds, only a failure waits this long."""
        seen = self.log_path.stat().st_size if self.log_path.exists() else 0  # earlier runs' lines
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*self.argv, "--port", str(self.requested_port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.port = self.requested_port
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log}")
            if not self.requested_port:
                running = _LISTENING.search(self.log_path.read_bytes()[seen:].decode(errors="replace"))
                self.port = int(running[1]) if running else 0
            if self.port:
                self.url = f"http://127.0.0.1:{self.port}"
                if healthy(self.url, self.health):
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not become healthy:\n{self.log}")

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Send ``sig`` and return the exit code; killed (and ``TimeoutExpired`` raised) if it outlives ``timeout``."""
        assert self.process is not None, "never started"
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


def serve_argv(config: Path, *args: str) -> list[str]:
    """``bot-core serve`` on ``config``, exactly as a user runs it; ``args`` are more options (``--workers 2``)."""
    return [sys.executable, "-m", "bot_core", "serve", "--config", str(config), *args]


class Serve(ServerProcess):
    """``bot-core serve`` on ``config`` (see :func:`serve_argv`), on a port the system picks."""

    def __init__(self, config: Path, log: Path, *args: str) -> None:
        super().__init__(serve_argv(config, *args), log, name="bot-core serve")
        self.config = config
        self.args = args
