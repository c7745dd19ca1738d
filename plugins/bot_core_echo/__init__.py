"""echo: replies with what it was sent, numbered per conversation. The demo bot's plugin.

Settings (``[profiles.NAME.plugin_config.echo]``): ``prefix``, text put before the echo
(default ``"echo "``).
"""

from __future__ import annotations

from typing import Any

from bot_core import hookimpl


@hookimpl
def check_config(config: dict[str, Any]) -> dict[str, str]:
    problems = {key: "unknown setting (known: enabled, prefix)" for key in config if key != "prefix"}
    if not isinstance(config.get("prefix", ""), str):
        problems["prefix"] = "must be a string"
    return problems


@hookimpl
def handle_message(message, conversation, config):
    n = conversation.state.get("n", 0) + 1
    conversation.state["n"] = n
    return f"{config.get('prefix', 'echo ')}{message.text} #{n}"
