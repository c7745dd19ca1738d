"""`bot-core serve` itself: its port, its file-descriptor limit, its server stack."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = """
[bot]
database = "bot.db"
sandbox = true

[profiles.main]
secret = "serve-test-secret"
numbers = ["+13125550100"]
plugins = ["echo"]
"""


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_refused_before_the_bot_starts(tmp_path: Path, workers: str) -> None:
    (tmp_path / "bot.toml").write_text(CONFIG)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "bot_core", "serve", "--config", str(tmp_path / "bot.toml"), "--port", str(port),
             "--workers", workers],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"Error: cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "started" not in result.stderr  # neither the bot nor a worker
    assert not (tmp_path / "bot.db").exists()  # the bot never opened its database


def test_serve_raises_the_open_files_limit_and_runs_on_uvloop_and_httptools(server_factory) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = max(256, 2 * len(os.listdir("/proc/self/fd")))  # room for this test process meanwhile
    if hard == resource.RLIM_INFINITY or hard <= low:
        pytest.fail(f"this test needs a finite hard open-files limit above {low}, not {hard}")
    server = server_factory(CONFIG)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))  # the server inherits a low soft limit
    try:
        server.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    limits = Path(f"/proc/{server.process.pid}/limits").read_text()
    assert [line.split()[3:5] for line in limits.splitlines() if line.startswith("Max open files")] == [
        [str(hard), str(hard)]
    ]
    assert f"open files limit: soft {hard} (was {low}), hard {hard}" in server.log
    assert f"Uvicorn running on {server.url} (pid {server.process.pid}; uvicorn" in server.log
    assert "uvloop, httptools)" in server.log  # uvicorn[standard] is installed, and serve uses it
