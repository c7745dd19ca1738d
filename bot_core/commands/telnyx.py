"""``bot-core telnyx sync``: point the Telnyx account at the bot."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ..management import Management, ManagementError, Plan
from .common import config_option, echo_json, group_config_option, json_option, load


@click.group()
@group_config_option
def telnyx() -> None:
    """Manage the Telnyx account the bot runs on (V2 management API, [telnyx] api_key).

    \b
    Example:
      bot-core telnyx sync --config bot.toml --dry-run
    """


@telnyx.command()
@config_option
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@json_option
def sync(config_path: str | None, dry_run: bool, as_json: bool) -> None:
    """Wire each profile's Telnyx messaging profile and numbers to this bot.

    For each profile with a telnyx_profile_id: sets the messaging profile's webhook URL to
    {public_url}/webhooks/telnyx, its failover URL to [telnyx] webhook_failover_url (if set),
    its webhook format ("2" when [telnyx] public_key is set, else "1"), and assigns each of
    the profile's numbers to it. Reads everything first, prints the plan, then changes only
    what differs: running it twice changes nothing the second time.

    \b
    Examples:
      bot-core telnyx sync --config bot.toml --dry-run
      bot-core telnyx sync --config bot.toml
    """
    config = load(config_path)
    try:
        with Management(config) as management:
            plan = management.plan()
            if not as_json:
                _print(plan, management.base)
            if plan.changes and not dry_run:
                management.apply(plan)
    except ManagementError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        echo_json({"changes": [_change(c) for c in plan.changes], "matching": plan.matching,
                   "skipped": plan.skipped, "warnings": plan.warnings,
                   "applied": bool(plan.changes) and not dry_run})  # fmt: skip
    elif not plan.changes:
        click.echo("nothing to change: the Telnyx account already matches the config")
    elif dry_run:
        click.echo(f"dry run: {len(plan.changes)} change(s) not made")
    else:
        click.echo(f"made {len(plan.changes)} change(s)")
    if plan.warnings:
        sys.exit(1)


def _change(change: Any) -> dict[str, Any]:
    return {"what": change.what, "path": change.path,
            "fields": {k: {"from": old, "to": new} for k, (old, new) in change.fields.items()}}  # fmt: skip


def _print(plan: Plan, base: str) -> None:
    click.echo(f"Telnyx account at {base}:")
    for change in plan.changes:
        click.echo(f"  change {change.what}:")
        for name, (old, new) in change.fields.items():
            click.echo(f"    {name}: {json.dumps(old)} -> {json.dumps(new)}")
    for what in plan.matching:
        click.echo(f"  ok     {what}")
    for why in plan.skipped:
        click.echo(f"  skip   {why}")
    for warning in plan.warnings:
        click.echo(f"warning: {warning}", err=True)
