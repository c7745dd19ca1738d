"""``bot-core chat``: play the customer against the bot in a terminal, or from a script."""

from __future__ import annotations

import sys

import click

from ..chat import CUSTOMER, ChatError, chat, check_database, is_interactive
from ..errors import ConfigError
from .common import config_option, failure, load, number_option, quiet_logging, run


@click.command("chat")
@config_option
@click.option("--from", "from_number", default=CUSTOMER, show_default=True, help="The customer's number.")
@click.option("--to", "to_number", help="The bot's number to text (default: the first messaging-enabled one).")
def chat_command(config_path: str | None, from_number: str, to_number: str | None) -> None:
    """Text the bot as a customer, without Telnyx: each line goes through the real pipeline.

    Every line is a text message, delivered as a signed webhook to the bot's own app: inbox,
    plugins, state, opt-outs and outbox, on the config's database, with sandbox sending
    (nothing leaves the machine). Each reply is printed as "bot> TEXT", one a line (line breaks
    in a reply show as \\n); in a script, each message is echoed as "you> TEXT" first. Notes
    (a message no plugin claimed, a reply not sent) and logs go to stderr. Reads stdin to the
    end, then exits 0. It refuses a database a running server has open.

    A line starting with a slash is a command: "/wait 30m" moves the bot's clock ahead, so
    timers now due fire and flows expire (messages recorded afterwards carry the moved time);
    "/help" lists the commands; "//TEXT" texts TEXT. Only your own conversation's timers fire:
    other customers' wait for `bot-core serve`.

    \b
    Examples:
      bot-core chat --config bot.toml
      printf 'hi\\nSTOP\\n' | bot-core chat --config bot.toml --from +13125550199
      printf 'JOIN\\n/wait 2h\\n' | bot-core chat --config examples/signup-flow/bot.toml
      bot-core chat --config bot.toml < script.txt > transcript.txt && diff expected.txt transcript.txt
    """
    config = load(config_path)
    customer = number_option(from_number, "--from")
    number = number_option(to_number, "--to") or next(iter(config.enabled_numbers()), None)
    if number is None:
        raise click.ClickException("no number is messaging-enabled in the config: nothing to chat with")
    state = config.number(number)
    if state is None or not state.enabled:
        why = state.reason if state else "it is not in the config"
        raise click.BadParameter(f"{number} is not messaging-enabled: {why}", param_hint="--to")
    interactive = is_interactive(sys.stdin)
    try:
        check_database(config)
        quiet_logging(config)
        if interactive:
            click.echo(f"You are {customer}, texting {number} (profile {state.profile}). Sandbox: nothing is "
                       "sent. End with Ctrl-D.", err=True)  # fmt: skip
        run(chat(config, customer=customer, number=number, stdin=sys.stdin, stdout=sys.stdout, stderr=sys.stderr,
                 interactive=interactive))  # fmt: skip
    except (ChatError, ConfigError) as exc:
        raise failure(exc) from None
