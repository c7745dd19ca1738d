"""Phone numbers and sender IDs: E.164 normalisation and the Alphanumeric Sender ID rule."""

from __future__ import annotations

import functools
import re

import phonenumbers

_ALPHANUMERIC = re.compile(r"[A-Za-z0-9 ]{1,11}")


def normalize_number(text: str) -> str:
    """Return ``text`` as E.164 (``+13125550100``) or raise ``ValueError`` saying why.

    Formatting characters are accepted (``+1 (312) 555-0100``); a leading ``+`` is required
    unless the text is digits only, as Telnyx writes numbers without it in some APIs.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{text!r} is not a phone number")
    return _normalize(text)


@functools.lru_cache(maxsize=8192)  # every webhook carries two numbers, mostly ones seen before
def _normalize(text: str) -> str:
    candidate = text.strip()
    if candidate.isdigit():
        candidate = "+" + candidate
    try:
        parsed = phonenumbers.parse(candidate, None)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"{text!r} is not a phone number in E.164 form (+<country><number>): {exc}") from None
    if not phonenumbers.is_possible_number(parsed):
        raise ValueError(f"{text!r} is not a possible phone number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def region_of(number: str) -> str | None:
    """The ISO country code of an E.164 number (``US``, ``CA``, ``GB``), or None if unknown."""
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(number, None))
    except phonenumbers.NumberParseException:
        return None


def alphanumeric_sender_id_error(sender_id: object) -> str | None:
    """Why ``sender_id`` is not a valid Alphanumeric Sender ID, or None if it is.

    The rule: 1-11 characters, Latin letters, digits and spaces only, at least one letter.
    """
    if not isinstance(sender_id, str):
        return "must be a string"
    if not _ALPHANUMERIC.fullmatch(sender_id):
        return "must be 1-11 characters of Latin letters, digits and spaces"
    if not any(c.isalpha() for c in sender_id):
        return "must contain at least one letter"
    return None
