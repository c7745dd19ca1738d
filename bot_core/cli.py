"""The ``bot-core`` command: ``serve`` and ``check`` here, the rest in ``bot_core.commands``."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from .commands.chat import chat_command
from .commands.common import DEMO, config_option, failure, group_config_option, load
from .commands.conversations import conversations
from .commands.explain import explain_command
from .commands.init import init_command
from .commands.inventory import numbers, plugins_command, profiles
from .commands.messages import messages, optouts
from .commands.operators import operators
from .commands.send import send
from .commands.telnyx import telnyx
from .config import Config
from .errors import ConfigError
from .logs import setup_logging
from .plugins import load_plugins
from .store import SchemaTooNew, Unavailable, display, open_store, schema_version


@click.group()
@click.version_option(package_name="bot-core")
@group_config_option
def cli() -> None:
    """bot-core: a pluggable SMS chatbot framework for Telnyx.

    Every command takes --config bot.toml (or $BOT_CORE_CONFIG), anywhere on the line; without
    one it uses the demo bot, and commands that only read say so rather than create its
    database. Lists print tables; --json prints one JSON object a line for scripts.

    \b
    Examples:
      bot-core init my-bot                           # start a new bot
      bot-core serve --config bot.toml               # run the bot
      bot-core check --config bot.toml               # validate the config
      bot-core chat --config bot.toml                # text the bot, no Telnyx needed
      bot-core explain --config bot.toml "STOP"      # which plugin would answer, and how
      bot-core messages --config bot.toml --since 2h # what came in and went out
    """


@cli.command()
@config_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Worker processes sharing the port and the database.")  # fmt: skip
def serve(config_path: str | None, host: str, port: int, workers: int) -> None:
    """Run the bot: Telnyx webhooks on POST /webhooks/telnyx.

    \b
    Examples:
      bot-core serve                       # the demo bot, sandboxed, on 127.0.0.1:8000
      bot-core serve --config bot.toml --host 0.0.0.0 --port 8080
      bot-core serve --config bot.toml --workers 2   # one process per core, one database
    """
    from .bot import Bot
    from .supervisor import REUSE_PORT, Supervisor, listen, raise_open_files_limit, reserve
    from .supervisor import serve as serve_bot

    config = load(config_path)
    setup_logging(config.bot.log_format, secrets=config.secrets())
    if config_path is None:
        logging.getLogger("bot_core").warning(
            "no --config: running %s (sandbox, signatures NOT verified, database %s)", DEMO, config.bot.database
        )
    try:
        bot = Bot(config)  # loads the plugins: a mistake stops here, before any worker starts
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    try:  # before the database: a port in use leaves nothing behind
        # With workers on Linux each listens on its own socket (SO_REUSEPORT), and this one holds the port.
        sock = reserve(host, port) if workers > 1 and REUSE_PORT else listen(host, port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        open_store(config.bot.database).close()  # migrated now; an unreachable or newer database stops here
    except (SchemaTooNew, Unavailable) as exc:
        raise click.ClickException(str(exc)) from None
    raise_open_files_limit()
    if workers == 1:
        serve_bot(bot, sock)
    else:
        sys.exit(Supervisor(config, sock, workers).run())


@cli.command()
@config_option
def check(config_path: str | None) -> None:
    """Validate the config and show which numbers are messaging-enabled.

    Exits 1 when the config or a plugin name is wrong, or no number is messaging-enabled.

    \b
    Example:
      bot-core check --config bot.toml
    """
    problems: list[str] = []
    config = load(config_path, problems)
    try:
        plugins = load_plugins(config)
    except ConfigError as exc:
        problems += str(exc).splitlines()
    if problems:  # the file's own mistakes and its plugins' settings, told at once
        raise failure(ConfigError("\n".join(problems)))
    click.echo(f"config: {config.path or DEMO}")
    click.echo(f"plugins loaded: {', '.join(plugins.names) or 'none'}")
    for line in plugins.answering(config):
        click.echo(line)
    click.echo("numbers:")
    for number in config.numbers_state():
        if number.enabled:
            active = ", ".join(plugins.active(number)) or "none"
            click.echo(f"  {number.number}  profile {number.profile}  messaging-enabled  plugins: {active}")
        else:
            click.echo(f"  {number.number}  profile {number.profile or '-'}  NOT enabled: {number.reason}")
    try:
        version, known = schema_version(config.bot.database)
    except Unavailable as exc:
        raise click.ClickException(str(exc)) from None
    if version > known:
        click.echo(f"error: the database {display(config.bot.database)} was migrated by a newer bot-core (schema "
                   f"version {version} > {known}): upgrade bot-core before starting it", err=True)  # fmt: skip
        sys.exit(1)
    for warning in _warnings(config, plugins):
        click.echo(f"warning: {warning}", err=True)
    if not config.enabled_numbers():
        click.echo("error: no number is messaging-enabled", err=True)
        sys.exit(1)


def _warnings(config: Config, plugins: Any) -> list[str]:
    warnings = []
    if not config.bot.verify_signatures:
        warnings.append("verify_signatures = false: webhook signatures are not checked")
    for profile in config.profiles.values():
        if "optout" in plugins.sources and profile.plugin_config.get("optout", {}).get("enabled", True) is False:
            warnings.append(f"profile {profile.name}: opt-out handling (STOP/START/HELP) is disabled")
    return warnings


for command in (
    init_command,
    messages,
    optouts,
    conversations,
    profiles,
    numbers,
    plugins_command,
    send,
    chat_command,
    explain_command,
    telnyx,
    operators,
):
    cli.add_command(command)
