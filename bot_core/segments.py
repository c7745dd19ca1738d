"""How an SMS text is encoded and cut into parts, counted the way carriers bill it.

bot-core stores its own count on every outbound MDR so that cost and length limits do not depend
on Telnyx reporting ``parts`` back. A text is GSM-7 if every character is in the GSM 03.38 default
alphabet or its extension table, and UCS-2 otherwise. Parts are counted by packing characters,
not by dividing, because a character never straddles two parts: an extension character (two
septets, ESC + code) or a character outside the BMP (a UTF-16 surrogate pair) that does not fit
moves whole to the next part, which can add a part that division would not.
"""

from __future__ import annotations

from dataclasses import dataclass

GSM7 = "GSM-7"
UCS2 = "UCS-2"

# GSM 03.38 default alphabet in code order; 0x1B (ESC) introduces the extension table and is not a
# character a user can send, so it is left out of the accepted set.
_GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
) - {"\x1b"}
# Extension-table characters are sent as ESC + code, so each costs two septets.
_GSM_EXTENSION = frozenset("^{}\\[~]|€\f")

# (units in a single-part message, units per part of a concatenated one): the rest of each
# 140-octet part carries the concatenation header.
_LIMITS = {GSM7: (160, 153), UCS2: (70, 67)}


@dataclass(frozen=True)
class Segments:
    """The encoding of a text and the number of parts it is sent as.

    ``units`` are septets for GSM-7 and UTF-16 code units for UCS-2; ``non_gsm`` lists the
    distinct characters that forced UCS-2, in order of appearance, so a sender can be told which
    character made a message cost more.
    """

    encoding: str
    parts: int
    units: int
    non_gsm: tuple[str, ...]


def count_segments(text: str) -> Segments:
    """Encode ``text`` and count its parts (1 for an empty text)."""
    encoding, costs, non_gsm = _classify(text)
    return Segments(encoding, len(_pack(text, encoding, costs)), sum(costs), non_gsm)


def split_segments(text: str) -> list[str]:
    """Cut ``text`` into the parts it is sent as; ``"".join(parts) == text``.

    An extension character or a surrogate pair is never split across parts.
    """
    encoding, costs, _ = _classify(text)
    return _pack(text, encoding, costs)


def _classify(text: str) -> tuple[str, list[int], tuple[str, ...]]:
    """The encoding of ``text``, the units each character costs in it, and what forced UCS-2."""
    non_gsm = tuple(dict.fromkeys(c for c in text if c not in _GSM_BASIC and c not in _GSM_EXTENSION))
    if not non_gsm:
        return GSM7, [2 if c in _GSM_EXTENSION else 1 for c in text], ()
    return UCS2, [2 if ord(c) > 0xFFFF else 1 for c in text], non_gsm


def _pack(text: str, encoding: str, costs: list[int]) -> list[str]:
    """Fill parts greedily, moving a character that would overflow a part to the next one."""
    single, per_part = _LIMITS[encoding]
    if sum(costs) <= single:
        return [text]
    parts: list[str] = []
    start = used = 0
    for index, cost in enumerate(costs):
        if used + cost > per_part:
            parts.append(text[start:index])
            start, used = index, 0
        used += cost
    parts.append(text[start:])
    return parts
