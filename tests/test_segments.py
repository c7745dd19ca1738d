from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot_core.segments import Segments, count_segments, split_segments

GSM_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENSION = "^{}\\[~]|€\f"
EMOJI = "😀"


def units(part: str, encoding: str) -> int:
    """An independent measure: septets, or UTF-16 code units as a phone would encode them."""
    if encoding == "GSM-7":
        return len(part) + sum(c in GSM_EXTENSION for c in part)
    return len(part.encode("utf-16-le", "surrogatepass")) // 2


def test_empty_text_is_one_gsm_part():
    assert count_segments("") == Segments("GSM-7", 1, 0, ())
    assert split_segments("") == [""]


def test_whole_basic_alphabet_and_extension_table_are_gsm7():
    assert count_segments(GSM_BASIC).encoding == "GSM-7"
    assert count_segments(GSM_EXTENSION) == Segments("GSM-7", 1, 2 * len(GSM_EXTENSION), ())


def test_escape_character_is_not_a_gsm_character():
    assert count_segments("a\x1bb").non_gsm == ("\x1b",)


@pytest.mark.parametrize(
    ("length", "parts"), [(1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4)]
)
def test_gsm7_part_boundaries(length, parts):
    assert count_segments("a" * length) == Segments("GSM-7", parts, length, ())


@pytest.mark.parametrize(("count", "parts"), [(80, 1), (81, 2)])
def test_extension_characters_count_two_septets(count, parts):
    assert count_segments("€" * count) == Segments("GSM-7", parts, 2 * count, ())


def test_extension_character_at_a_part_boundary_moves_to_the_next_part():
    # 152 septets + "€" would be 154: the escape pair is not split, so "€" starts part two.
    text = "a" * 152 + "€" + "b" * 152
    assert split_segments(text) == ["a" * 152, "€" + "b" * 151, "b"]
    # Division (306 septets / 153) would say 2 parts; packing needs 3.
    assert count_segments(text) == Segments("GSM-7", 3, 306, ())


@pytest.mark.parametrize(("length", "parts"), [(70, 1), (71, 2), (134, 2), (135, 3)])
def test_ucs2_part_boundaries(length, parts):
    text = "я" * length
    assert count_segments(text) == Segments("UCS-2", parts, length, ("я",))


def test_characters_outside_the_bmp_count_two_units():
    assert count_segments(EMOJI * 35) == Segments("UCS-2", 1, 70, (EMOJI,))
    assert count_segments(EMOJI * 36).parts == 2


def test_emoji_at_a_part_boundary_moves_to_the_next_part():
    text = "я" * 66 + EMOJI + "я" * 66
    assert split_segments(text) == ["я" * 66, EMOJI + "я" * 65, "я"]
    assert count_segments(text) == Segments("UCS-2", 3, 134, ("я", EMOJI))


def test_non_gsm_lists_each_forcing_character_once_in_order():
    segments = count_segments("Café ✓ naïve ✓ done")
    assert segments.encoding == "UCS-2"
    assert segments.non_gsm == ("✓", "ï")


def test_one_non_gsm_character_turns_a_one_part_gsm_text_into_three_ucs2_parts():
    text = "a" * 150 + "✓"
    assert count_segments(text[:-1]).parts == 1
    assert count_segments(text) == Segments("UCS-2", 3, 151, ("✓",))


texts = st.text(
    alphabet=st.sampled_from(GSM_BASIC + GSM_EXTENSION)
    | st.sampled_from("яé✓€" + EMOJI + "👍🏽")
    | st.characters(codec=None),
    max_size=700,
)
gsm_texts = st.text(alphabet=st.sampled_from(GSM_BASIC + GSM_EXTENSION), max_size=700)


@given(st.one_of(texts, gsm_texts))
def test_parts_match_the_split_and_each_fits_its_limit(text):
    segments = count_segments(text)
    parts = split_segments(text)
    assert "".join(parts) == text
    assert segments.parts == len(parts)
    assert segments.units == sum(units(part, segments.encoding) for part in parts)
    single, per_part = {"GSM-7": (160, 153), "UCS-2": (70, 67)}[segments.encoding]
    if len(parts) == 1:
        assert segments.units <= single
    else:
        assert segments.units > single
        assert all(0 < units(part, segments.encoding) <= per_part for part in parts)


@given(st.one_of(texts, gsm_texts))
def test_parts_are_packed_full(text):
    """Each part but the last is closed only because its next character would not fit."""
    encoding = count_segments(text).encoding
    parts = split_segments(text)
    per_part = 153 if encoding == "GSM-7" else 67
    for part, following in zip(parts, parts[1:]):
        assert units(part + following[0], encoding) > per_part


@given(st.one_of(texts, gsm_texts))
def test_encoding_is_gsm7_exactly_when_no_character_forces_ucs2(text):
    segments = count_segments(text)
    forcing = [c for c in text if c not in GSM_BASIC + GSM_EXTENSION]
    assert segments.non_gsm == tuple(dict.fromkeys(forcing))
    assert segments.encoding == ("UCS-2" if forcing else "GSM-7")
