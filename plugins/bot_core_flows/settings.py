"""Flow definitions: reading them from plugin_config, checking answers, filling in templates.

Everything a mistake in bot.toml could break is checked here, at load time, so that a running
flow never meets a bad regex, an unknown template variable or a step without a question.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date
from typing import Any

from bot_core import SettingsError, normalize_keyword, parse_duration

FLOW_KEYS = ("trigger", "steps", "done", "expire_after", "expiry_message", "exit_word", "exit_message",
             "post_to", "post_attempts", "post_backoff")  # fmt: skip
STEP_KEYS = ("ask", "save_as", "regex", "choices", "type", "min", "max", "retry")
TYPES = ("text", "number", "date")

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TEMPLATE = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|[{}]")
_NUMBER = re.compile(r"[+-]?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?|[+-]?\.[0-9]+")
_ISO_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_US_DATE = re.compile(r"([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})")
_URL = re.compile(r"https?://[^/?#\s]+([/?#]\S*)?")


@dataclass(frozen=True)
class Step:
    """One question: what to ask, where to keep the answer, and what counts as an answer."""

    ask: str
    save_as: str
    kind: str = "text"
    regex: re.Pattern[str] | None = None
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    retry: str | None = None

    def check(self, text: str) -> tuple[bool, Any]:
        """(True, the value to keep) for a valid answer, else (False, None)."""
        answer = text.strip()
        if self.choices:
            wanted = normalize_keyword(answer)
            return next(((True, c) for c in self.choices if normalize_keyword(c) == wanted), (False, None))
        if self.regex is not None:
            return (True, answer) if self.regex.fullmatch(answer) else (False, None)
        if self.kind == "number":
            return self._number(answer)
        if self.kind == "date":
            value = parse_answer_date(answer)
            return (True, value.isoformat()) if value else (False, None)
        return (True, answer) if answer else (False, None)

    def _number(self, answer: str) -> tuple[bool, Any]:
        if not _NUMBER.fullmatch(answer):
            return False, None
        value = float(answer.replace(",", ""))
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            return False, None
        return True, int(value) if value.is_integer() and "." not in answer else value

    def retry_text(self) -> str:
        """The configured retry prompt, or one that says what a valid answer looks like."""
        if self.retry:
            return self.retry
        if self.choices:
            return f"Please reply with one of: {', '.join(self.choices)}."
        if self.kind == "number":
            low, high = self.minimum, self.maximum
            if low is not None and high is not None:
                return f"Please reply with a number from {low:g} to {high:g}."
            if low is not None:
                return f"Please reply with a number of at least {low:g}."
            if high is not None:
                return f"Please reply with a number of at most {high:g}."
            return "Please reply with a number."
        if self.kind == "date":
            return "Please reply with a date like 2026-03-14 or 03/14/2026."
        return f"Sorry, I didn't get that. {self.ask}"


@dataclass(frozen=True)
class Flow:
    """A keyword-triggered sequence of questions."""

    name: str
    trigger: str
    steps: tuple[Step, ...]
    done: str
    expire_after: float
    expiry_message: str | None
    exit_word: str
    exit_message: str
    post_to: str | None
    post_attempts: int
    post_backoff: float


def parse_answer_date(text: str) -> date | None:
    """A date answer: YYYY-MM-DD or MM/DD/YYYY (the month first, as in the US); None if not one."""
    if match := _ISO_DATE.fullmatch(text):
        year, month, day = match.groups()
    elif match := _US_DATE.fullmatch(text):
        month, day, year = match.groups()
    else:
        return None
    try:
        return date(int(year), int(month), int(day))
    except ValueError:
        return None


def render(template: str, values: dict[str, Any]) -> str:
    """``template`` with each ``{name}`` replaced by ``values[name]``; ``{{`` and ``}}`` are braces."""

    def replace(match: re.Match[str]) -> str:
        if match[1] is not None:
            return str(values.get(match[1], ""))
        return match[0][0]

    return _TEMPLATE.sub(replace, template)


def template_problem(template: str, known: set[str]) -> str | None:
    """Why ``template`` cannot be filled from the variables in ``known``, or None."""
    for match in _TEMPLATE.finditer(template):
        if match[0] in ("{", "}"):
            return f"has a lone {match[0]!r}: write {{name}} for a variable, {{{{ and }}}} for a brace"
        if match[1] is not None and match[1] not in known:
            available = ", ".join(sorted(known)) or "none yet"
            return f"uses {{{match[1]}}}, which no earlier step saves (available: {available})"
    return None


def key(*parts: str | int) -> str:
    """A dotted key relative to the flows table, quoting names that are not bare TOML keys."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + (part if _BARE.fullmatch(part) else json.dumps(part))
    return out


def parse(config: dict[str, Any]) -> dict[str, Flow]:
    """Every flow in the plugin's table, by name; SettingsError lists every problem."""
    problems: dict[str, str] = {}
    flows = {}
    for name, table in config.items():
        if name == "enabled":  # the framework's switch, checked by bot-core itself
            continue
        if not isinstance(table, dict):
            problems[key(name)] = ("must be a table: a flow, e.g. [profiles.NAME.plugin_config.flows."
                                   f"{name}] with trigger and steps")  # fmt: skip
        elif (flow := _flow(name, table, problems)) is not None:
            flows[name] = flow
    if problems:
        raise SettingsError(problems)
    return flows


