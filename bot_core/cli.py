"""The ``bot-core`` command."""

from __future__ import annotations

import json
import logging
import sys
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import click

from .config import Config, load_config
from .errors import ConfigError
from .logs import setup_logging
from .plugins import load_plugins
from .store import Store

DEMO = "the bundled demo config"


def _load(path: str | None) -> Config:
    """The config at ``path``, or the bundled demo bot (its database in the current folder)."""
    try:
        if path is None:
            text = resources.files("bot_core").joinpath("demo.toml").read_text()
            return Config.from_dict(tomllib.loads(text), base_dir=Path.cwd(), source=DEMO)
        return load_config(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


config_option = click.option(
    "--config", "config_path", envvar="BOT_CORE_CONFIG", type=click.Path(dir_okay=False),
    help="bot.toml to use (or $BOT_CORE_CONFIG).",
)  # fmt: skip


@click.group()
@click.version_option(package_name="bot-core")
def cli() -> None:
    """bot-core: a pluggable SMS chatbot framework for Telnyx."""


@cli.command()
@config_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def serve(config_path: str | None, host: str, port: int) -> None:
    """Run the bot: Telnyx webhooks on POST /webhooks/telnyx.

    \b
    Examples:
      bot-core serve                       # the demo bot, sandboxed, on 127.0.0.1:8000
      bot-core serve --config bot.toml --host 0.0.0.0 --port 8080
    """
    import uvicorn

    from .asgi import create_app
    from .bot import Bot

    config = _load(config_path)
    setup_logging(config.bot.log_format, secrets=config.secrets())
    if config_path is None:
        logging.getLogger("bot_core").warning(
            "no --config: running %s (sandbox, signatures NOT verified, database %s)", DEMO, config.bot.database
        )
    try:
        bot = Bot(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    uvicorn.run(
        create_app(bot), host=host, port=port, log_config=None, access_log=False,
        timeout_graceful_shutdown=max(1, int(config.bot.shutdown_grace)),
    )  # fmt: skip


@cli.command()
@config_option
def check(config_path: str | None) -> None:
    """Validate the config and show which numbers are messaging-enabled.

    Exits 1 when the config or a plugin name is wrong, or no number is messaging-enabled.

    \b
    Example:
      bot-core check --config bot.toml
    """
    config = _load(config_path)
    try:
        plugins = load_plugins(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"config: {config.path or DEMO}")
    click.echo(f"plugins loaded: {', '.join(plugins.names) or 'none'}")
    for profile in config.profiles.values():
        state = "enabled" if profile.enabled else "DISABLED"
        click.echo(f"profile {profile.name}: {state}")
    click.echo("numbers:")
    for number in config.numbers_state():
        if number.enabled:
            active = ", ".join(plugins.active(number)) or "none"
            click.echo(f"  {number.number}  profile {number.profile}  messaging-enabled  plugins: {active}")
        else:
            click.echo(f"  {number.number}  profile {number.profile or '-'}  NOT enabled: {number.reason}")
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


@cli.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
def messages(config_path: str | None, as_json: bool, limit: int) -> None:
    """List MDRs (every message received and sent), newest first.

    \b
    Examples:
      bot-core messages --config bot.toml
      bot-core messages --config bot.toml --json --limit 500
    """
    config = _load(config_path)
    store = Store(config.bot.database)
    try:
        rows = store.mdrs(limit=limit)
    finally:
        store.close()
    _print_rows(rows, as_json)


def _print_rows(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    columns = ("id", "created_at", "direction", "status", "from", "to", "text")
    click.echo("  ".join(columns))
    for row in rows:
        text = (row["text"] or "").replace("\n", " ")
        click.echo("  ".join(str(row[c]) for c in columns[:-1]) + "  " + (text[:60] + "…" if len(text) > 60 else text))

