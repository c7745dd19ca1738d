"""SMS keywords: how a text is matched against words like JOIN, HOURS or STOP.

People text keywords sloppily ("join!", " Join please", "ＪＯＩＮ"), so matching ignores case,
stray spaces and the punctuation or emoji around a word, but never looks inside a word: JOIN
does not fire on REJOINED. Every plugin matches the same way, through these two functions, so a
keyword behaves alike wherever it is configured.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable


def _words(text: str) -> list[str]:
    """The words of ``text``, normalised, with what surrounds each word stripped off."""
    words = []
    for word in unicodedata.normalize("NFKC", text).casefold().split():
        start, end = 0, len(word)
        while start < end and not word[start].isalnum():
            start += 1
        while end > start and not word[end - 1].isalnum():
            end -= 1
        if start < end:
            words.append(word[start:end].upper())
    return words


def normalize_keyword(text: str) -> str:
    """``text`` as a keyword: upper case, words single-spaced, surrounding punctuation dropped.

    Compare whole messages with it: ``normalize_keyword(" stop! ") == "STOP"``, while
    ``normalize_keyword("stop texting me") == "STOP TEXTING ME"``. Two keywords that normalise
    alike are the same keyword.
    """
    return " ".join(_words(text))


def match_keyword(text: str, keywords: Iterable[str]) -> str | None:
    """The keyword (as given) that ``text`` starts with, word for word; None if none does.

    A keyword fires on the whole message or on its first word(s): JOIN matches "join",
    "Join!" and "join please", not "rejoined" or "I want to join". When several keywords
    match, the longest wins ("SIGN UP" before "SIGN").
    """
    words = _words(text)
    best: tuple[int, str] | None = None
    for keyword in keywords:
        wanted = _words(keyword)
        if wanted and words[: len(wanted)] == wanted and (best is None or len(wanted) > best[0]):
            best = (len(wanted), keyword)
    return best[1] if best else None
