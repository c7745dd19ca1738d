"""``bot-core messages`` (list, ``show``, ``--refresh`` from Telnyx) and ``bot-core optouts``."""

from __future__ import annotations

import json
from typing import Any

import click

from ..config import Config
from ..errors import SendError, WebhookError
from ..store import SANDBOX, iso
from ..telnyx import make_client
from ..webhooks import parse_webhook

# Packed by hand (fmt: skip), so isort leaves it alone too.
# isort: off
from .common import (clip, config_option, echo_json, echo_json_lines, echo_table, json_option, load, number_option,
                     open_store, run, since_option)  # fmt: skip
# isort: on

LIST_COLUMNS = ("id", "created_at", "direction", "status", "from", "to", "parts", "text")
# What `show` adds to the columns of the list.
DETAIL_COLUMNS = (
    "media",
    "other_recipients",
    "conversation_id",
    "in_reply_to",
    "claimed_by",
    "attempts",
    "next_attempt_at",
    "ignore_optout",
)


@click.group(invoke_without_command=True)
@config_option
@json_option
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1), help="At most this many.")
@click.option("--profile", help="Only this messaging profile's messages.")
@click.option("--number", help="Only messages from or to this number.")
@click.option("--direction", type=click.Choice(["inbound", "outbound"]))
@click.option("--status", help="Only this status (received, handled, failed, pending, sandbox, delivered, ...).")
@click.option("--since", help="Only messages since then: ISO 8601 (UTC unless it has an offset) or 2h, 7d.")
@click.pass_context
def messages(ctx: click.Context, config_path: str | None, as_json: bool, limit: int, profile: str | None,
             number: str | None, direction: str | None, status: str | None, since: str | None) -> None:  # fmt: skip
    """List MDRs (every message received and sent), newest first.

    With --json: one JSON object a line with id, direction, profile, from, to, text, status,
    parts, encoding (bot-core's own count), telnyx_id, error, operator (who answered from the
    inbox, for an operator's reply), created_at, updated_at.

    \b
    Examples:
      bot-core messages --config bot.toml
      bot-core messages --config bot.toml --number +13125550123 --since 2h
      bot-core messages --config bot.toml --direction outbound --status failed --json
      bot-core messages --config bot.toml show 42 --refresh
    """
    if ctx.invoked_subcommand is not None:
        return
    config = load(config_path)
    number, since = number_option(number, "--number"), since_option(since)
    store = open_store(config, create=False)
    try:
        rows = store.mdrs(limit=limit, profile=profile, direction=direction, status=status, number=number, since=since)
    finally:
        store.close()
    if as_json:
        echo_json_lines(rows)
    else:
        echo_table(rows, LIST_COLUMNS, {"text": clip(60)}, empty="no messages")


@messages.command()
@click.argument("mdr_id", metavar="ID", type=int)
@config_option
@json_option
@click.option("--refresh", is_flag=True, help="Fetch the message from Telnyx first and update the local copy.")
def show(mdr_id: int, config_path: str | None, as_json: bool, refresh: bool) -> None:
    """Show one MDR in full, with the delivery statuses Telnyx reported for it.

    --refresh asks Telnyx for its record of the message (GET {api_base}/messages/{id}, with
    the sending number's profile secret, or the API key for V2) and moves the local status on.

    \b
    Examples:
      bot-core messages show 42 --config bot.toml
      bot-core messages --config bot.toml show 42 --refresh --json
    """
    config = load(config_path)
    store = open_store(config, create=False)
    try:
        before = store.mdr(mdr_id)
        if before is None:
            raise click.ClickException(f"no MDR with id {mdr_id}")
        telnyx = run(_refresh(config, before)) if refresh else None
        if telnyx is not None:
            store.apply_status(telnyx)
        detail = _detail(store, mdr_id)
    finally:
        store.close()
    if as_json:
        echo_json(detail)
        return
    if telnyx is not None:
        moved = "" if detail["status"] == before["status"] else f"; status {before['status']} -> {detail['status']}"
        click.echo(f"Telnyx reports {telnyx.status}{moved}")
    for key, value in detail.items():
        if key != "delivery_events":
            click.echo(f"{key:>16}: {'-' if value is None else value}")
    click.echo("delivery events:" if detail["delivery_events"] else "delivery events: none")
    for event in detail["delivery_events"]:
        click.echo(f"  {event['received_at']}  {event['status']}" + (f"  {event['error']}" if event["error"] else ""))


