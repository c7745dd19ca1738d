"""`bot-core` commands run in the test's own process, answering as a child process would.

A child process costs half a second of CPU to start Python and import bot-core; a test about
a command's output, exit status and effects on the database gets the same from click's runner.
Tests where the process boundary is the point (serve, signals, a terminal, installed entry
points, a real shell) start real processes.
"""

from __future__ import annotations

import logging
import os
import subprocess
import traceback
from collections.abc import Mapping

from click.testing import CliRunner

from bot_core.cli import cli


def bot_core(
    *args: str, input: str | None = None, env: Mapping[str, str | None] | None = None, cwd: str | None = None
) -> subprocess.CompletedProcess:
    """``bot-core ARGS`` with ``input`` on stdin: its exit status, stdout and stderr.

    An exception the command lets out is an exit status 1 with its traceback on stderr, as
    Python prints it; the logging the command set up for itself is undone after it."""
    root, httpx = logging.getLogger(), logging.getLogger("httpx")
    saved = root.handlers[:], root.level, httpx.level
    before = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        result = CliRunner().invoke(cli, list(args), input=input, env=env, catch_exceptions=True)
    finally:
        os.chdir(before)
        root.handlers[:], root.level = saved[0], saved[1]
        httpx.setLevel(saved[2])
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(["bot-core", *args], result.exit_code, result.stdout, stderr)
