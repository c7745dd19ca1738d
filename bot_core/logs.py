"""Logging set-up for ``bot-core serve``: one line per event, text or JSON, secrets masked.

Nothing in bot-core logs a secret on purpose; the mask is the second line of defence, for a
plugin or a library that might.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

MASK = "[secret]"


class Secret(str):
    """A string whose ``repr`` is masked: config values filled from the environment.

    ``repr(bot.config)``, a plugin_config dict in a traceback or an f-string's ``!r`` show
    ``'[secret]'``; the value itself (``str``, JSON, HTTP headers) is the real one.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(MASK)


def _escaped(text: str) -> set[str]:
    """``text`` as it appears inside a JSON string (ASCII or not) and inside a Python repr, whose
    quotes depend on the whole string: a ``'`` is escaped only in a repr that also holds a ``"``."""
    return {text, json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1], str.__repr__(text)[1:-1],
            str.__repr__(text + '"')[1:-2]}


class Masker:
    """Masks secrets in text, also in their escaped forms: a secret with a ``\\`` or a ``'`` in
    it is spelled differently in a JSON document, in a repr, and in the repr of a JSON document."""

    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        for secret in {s for s in secrets if s}:
            for once in _escaped(secret):
                forms |= _escaped(once)
        ordered = sorted(forms, key=len, reverse=True)  # the longest form first: it contains the others
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def mask(self, text: str) -> str:
        return self._pattern.sub(MASK, text) if self._pattern is not None and text else text

    def mask_data(self, value: Any) -> Any:
        """A JSON-serialisable ``value`` with every string in it masked."""
        if self._pattern is None:
            return value
        return json.loads(self.mask(json.dumps(value, default=str)))


class SecretFilter(logging.Filter):
    """Replace every configured secret in a record's text, traceback and ``extra`` fields."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.masker = Masker(secrets)

    def mask(self, text: str) -> str:
        return self.masker.mask(text)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.masker:
            record.msg, record.args = self.mask(record.getMessage()), None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = self.mask(record.exc_text)
            for key, value in extras(record).items():
                if isinstance(value, str):
                    setattr(record, key, self.mask(value))
                elif not isinstance(value, (int, float, bool, type(None))):  # a dict or a list
                    setattr(record, key, self.masker.mask_data(value))
        return True


# uvicorn adds "color_message" (the message with ANSI colours) to its records: not a field.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


def extras(record: logging.LogRecord) -> dict[str, object]:
    """The fields a log call added with ``extra={...}`` (message and conversation ids...)."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(extras(record))
        if record.exc_text:
            entry["traceback"] = record.exc_text
        elif record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...``, the ``extra`` fields last so grep finds them."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = " ".join(f"{k}={json.dumps(v, default=str) if not isinstance(v, (int, float)) else v}"
                          for k, v in extras(record).items())  # fmt: skip
        if not fields:
            return text
        head, newline, rest = text.partition("\n")  # keep the fields on the event's first line
        return f"{head} {fields}{newline}{rest}"


def setup_logging(log_format: str = "text", secrets: Iterable[str] = (), level: int = logging.INFO) -> None:
    """Log to stderr in ``text`` or ``json``, masking ``secrets``."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    handler.addFilter(SecretFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request at INFO; the sender logs each send itself, with its MDR id.
    logging.getLogger("httpx").setLevel(max(level, logging.WARNING))
