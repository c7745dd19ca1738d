"""`bot-core operators`: add (prompted or --password-stdin), list, remove; Argon2 hashes only."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from click.testing import CliRunner

from bot_core.cli import cli
from bot_core.inbox import operators
from bot_core.store import Store

from .inprocess import bot_core

CONFIG = """
[bot]
database = "bot.db"

[profiles.support]
secret = "s1"
numbers = ["+13125550100"]

[profiles.sales]
secret = "s2"
numbers = ["+13125550101"]
"""
PASSWORD = "a long enough password"


def config(tmp_path: Path) -> str:
    path = tmp_path / "bot.toml"
    path.write_text(CONFIG)
    return str(path)


def invoke(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)
    return result.exit_code, result.output


def test_add_prompts_twice_and_stores_only_an_argon2_hash(tmp_path):
    path = config(tmp_path)
    code, out = invoke("operators", "add", "alice", "--profile", "support", "--config", path,
                       input=f"{PASSWORD}\n{PASSWORD}\n")  # fmt: skip
    assert code == 0, out
    assert "operator alice added; profiles: support" in out
    conn = sqlite3.connect(tmp_path / "bot.db")
    hashed, profiles = conn.execute("SELECT password_hash, profiles FROM operators WHERE name = 'alice'").fetchone()
    assert hashed.startswith("$argon2id$") and PASSWORD not in hashed
    assert json.loads(profiles) == ["support"]
    store = Store(tmp_path / "bot.db")  # the inbox reads operators through the store
    try:
        assert operators.authenticate(store, "alice", PASSWORD) == operators.Operator("alice", ("support",))
        assert operators.authenticate(store, "alice", "wrong") is None
        assert operators.authenticate(store, "nobody", PASSWORD) is None
    finally:
        store.close()


def test_password_stdin_list_and_remove(tmp_path):
    path = config(tmp_path)
    done = bot_core("operators", "add", "bob", "--password-stdin", "--config", path, input=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    code, out = invoke("operators", "list", "--config", path)
    assert code == 0 and "bob" in out and "all" in out
    code, out = invoke("operators", "list", "--json", "--config", path)
    assert [json.loads(line)["name"] for line in out.splitlines()] == ["bob"]
    assert "hash" not in out
    assert invoke("operators", "remove", "bob", "--config", path)[0] == 0
    code, out = invoke("operators", "remove", "bob", "--config", path)
    assert code == 1 and "no operator is named 'bob'" in out


def test_add_refuses_unknown_profiles_short_passwords_bad_names_and_duplicates(tmp_path):
    path = config(tmp_path)
    code, out = invoke(
        "operators", "add", "a", "--profile", "nope", "--password-stdin", "--config", path, input=PASSWORD
    )
    assert code == 2 and "unknown profile 'nope' (known: support, sales)" in out
    code, out = invoke("operators", "add", "a", "--password-stdin", "--config", path, input="short\n")
    assert code == 1 and "at least 8 characters" in out
    code, out = invoke("operators", "add", "has space", "--password-stdin", "--config", path, input=PASSWORD)
    assert code == 1 and "a name is" in out
    assert invoke("operators", "add", "a", "--password-stdin", "--config", path, input=PASSWORD)[0] == 0
    code, out = invoke("operators", "add", "a", "--password-stdin", "--config", path, input=PASSWORD)
    assert code == 1 and "operator 'a' exists" in out
