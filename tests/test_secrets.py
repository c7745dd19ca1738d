"""Secrets stay secret: not in logs, error messages, `bot-core check` output or MDRs.

A full run of `bot-core serve` goes through everything that produces text (webhooks refused for
every reason, sends that fail, time out and are refused, plugins that fail quoting a secret),
then every byte it wrote is scanned.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import textwrap
from pathlib import Path

import pytest

from bot_core.config import load_config
from bot_core.testing import FakeTelnyx
from bot_core.webhooks import sign_v1

from .conftest import Server, wait_for
from .inprocess import bot_core

MAIN_SECRET = "MainProfileSecret-5f2c9e"
SALES_SECRET = "SalesProfileSecret-81ad40"
API_KEY = "KEY0199-api-key-d7e3b1"
SECRETS = (MAIN_SECRET, SALES_SECRET, API_KEY)

LEAKY_PLUGIN = """
import os
from bot_core import hookimpl

@hookimpl
def handle_message(bot, message):
    if message.text == "config":
        raise RuntimeError(f"config was {bot.config!r}")
    if message.text == "leak":  # e.g. an HTTP error quoting a URL with a key in it
        raise RuntimeError("GET https://api.example.com/?key=" + os.environ["MAIN_SECRET"] + " failed")
    return f"ok {message.text}"
"""


def config_text(tmp_path: Path, fake_url: str, version: int, public_key: str = "") -> str:
    (tmp_path / "plugins").mkdir(exist_ok=True)
    (tmp_path / "plugins" / "leaky.py").write_text(LEAKY_PLUGIN)
    api_base = fake_url + ("/v2" if version == 2 else "")
    return f"""
[bot]
database = "bot.db"
plugins_dir = "plugins"
public_url = "https://bot.example.com"
fallback_reply = "sorry"

[telnyx]
api_version = {version}
api_base = "{api_base}"
api_key = "${{TELNYX_API_KEY}}"
public_key = "{public_key}"

[sending]
timeout = "300ms"
backoff_initial = "50ms"
backoff_max = "100ms"
max_attempts = 4  # one more than the faults injected below, whichever sends they hit: 5 are sent

[profiles.main]
secret = "${{MAIN_SECRET}}"
numbers = ["+13125550100"]
plugins = ["leaky"]

