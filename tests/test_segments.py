"""Parts and encoding as Telnyx bills them.

Source: Telnyx's message-encoding page (https://developers.telnyx.com/docs/messaging/messages/
message-encoding): "Telnyx uses a non-standard GSM 7-bit encoding optimized for maximum carrier
compatibility. Characters not in this set will fallback to UTF-16", with its own character list
(no €, no Greek capitals, no Ç, no ¤, no form feed; of the extension table only ~^|\\{}[] count two),
and a default encoding by sender type (short codes: ASCII 7-bit). Part sizes (160/153 septets,
70/67 UTF-16 units) are GSM 03.40's and agree with Twilio's segment calculator
(https://github.com/TwilioDevEd/message-segment-calculator); unlike it, a grapheme cluster is
never split across parts.
"""

from __future__ import annotations

from itertools import pairwise

import pytest
import regex
from hypothesis import given
from hypothesis import strategies as st

from bot_core.segments import Segments, count_segments, split_segments

# Telnyx's GSM-7 set: GSM 03.38's default alphabet without Ç, ¤ and the Greek capitals.
GSM_BASIC = (
    "@£$¥èéùìò\nØø\rÅå_ÆæßÉ !\"#%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENSION = "^{}\\[~]|"
# In GSM 03.38 but not in Telnyx's list: each forces UTF-16 at Telnyx.
NOT_AT_TELNYX = "€Ç¤\fΔΦΓΛΩΠΨΣΘΞ"
EMOJI = "😀"
FLAG = "🇺🇸"  # two regional indicators: one grapheme, four UTF-16 units
THUMB = "👍🏽"  # thumbs up + skin tone modifier: one grapheme, four UTF-16 units
E_ACUTE = "e\u0301"  # e + combining acute accent: one grapheme, two characters
SHORT_CODE = "55555"


def units(part: str, encoding: str) -> int:
    """An independent measure: septets, or UTF-16 code units as a phone would encode them."""
    if encoding == "GSM-7":
        return len(part) + sum(c in GSM_EXTENSION for c in part)
    if encoding == "ASCII":
        return len(part)
    return len(part.encode("utf-16-le", "surrogatepass")) // 2


def test_empty_text_is_one_gsm_part():
    assert count_segments("") == Segments("GSM-7", 1, 0, ())
    assert split_segments("") == [""]


def test_telnyx_basic_set_and_extension_characters_are_gsm7():
    assert count_segments(GSM_BASIC) == Segments("GSM-7", 1, len(GSM_BASIC), ())
    assert count_segments(GSM_EXTENSION) == Segments("GSM-7", 1, 2 * len(GSM_EXTENSION), ())


@pytest.mark.parametrize("char", list(NOT_AT_TELNYX))
def test_gsm_0338_characters_missing_from_telnyx_set_force_utf16(char):
    # Telnyx's page: no €, no Greek capitals, no Ç, no ¤, no form feed in its GSM-7 set.
    assert count_segments("Price " + char) == Segments("UCS-2", 1, 7, (char,))


def test_1499_letters_and_a_euro_sign_are_23_utf16_parts_as_telnyx_bills_them():
    # At Telnyx "€" is not GSM-7: 1500 UTF-16 units in parts of 67 = 23 parts (standard GSM would say 10).
    assert count_segments("a" * 1499 + "€") == Segments("UCS-2", 23, 1500, ("€",))


def test_short_codes_send_ascii_where_only_7_bit_ascii_is_one_unit():
    # Telnyx's page: the default encoding of a short code is ASCII 7-bit.
    assert count_segments("ab^{}[]~|\\" * 16, SHORT_CODE) == Segments("ASCII", 1, 160, ())
    assert count_segments("a" * 161, SHORT_CODE) == Segments("ASCII", 2, 161, ())
    assert count_segments("café £5", SHORT_CODE) == Segments("UCS-2", 1, 7, ("é", "£"))


@pytest.mark.parametrize("sender", [None, "+13125550100", "+18005550100", "ACME"])
def test_long_codes_toll_free_and_alphanumeric_senders_send_telnyx_gsm7(sender):
    assert count_segments("£5 {ok}", sender) == Segments("GSM-7", 1, 9, ())


def test_escape_character_is_not_a_gsm_character():  # it introduces the extension table
    assert count_segments("a\x1bb").non_gsm == ("\x1b",)


@pytest.mark.parametrize(
    ("length", "parts"), [(1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4)]
)
def test_gsm7_part_boundaries(length, parts):
    assert count_segments("a" * length) == Segments("GSM-7", parts, length, ())


@pytest.mark.parametrize(("count", "parts"), [(80, 1), (81, 2)])
def test_extension_characters_count_two_septets(count, parts):
    assert count_segments("~" * count) == Segments("GSM-7", parts, 2 * count, ())


def test_extension_character_at_a_part_boundary_moves_to_the_next_part():
    # 152 septets + "^" would be 154: the escape pair is not split, so "^" starts part two.
    text = "a" * 152 + "^" + "b" * 152
    assert split_segments(text) == ["a" * 152, "^" + "b" * 151, "b"]
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


@pytest.mark.parametrize("grapheme", [FLAG, THUMB, E_ACUTE, "👩‍👩‍👧"], ids=["flag", "skin-tone", "accent", "zwj-family"])
def test_a_grapheme_at_a_part_boundary_moves_whole_to_the_next_part(grapheme):
    # 66 units leave room for one more in a 67-unit part: the grapheme does not fit whole.
    text = "я" * 66 + grapheme + "я" * 10
    assert split_segments(text) == ["я" * 66, grapheme + "я" * 10]
    assert count_segments(text).parts == 2


def test_a_grapheme_longer_than_a_part_is_split_by_code_point():
    text = "e" + "\u0301" * 200  # one cluster of 201 UTF-16 units
    parts = split_segments(text)
    assert "".join(parts) == text and [units(p, "UCS-2") for p in parts] == [67, 67, 67]


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
    | st.sampled_from("яé✓€\u0301\u200d🏽" + EMOJI + THUMB + FLAG)
    | st.characters(codec=None),
    max_size=700,
)
senders = st.sampled_from([None, "+13125550100", SHORT_CODE, "ACME"])
gsm_texts = st.text(alphabet=st.sampled_from(GSM_BASIC + GSM_EXTENSION), max_size=700)


