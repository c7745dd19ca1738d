"""Logging set-up for ``bot-core serve``: one line per event, text or JSON, secrets masked.

Nothing in bot-core logs a secret on purpose; the mask is the second line of defence, for a
plugin or a library that might.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import datetime, timezone

MASK = "[secret]"


class SecretFilter(logging.Filter):
    """Replace every configured secret in a record's text, traceback and ``extra`` fields."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg, record.args = self.mask(record.getMessage()), None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = self.mask(record.exc_text)
            for key, value in extras(record).items():
                if isinstance(value, str):
                    setattr(record, key, self.mask(value))
                elif not isinstance(value, (int, float, bool, type(None))):  # a dict or a list
                    setattr(record, key, json.loads(self.mask(json.dumps(value, default=str))))
        return True


# uvicorn adds "color_message" (the message with ANSI colours) to its records: not a field.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


def extras(record: logging.LogRecord) -> dict[str, object]:
    """The fields a log call added with ``extra={...}`` (message and conversation ids...)."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(extras(record))
        if record.exc_info or record.exc_text:
            entry["traceback"] = record.exc_text or self.formatException(record.exc_info)
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
