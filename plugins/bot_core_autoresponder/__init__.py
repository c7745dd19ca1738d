"""autoresponder: a support line's first answer, in hours and after hours.

Keyword answers (HOURS, ADDRESS, ...; matched like flow triggers) are always sent. Any other
message gets the in-hours or after-hours message, at most once per conversation within
``window``; inside the window the plugin claims the message silently, so the customer who
sends five texts gets one auto-reply and nothing else answers the rest: a human agent will.
A period whose message is unset is left to the next plugin. List it after flows and other
plugins (``plugins = ["flows", "autoresponder"]``): it answers nearly everything.

Settings (``[profiles.NAME.plugin_config.autoresponder]``): ``timezone`` (IANA, default
UTC), ``hours`` (``mon`` .. ``sun`` = ``"HH:MM-HH:MM"``, several ranges comma-separated, close
exclusive, ``24:00`` allowed; a day not listed is closed, so without ``hours`` the line is
always closed), ``holidays`` (dates), ``open_message``, ``closed_message``, ``window``
(default ``"12h"``), ``keywords`` (``{WORD = "answer"}``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot_core import SettingsError, hookimpl, match_keyword, normalize_keyword, parse_duration

from .hours import DAYS, Hours, parse_date, parse_ranges

KEYS = ("enabled", "timezone", "hours", "holidays", "open_message", "closed_message", "window", "keywords")


@dataclass(frozen=True)
class Settings:
    hours: Hours
    open_message: str
    closed_message: str
    window: float
    keywords: dict[str, str]


def parse(config: dict[str, Any]) -> Settings:
    """The plugin's settings for one profile; SettingsError lists every problem by key."""
    problems: dict[str, str] = {}
    for key in config:
        if key not in KEYS:
            problems[key] = f"unknown setting (known: {', '.join(KEYS)})"
    name = config.get("timezone", "UTC")
    try:
        zone = ZoneInfo(name) if isinstance(name, str) and name else None
    except (ZoneInfoNotFoundError, ValueError):
        zone = None
    if zone is None:
        problems["timezone"] = f'unknown time zone {name!r}: use an IANA name such as "America/Chicago"'
    week: dict[int, tuple[tuple[int, int], ...]] = {}
    hours = config.get("hours", {})
    if not isinstance(hours, dict):
        problems["hours"] = 'must be a table such as { mon = "09:00-17:00" }'
        hours = {}
    for day, ranges in hours.items():
        if day not in DAYS:
            problems[f"hours.{day}"] = f"unknown day (use {', '.join(DAYS)})"
        elif not isinstance(ranges, str):
            problems[f"hours.{day}"] = 'must be a string such as "09:00-17:00"'
        else:
            try:
                week[DAYS.index(day)] = parse_ranges(ranges)
            except ValueError as exc:
                problems[f"hours.{day}"] = str(exc)
    holidays = set()
    listed = config.get("holidays", [])
    if not isinstance(listed, list):
        problems["holidays"] = 'must be an array of dates such as ["2026-12-25"]'
        listed = []
    for i, value in enumerate(listed):
        try:
            holidays.add(parse_date(value))
        except ValueError as exc:
            problems[f"holidays[{i}]"] = str(exc)
    window = 12 * 3600.0
    try:
        window = parse_duration(config.get("window", "12h"))
    except ValueError as exc:
        problems["window"] = str(exc)
    keywords = config.get("keywords", {})
    if not isinstance(keywords, dict):
        problems["keywords"] = 'must be a table such as { HOURS = "Mon-Fri 9am-5pm" }'
        keywords = {}
    for word, answer in keywords.items():
        if not normalize_keyword(word):
            problems[f"keywords.{word!r}"] = "a keyword needs letters or digits"
        elif not (isinstance(answer, str) and answer.strip()):
            problems[f"keywords.{word}"] = "must be the answer, a non-empty string"
    texts = {}
    for key in ("open_message", "closed_message"):
        try:
            texts[key] = _string(config, key, "")
        except ValueError as exc:
            problems[key] = str(exc)
    if problems:
        raise SettingsError(problems)
    return Settings(Hours(zone, week, frozenset(holidays)), texts["open_message"], texts["closed_message"],
                    window, keywords)  # fmt: skip


def _string(config: dict[str, Any], key: str, default: str) -> str:
    value = config.get(key, default)
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


@hookimpl
def check_config(config: dict[str, Any]) -> None:
    parse(config)  # raises SettingsError listing every problem


@hookimpl
def register_keywords(config: dict[str, Any]) -> list[tuple[str, str]]:
    keywords = config.get("keywords", {})
    return [(word, f"keywords.{word}") for word in keywords] if isinstance(keywords, dict) else []


@hookimpl
def handle_message(bot, message, conversation, config) -> Any:
    settings = parse(config)
    keyword = match_keyword(message.text, settings.keywords)
    if keyword is not None:
        return settings.keywords[keyword]  # always answered; the window is left alone
    now = bot.clock()
    text = settings.open_message if settings.hours.is_open(now) else settings.closed_message
    if not text:
        return None
    replied_at = conversation.state.get("autoresponder", {}).get("replied_at")
    if replied_at is not None and now - replied_at < settings.window:
        return []  # answered recently: claim it quietly and leave it to the agent
    conversation.state["autoresponder"] = {"replied_at": now}
    return text