[profiles.sales]
secret = "${{SALES_SECRET}}"
numbers = ["+13125550101"]
plugins = ["leaky"]
"""


@pytest.fixture
def environment(monkeypatch):
    for name, value in (("MAIN_SECRET", MAIN_SECRET), ("SALES_SECRET", SALES_SECRET), ("TELNYX_API_KEY", API_KEY)):
        monkeypatch.setenv(name, value)


def inbound(
    text: str, sms_id: str, to: str = "+13125550100", secret: str = MAIN_SECRET, customer: str = "+13125550123"
):
    body = json.dumps({"sms_id": sms_id, "direction": "inbound", "from": customer, "to": to, "body": text}).encode()
    return body, {"X-Telnyx-Signature": sign_v1(body, secret)}


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{where} shows a secret"


@pytest.mark.parametrize("version", [1, 2])
def test_a_full_run_never_shows_a_secret(tmp_path, environment, version):
    fake = FakeTelnyx(api_key=API_KEY if version == 2 else None)
    fake.start()
    fake.webhooks.secrets.update({"+13125550100": MAIN_SECRET, "+13125550101": SALES_SECRET})
    (tmp_path / "bot.toml").write_text(config_text(tmp_path, fake.url, version, fake.webhooks.public_key))
    server = Server(tmp_path / "bot.toml", tmp_path / "server.log").start()
    try:
        answers = []
        # Webhooks refused for every reason, then the good ones.
        good, headers = inbound("hello", "m-1")
        answers.append(server.post(good, {}))
        answers.append(server.post(good, {"X-Telnyx-Signature": sign_v1(good, SALES_SECRET)}))
        answers.append(server.post(good, {"X-Telnyx-Signature": sign_v1(good, MAIN_SECRET, 1_000_000_000)}))
        answers.append(server.post(b"{not json", headers))
        answers.append(server.post(*inbound("who?", "m-0", to="+13125550199")))
        for answer in answers:
            assert answer.status_code >= 400
            assert_no_secret(answer.text, "a webhook error")
        # Telnyx failing in every way, and plugins failing with a secret in hand. Each fault
        # targets the reply to one customer, so every reply succeeds within max_attempts.
        customers = ["+13125550125", "+13125550126", "+13125550127"]
        fake.fail(500, to="+13125550123")
        fake.rate_limit(0.1, to=customers[0])
        fake.timeout(to=customers[2])
        fake.opt_out("+13125550124")
        assert server.post(good, headers).status_code == 200
        for i, (text, customer) in enumerate(zip(["config", "leak", "fine"], customers, strict=True)):
            assert server.post(*inbound(text, f"m-{i + 2}", customer=customer)).status_code == 200
        assert server.post(*inbound("stop me", "m-9", customer="+13125550124")).status_code == 200
        assert server.post(*inbound("sales", "m-10", to="+13125550101", secret=SALES_SECRET)).status_code == 200
        wait_for(lambda: len(fake.sent) >= 5, timeout=20)
        status = fake.report(next(iter(fake.messages)), "delivery_failed", error="carrier said no")
        # 200 whether or not the bot has recorded Telnyx's id yet (an early status is kept and
        # applied when it has); the point here is what the log and MDRs show of it.
        assert server.post(status.body, status.headers).status_code == 200
        wait_for(lambda: _query(tmp_path / "bot.db", "SELECT 1 FROM mdrs WHERE status = 'delivery_failed'"))
    finally:
        server.stop()
        fake.stop()
    log = server.log
    assert "plugin 'leaky' failed" in log and "Traceback" in log  # the failures were logged...
    assert "[secret]" in log  # ...with the secret masked
    assert_no_secret(log, "the server log")
    for table_dump in _dump(tmp_path / "bot.db"):
        assert_no_secret(table_dump, "the database")
    messages = _cli("messages", "--config", str(tmp_path / "bot.toml"), "--json", "--limit", "100")
    assert "plugin 'leaky' failed" in messages.stdout
    assert_no_secret(messages.stdout + messages.stderr, "bot-core messages")


def _dump(database: Path) -> list[str]:
    conn = sqlite3.connect(database)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def _query(database: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(database)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _cli(*args: str) -> subprocess.CompletedProcess:
    """The command in this process: its stdout, and its stderr with its logging and any traceback."""
    return bot_core(*args)


@pytest.mark.parametrize(
    "broken",
    ["", "bogus_key = 1\n", 'alphanumeric_sender_id = "not valid!!"\n', '[numbers."12"]\nprofile = "main"\n',
     'plugins = ["nope"]\n', 'send_rate = -1\n'],
    ids=["valid", "unknown-key", "bad-sender-id", "bad-number", "unknown-plugin", "bad-rate"],
)  # fmt: skip
def test_bot_core_check_never_prints_a_secret(tmp_path, environment, broken):
    text = config_text(tmp_path, "http://127.0.0.1:9", 1)
    if broken.startswith("["):
        text += broken
    else:
        text = text.replace(
            'plugins = ["leaky"]\n\n[profiles.sales]', f'plugins = ["leaky"]\n{broken}\n[profiles.sales]'
        )
    (tmp_path / "bot.toml").write_text(text)
    result = _cli("check", "--config", str(tmp_path / "bot.toml"))
    assert result.returncode == (0 if not broken else 1), result.stdout + result.stderr
    assert ("bot.toml" in result.stderr) if broken else ("messaging-enabled" in result.stdout)
    assert_no_secret(result.stdout + result.stderr, "bot-core check")


THIRD_PARTY_KEY = "tp-key\\it's-7d1f"  # a backslash and a quote: repr and JSON spell it differently

ENV_PLUGIN = """
from bot_core import hookimpl

@hookimpl
def handle_message(bot, message, config):
    if message.text == "repr":
        raise RuntimeError(f"config was {bot.config!r}")
    if message.text == "escaped":  # a library quoting the key in a repr and in a JSON body
        key = str(config["api_key"])
        raise RuntimeError(f"refused {key!r} with body " + __import__("json").dumps({"key": key}))
    return "ok"
