"""The examples: each config passes `bot-core check` with no environment, runs with the README's
command, and holds the conversation its README shows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from bot_core.store import PENDING, SENDING
from bot_core.testing import BotTester, FakeClock

from .conftest import bytecode_cached, free_port, healthy, wait_for
from .inprocess import bot_core

EXAMPLES = Path(__file__).parent.parent / "examples"
CHICAGO = ZoneInfo("America/Chicago")
BARE_ENV = {"PATH": os.environ.get("PATH", ""), "PYTHONDONTWRITEBYTECODE": "1"}


def copy_example(name: str, tmp_path: Path) -> Path:
    """A copy of an example to run, so nothing is written into the repo, without what running
    the examples as their READMEs say leaves there (databases, caches)."""
    left_by_runs = shutil.ignore_patterns("*.db", "*.db-*", "__pycache__", "*.egg-info", ".pytest_cache")
    return Path(shutil.copytree(EXAMPLES / name, tmp_path / name, ignore=left_by_runs))


def install(example: Path, site: Path) -> dict[str, str]:
    """An environment in which ``example`` is installed, as pip would leave it, built from its
    own pyproject.toml (its entry points) and its ``src`` folder, without network."""
    project = tomllib.loads((example / "pyproject.toml").read_text())["project"]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    points = project["entry-points"]["bot_core"]
    (info / "entry_points.txt").write_text("[bot_core]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()))
    return {**BARE_ENV, "PYTHONPATH": os.pathsep.join([str(site), str(example / "src")])}


@pytest.mark.parametrize("name", ["support-line", "signup-flow", "custom-plugin"])
def test_each_example_passes_check_with_no_environment_set(name, tmp_path):
    env = install(EXAMPLES / name, tmp_path / "site") if name == "custom-plugin" else BARE_ENV
    out = subprocess.run([sys.executable, "-m", "bot_core", "check", "--config", str(EXAMPLES / name / "bot.toml")],
                         capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "+13125550100" in out.stdout and "messaging-enabled" in out.stdout
    assert "example-secret-change-me" not in out.stdout + out.stderr
    if name == "custom-plugin":
        assert "plugins: optout, remind" in out.stdout


@pytest.mark.parametrize("name, text, reply", [
    ("support-line", "ADDRESS", "1 Main St, Chicago"),
    ("signup-flow", "join", "What's your name?"),
])  # fmt: skip
def test_the_readme_command_serves_the_example_in_sandbox_mode(name, text, reply, tmp_path):
    example = copy_example(name, tmp_path)
    readme = (example / "README.md").read_text()
    assert f"bot-core serve --config examples/{name}/bot.toml" in readme
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bot_core", "serve", "--config", str(example / "bot.toml"),
                                "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=BARE_ENV)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: healthy(url), timeout=60)  # a deadline for failures only: generous under load
        response = httpx.post(url + "/webhooks/telnyx", json={"sms_id": "t-1", "from": "+13125550123",
                                                              "to": "+13125550100", "body": text})  # fmt: skip
        assert response.status_code == 200, response.text
        # The reply once it is done with: recorded (pending) first, then sent, or here sandboxed.
        rows = wait_for(lambda: [r for r in _messages(example) if r["direction"] == "outbound"
                                 and r["status"] not in {PENDING, SENDING}])  # fmt: skip
        assert [(r["text"], r["status"]) for r in rows] == [(reply, "sandbox")]
    finally:
        process.terminate()
        output = process.communicate(timeout=20)[0]
    assert "SANDBOX" in output


def _messages(example: Path) -> list[dict]:
    out = bot_core("messages", "--config", str(example / "bot.toml"), "--json")
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_support_line_transcript(tmp_path):
    clock = FakeClock(datetime(2026, 3, 2, 10, 0, tzinfo=CHICAGO))  # a Monday morning
    with BotTester(EXAMPLES / "support-line" / "bot.toml", tmp_path=tmp_path, clock=clock) as bot:
        bot.transcript([
            ("Hi, my order hasn't arrived", "Thanks! An agent will text you back shortly."),
            ("It was order 1234", []),
            ("hours?", "Mon-Fri 9am-5pm, Chicago time"),
            ("Address please", "1 Main St, Chicago"),
            ("HELP", "ACME support: text us any time, an agent will answer. Reply STOP to opt out."),
        ])  # fmt: skip
        clock.set(datetime(2026, 3, 2, 23, 0, tzinfo=CHICAGO))  # 13 h later, after hours
        bot.transcript([
            ("Any news?", "We're closed. We'll reply when we open at 9am (Mon-Fri, Chicago time)."),
            ("STOP", "You are unsubscribed from ACME support and will get no more messages. Reply START to resubscribe."),
            ("hours", []),
            ("START", "Welcome back to ACME support."),
            ("hours", "Mon-Fri 9am-5pm, Chicago time"),
        ])  # fmt: skip
        clock.set(datetime(2026, 12, 25, 11, 0, tzinfo=CHICAGO))  # a holiday, on a Friday
        bot.transcript([("Open today?", "We're closed. We'll reply when we open at 9am (Mon-Fri, Chicago time).")])


def test_signup_flow_transcript(tmp_path):
    with BotTester(EXAMPLES / "signup-flow" / "bot.toml", tmp_path=tmp_path) as bot:
        bot.transcript([
            ("hi", "Text JOIN to sign up for alerts, or HELP for help."),
            ("JOIN", "What's your name?"),
            ("Ann", "What's your ZIP code?"),
            ("6060", "Please send a 5-digit ZIP code."),
            ("60601", "Thanks Ann! You're signed up for alerts in 60601."),
            ("join!", "What's your name?"),
        ])  # fmt: skip
        assert bot.advance("1h") == ["Your signup timed out. Text JOIN to start again."]
        bot.transcript([
            ("Join", "What's your name?"),
            ("exit", "OK, stopped. Text JOIN to start again."),
            ("HELP", "ACME alerts: text JOIN to sign up. Reply STOP to opt out."),
        ])  # fmt: skip
        rows = [(row["flow"], row["answers"]) for _, row in bot.bot.plugin_store("flows").items()]
        assert rows == [("signup", {"name": "Ann", "zip": "60601"})]


def test_custom_plugin_tests_pass_with_bot_cores_harness(tmp_path):
    example = copy_example("custom-plugin", tmp_path)
    env = install(example, tmp_path / "site")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=example,
                         capture_output=True, text=True, env=bytecode_cached(env), timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "5 passed" in out.stdout
