"""How an SMS text is encoded and cut into parts, counted the way Telnyx bills it.

bot-core stores its own count on every outbound MDR so that cost and length limits do not depend
on Telnyx reporting ``parts`` back. The rules are Telnyx's, from its message-encoding page
(https://developers.telnyx.com/docs/messaging/messages/message-encoding): "Telnyx uses a
non-standard GSM 7-bit encoding optimized for maximum carrier compatibility. Characters not in
this set will fallback to UTF-16." Telnyx's set is GSM 03.38's default alphabet without ``Ç``,
``¤`` and the Greek capitals, and of the extension table only ``^{}\\[~]|`` (two septets each):
no ``€`` and no form feed, which therefore force UTF-16. The default encoding depends on the
sender (same page): short codes send ASCII 7-bit; long codes, toll-free numbers and
alphanumeric sender IDs send Telnyx's GSM-7. UTF-16 is labelled ``UCS-2``, as the MDR's
``encoding`` column always has: the two count alike (a character outside the BMP is two units).

Parts are counted by packing, not by dividing: an extension character, a surrogate pair or a
whole grapheme cluster (a flag, a skin-toned emoji, a letter with its combining accent) that
does not fit moves to the next part, so a phone never shows half of one. Twilio's segment
calculator (https://github.com/TwilioDevEd/message-segment-calculator) splits only between code
points; here a cluster splits only when it alone is longer than a part.
"""

from __future__ import annotations

from dataclasses import dataclass

import regex

from .phone import sender_kind

GSM7 = "GSM-7"
ASCII = "ASCII"
UCS2 = "UCS-2"

# GSM 03.38 default alphabet as Telnyx sends it: without Ç (0x09), ¤ (0x24) and the Greek
# capitals (0x10, 0x12-0x1A); 0x1B (ESC) introduces the extension table and is no character.
_GSM_BASIC = frozenset(
    "@£$¥èéùìò\nØø\rÅå_ÆæßÉ !\"#%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# The extension characters Telnyx lists; each is sent as ESC + code, so it costs two septets.
_GSM_EXTENSION = frozenset("^{}\\[~]|")
_ASCII = frozenset(map(chr, range(128)))

# (units in a single-part message, units per part of a concatenated one): the rest of each
# 140-octet part carries the concatenation header.
_LIMITS = {GSM7: (160, 153), ASCII: (160, 153), UCS2: (70, 67)}
_GRAPHEME = regex.compile(r"\X")


@dataclass(frozen=True)
class Segments:
    """The encoding of a text and the number of parts it is sent as.

    ``units`` are septets for GSM-7 and ASCII, UTF-16 code units for UCS-2; ``non_gsm`` lists
    the distinct characters that forced UCS-2 (outside the sender's 7-bit set), in order of
    appearance, so a sender can be told which character made a message cost more.
    """

    encoding: str
    parts: int
    units: int
    non_gsm: tuple[str, ...]


def count_segments(text: str, sender: str | None = None) -> Segments:
    """Encode ``text`` as Telnyx would from ``sender`` and count its parts (1 for an empty text).

    ``sender`` is the sending number or alphanumeric sender ID; None counts as a long code.
    """
    encoding, costs, non_gsm = _classify(text, sender)
    return Segments(encoding, len(_pack(text, encoding, costs)), sum(costs), non_gsm)


def split_segments(text: str, sender: str | None = None) -> list[str]:
    """Cut ``text`` into the parts it is sent as; ``"".join(parts) == text``.

    An extension character, a surrogate pair or a grapheme cluster is never split across parts
    (unless the cluster alone exceeds a part).
    """
    encoding, costs, _ = _classify(text, sender)
    return _pack(text, encoding, costs)


def _classify(text: str, sender: str | None) -> tuple[str, list[int], tuple[str, ...]]:
    """The encoding of ``text``, the units each character costs in it, and what forced UCS-2."""
    if sender is not None and sender_kind(sender) == "short_code":
        encoding, accepted, double = ASCII, _ASCII, frozenset[str]()
    else:
        encoding, accepted, double = GSM7, _GSM_BASIC | _GSM_EXTENSION, _GSM_EXTENSION
    non_gsm = tuple(dict.fromkeys(c for c in text if c not in accepted))
    if not non_gsm:
        return encoding, [2 if c in double else 1 for c in text], ()
    return UCS2, [2 if ord(c) > 0xFFFF else 1 for c in text], non_gsm


def _pack(text: str, encoding: str, costs: list[int]) -> list[str]:
    """Fill parts greedily, moving a grapheme cluster that would overflow a part to the next one."""
    single, per_part = _LIMITS[encoding]
    if sum(costs) <= single:
        return [text]
    parts: list[str] = []
    start = used = 0
    for match in _GRAPHEME.finditer(text):
        first, end = match.span()
        cost = sum(costs[first:end])
        if used + cost <= per_part:
            used += cost
            continue
        if used:
            parts.append(text[start:first])
            start, used = first, 0
        if cost <= per_part:
            used = cost
            continue
        for index in range(first, end):  # a cluster longer than a part: split it by code point
            if used + costs[index] > per_part:
                parts.append(text[start:index])
                start, used = index, 0
            used += costs[index]
    parts.append(text[start:])
    return parts