def _detail(store: Any, mdr_id: int) -> dict[str, Any]:
    full = store.mdr_columns(mdr_id)
    row = {**store.mdr(mdr_id), **{k: full[k] for k in DETAIL_COLUMNS}}
    row["media"] = json.loads(row["media"]) if row["media"] else []
    row["other_recipients"] = json.loads(row["other_recipients"]) if row["other_recipients"] else []
    row["ignore_optout"] = bool(row["ignore_optout"])
    if row["next_attempt_at"] is not None:
        row["next_attempt_at"] = iso(row["next_attempt_at"])
    events = []
    if row["telnyx_id"] and row["direction"] == "outbound":
        events = store.delivery_events(row["telnyx_id"])
    return {**row, "delivery_events": events}


async def _refresh(config: Config, row: dict[str, Any]) -> Any:
    """Telnyx's record of an outbound message, as the delivery status it amounts to."""
    if row["direction"] != "outbound":
        raise click.ClickException(f"MDR {row['id']} is inbound: only messages the bot sent have a status to refresh")
    if row["status"] == SANDBOX or not row["telnyx_id"]:
        raise click.ClickException(f"MDR {row['id']} was never sent to Telnyx (status {row['status']})")
    if config.bot.sandbox:
        raise click.ClickException("the config has sandbox = true: it does not talk to Telnyx")
    profile = config.profile_for_sender(row["from"])
    if profile is None:
        raise click.ClickException(f"no messaging profile in the config sends from {row['from']}")
    client = make_client(config)
    try:
        record = await client.fetch(secret=profile.secret, telnyx_id=row["telnyx_id"])
    except SendError as exc:
        raise click.ClickException(f"cannot refresh MDR {row['id']}: {exc.reason}") from None
    finally:
        await client.aclose()
    # Telnyx's record has the shape of its delivery status webhook: read it the same way.
    if config.telnyx.api_version == 2:
        record = {"data": {"event_type": "message.finalized", "payload": record}}
    try:
        webhook = parse_webhook(json.dumps(record).encode())
    except WebhookError as exc:
        raise click.ClickException(f"cannot read Telnyx's record of MDR {row['id']}: {exc.reason}") from None
    if webhook.status is None:
        raise click.ClickException(f"Telnyx's record of MDR {row['id']} has no delivery status")
    return webhook.status


@click.command()
@config_option
@json_option
@click.option("--history", is_flag=True, help="Every consent change (opt-outs and opt-ins), oldest first.")
def optouts(config_path: str | None, as_json: bool, history: bool) -> None:
    """List the numbers that opted out, with when and how (STOP, Telnyx 40300, a plugin).

    An opt-out is account-wide (profile "-": no profile may message the number, Telnyx's
    default) or for one messaging profile, as the optout plugin's scope setting says; nothing
    but compliance answers reaches these numbers.

    \b
    Examples:
      bot-core optouts --config bot.toml
      bot-core optouts --config bot.toml --history --json
    """
    config = load(config_path)
    store = open_store(config, create=False)
    try:
        rows = store.consent_log() if history else store.optouts()
    finally:
        store.close()
    if as_json:
        echo_json_lines(rows)
    elif history:
        echo_table(rows, ("at", "profile", "number", "action", "source"), empty="no consent changes")
    else:
        echo_table(rows, ("profile", "number", "opted_out_at", "source"), empty="nobody has opted out")