def _flow(name: str, t: dict[str, Any], problems: dict[str, str]) -> Flow | None:
    before = len(problems)
    for unknown in t.keys() - set(FLOW_KEYS):
        problems[key(name, unknown)] = f"unknown setting (known: {', '.join(FLOW_KEYS)})"
    trigger = _text(t, "trigger", None, name, problems)
    if trigger is not None and not normalize_keyword(trigger):
        problems[key(name, "trigger")] = 'must be a keyword with letters or digits, e.g. "JOIN"'
    exit_word = _text(t, "exit_word", "EXIT", name, problems)
    if exit_word is not None and not normalize_keyword(exit_word):
        problems[key(name, "exit_word")] = 'must be a word with letters or digits, e.g. "EXIT"'
    steps = []
    raw_steps = t.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        problems[key(name, "steps")] = 'is required: an array of steps, each { ask = "...", save_as = "..." }'
        raw_steps = []
    saved: set[str] = set()
    for i, raw in enumerate(raw_steps):
        step = _step(name, i, raw, saved, problems)
        if step is not None:
            steps.append(step)
            saved.add(step.save_as)
    done = _text(t, "done", "Thanks! We have your answers.", name, problems)
    if done is not None and (why := template_problem(done, saved)):
        problems[key(name, "done")] = why
    expire_after = _duration(t, "expire_after", "1h", name, problems)
    expiry_message = _text(t, "expiry_message", "", name, problems) or None
    exit_message = _text(t, "exit_message", "", name, problems)
    post_to = _text(t, "post_to", "", name, problems) or None
    if post_to is not None and not _URL.fullmatch(post_to):
        problems[key(name, "post_to")] = "must be an http(s) URL such as https://example.com/signups"
    attempts = t.get("post_attempts", 12)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        problems[key(name, "post_attempts")] = "must be an integer >= 1"
    backoff = _duration(t, "post_backoff", "2s", name, problems)
    if len(problems) > before:
        return None
    exit_message = exit_message or f"OK, stopped. Text {normalize_keyword(trigger)} to start again."
    return Flow(name, trigger, tuple(steps), done, expire_after, expiry_message, exit_word, exit_message,
                post_to, attempts, backoff)  # fmt: skip


def _step(flow: str, i: int, raw: Any, saved: set[str], problems: dict[str, str]) -> Step | None:
    where = (flow, "steps", i)
    if not isinstance(raw, dict):
        problems[key(*where)] = 'must be a table such as { ask = "What\'s your name?", save_as = "name" }'
        return None
    before = len(problems)
    for unknown in raw.keys() - set(STEP_KEYS):
        problems[key(*where, unknown)] = f"unknown setting (known: {', '.join(STEP_KEYS)})"
    ask = raw.get("ask")
    if not (isinstance(ask, str) and ask.strip()):
        problems[key(*where, "ask")] = "is required: the question, a non-empty string"
    elif why := template_problem(ask, saved):
        problems[key(*where, "ask")] = why
    save_as = raw.get("save_as")
    if not (isinstance(save_as, str) and _NAME.fullmatch(save_as)):
        problems[key(*where, "save_as")] = 'is required: a variable name (letters, digits, _), e.g. "zip"'
    elif save_as in saved:
        problems[key(*where, "save_as")] = f"{save_as!r} is saved by an earlier step already"
    kind = raw.get("type", "text")
    if kind not in TYPES:
        problems[key(*where, "type")] = f"must be one of {', '.join(map(repr, TYPES))}"
    validations = [v for v in ("regex", "choices") if v in raw] + (["type"] if kind != "text" else [])
    if len(validations) > 1:
        problems[key(*where, validations[1])] = f"give one validation per step, not {' and '.join(validations)}"
    regex = None
    if "regex" in raw:
        try:
            regex = re.compile(raw["regex"]) if isinstance(raw["regex"], str) else None
        except re.error as exc:
            problems[key(*where, "regex")] = f"is not a valid regular expression: {exc}"
        else:
            if regex is None:
                problems[key(*where, "regex")] = "must be a string (a regular expression)"
    choices = raw.get("choices", [])
    if not (isinstance(choices, list) and all(isinstance(c, str) and normalize_keyword(c) for c in choices)) or (
        "choices" in raw and not choices
    ):
        problems[key(*where, "choices")] = 'must be a non-empty array of words, e.g. ["yes", "no"]'
    bounds = {}
    for name in ("min", "max"):
        value = raw.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or kind != "number"):
            problems[key(*where, name)] = 'applies to type = "number" only, and must be a number'
        bounds[name] = value
    retry = raw.get("retry")
    if retry is not None and not (isinstance(retry, str) and retry.strip()):
        problems[key(*where, "retry")] = "must be a non-empty string"
    elif retry is not None and (why := template_problem(retry, saved)):
        problems[key(*where, "retry")] = why
    if len(problems) > before:
        return None
    return Step(ask, save_as, kind, regex, tuple(choices), bounds["min"], bounds["max"], retry)


def _text(t: dict[str, Any], name: str, default: str | None, flow: str, problems: dict[str, str]) -> str | None:
    value = t.get(name, default)
    if value is None:
        problems[key(flow, name)] = "is required"
    elif not isinstance(value, str):
        problems[key(flow, name)] = "must be a string"
        return None
    return value


def _duration(t: dict[str, Any], name: str, default: str, flow: str, problems: dict[str, str]) -> float:
    try:
        seconds = parse_duration(t.get(name, default))
    except ValueError as exc:
        problems[key(flow, name)] = str(exc)
        return 0.0
    if seconds <= 0:
        problems[key(flow, name)] = "must be longer than 0s"
    return seconds
