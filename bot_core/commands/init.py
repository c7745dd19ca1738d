"""``bot-core init``: start a bot, or a plugin package, from a working example."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..plugins import load_plugins
from ..scaffold import ScaffoldError, plugin_names, write_bot, write_plugin


@click.command("init")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--plugin", "plugin", metavar="NAME", help="Make a pip-installable plugin package named NAME instead.")
def init_command(directory: Path | None, plugin: str | None) -> None:
    """Start a bot in DIRECTORY (default: here), or a plugin package with --plugin NAME.

    A bot: bot.toml (one messaging profile, sandboxed, commented), plugins/hello.py (a small
    plugin), tests/test_bot.py (passes as it is: python -m pytest) and a README. A plugin
    package (default folder: bot-core-NAME): pyproject.toml with the `bot_core` entry point,
    src/bot_core_NAME/, tests, a bot.toml to try it with and a README. Existing files are
    never overwritten.

    \b
    Examples:
      bot-core init my-bot && cd my-bot && bot-core chat --config bot.toml
      bot-core init --plugin weather && cd bot-core-weather && pip install -e '.[test]'
    """
    try:
        if plugin is None:
            target = directory or Path(".")
            written = write_bot(target)
            steps = ["bot-core check --config bot.toml", "bot-core chat --config bot.toml", "python -m pytest"]
        else:
            names = plugin_names(plugin, frozenset(load_plugins(installed=True).names))
            target = directory or Path(names["dist"])
            written = write_plugin(target, names)
            steps = ["pip install -e '.[test]'", "python -m pytest", "bot-core chat --config bot.toml"]
    except ScaffoldError as exc:
        raise click.ClickException(str(exc)) from None
    for path in written:
        click.echo(f"created {path}")
    where = os.path.relpath(target)
    click.echo("next:" + ("" if where == "." else f"\n  cd {where}"))
    for step in steps:
        click.echo(f"  {step}")
