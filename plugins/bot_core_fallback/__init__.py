"""fallback: the last word. Answers every message no other plugin claimed.

Settings (``[profiles.NAME.plugin_config.fallback]``): ``text``, the answer (e.g. "Sorry, I
didn't get that. Text HELP for help."). Unset or empty, the plugin stays silent and the message
is recorded as ``unhandled``. It is always consulted last, wherever it is listed.
"""

from __future__ import annotations

from typing import Any

from bot_core import hookimpl


@hookimpl
def check_config(config: dict[str, Any]) -> dict[str, str]:
    problems = {}
    for key, value in config.items():
        if key != "text":
            problems[key] = "unknown setting (known: enabled, text)"
        elif not isinstance(value, str):
            problems[key] = "must be a string (empty: stay silent)"
    return problems


@hookimpl
def handle_message(config: dict[str, Any]) -> str | None:
    return config.get("text") or None
