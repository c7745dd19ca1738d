"""``bot-core explain``: a dry run of one message through the profile's plugins."""

from __future__ import annotations

import json
from typing import Any

import click

from ..chat import CUSTOMER
from ..errors import ConfigError
from ..explain import ExplainError, explain
from .common import config_option, echo_json, failure, json_option, load, number_option, quiet_logging, run


@click.command("explain")
@config_option
@click.option("--to", "to_number", help="The bot's number the message is sent to (default: the first enabled).")
@click.option("--from", "from_number", default=CUSTOMER, show_default=True, help="The customer's number.")
@json_option
@click.argument("text")
def explain_command(config_path: str | None, to_number: str | None, from_number: str, as_json: bool, text: str) -> None:
    """Show which plugins would see TEXT, in which order, which one would claim it, and the reply.

    A dry run: the plugins really run, on a temporary copy of the database in sandbox mode,
    so nothing is stored or sent (and a plugin's writes, such as an opt-out, are thrown away).
    The customer's conversation state is taken from the database. With --json: one object
    with plugins (in order), trace, claimed_by, status, replies, state_before, state_after.

    \b
    Examples:
      bot-core explain --config bot.toml --to +13125550100 "STOP"
      bot-core explain --config bot.toml --from +13125550123 "hours?" --json | jq .claimed_by
    """
    config = load(config_path)
    quiet_logging(config)
    to = number_option(to_number, "--to") or next(iter(config.enabled_numbers()), None)
    if to is None:
        raise click.ClickException("no number is messaging-enabled: give --to")
    try:
        result = run(explain(config, to=to, from_=number_option(from_number, "--from"), text=text))
    except (ExplainError, ConfigError) as exc:
        raise failure(exc) from None
    if as_json:
        echo_json(result)
    else:
        _print(result)


def _print(result: dict[str, Any]) -> None:
    click.echo(f"{result['from']} -> {result['to']} (profile {result['profile']}): {json.dumps(result['text'])}")
    if not result["enabled"]:
        click.echo(f"reaches no plugin: {result['reason']} (it would be recorded as ignored)")
        return
    click.echo("plugins, in the order consulted:" if result["trace"] else "no plugin is active on this number")
    width = max((len(step["plugin"]) for step in result["trace"]), default=0)
    for index, step in enumerate(result["trace"], 1):
        click.echo(f"  {index}. {step['plugin'].ljust(width)}  {step['result']}")
    if result["status"] == "failed":
        click.echo(f"FAILED: {result['error']}")
    click.echo(f"claimed by: {result['claimed_by'] or 'nobody (the message would be unhandled)'}")
    if result["replies"]:
        click.echo("replies:")
    for reply in result["replies"]:
        fate = "would be sent" if reply["status"] == "pending" else f"NOT sent ({reply['status']}: {reply['error']})"
        text = json.dumps(reply["text"], ensure_ascii=False)
        click.echo(f"  {text}  [{reply['parts']} part(s) {reply['encoding']}, {fate}]")
    if result["state_before"] != result["state_after"]:
        click.echo(f"state: {json.dumps(result['state_before'])} -> {json.dumps(result['state_after'])}")
    click.echo("dry run: nothing was stored or sent")
