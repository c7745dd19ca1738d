"""The operator's CLI on real files: messages, show --refresh, profiles, numbers, plugins, optouts,
send, explain and every command's --help, run in the test's process (tests/inprocess.py); a
server, and the entry points a new interpreter finds, are real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bot_core.cli import cli
from bot_core.messages import InboundMessage
from bot_core.store import OutboundDraft, open_store
from bot_core.testing import FakeTelnyx

from .conftest import server_using, wait_for
from .inprocess import bot_core

# Each test runs on both engines: its config names $BOT_CORE_DATABASE.
pytestmark = pytest.mark.usefixtures("database")

OURS, OTHER, CLOSED, LONELY = "+13125550100", "+13125550101", "+13125550102", "+13125550103"
CUSTOMER = "+13125550123"
SECRET = "cli-support-secret"


def write_config(tmp_path: Path, extra: str = "", telnyx: str = "", bot: str = "") -> Path:
    (tmp_path / "plugins").mkdir(exist_ok=True)
    (tmp_path / "plugins" / "boom.py").write_text(
        textwrap.dedent("""
        from bot_core import hookimpl

        @hookimpl
        def handle_message(message):
            if message.text == "boom":
                raise RuntimeError("kaboom")
    """)
    )
    path = tmp_path / "bot.toml"
    path.write_text(
        textwrap.dedent(f"""
        [bot]
        database = "${{BOT_CORE_DATABASE:-bot.db}}"
        plugins_dir = "plugins"
        {bot}

        [telnyx]
        {telnyx}

        [profiles.support]
        secret = "{SECRET}"
        numbers = ["{OURS}", "{OTHER}"]
        plugins = ["boom", "echo"]
        alphanumeric_sender_id = "ACME"
        telnyx_profile_id = "4001a2b3-0000-4000-8000-000000000002"

        [profiles.closed]
        enabled = false
        secret = "closed-secret"
        numbers = ["{CLOSED}"]

        [numbers."{LONELY}"]
        plugins = ["echo"]
    """)
        + extra
    )
    return path


def sandbox(tmp_path: Path) -> Path:
    return write_config(tmp_path, bot="sandbox = true")


def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    """The command in this process: what a child process would answer, without starting Python."""
    return bot_core(*args, input=input)


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def seed(config: Path) -> None:
    """Messages at known times: 3 h ago (support, inbound and reply), 1 h ago (closed, ignored)."""
    now = time.time()
    for ago, profile, ours, text, status in ((3, "support", OURS, "old", "handled"),
                                             (1, "closed", CLOSED, "new", "ignored")):  # fmt: skip
        store = open_store(os.environ["BOT_CORE_DATABASE"], clock=lambda ago=ago: now - ago * 3600)
        mdr = store.add_inbound(InboundMessage(f"m-{text}", text, CUSTOMER, ours, profile), status=status)
        if status == "handled":
            store.add_outbound(OutboundDraft(profile, ours, CUSTOMER, "echo ça va", status="sandbox",
                                             encoding="UCS-2", parts=1), None)  # fmt: skip
        assert mdr
        store.close()


# -- messages -------------------------------------------------------------------------------


def test_messages_json_has_the_issue_keys_with_encoding_and_parts(tmp_path):
    config = sandbox(tmp_path)
    seed(config)
    code, out = invoke("messages", "--config", str(config), "--json")
    rows = json_lines(out)
    assert code == 0 and [r["text"] for r in rows] == ["new", "echo ça va", "old"]
    assert {"id", "direction", "profile", "from", "to", "text", "status", "telnyx_id", "created_at",
            "updated_at", "encoding", "parts"} <= rows[1].keys()  # fmt: skip
    assert (rows[1]["encoding"], rows[1]["parts"]) == ("UCS-2", 1)


@pytest.mark.parametrize(("args", "texts"), [
    (["--profile", "closed"], ["new"]),
    (["--number", "+1 (312) 555-0102"], ["new"]),
    (["--number", CUSTOMER], ["new", "echo ça va", "old"]),
    (["--direction", "outbound"], ["echo ça va"]),
    (["--status", "handled"], ["old"]),
    (["--since", "2h"], ["new"]),
    (["--since", "2000-01-01T00:00"], ["new", "echo ça va", "old"]),
    (["--since", "2999-01-01T00:00+02:00"], []),
    (["--direction", "inbound", "--profile", "support", "--since", "4h"], ["old"]),
    (["--limit", "1"], ["new"]),
])  # fmt: skip
def test_messages_filters(tmp_path, args, texts):
    config = sandbox(tmp_path)
    seed(config)
    code, out = invoke("messages", "--config", str(config), "--json", *args)
    assert code == 0, out
    assert [r["text"] for r in json_lines(out)] == texts


def test_messages_table_and_a_bad_since(tmp_path):
    config = sandbox(tmp_path)
    seed(config)
    code, out = invoke("messages", "--config", str(config))
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split() == ["id", "created_at", "direction", "status", "from", "to", "parts", "text"]
    assert "echo ça va" in lines[1] and "outbound" in lines[1]
    code, out = invoke("messages", "--config", str(config), "--since", "yesterday")
    assert code == 2 and "neither ISO 8601" in out


def test_messages_show_prints_the_whole_mdr(tmp_path):
    config = sandbox(tmp_path)
    seed(config)
    code, out = invoke("messages", "--config", str(config), "show", "2", "--json")
    detail = json.loads(out)
    assert code == 0 and (detail["id"], detail["text"], detail["delivery_events"]) == (2, "echo ça va", [])
    assert {"attempts", "claimed_by", "conversation_id", "media"} <= detail.keys()
    code, out = invoke("messages", "--config", str(config), "show", "1")
    assert code == 0 and "text: old" in out
    code, out = invoke("messages", "--config", str(config), "show", "99")
    assert code == 1 and "no MDR with id 99" in out


def sent_through(fake: FakeTelnyx, config: Path) -> dict:
    """Send a message with `bot-core send` (no server running) and return its MDR."""
    result = run("send", "--config", str(config), "--profile", "support", "--to", CUSTOMER, "--json", "hello")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_show_refresh_fetches_the_mdr_from_telnyx_with_the_profile_secret(tmp_path):
    with FakeTelnyx() as fake:
        config = write_config(tmp_path, telnyx=f'api_base = "{fake.url}"')
        row = sent_through(fake, config)
        assert row["status"] == "queued"
        fake.report(row["telnyx_id"], "delivered")  # Telnyx's record moves on; no webhook reached us
        code, out = invoke("messages", "--config", str(config), "show", str(row["id"]), "--refresh", "--json")
        assert code == 0, out
        detail = json.loads(out)
        assert detail["status"] == "delivered"
        assert [e["status"] for e in detail["delivery_events"]] == ["delivered"]
        fetch = fake.requests[-1]
        assert (fetch.method, fetch.path, fetch.headers["x-profile-secret"]) == \
            ("GET", f"/messages/{row['telnyx_id']}", SECRET)  # fmt: skip
        code, out = invoke("messages", "--config", str(config), "show", str(row["id"]), "--refresh")
        assert code == 0 and "Telnyx reports delivered" in out


def test_show_refresh_through_the_v2_api_uses_the_api_key(tmp_path):
    with FakeTelnyx(api_key="KEY123") as fake:
        config = write_config(tmp_path, telnyx=f'api_version = 2\napi_key = "KEY123"\napi_base = "{fake.url}/v2"')
        row = sent_through(fake, config)
        fake.report(row["telnyx_id"], "delivery_failed")
        code, out = invoke("messages", "--config", str(config), "show", str(row["id"]), "--refresh", "--json")
        assert code == 0, out
        assert json.loads(out)["status"] == "delivery_failed"
        assert fake.requests[-1].headers["authorization"] == "Bearer KEY123"
        assert "KEY123" not in out


def test_show_refresh_explains_what_cannot_be_refreshed(tmp_path):
    with FakeTelnyx() as fake:
        config = write_config(tmp_path, telnyx=f'api_base = "{fake.url}"')
        row = sent_through(fake, config)
        fake.messages.clear()  # Telnyx no longer knows it
        code, out = invoke("messages", "--config", str(config), "show", str(row["id"]), "--refresh")
        assert code == 1 and "Telnyx answered 404" in out and "Resource not found" in out
    seed(config)
    code, out = invoke("messages", "--config", str(config), "show", "3", "--refresh")
    assert code == 1 and "never sent to Telnyx (status sandbox)" in out
    code, out = invoke("messages", "--config", str(config), "show", "2", "--refresh")
    assert code == 1 and "is inbound" in out


# -- profiles, numbers, plugins, optouts ----------------------------------------------------


def test_numbers_show_state_reason_plugins_and_counts(tmp_path):
    config = sandbox(tmp_path)
    seed(config)
    code, out = invoke("numbers", "--config", str(config), "--json")
    rows = {r["number"]: r for r in json_lines(out)}
    assert code == 0 and set(rows) == {OURS, OTHER, CLOSED, LONELY}
    assert rows[OURS] == {"number": OURS, "profile": "support", "capable": True, "enabled": True, "reason": None,
                          "plugins": ["optout", "boom", "echo"], "inbound": 1, "outbound": 1}  # fmt: skip
    assert (rows[CLOSED]["enabled"], rows[CLOSED]["reason"]) == (False, "messaging profile 'closed' is disabled")
    assert (rows[LONELY]["profile"], rows[LONELY]["reason"]) == (None, "not assigned to a messaging profile")
    code, out = invoke("numbers", "--config", str(config))
    assert code == 0 and "not assigned to a messaging profile" in out and out.startswith("number ")


def test_profiles_show_plugins_counts_and_never_secrets(tmp_path):
    config = sandbox(tmp_path)
    seed(config)
    code, out = invoke("profiles", "--config", str(config), "--json")
    rows = {r["name"]: r for r in json_lines(out)}
    assert code == 0
    assert rows["support"]["plugins"] == ["optout", "boom", "echo"]
    assert (rows["support"]["inbound"], rows["support"]["outbound"], rows["closed"]["inbound"]) == (1, 1, 1)
    assert rows["support"]["alphanumeric_sender_id"] == "ACME" and rows["closed"]["enabled"] is False
    code, table = invoke("profiles", "--config", str(config))
    assert SECRET not in out + table and "closed-secret" not in out + table


def test_plugins_show_where_each_came_from_and_its_hooks(tmp_path):
    config = sandbox(tmp_path)
    code, out = invoke("plugins", "--config", str(config), "--json")
    rows = {r["name"]: r for r in json_lines(out)}
    assert code == 0
    assert rows["echo"]["source"] == "bundled" and rows["echo"]["hooks"] == ["check_config", "handle_message"]
    assert rows["boom"]["source"] == f"plugins_dir {tmp_path / 'plugins' / 'boom.py'}"
    assert rows["boom"]["profiles"] == ["support"]  # closed lists no plugins: only optout answers there


def test_plugins_names_the_distribution_of_an_installed_entry_point(tmp_path):
    config = sandbox(tmp_path)
    site = tmp_path / "site"
    (site / "greeter-2.0.dist-info").mkdir(parents=True)
    (site / "greeter-2.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: greeter\nVersion: 2.0\n")
    (site / "greeter-2.0.dist-info" / "entry_points.txt").write_text("[bot_core]\ngreet = greet_plugin\n")
    (site / "greet_plugin.py").write_text("from bot_core import hookimpl\n\n@hookimpl\ndef startup(bot):\n    pass\n")
    # A real process: entry points are what the interpreter finds on its path when it starts.
    result = subprocess.run([sys.executable, "-m", "bot_core", "plugins", "--config", str(config)], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(site)})  # fmt: skip
    line = next(line for line in result.stdout.splitlines() if line.startswith("greet "))
    assert "entry point greeter" in line and "startup" in line


def test_optouts_list_who_and_how_and_the_history(tmp_path):
    config = sandbox(tmp_path)
    chatted = run("chat", "--config", str(config), input="STOP\nSTART\nSTOP\n")
    assert chatted.returncode == 0, chatted.stderr
    code, out = invoke("optouts", "--config", str(config), "--json")
    (row,) = json_lines(out)
    # Account-wide (profile None, "-" in the table), as Telnyx's opt-outs are by default.
    assert (row["profile"], row["number"]) == (None, CUSTOMER) and row["source"].startswith("texted STOP")
    code, out = invoke("optouts", "--config", str(config), "--history", "--json")
    assert [r["action"] for r in json_lines(out)] == ["opt_out", "opt_in", "opt_out"]
    code, out = invoke("optouts", "--config", str(config))
    assert code == 0 and CUSTOMER in out and "texted STOP" in out
    assert out.splitlines()[1].startswith("-  ")  # the profile column of an account-wide opt-out


# -- send -----------------------------------------------------------------------------------


def test_send_in_sandbox_records_the_message(tmp_path):
    config = sandbox(tmp_path)
    result = run("send", "--config", str(config), "--profile", "support", "--to", "+1 312 555 0123", "Hi there")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("MDR 1: +13125550100 -> +13125550123, 1 part(s) GSM-7: sandbox")
    code, out = invoke("messages", "--config", str(config), "--json")
    assert [(r["from"], r["to"], r["text"], r["status"]) for r in json_lines(out)] == \
        [(OURS, CUSTOMER, "Hi there", "sandbox")]  # fmt: skip


def test_send_goes_out_through_telnyx_with_the_profile_secret(tmp_path):
    with FakeTelnyx() as fake:
        config = write_config(tmp_path, telnyx=f'api_base = "{fake.url}"')
        result = run("send", "--config", str(config), "--from", OTHER, "--to", CUSTOMER, "-", input="From stdin\n")
        assert result.returncode == 0, result.stderr
        assert ": queued (telnyx id " in result.stdout
        (request,) = fake.sent
        assert request.headers["x-profile-secret"] == SECRET
        assert request.json == {"from": OTHER, "to": CUSTOMER, "body": "From stdin"}


def test_send_respects_opt_outs(tmp_path):
    config = sandbox(tmp_path)
    store = open_store(os.environ["BOT_CORE_DATABASE"])
    store.set_opted_out("support", CUSTOMER, True, "texted STOP")
    store.close()
    result = run("send", "--config", str(config), "--profile", "support", "--to", CUSTOMER, "--json", "Sale!")
    assert result.returncode == 1
    row = json.loads(result.stdout)
    assert (row["status"], row["error"]) == ("blocked", "recipient opted out")


def test_send_refuses_a_number_without_its_country_code_saying_what_it_should_be(tmp_path):
    # Never read "3125550123" as "+3125550123" (the Netherlands): refuse it and show E.164.
    result = run("send", "--config", str(sandbox(tmp_path)), "--profile", "support", "--to", "3125550123", "hi")
    assert result.returncode == 2
    assert "--to" in result.stderr and "write +13125550123" in result.stderr


# Telnyx's Alphanumeric Sender ID page: not supported to the United States, Canada or Puerto
# Rico; the other US territories of the NANP (here Guam) are our reading (changes/fidelity.md).
@pytest.mark.parametrize(
    ("to", "country"),
    [
        (CUSTOMER, "the United States"),
        ("+14165550123", "Canada"),
        ("+17875550100", "Puerto Rico"),
        ("+16715550100", "Guam"),
    ],
)
def test_send_refuses_an_alphanumeric_sender_to_us_canada_and_us_territories(tmp_path, to, country):
    config = sandbox(tmp_path)
    result = run("send", "--config", str(config), "--profile", "support", "--alphanumeric", "--to", to, "Code 1")
    assert result.returncode == 1
    assert f"Telnyx does not deliver alphanumeric sender IDs to {country}" in result.stderr
    assert invoke("messages", "--config", str(config), "--json")[1] == ""


def test_send_from_an_alphanumeric_sender_elsewhere(tmp_path):
    config = sandbox(tmp_path)
    result = run("send", "--config", str(config), "--profile", "support", "--alphanumeric", "--to", "+4915123456789",
                 "--json", "Code 1234")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (json.loads(result.stdout)["from"], json.loads(result.stdout)["status"]) == ("ACME", "sandbox")


@pytest.mark.parametrize(("args", "message"), [
    (["--to", CUSTOMER, "x"], "give --profile"),
    (["--profile", "support", "--from", OURS, "--alphanumeric", "--to", CUSTOMER, "x"], "not both"),
    (["--profile", "nope", "--to", CUSTOMER, "x"], "no messaging profile 'nope'"),
    (["--profile", "support", "--to", "12", "x"], "Invalid value for --to: '12' is not a phone number"),
    (["--profile", "support", "--to", CUSTOMER, "  "], "the message is empty"),
])  # fmt: skip
def test_send_usage_errors(tmp_path, args, message):
    result = run("send", "--config", str(sandbox(tmp_path)), *args)
    assert result.returncode == 2 and message in result.stderr


def test_send_from_a_number_of_another_profile_is_refused(tmp_path):
    config = str(sandbox(tmp_path))
    result = run("send", "--config", config, "--profile", "closed", "--from", OURS, "--to", CUSTOMER, "x")
    assert result.returncode == 1 and "does not belong to profile 'closed'" in result.stderr


def test_send_fails_cleanly_when_telnyx_refuses_a_stopped_number(tmp_path):
    with FakeTelnyx() as fake:
        fake.opt_out(CUSTOMER)
        config = write_config(tmp_path, telnyx=f'api_base = "{fake.url}"')
        result = run("send", "--config", str(config), "--profile", "support", "--to", CUSTOMER, "Hello")
    assert result.returncode == 1 and "NOT SENT" in result.stdout and "40300" in result.stdout
    code, out = invoke("optouts", "--config", str(config), "--json")
    assert json_lines(out)[0]["source"] == "telnyx 40300"


def test_send_beside_a_running_server_leaves_the_sending_to_it(tmp_path, server_factory, fake_telnyx_server):
    fake = fake_telnyx_server
    server = server_factory(write_config(tmp_path, telnyx=f'api_base = "{fake.url}"').read_text()).start()
    result = run("send", "--config", str(server.config), "--profile", "support", "--to", CUSTOMER, "--json", "Hi")
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["status"] == "queued" and row["telnyx_id"]
    wait_for(lambda: "sent 1 to +13125550123: queued" in server.log)  # the server sent it, not the CLI
    assert [r.json["body"] for r in fake.sent] == ["Hi"]


# -- explain --------------------------------------------------------------------------------


def test_explain_shows_the_order_the_claim_and_the_reply_without_storing_anything(tmp_path):
    config = sandbox(tmp_path)
    assert run("chat", "--config", str(config), input="hi\n").returncode == 0
    before = invoke("messages", "--config", str(config), "--json")[1]
    result = run("explain", "--config", str(config), "--to", OURS, "--json", "STOP")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["plugins"] == ["optout", "boom", "echo"] and answer["claimed_by"] == "optout"
    assert [t["result"] for t in answer["trace"]] == ["claimed", "not reached", "not reached"]
    assert answer["replies"][0]["text"].startswith("You are unsubscribed")
    assert answer["state_before"] == {"n": 1}
    # The optout plugin opted the number out, but only in the throw-away copy.
    assert invoke("optouts", "--config", str(config), "--json")[1] == ""
    assert invoke("messages", "--config", str(config), "--json")[1] == before


def test_explain_in_words(tmp_path):
    config = sandbox(tmp_path)
    result = run("explain", "--config", str(config), "hello")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f'{CUSTOMER} -> {OURS} (profile support): "hello"'
    assert [line.split() for line in lines[2:5]] == [["1.", "optout", "passed"], ["2.", "boom", "passed"],
                                                     ["3.", "echo", "claimed"]]  # fmt: skip
    assert "claimed by: echo" in lines and "dry run: nothing was stored or sent" in lines
    assert '  "echo hello #1"  [1 part(s) GSM-7, would be sent]' in lines


def test_explain_a_failing_plugin_and_a_disabled_number(tmp_path):
    config = sandbox(tmp_path)
    failed = json.loads(run("explain", "--config", str(config), "--json", "boom").stdout)
    assert (failed["status"], failed["claimed_by"]) == ("failed", "boom") and "kaboom" in failed["error"]
    assert [t["result"] for t in failed["trace"]] == ["passed", "failed", "not reached"]
    closed = run("explain", "--config", str(config), "--to", CLOSED, "hi")
    assert closed.returncode == 0 and "reaches no plugin: messaging profile 'closed' is disabled" in closed.stdout
    unknown = run("explain", "--config", str(config), "--to", "+13125550999", "hi")
    assert unknown.returncode == 1 and "not assigned to any messaging profile" in unknown.stderr


def test_explain_works_beside_a_running_server(tmp_path):
    config = sandbox(tmp_path)
    with server_using(os.environ["BOT_CORE_DATABASE"]):
        result = run("explain", "--config", str(config), "--json", "hi")
    assert result.returncode == 0 and json.loads(result.stdout)["claimed_by"] == "echo"


# -- --config anywhere; no stray demo databases ------------------------------------------------


@pytest.mark.parametrize("args", [
    ["messages", "show", "1", "--config", "{config}"],
    ["messages", "show", "--config", "{config}", "1"],
    ["messages", "--config", "{config}", "show", "1"],
    ["--config", "{config}", "messages", "show", "1"],
    ["messages", "show", "1", "--json", "--config", "{config}"],
])  # fmt: skip
def test_config_works_in_every_position(tmp_path, monkeypatch, args):
    config = sandbox(tmp_path)
    seed(config)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the demo bot would use a database here
    code, out = invoke(*(a.format(config=config) for a in args))
    assert code == 0, out
    assert "old" in out and not list(elsewhere.iterdir())


def test_a_typed_config_wins_over_the_environment_at_any_level(tmp_path, monkeypatch):
    config = sandbox(tmp_path)
    seed(config)
    monkeypatch.setenv("BOT_CORE_CONFIG", str(tmp_path / "absent.toml"))
    for args in (["profiles", "--json", "--config", str(config)], ["--config", str(config), "profiles", "--json"]):
        code, out = invoke(*args)
        assert code == 0, out
        assert {r["name"] for r in json_lines(out)} == {"support", "closed"}
    code, out = invoke("profiles")
    assert code == 1 and "absent.toml" in out


@pytest.mark.parametrize("args", [
    ["messages"], ["messages", "show", "1"], ["optouts"], ["conversations", "list"], ["conversations", "show", "1"],
])  # fmt: skip
def test_read_only_commands_without_a_config_create_no_database(tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BOT_CORE_CONFIG", raising=False)
    code, out = invoke(*args)
    assert code == 1
    assert "no --config given, and no demo database (bot-core-demo.db) in this folder" in out
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("engine", ["sqlite"])  # a database file next to the config, not there yet
def test_inventories_without_a_database_show_zero_counts_and_create_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BOT_CORE_DATABASE")
    monkeypatch.delenv("BOT_CORE_CONFIG", raising=False)
    for command in ("profiles", "numbers", "plugins"):
        code, out = invoke(command, "--json")
        assert code == 0, out
        assert json_lines(out)
    code, out = invoke("profiles", "--json")
    assert json_lines(out)[0]["inbound"] == 0
    assert not list(tmp_path.iterdir())
    (tmp_path / "bot").mkdir()
    config = sandbox(tmp_path / "bot")
    code, out = invoke("messages", "--config", str(config))
    assert code == 1 and f"no database at {config.parent / 'bot.db'} yet" in out
    assert not (config.parent / "bot.db").exists()


# -- help -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [
    [], ["serve"], ["check"], ["chat"], ["send"], ["messages"], ["messages", "show"], ["profiles"], ["numbers"],
    ["plugins"], ["optouts"], ["explain"], ["telnyx"], ["telnyx", "sync"], ["conversations"],
    ["conversations", "list"], ["conversations", "show"], ["conversations", "reset"], ["init"],
])  # fmt: skip
def test_every_command_has_help_with_examples(command):
    code, out = invoke(*command, "--help")
    assert code == 0 and "Example" in out and "bot-core " in out
