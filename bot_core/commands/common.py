"""What every command shares: loading the config, opening the database, tables and JSON output."""

from __future__ import annotations

import asyncio
import json
import logging
import tomllib
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar, overload

import click
from click.core import ParameterSource

from ..config import Config, load_config, parse_duration
from ..errors import BotError, ConfigError
from ..logs import setup_logging
from ..phone import normalize_number
from ..store import SchemaTooNew, Store, Unavailable, is_postgres, iso
from ..store import open_store as _open_store

DEMO = "the bundled demo config"
T = TypeVar("T")

_CONFIG = "bot_core.config_path"


def _config_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--config`` wherever it is given: before or after a subcommand, its arguments or options.

    Every command and group takes the option; the value is kept in ``ctx.meta``, which all
    nested contexts share, so the innermost ``--config`` typed wins, and $BOT_CORE_CONFIG only
    fills in when none is typed.
    """
    typed = ctx.get_parameter_source(param.name or "") is ParameterSource.COMMANDLINE
    if value is not None and (typed or _CONFIG not in ctx.meta):
        ctx.meta[_CONFIG] = value
    return ctx.meta.get(_CONFIG)


config_option = click.option(
    "--config", "config_path", envvar="BOT_CORE_CONFIG", type=click.Path(dir_okay=False), callback=_config_path,
    help="bot.toml to use (or $BOT_CORE_CONFIG; default: the demo bot). Accepted anywhere on the line.",
)  # fmt: skip
# On a group: remembered for its subcommands, not passed to the group's function.
group_config_option = click.option(
    "--config", "config_path", envvar="BOT_CORE_CONFIG", type=click.Path(dir_okay=False), callback=_config_path,
    expose_value=False, help="bot.toml to use (or $BOT_CORE_CONFIG; default: the demo bot).",
)  # fmt: skip
json_option = click.option("--json", "as_json", is_flag=True, help="JSON for scripts instead of a table.")


def failure(exc: BotError) -> click.ClickException:
    """An error for the terminal; several problems (a config's) get a count and a line each."""
    lines = str(exc).splitlines()
    if len(lines) <= 1:
        return click.ClickException(str(exc))
    return click.ClickException(f"{len(lines)} problems:\n" + "\n".join(f"  {line}" for line in lines))


def load(path: str | None, problems: list[str] | None = None) -> Config:
    """The config at ``path``, or the bundled demo bot (its database in the current folder).

    ``problems``: collect the config's mistakes there instead of failing (see Config.from_dict).
    """
    try:
        if path is None:
            text = resources.files("bot_core").joinpath("demo.toml").read_text()
            return Config.from_dict(tomllib.loads(text), base_dir=Path.cwd(), source=DEMO, problems=problems)
        return load_config(path, problems=problems)
    except ConfigError as exc:
        raise failure(exc) from None


def open_store(config: Config, *, create: bool = True) -> Store:
    """The config's database. ``create=False`` (commands that only read) refuses to create one:
    a command run in the wrong folder says so instead of leaving an empty database there."""
    if not create and not database_exists(config):
        if config.path is None:
            raise click.ClickException(
                f"no --config given, and no demo database ({config.bot.database.name}) in this folder: "
                "give --config bot.toml (or set $BOT_CORE_CONFIG)"
            )  # fmt: skip
        raise click.ClickException(f"no database at {config.bot.database} yet: the bot has received nothing "
                                   "(`bot-core serve` creates it)")  # fmt: skip
    try:
        return _open_store(config.bot.database, secrets=config.secrets())
    except (SchemaTooNew, Unavailable) as exc:
        raise click.ClickException(str(exc)) from None


def database_exists(config: Config) -> bool:
    """Whether the config's database is there to read: a SQLite file, or any PostgreSQL URL."""
    return is_postgres(config.bot.database) or config.bot.database.exists()


def quiet_logging(config: Config) -> None:
    """Commands that run a bot log warnings and errors to stderr, secrets masked; stdout is theirs."""
    setup_logging(config.bot.log_format, secrets=config.secrets(), level=logging.WARNING)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


@overload
def number_option(value: str, option: str) -> str: ...
@overload
def number_option(value: str | None, option: str) -> str | None: ...
def number_option(value: str | None, option: str) -> str | None:
    """A phone number given on the command line, in E.164, or a usage error naming the option."""
    if value is None:
        return None
    try:
        return normalize_number(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def since_option(value: str | None) -> str | None:
    """``--since``: ISO 8601 (UTC unless it has an offset) or a duration back from now (``2h``)."""
    if value is None:
        return None
    try:
        return iso(datetime.now(UTC).timestamp() - parse_duration(value))
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither ISO 8601 (2025-11-29T08:00) nor a duration (2h, 7d)",
                                 param_hint="--since") from None  # fmt: skip
    return iso((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp())


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False))


def echo_json_lines(rows: Iterable[Mapping[str, Any]]) -> None:
    """One JSON object a line: easy to grep, to stream and to read with ``jq``."""
    for row in rows:
        echo_json(row)


def echo_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
               format: Mapping[str, Callable[[Any], str]] | None = None, empty: str = "(none)") -> None:  # fmt: skip
    """Rows as aligned columns under a header; ``format`` turns a column's values into text."""
    if not rows:
        click.echo(empty)
        return
    format = format or {}
    cells = [[format.get(c, _cell)(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    for line in [list(columns), *cells]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "-"
    return str(value)


def clip(limit: int) -> Callable[[Any], str]:
    """A cell format for free text: one line, at most ``limit`` characters."""

    def fmt(value: Any) -> str:
        text = " ".join(str(value or "").split())
        return text if len(text) <= limit else text[: limit - 1] + "…"

    return fmt
