"""remind: "REMIND 30m call mom" texts "Reminder: call mom" half an hour later.

A third-party bot-core plugin, installed as its own package and registered through the
``bot_core`` entry-point group (see pyproject.toml). It shows the plugin API end to end:
settings checked at load time (``check_config``), a keyword claimed so clashes are caught
(``register_keywords``), SMS-style keyword matching, conversation state, and timers that
survive restarts and respect opt-outs (``bot.schedule`` + ``handle_timer``).

Settings (``[profiles.NAME.plugin_config.remind]``): ``keyword`` (default ``"REMIND"``) and
``max_delay`` (default ``"7d"``).
"""

from __future__ import annotations

from typing import Any

from bot_core import hookimpl, match_keyword, parse_duration

DEFAULTS = {"keyword": "REMIND", "max_delay": "7d"}
USAGE = "Text {keyword} <when> <what>, e.g. {keyword} 30m call mom (s, m, h or d)."


@hookimpl
def check_config(config: dict[str, Any]) -> dict[str, str]:
    problems = {key: "unknown setting (known: keyword, max_delay)" for key in config.keys() - {*DEFAULTS, "enabled"}}
    try:
        parse_duration(config.get("max_delay", DEFAULTS["max_delay"]))
    except ValueError as exc:
        problems["max_delay"] = str(exc)
    if not isinstance(config.get("keyword", DEFAULTS["keyword"]), str):
        problems["keyword"] = "must be a string"
    return problems


@hookimpl
def register_keywords(config: dict[str, Any]) -> list[tuple[str, str]]:
    return [(config.get("keyword", DEFAULTS["keyword"]), "the reminder keyword")]


@hookimpl
def handle_message(bot, message, conversation, config) -> str | None:
    keyword = config.get("keyword", DEFAULTS["keyword"])
    if match_keyword(message.text, [keyword]) is None:
        return None
    state = conversation.state.setdefault("remind", {"pending": 0})
    words = message.text.split(maxsplit=2)
    try:
        delay = parse_duration(words[1].lower()) if len(words) == 3 else None
    except ValueError:
        delay = None
    if delay is None:
        return f"{state['pending']} reminder(s) pending. " + USAGE.format(keyword=keyword.upper())
    max_delay = config.get("max_delay", DEFAULTS["max_delay"])
    if delay > parse_duration(max_delay):
        return f"Sorry, I can only remind you up to {max_delay} ahead."
    state["pending"] += 1
    bot.schedule(conversation, delay=delay, plugin="remind", name="reminder", payload={"what": words[2]})
    return f"OK, I'll remind you in {words[1].lower()}: {words[2]}"


@hookimpl
def handle_timer(timer, conversation) -> str:
    conversation.state["remind"]["pending"] -= 1
    return f"Reminder: {timer.payload['what']}"
