"""``bot-core conversations``: list, show (state, timers, messages) and reset, on a real database."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from click.testing import CliRunner

from bot_core.cli import cli
from bot_core.testing import BotTester

OURS, SECOND, CUSTOMER, OTHER = "+13125550100", "+13125550101", "+13125550123", "+13125550188"


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "bot.toml"
    path.write_text(
        textwrap.dedent(f"""
        [bot]
        database = "bot.db"
        sandbox = true

        [profiles.alerts]
        secret = "s"
        numbers = ["{OURS}", "{SECOND}"]
        plugins = ["flows", "echo"]

        [profiles.alerts.plugin_config.flows.signup]
        trigger = "JOIN"
        expire_after = "1h"
        steps = [{{ ask = "What's your name?", save_as = "name" }}, {{ ask = "ZIP?", save_as = "zip" }}]
        done = "Thanks {{name}}!"
    """)
    )
    return path


def seeded(tmp_path: Path) -> Path:
    """The customer is halfway through the signup flow (state and an expiry timer); another echoed once."""
    path = write_config(tmp_path)
    with BotTester(path, tmp_path=tmp_path) as bot:
        assert bot.text("JOIN", from_=CUSTOMER) == ["What's your name?"]
        assert bot.text("Ada", from_=CUSTOMER) == ["ZIP?"]
        assert bot.text("hello", from_=OTHER) == ["echo hello #1"]
    return path


def invoke(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)
    return result.exit_code, result.output


def test_list_shows_each_conversation_with_counts_and_state(tmp_path):
    config = seeded(tmp_path)
    code, out = invoke("conversations", "list", "--config", str(config), "--json")
    assert code == 0, out
    rows = {row["their_number"]: row for row in map(json.loads, out.splitlines())}
    assert rows[CUSTOMER]["state"]["flows"]["answers"] == {"name": "Ada"}
    assert (rows[CUSTOMER]["messages"], rows[CUSTOMER]["timers"]) == (4, 1)
    assert (rows[OTHER]["state"], rows[OTHER]["timers"]) == ({"n": 1}, 0)
    code, out = invoke("conversations", "list", "--config", str(config), "--number", OTHER)
    assert code == 0 and OTHER in out and CUSTOMER not in out


def test_show_by_number_or_id_prints_state_timers_and_messages(tmp_path):
    config = seeded(tmp_path)
    code, out = invoke("conversations", "show", CUSTOMER, "--config", str(config))
    assert code == 0, out
    assert '"name": "Ada"' in out and "plugin flows expire" in out and "ZIP?" in out
    code, out = invoke("conversations", "show", CUSTOMER, "--config", str(config), "--json")
    shown = json.loads(out)
    assert [t["plugin"] for t in shown["pending_timers"]] == ["flows"]
    assert [m["text"] for m in shown["recent_messages"]] == ["ZIP?", "Ada", "What's your name?", "JOIN"]
    code, out = invoke("conversations", "show", str(shown["id"]), "--json", "--config", str(config))
    assert json.loads(out)["their_number"] == CUSTOMER
    code, out = invoke("conversations", "show", "999", "--config", str(config))
    assert code == 1 and "no conversation with id 999" in out


def test_reset_asks_first_then_empties_state_and_cancels_timers(tmp_path):
    config = seeded(tmp_path)
    code, out = invoke("conversations", "reset", CUSTOMER, "--config", str(config), input="n\n")
    assert code == 1 and "Aborted" in out
    assert json.loads(invoke("conversations", "show", CUSTOMER, "--json", "--config", str(config))[1])["timers"] == 1
    code, out = invoke("conversations", "reset", CUSTOMER, "--config", str(config), input="y\n")
    assert code == 0 and "state emptied, 1 timer(s) cancelled" in out
    shown = json.loads(invoke("conversations", "show", CUSTOMER, "--json", "--config", str(config))[1])
    assert (shown["state"], shown["pending_timers"]) == ({}, [])
    # The next message starts afresh: outside the flow, "Grace" is no answer to a question.
    with BotTester(config, tmp_path=tmp_path) as bot:
        assert bot.text("Grace", from_=CUSTOMER)[-1] == "echo Grace #1"
        assert bot.advance("2h") == []  # the cancelled expiry timer never fires
    code, out = invoke("conversations", "reset", OTHER, "--yes", "--config", str(config))
    assert code == 0 and "0 timer(s) cancelled" in out


def test_a_customer_texting_two_bot_numbers_needs_to_or_an_id(tmp_path):
    config = seeded(tmp_path)
    with BotTester(config, tmp_path=tmp_path) as bot:
        bot.text("hi", from_=CUSTOMER, to=SECOND)
    code, out = invoke("conversations", "show", CUSTOMER, "--config", str(config))
    assert code == 2 and "texts several of the bot's numbers" in out and OURS in out and SECOND in out
    code, out = invoke("conversations", "show", CUSTOMER, "--to", SECOND, "--json", "--config", str(config))
    assert code == 0 and json.loads(out)["state"] == {"n": 1}
