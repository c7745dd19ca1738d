"""Business hours: weekly opening times in a time zone, minus holidays.

Times are wall-clock times in the profile's own IANA zone, so "09:00-17:00" stays 9 to 5 across
daylight-saving changes. A range's close time is exclusive ("09:00-17:00" is closed at 17:00
sharp) and may be ``24:00``, the end of the day.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_RANGE = re.compile(r"([0-9]{1,2}):([0-9]{2})\s*-\s*([0-9]{1,2}):([0-9]{2})")

Range = tuple[int, int]  # minutes after midnight: [open, close)


@dataclass(frozen=True)
class Hours:
    """When a line is open: per weekday (0 = Monday) a tuple of ranges, and closed dates."""

    zone: ZoneInfo
    week: dict[int, tuple[Range, ...]]
    holidays: frozenset[date]

    def is_open(self, when: float) -> bool:
        """Whether the line is open at epoch seconds ``when``."""
        local = datetime.fromtimestamp(when, self.zone)
        if local.date() in self.holidays:
            return False
        minute = local.hour * 60 + local.minute
        return any(start <= minute < end for start, end in self.week.get(local.weekday(), ()))


def parse_ranges(text: str) -> tuple[Range, ...]:
    """``"09:00-12:00, 13:00-17:00"`` as minute ranges; ``"closed"`` as none. Raises ValueError."""
    if text.strip().lower() == "closed":
        return ()
    ranges = []
    for part in text.split(","):
        match = _RANGE.fullmatch(part.strip())
        if not match:
            raise ValueError(f'{part.strip()!r} is not a time range: write "HH:MM-HH:MM", e.g. "09:00-17:00"')
        start, end = _minute(match[1], match[2], part), _minute(match[3], match[4], part)
        if end <= start:
            raise ValueError(f"{part.strip()!r} closes before it opens (for overnight hours, end the day at 24:00"
                             " and open the next at 00:00)")  # fmt: skip
        ranges.append((start, end))
    return tuple(sorted(ranges))


def _minute(hour: str, minute: str, part: str) -> int:
    value = int(hour) * 60 + int(minute)
    if int(minute) > 59 or value > 24 * 60:
        raise ValueError(f"{part.strip()!r} has a time that does not exist (00:00 to 24:00)")
    return value


def parse_date(value: object) -> date:
    """A holiday: a TOML date or a ``"YYYY-MM-DD"`` string. Raises ValueError."""
    if isinstance(value, datetime):
        raise ValueError(f"{value} is a date and time: write just the date, e.g. 2026-12-25")
    if isinstance(value, date):
        return value
    if isinstance(value, str) and re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value.strip()):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ValueError(f'{value!r} is not a date: write YYYY-MM-DD, e.g. "2026-12-25"')
