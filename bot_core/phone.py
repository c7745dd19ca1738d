"""Phone numbers and sender IDs: E.164 normalisation and the Alphanumeric Sender ID rules."""

from __future__ import annotations

import functools
import re

import phonenumbers

_ALPHANUMERIC = re.compile(r"[A-Za-z0-9 ]{1,11}")
_SHORT_CODE = re.compile(r"[0-9]{3,8}")
_E164 = phonenumbers.PhoneNumberFormat.E164

# Where Telnyx does not deliver an Alphanumeric Sender ID. Telnyx's Alphanumeric Sender ID page
# names the United States, Canada and Puerto Rico; our reading adds the other US territories in
# the North American Numbering Plan (US Virgin Islands, Guam, Northern Mariana Islands, American
# Samoa), whose numbers US carriers serve under the same FCC/CTIA rules. The independent NANP
# countries of the Caribbean (Jamaica, the Bahamas, ...) are not the US: their own rules apply.
NO_ALPHANUMERIC_REGIONS = {
    "US": "the United States", "CA": "Canada", "PR": "Puerto Rico", "VI": "the US Virgin Islands",
    "GU": "Guam", "MP": "the Northern Mariana Islands", "AS": "American Samoa",
}  # fmt: skip


def normalize_number(text: str, *, strict: bool = False) -> str:
    """Return ``text`` as E.164 (``+13125550100``) or raise ``ValueError`` saying why.

    Formatting characters are accepted (``+1 (312) 555-0100``). A number without ``+`` is read
    only if, with a ``+`` before it, it is a valid number (Telnyx writes ``13125550100`` in some
    APIs): ``3125550100`` is refused rather than read as the Dutch ``+31 25550100``, so no
    number is ever rewritten into another country's. ``strict`` (numbers in the config) also
    requires the ``+`` and a number that is valid, not merely possible.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{text!r} is not a phone number")
    return _normalize(text, strict)


@functools.lru_cache(maxsize=8192)  # every webhook carries two numbers, mostly ones seen before
def _normalize(text: str, strict: bool) -> str:
    candidate = text.strip()
    digits_only = candidate.isdigit()
    if digits_only and not strict:
        candidate = "+" + candidate
    try:
        parsed = phonenumbers.parse(candidate, None)
    except phonenumbers.NumberParseException:
        raise ValueError(f"{text!r} is not a phone number in E.164 form{_suggestion(text)}") from None
    if (strict or digits_only) and not phonenumbers.is_valid_number(parsed):
        raise ValueError(f"{text!r} is not a valid phone number in E.164 form{_suggestion(text)}")
    if not phonenumbers.is_possible_number(parsed):
        raise ValueError(f"{text!r} is not a possible phone number{_suggestion(text)}")
    return phonenumbers.format_number(parsed, _E164)


def _suggestion(text: str) -> str:
    """What the number would have to look like: ``+`` and the country code, then the number."""
    hint = ": write + then the country code, then the number (+13125550100 for a US number)"
    if text.strip().startswith("+"):
        return hint
    try:  # most likely a national number of the NANP (Telnyx's home), written without +1
        parsed = phonenumbers.parse(text, "US")
    except phonenumbers.NumberParseException:
        return hint
    if not phonenumbers.is_valid_number(parsed):
        return hint
    return f"{hint}; if it is a North American number, write {phonenumbers.format_number(parsed, _E164)}"


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


def alphanumeric_destination_error(to: str) -> str | None:
    """Why an Alphanumeric Sender ID cannot send to number ``to`` (E.164), or None if it can."""
    region = region_of(to)
    if region in NO_ALPHANUMERIC_REGIONS:
        return (f"Telnyx does not deliver alphanumeric sender IDs to {NO_ALPHANUMERIC_REGIONS[region]} ({to}); "
                "send from a number instead")  # fmt: skip
    return None


def sender_kind(sender: str) -> str:
    """``"short_code"``, ``"alphanumeric"`` or ``"long_code"`` (E.164 numbers, toll-free too).

    Telnyx's default encoding depends on it (see :mod:`bot_core.segments`).
    """
    if _SHORT_CODE.fullmatch(sender):
        return "short_code"
    if any(c.isalpha() for c in sender):
        return "alphanumeric"
    return "long_code"
