"""``bot-core send``: a proactive message through the outbox, opt-outs respected."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import click

from ..config import Config, parse_duration
from ..errors import ConfigError
from ..runner import database_in_use, queueing, running
from ..store import BLOCKED, FAILED, PENDING, SANDBOX, SENDING
from .common import config_option, echo_json, failure, json_option, load, number_option, quiet_logging, run


@click.command()
@config_option
@click.option("--profile", help="The messaging profile to send for (default: the one owning --from).")
@click.option("--from", "from_number", help="Send from this number (default: the profile's first enabled number).")
@click.option("--alphanumeric", is_flag=True, help="Send from the profile's alphanumeric sender ID.")
@click.option("--to", "to_number", required=True, help="The recipient, in E.164 (+4915123456789).")
@click.option("--wait", default="30s", show_default=True, help="How long to wait for Telnyx's answer.")
@json_option
@click.argument("text")
def send(config_path: str | None, profile: str | None, from_number: str | None, alphanumeric: bool,
         to_number: str, wait: str, as_json: bool, text: str) -> None:  # fmt: skip
    """Send TEXT to a number: a proactive message through the outbox (TEXT "-" reads stdin).

    A recipient who opted out is not sent to (status "blocked"). Telnyx does not deliver
    alphanumeric sender IDs to US and Canadian numbers: such a send is refused. When a server
    is running on the same database, it sends the message; otherwise this command starts the
    bot, sends, and stops. Prints the MDR id and its status; exits 1 if it was not sent.

    \b
    Examples:
      bot-core send --config bot.toml --profile support --to +13125550123 "Your order shipped."
      bot-core send --config bot.toml --from +13125550100 --to +13125550123 "Hi again"
      bot-core send --config bot.toml --profile eu --alphanumeric --to +4915123456789 "Code: 1234"
      echo "Long text" | bot-core send --config bot.toml --profile support --to +13125550123 -
    """
    if text == "-":
        text = sys.stdin.read().rstrip("\n")
    if not text.strip():
        raise click.BadParameter("the message is empty", param_hint="TEXT")
    if alphanumeric and from_number:
        raise click.UsageError("give --from or --alphanumeric, not both")
    if profile is None and from_number is None:
        raise click.UsageError("give --profile (or --from, whose profile is then used)")
    try:
        seconds = parse_duration(wait)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--wait") from None
    config = load(config_path)
    if profile is not None and profile not in config.profiles:
        raise click.BadParameter(f"no messaging profile {profile!r} (profiles: {', '.join(config.profiles)})",
                                 param_hint="--profile")  # fmt: skip
    quiet_logging(config)
    request = {"to": number_option(to_number, "--to"), "text": text, "profile": profile,
               "from_number": number_option(from_number, "--from"), "alphanumeric": alphanumeric}  # fmt: skip
    row, beside_server = run(_send(config, request, seconds))
    if as_json:
        echo_json(row)
    else:
        click.echo(_describe(row, beside_server))
    if row["status"] in (FAILED, BLOCKED):
        sys.exit(1)


async def _send(config: Config, request: dict[str, Any], wait: float) -> tuple[dict[str, Any], bool]:
    """Queue the message and wait up to ``wait`` seconds for it to leave the outbox."""
    beside_server = database_in_use(config.bot.database)
    try:
        async with (queueing if beside_server else running)(config) as bot:
            try:
                mdr_id = bot.send(request["to"], request["text"], profile=request["profile"],
                                  from_number=request["from_number"], alphanumeric=request["alphanumeric"])  # fmt: skip
            except ValueError as exc:  # Bot.send says why no sender fits
                raise click.ClickException(str(exc)) from None
            assert mdr_id is not None, "outside a handler, send() returns the queued MDR's id"
            deadline = time.monotonic() + wait
            while True:
                row = bot.store.mdr(mdr_id)
                assert row is not None, "queued just now, and MDRs are never deleted"
                if row["status"] not in (PENDING, SENDING) or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.05)
    except ConfigError as exc:
        raise failure(exc) from None
    return row, beside_server


def _describe(row: dict[str, Any], beside_server: bool) -> str:
    head = f"MDR {row['id']}: {row['from']} -> {row['to']}, {row['parts']} part(s) {row['encoding']}: {row['status']}"
    if row["status"] in (FAILED, BLOCKED):
        return f"{head}: NOT SENT: {row['error']}"
    if row["status"] in (PENDING, SENDING):
        who = "the running server sends it" if beside_server else "the next `bot-core serve` sends it"
        last = f" (last attempt: {row['error']})" if row["error"] else ""
        return f"{head}: still in the outbox{last}; {who}"
    return head + (f" (telnyx id {row['telnyx_id']})" if row["status"] != SANDBOX and row["telnyx_id"] else "")
