"""``bot-core profiles``, ``numbers`` and ``plugins``: what the config and the plugins add up to."""

from __future__ import annotations

from typing import Any

import click

from ..config import Config
from ..errors import ConfigError
from ..logs import Masker
from ..plugins import Plugins, load_plugins
from .common import config_option, database_exists, echo_json_lines, echo_table, failure, json_option, load, open_store


def _plugins(config: Config) -> Plugins:
    try:
        return load_plugins(config)
    except ConfigError as exc:
        raise failure(exc) from None


def _counts(config: Config, column: str) -> dict[tuple[str, str], int]:
    """Message counts keyed by (``column`` value, direction); none before the database exists."""
    if not database_exists(config):
        return {}
    store = open_store(config)
    try:
        return store.counts(column)
    finally:
        store.close()


@click.command()
@config_option
@json_option
def profiles(config_path: str | None, as_json: bool) -> None:
    """List messaging profiles: enabled or not, numbers, plugins in order, message counts.

    With --json: one object a line with name, enabled, numbers, plugins,
    alphanumeric_sender_id, telnyx_profile_id, inbound, outbound, opted_out. Secrets are never shown.

    \b
    Examples:
      bot-core profiles --config bot.toml
      bot-core profiles --config bot.toml --json
    """
    config = load(config_path)
    plugins = _plugins(config)
    counts = _counts(config, "profile")
    opted_out: dict[str, int] = {}
    if database_exists(config):
        store = open_store(config)
        try:
            opted_out = store.opted_out_counts(config.profiles)
        finally:
            store.close()
    rows = [
        {
            "name": p.name, "enabled": p.enabled, "numbers": list(p.numbers),
            "plugins": plugins.active(config.profile_state(p.name)),
            "alphanumeric_sender_id": p.alphanumeric_sender_id, "telnyx_profile_id": p.telnyx_profile_id,
            "inbound": counts.get((p.name, "inbound"), 0), "outbound": counts.get((p.name, "outbound"), 0),
            "opted_out": opted_out.get(p.name, 0),
        }
        for p in config.profiles.values()
    ]  # fmt: skip
    rows = Masker(config.secrets()).mask_data(rows)  # a value from ${VAR} is a secret, printed or not
    if as_json:
        echo_json_lines(rows)
    else:
        columns = ("name", "enabled", "numbers", "plugins", "inbound", "outbound", "opted_out")
        echo_table(rows, columns, empty="no messaging profiles in the config")


@click.command()
@config_option
@json_option
def numbers(config_path: str | None, as_json: bool) -> None:
    """List numbers: profile, messaging-capable / -enabled and why not, plugins, message counts.

    A number the config knows is messaging-capable; it is messaging-enabled when it is
    assigned to a profile and that profile is enabled. With --json: one object a line with
    number, profile, capable, enabled, reason, plugins, inbound, outbound.

    \b
    Examples:
      bot-core numbers --config bot.toml
      bot-core numbers --config bot.toml --json | jq 'select(.enabled | not)'
    """
    config = load(config_path)
    plugins = _plugins(config)
    received = _counts(config, "to_number")
    sent = _counts(config, "from_number")
    rows = [
        {
            "number": n.number, "profile": n.profile, "capable": n.capable, "enabled": n.enabled, "reason": n.reason,
            "plugins": plugins.active(n) if n.enabled else [],
            "inbound": received.get((n.number, "inbound"), 0), "outbound": sent.get((n.number, "outbound"), 0),
        }
        for n in config.numbers_state()
    ]  # fmt: skip
    rows = Masker(config.secrets()).mask_data(rows)
    if as_json:
        echo_json_lines(rows)
    else:
        columns = ("number", "profile", "capable", "enabled", "reason", "plugins", "inbound", "outbound")
        echo_table(rows, columns, empty="no numbers in the config")


@click.command("plugins")
@config_option
@json_option
def plugins_command(config_path: str | None, as_json: bool) -> None:
    """List loaded plugins: where each came from, the hooks it implements, the profiles using it.

    Sources: "bundled" (shipped with bot-core), "entry point <dist>" (an installed package),
    "plugins_dir <path>" (the config's plugins_dir).

    \b
    Examples:
      bot-core plugins --config bot.toml
      bot-core plugins --json
    """
    config = load(config_path)
    plugins = _plugins(config)
    using: dict[str, set[str]] = {name: set() for name in plugins.names}
    states = [config.profile_state(name) for name in config.profiles] + config.numbers_state()
    for state in states:
        if state.profile:
            for plugin in plugins.active(state):
                using[plugin].add(state.profile)
    rows: list[dict[str, Any]] = [
        {"name": n, "source": plugins.sources[n], "hooks": plugins.hooks_of(n), "profiles": sorted(using[n])}
        for n in plugins.names
    ]
    if as_json:
        echo_json_lines(rows)
    else:
        echo_table(rows, ("name", "source", "hooks", "profiles"), empty="no plugins loaded")
