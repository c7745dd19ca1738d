"""``bot-core conversations``: list conversations, show one's state and timers, reset it."""

from __future__ import annotations

import json
from typing import Any

import click

from ..store import Store, iso

# Packed by hand (fmt: skip), so isort leaves it alone too.
# isort: off
from .common import (clip, config_option, echo_json, echo_json_lines, echo_table, group_config_option, json_option,
                     load, number_option, open_store)  # fmt: skip
# isort: on

LIST_COLUMNS = ("id", "profile", "our_number", "their_number", "updated_at", "messages", "timers", "state")
# An argument this short and all digits is a conversation id; anything else is a phone number.
_ID_DIGITS = 6

to_option = click.option("--to", "to_number", help="The bot's number, when the customer texts several of them.")


@click.group()
@group_config_option
def conversations() -> None:
    """List conversations, show one's state and timers, or reset it.

    A conversation is one (bot number, customer number) pair; plugins keep their state in it
    (a flow's place, a counter) and schedule its timers.

    \b
    Examples:
      bot-core conversations list --config bot.toml
      bot-core conversations show +13125550123 --config bot.toml
      bot-core conversations reset 12 --config bot.toml --yes
    """


@conversations.command("list")
@config_option
@json_option
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1), help="At most this many.")
@click.option("--profile", help="Only this messaging profile's conversations.")
@click.option("--number", help="Only conversations with this number (ours or the customer's).")
def list_command(config_path: str | None, as_json: bool, limit: int, profile: str | None, number: str | None) -> None:
    """List conversations, most recently active first, with message and pending timer counts.

    With --json: one object a line with id, profile, our_number, their_number, state,
    created_at, updated_at, messages, timers.

    \b
    Examples:
      bot-core conversations list --config bot.toml
      bot-core conversations list --config bot.toml --number +13125550123 --json
    """
    number = number_option(number, "--number")
    store = open_store(load(config_path), create=False)
    try:
        rows = store.conversation_rows(limit=limit, profile=profile, number=number)
    finally:
        store.close()
    if as_json:
        echo_json_lines(rows)
    else:
        state = clip(50)
        echo_table(rows, LIST_COLUMNS, {"state": lambda value: state(json.dumps(value, ensure_ascii=False))},
                   empty="no conversations")  # fmt: skip


@conversations.command()
@click.argument("which", metavar="ID|NUMBER")
@config_option
@to_option
@json_option
def show(which: str, config_path: str | None, to_number: str | None, as_json: bool) -> None:
    """Show one conversation: its state, pending timers and latest messages.

    ID|NUMBER is the conversation's id (from `conversations list`) or the customer's number.

    \b
    Examples:
      bot-core conversations show 12 --config bot.toml
      bot-core conversations show +13125550123 --to +13125550100 --config bot.toml --json
    """
    config = load(config_path)
    store = open_store(config, create=False)
    try:
        row = _find(store, which, to_number)
        timers = [{"id": t.id, "due_at": iso(t.due_at), "plugin": t.plugin, "name": t.name, "text": t.text,
                   "payload": t.payload} for t in store.timers(row["id"])]  # fmt: skip
        recent = store.mdrs(limit=10, conversation_id=row["id"])
    finally:
        store.close()
    if as_json:
        echo_json({**row, "pending_timers": timers, "recent_messages": recent})
        return
    for key in ("id", "profile", "our_number", "their_number", "created_at", "updated_at", "messages"):
        click.echo(f"{key:>12}: {'-' if row[key] is None else row[key]}")
    click.echo("state:" if row["state"] else "state: {} (empty)")
    if row["state"]:
        click.echo(_indent(json.dumps(row["state"], indent=2, ensure_ascii=False)))
    click.echo("pending timers:" if timers else "pending timers: none")
    for t in timers:
        what = f"plugin {t['plugin']} {t['name'] or ''}".rstrip() if t["plugin"] else f"text {json.dumps(t['text'])}"
        click.echo(f"  {t['id']}  due {t['due_at']}  {what}")
    click.echo("latest messages (newest first):" if recent else "latest messages: none")
    echo_table(recent, ("id", "created_at", "direction", "status", "text"), {"text": clip(60)})


@conversations.command()
@click.argument("which", metavar="ID|NUMBER")
@config_option
@to_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def reset(which: str, config_path: str | None, to_number: str | None, yes: bool) -> None:
    """Empty a conversation's state and cancel its pending timers: its next message starts afresh.

    Messages and opt-outs are kept (STOP is the customer's choice, not conversation state).
    Asks for confirmation unless --yes is given.

    \b
    Examples:
      bot-core conversations reset +13125550123 --config bot.toml
      bot-core conversations reset 12 --config bot.toml --yes
    """
    config = load(config_path)
    store = open_store(config, create=False)
    try:
        row = _find(store, which, to_number)
        what = f"conversation {row['id']} ({row['our_number']} <-> {row['their_number']}, profile {row['profile']})"
        if not yes:
            keys = ", ".join(row["state"]) or "none"
            click.confirm(f"Reset {what}: empty its state (keys: {keys}) and cancel {row['timers']} pending "
                          "timer(s)?", abort=True, err=True)  # fmt: skip
        cancelled = store.reset_conversation(row["id"])
    finally:
        store.close()
    click.echo(f"reset {what}: state emptied, {cancelled} timer(s) cancelled")


def _find(store: Store, which: str, to_number: str | None) -> dict[str, Any]:
    """The conversation ``which`` names: an id, or the customer's number (with ``--to`` if needed)."""
    if which.isdigit() and len(which) <= _ID_DIGITS:
        rows = store.conversation_rows(limit=1, conversation_id=int(which))
        if not rows:
            raise click.ClickException(f"no conversation with id {which}")
        return rows[0]
    customer = number_option(which, "ID|NUMBER")
    ours = number_option(to_number, "--to")
    rows = store.conversation_rows(limit=None, their_number=customer, our_number=ours)
    if not rows:
        raise click.ClickException(f"no conversation with {customer}" + (f" on {ours}" if ours else ""))
    if len(rows) > 1:
        listed = ", ".join(f"{r['our_number']} (id {r['id']})" for r in rows)
        raise click.UsageError(f"{customer} texts several of the bot's numbers: {listed}; give --to or the id")
    return rows[0]


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())