"""


def test_values_from_the_environment_in_plugin_config_are_secrets_everywhere(tmp_path, monkeypatch):
    """repr(bot.config), logs, MDR errors and `bot-core messages`: a ${VAR} in plugin_config is a
    secret like the profile secret, masked in its escaped forms too."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "envy.py").write_text(ENV_PLUGIN)
    (tmp_path / "bot.toml").write_text(
        textwrap.dedent("""
        [bot]
        database = "bot.db"
        plugins_dir = "plugins"
        sandbox = true

        [profiles.main]
        secret = "${MAIN_SECRET}"
        numbers = ["+13125550100"]
        plugins = ["envy"]
        plugin_config.envy.api_key = "${THIRD_PARTY_KEY}"
        plugin_config.envy.url = "https://api.example.com/?key=${THIRD_PARTY_KEY}"
    """)
    )
    monkeypatch.setenv("MAIN_SECRET", MAIN_SECRET)
    monkeypatch.setenv("THIRD_PARTY_KEY", THIRD_PARTY_KEY)
    config = load_config(tmp_path / "bot.toml")
    assert THIRD_PARTY_KEY not in repr(config) and "example.com" not in repr(config)
    assert str(config.profiles["main"].plugin_config["envy"]["api_key"]) == THIRD_PARTY_KEY  # the value is intact
    server = Server(tmp_path / "bot.toml", tmp_path / "server.log").start()
    try:
        for i, text in enumerate(["repr", "escaped", "fine"]):
            assert server.post(*inbound(text, f"m-{i}")).status_code == 200
        wait_for(lambda: server.log.count("plugin 'envy' failed") == 2, timeout=20)
    finally:
        server.stop()
    messages = _cli("messages", "--config", str(tmp_path / "bot.toml"), "--json")
    errors = [json.loads(line)["error"] for line in messages.stdout.splitlines()]
    assert sum("[secret]" in (e or "") for e in errors) == 2, errors
    for where, text in (("the server log", server.log), ("bot-core messages", messages.stdout),
                        ("the database", "\n".join(_dump(tmp_path / "bot.db")))):  # fmt: skip
        for form in (THIRD_PARTY_KEY, repr(THIRD_PARTY_KEY)[1:-1], json.dumps(THIRD_PARTY_KEY)[1:-1], MAIN_SECRET):
            assert form not in text, f"{where} shows {form}"
    assert "[secret]" in server.log


def test_bot_core_explain_never_prints_a_secret(tmp_path, environment):
    (tmp_path / "bot.toml").write_text(config_text(tmp_path, "http://127.0.0.1:9", 1))
    for text in ("leak", "config"):  # a plugin exception quoting the profile secret, and repr(bot.config)
        result = _cli("explain", "--config", str(tmp_path / "bot.toml"), "--to", "+13125550100", text)
        assert result.returncode == 0, result.stderr
        assert "FAILED" in result.stdout and ("[secret]" in result.stdout or text == "config")
        assert_no_secret(result.stdout + result.stderr, "bot-core explain")
        as_json = _cli("explain", "--config", str(tmp_path / "bot.toml"), "--to", "+13125550100", "--json", text)
        assert "failed" in json.loads(as_json.stdout)["error"]
        assert_no_secret(as_json.stdout, "bot-core explain --json")


def test_bot_core_profiles_masks_values_from_the_environment(tmp_path, environment, monkeypatch):
    monkeypatch.setenv("SUPPORT_PROFILE_ID", "4001a2b3-0000-4000-8000-000000000002")
    text = config_text(tmp_path, "http://127.0.0.1:9", 1).replace(
        "\n\n[profiles.sales]", '\ntelnyx_profile_id = "${SUPPORT_PROFILE_ID}"\n\n[profiles.sales]'
    )
    (tmp_path / "bot.toml").write_text(text)
    result = _cli("profiles", "--config", str(tmp_path / "bot.toml"), "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in map(json.loads, result.stdout.splitlines())}
    assert rows["main"]["telnyx_profile_id"] == "[secret]"
    assert "4001a2b3" not in result.stdout
