"""handoff: a keyword (AGENT, HUMAN, ...) hands the conversation to a person.

The customer who texts one of the profile's ``keywords`` (matched like every bot-core keyword:
the whole message or its first words) gets ``reply`` and waits in the operator inbox; from then
on their messages reach no plugin but ``optout`` until an operator hands the conversation back
(or ``[inbox] handback_after`` passes). Without ``keywords`` the plugin does nothing.

Settings (``[profiles.NAME.plugin_config.handoff]``): ``keywords`` (e.g. ``["AGENT"]``),
``reply`` (default: "Thanks. A person will text you back shortly.").
"""

from __future__ import annotations

from typing import Any

from bot_core import hookimpl, match_keyword

KEYS = ("keywords", "reply")
REPLY = "Thanks. A person will text you back shortly."


@hookimpl
def check_config(config: dict[str, Any]) -> dict[str, str]:
    problems = {}
    for key, value in config.items():
        if key not in KEYS:
            problems[key] = f"unknown setting (known: enabled, {', '.join(KEYS)})"
        elif key == "keywords" and not (
            isinstance(value, list) and all(isinstance(w, str) and w.strip() for w in value)
        ):
            problems[key] = 'must be an array of words, e.g. ["AGENT"]'
        elif key == "reply" and not isinstance(value, str):
            problems[key] = "must be a string (empty: no reply)"
    return problems


@hookimpl
def register_keywords(config: dict[str, Any]) -> list[tuple[str, str]]:
    return [(word, "handoff to a person") for word in config.get("keywords", [])]


@hookimpl(tryfirst=True)
def handle_message(bot, message, conversation, config) -> Any:
    word = match_keyword(message.text, config.get("keywords", []))
    if word is None:
        return None
    bot.handoff(conversation, f"texted {word}")
    text = config.get("reply", REPLY)
    return [text] if text else []