@given(st.one_of(texts, gsm_texts), senders)
def test_parts_match_the_split_and_each_fits_its_limit(text, sender):
    segments = count_segments(text, sender)
    parts = split_segments(text, sender)
    assert "".join(parts) == text
    assert segments.parts == len(parts)
    assert segments.units == sum(units(part, segments.encoding) for part in parts)
    single, per_part = {"GSM-7": (160, 153), "ASCII": (160, 153), "UCS-2": (70, 67)}[segments.encoding]
    if len(parts) == 1:
        assert segments.units <= single
    else:
        assert segments.units > single
        assert all(0 < units(part, segments.encoding) <= per_part for part in parts)


@given(st.one_of(texts, gsm_texts))
def test_parts_are_packed_full_and_never_split_a_grapheme_that_fits(text):
    """Each part but the last is closed only because its next grapheme would not fit, and a
    part boundary falls between graphemes unless one is longer than a whole part."""
    encoding = count_segments(text).encoding
    parts = split_segments(text)
    per_part = 153 if encoding == "GSM-7" else 67
    boundaries = {m.end() for m in regex.finditer(r"\X", text)}
    offset = 0
    for part, following in pairwise(parts):
        offset += len(part)
        next_grapheme = regex.match(r"\X", following)[0]
        assert units(part + next_grapheme, encoding) > per_part
        if offset not in boundaries:  # mid-grapheme: only a grapheme too long for any part
            cluster = next(m[0] for m in regex.finditer(r"\X", text) if m.start() < offset < m.end())
            assert units(cluster, encoding) > per_part


@given(st.one_of(texts, gsm_texts))
def test_encoding_is_gsm7_exactly_when_no_character_forces_ucs2(text):
    segments = count_segments(text)
    forcing = [c for c in text if c not in GSM_BASIC + GSM_EXTENSION]
    assert segments.non_gsm == tuple(dict.fromkeys(forcing))
    assert segments.encoding == ("UCS-2" if forcing else "GSM-7")
