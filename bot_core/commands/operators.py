"""``bot-core operators``: add, list and remove the people who may use the operator inbox."""

from __future__ import annotations

import sys
import time

import click

from ..inbox import operators as ops
from .common import config_option, echo_json_lines, echo_table, group_config_option, json_option, load, open_store


@click.group()
@group_config_option
def operators() -> None:
    """Manage the operators of the inbox (served under /inbox when [inbox] enabled = true).

    \b
    Examples:
      bot-core operators add alice --config bot.toml                 # every profile
      bot-core operators add bob --profile support --config bot.toml # only support's conversations
      echo "$PASSWORD" | bot-core operators add carol --password-stdin --config bot.toml
      bot-core operators list --config bot.toml
      bot-core operators remove bob --config bot.toml
    """


@operators.command("add")
@config_option
@click.argument("name")
@click.option("--profile", "profiles", multiple=True, help="A profile they may see (repeat; default: all).")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
def add(config_path: str | None, name: str, profiles: tuple[str, ...], password_stdin: bool) -> None:
    """Add operator NAME; the password is prompted for (or read with --password-stdin)."""
    config = load(config_path)
    unknown = [p for p in profiles if p not in config.profiles]
    if unknown:
        raise click.BadParameter(f"unknown profile {unknown[0]!r} (known: {', '.join(config.profiles) or 'none'})",
                                 param_hint="--profile")  # fmt: skip
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if problem := ops.check_new(name, password):
        raise click.ClickException(problem)
    store = open_store(config)
    try:
        with store.transaction() as conn:
            added = ops.add(conn, name, password, profiles, time.time())
    finally:
        store.close()
    if not added:
        raise click.ClickException(f"operator {name!r} exists; remove it first to change it")
    click.echo(f"operator {name} added; profiles: {', '.join(sorted(set(profiles))) or 'all'}")


@operators.command("list")
@config_option
@json_option
def list_(config_path: str | None, as_json: bool) -> None:
    """List operators and the profiles each may see (never their password hashes)."""
    store = open_store(load(config_path))
    try:
        rows = ops.everyone(store)
    finally:
        store.close()
    if as_json:
        echo_json_lines(rows)
    else:
        echo_table(rows, ("name", "profiles", "created_at"), {"profiles": lambda p: ", ".join(p) or "all"})


@operators.command("remove")
@config_option
@click.argument("name")
def remove(config_path: str | None, name: str) -> None:
    """Remove operator NAME; their open sessions end at their next request."""
    store = open_store(load(config_path))
    try:
        with store.transaction() as conn:
            removed = ops.remove(conn, name)
    finally:
        store.close()
    if not removed:
        raise click.ClickException(f"no operator is named {name!r}")
    click.echo(f"operator {name} removed")
