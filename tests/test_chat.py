"""`bot-core chat`: the customer simulator on real files; scripts run in the test's process
(tests/inprocess.py), the interactive session as a real process on a terminal."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bot_core.store import OutboundDraft, display, open_store

from .conftest import server_using
from .inprocess import bot_core

# Each test runs on both engines: its config names $BOT_CORE_DATABASE.
pytestmark = pytest.mark.usefixtures("database")

OURS = "+13125550100"
PLUGINS = {
    "lines.py": """
        from bot_core import hookimpl

        @hookimpl
        def handle_message(message):
            if message.text == "two lines":
                return "first line\\nsecond line"
            if message.text == "later":
                return None
            if message.text == "remind me":
                return "ok"
    """,
    "reminder.py": """
        from bot_core import hookimpl

        @hookimpl
        def handle_message(bot, message, conversation):
            if message.text == "remind me":
                bot.schedule(conversation, delay="600ms", text="reminder!")
    """,
}


def write_config(tmp_path: Path, plugins: str = '["echo"]', extra: str = "") -> Path:
    (tmp_path / "plugins").mkdir(exist_ok=True)
    for name, source in PLUGINS.items():
        (tmp_path / "plugins" / name).write_text(textwrap.dedent(source))
    path = tmp_path / "bot.toml"
    path.write_text(
        textwrap.dedent(f"""
        [bot]
        database = "${{BOT_CORE_DATABASE}}"
        plugins_dir = "plugins"

        [profiles.support]
        secret = "chat-secret"
        numbers = ["{OURS}", "+13125550101"]
        plugins = {plugins}

        [profiles.closed]
        enabled = false
        secret = "closed-secret"
        numbers = ["+13125550102"]
    """)
        + extra
    )
    return path


def chat(config: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    """`bot-core chat` with a script on stdin, in this process (the terminal session is a real one)."""
    return bot_core("chat", "--config", str(config), *args, input=script)


def mdrs(config: Path) -> list[dict]:
    store = open_store(os.environ["BOT_CORE_DATABASE"])
    try:
        return list(reversed(store.mdrs(limit=None)))
    finally:
        store.close()


def test_a_script_gets_each_reply_as_a_bot_line_and_exits_0(tmp_path):
    config = write_config(tmp_path)
    result = chat(config, "hi\nthere\n\nagain")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "you> hi\nbot> echo hi #1\nyou> there\nbot> echo there #2\nyou> again\nbot> echo again #3\n"
    )
    rows = mdrs(config)
    assert [(r["direction"], r["status"]) for r in rows] == [("inbound", "handled"), ("outbound", "sandbox")] * 3
    assert {(r["from"], r["to"]) for r in rows if r["direction"] == "inbound"} == {("+13125550123", OURS)}


def test_the_conversation_continues_across_runs_on_the_configs_database(tmp_path):
    config = write_config(tmp_path)
    chat(config, "one\n")
    assert chat(config, "two\n").stdout == "you> two\nbot> echo two #2\n"


def test_from_and_to_choose_the_conversation(tmp_path):
    config = write_config(tmp_path)
    result = chat(config, "hi\n", "--from", "+1 312 555 0199", "--to", "+13125550101")
    assert result.stdout == "you> hi\nbot> echo hi #1\n"
    inbound = [r for r in mdrs(config) if r["direction"] == "inbound"]
    assert (inbound[0]["from"], inbound[0]["to"]) == ("+13125550199", "+13125550101")


def test_opt_out_works_as_with_a_real_phone(tmp_path):
    config = write_config(tmp_path)
    result = chat(config, "STOP\nhello?\nSTART\nhello\n")
    lines = result.stdout.splitlines()
    assert lines[0:2] == ["you> STOP", "bot> You are unsubscribed and will get no more messages. Reply START to "
                          "resubscribe."]  # fmt: skip
    assert lines[2] == "you> hello?"  # claimed by optout, no reply
    assert lines[3:] == ["you> START", "bot> You are subscribed again. Reply STOP to unsubscribe.",
                         "you> hello", "bot> echo hello #1"]  # fmt: skip


def test_blocked_replies_are_noted_on_stderr_only(tmp_path):
    config = write_config(tmp_path, '["lines", "echo"]', "\n[profiles.support.plugin_config.optout]\nenabled = false\n")
    store = open_store(os.environ["BOT_CORE_DATABASE"])
    store.set_opted_out("support", "+13125550123", True, "test")
    store.close()
    result = chat(config, "hi\n")
    assert result.stdout == "you> hi\n"
    assert "(not sent, blocked: recipient opted out: echo hi #1)" in result.stderr


def test_a_message_no_plugin_claims_is_noted(tmp_path):
    config = write_config(tmp_path, '["lines"]')
    result = chat(config, "later\n")
    assert result.stdout == "you> later\n"
    assert "(unhandled: no plugin answered)" in result.stderr


def test_a_reply_with_line_breaks_stays_on_one_bot_line(tmp_path):
    config = write_config(tmp_path, '["lines"]')
    assert chat(config, "two lines\n").stdout == "you> two lines\nbot> first line\\nsecond line\n"


def test_chat_refuses_a_database_a_server_has_open(tmp_path):
    config = write_config(tmp_path)
    with server_using(os.environ["BOT_CORE_DATABASE"]):
        result = chat(config, "hi\n")
    assert result.returncode == 1
    assert "another process" in result.stderr and display(os.environ["BOT_CORE_DATABASE"]) in result.stderr
    assert mdrs(config) == []


def test_chat_refuses_a_database_with_messages_waiting_to_be_sent(tmp_path):
    config = write_config(tmp_path)
    store = open_store(os.environ["BOT_CORE_DATABASE"])
    store.add_outbound(OutboundDraft("support", OURS, "+13125550777", "a real customer's reply"))
    store.close()
    result = chat(config, "hi\n")
    assert result.returncode == 1 and "1 to send" in result.stderr
    assert [r["status"] for r in mdrs(config)] == ["pending"]


FLOW = """
[profiles.support.plugin_config.flows.signup]
trigger = "JOIN"
expire_after = "1h"
expiry_message = "Your signup timed out."
steps = [{ ask = "Name?", save_as = "name" }, { ask = "ZIP?", save_as = "zip" }]
done = "Thanks {name}!"
"""


def test_wait_moves_the_clock_so_timers_fire_and_flows_expire(tmp_path):
    config = write_config(tmp_path, '["flows", "echo"]', extra=FLOW)
    result = chat(config, "JOIN\nAda\n/wait 59m\n/wait 1m\nhello\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "you> JOIN", "bot> Name?", "you> Ada", "bot> ZIP?",
        "you> /wait 59m",  # not due yet: nothing
        "you> /wait 1m", "bot> Your signup timed out.",
        "you> hello", "bot> echo hello #1",
    ]  # fmt: skip


def test_chat_commands_help_typos_and_a_literal_slash(tmp_path):
    config = write_config(tmp_path)
    result = chat(config, "/help\n/wait soon\n/wiat 5m\n//wait 5m\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "bot> echo /wait 5m #1"
    assert "/wait DURATION" in result.stderr and "(/wait: 'soon' is not a duration" in result.stderr
    assert "(unknown command /wiat: text it as //wiat 5m" in result.stderr


def test_other_customers_timers_neither_stop_chat_nor_fire_in_it(tmp_path):
    config = write_config(tmp_path)
    store = open_store(os.environ["BOT_CORE_DATABASE"])
    other = store.conversation("support", OURS, "+13125550777")
    store.add_timer(other.id, time.time() - 5, text="a real customer's reminder")  # due already
    store.close()
    result = chat(config, "hi\n/wait 1d\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["you> hi", "bot> echo hi #1", "you> /wait 1d"]
    store = open_store(os.environ["BOT_CORE_DATABASE"])
    try:
        assert [t.text for t in store.timers(other.id)] == ["a real customer's reminder"]  # still pending
    finally:
        store.close()
    assert "a real customer's reminder" not in [r["text"] for r in mdrs(config)]


def test_chat_refuses_a_number_that_is_not_messaging_enabled(tmp_path):
    config = write_config(tmp_path)
    result = chat(config, "hi\n", "--to", "+13125550102")
    assert result.returncode == 2 and "messaging profile 'closed' is disabled" in result.stderr


def read_until(fd: int, wanted: bytes, seen: bytearray, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"never saw {wanted!r} in {bytes(seen)!r}")
        seen.extend(os.read(fd, 4096))


def test_interactive_session_prompts_and_prints_replies_sent_later(tmp_path):
    config = write_config(tmp_path, '["reminder", "lines"]')
    primary, secondary = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "bot_core", "chat", "--config", str(config)],
                               stdin=secondary, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    os.close(secondary)
    try:
        seen = bytearray()
        read_until(process.stdout.fileno(), b"you> ", seen)
        os.write(primary, b"remind me\n")
        read_until(process.stdout.fileno(), b"bot> ok\n", seen)
        read_until(process.stdout.fileno(), b"bot> reminder!\n", seen)  # no input needed: a timer sent it
        os.write(primary, b"\x04")  # Ctrl-D
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        os.close(primary)
        process.stdout.close()
        stderr = process.stderr.read().decode()
        process.stderr.close()
    assert "Sandbox: nothing is sent" in stderr
    assert b"you> remind me" not in seen  # the terminal shows what was typed; no echo
