"""Segment counting against hand-checked cases, and the ASCII fast path against the general one.

The client (`streamsend._segments`) and the emulator (`streamsend.emulator._segments`) count with
separate code on purpose; every hand-checked case is checked on both, and a property test checks
they agree on any text, so a counting bug can't hide in a shared implementation.

The rules (the Trackly documentation, restated in `streamsend._segments`): GSM-7 bodies take 160
units in one segment and 153 per segment when split, the extension characters ``^ { } \\ [ ] ~ |
€`` taking two units; any character outside GSM-7 makes the body UCS-2, 70 UTF-16 code units in one
segment and 67 per segment when split. Each expected value below was worked out by hand from those
numbers.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamsend._models import Encoding
from streamsend._segments import count_segments, count_segments_ascii
from streamsend.emulator._segments import segments_of

GSM7 = Encoding.GSM7
UCS2 = Encoding.UCS2


def assert_counted(body: str, expected: tuple[int, Encoding]) -> None:
    """Both the client's counter and the emulator's give the hand-checked answer."""
    assert count_segments(body) == expected
    assert segments_of(body) == (expected[0], expected[1] is GSM7)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param("Hello John!", (1, GSM7), id="plain"),
        pytest.param("Line one\nline two\r\n@£$¥", (1, GSM7), id="newlines-and-basic-symbols"),
        pytest.param("a" * 160, (1, GSM7), id="160-gsm-fits-one"),
        pytest.param("a" * 161, (2, GSM7), id="161-gsm-splits-in-two"),
        pytest.param("a" * 306, (2, GSM7), id="153x2-exactly-two"),
        pytest.param("a" * 307, (3, GSM7), id="153x2+1-three"),
        pytest.param("a" * 1600, (11, GSM7), id="1600-gsm-is-11"),  # 1600 / 153 = 10.46
    ],
)
def test_plain_gsm7_boundaries(body: str, expected: tuple[int, Encoding]) -> None:
    """Plain GSM-7 bodies: 160 in one segment, then 153 per segment."""
    assert_counted(body, expected)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param("{" * 80, (1, GSM7), id="80-braces-are-160-units"),
        pytest.param("{" * 81, (2, GSM7), id="81-braces-are-162-units"),
        pytest.param("a" * 159 + "^", (2, GSM7), id="159-plus-caret-is-161-units"),
        pytest.param("a" * 158 + "~", (1, GSM7), id="158-plus-tilde-is-160-units"),
        pytest.param("€" * 80, (1, GSM7), id="80-euros-are-160-units"),
        pytest.param("€" * 81, (2, GSM7), id="81-euros-are-162-units"),
        pytest.param("a" * 304 + "€", (2, GSM7), id="304-plus-euro-is-306-units"),
        pytest.param("a" * 305 + "€", (3, GSM7), id="305-plus-euro-is-307-units"),
        pytest.param("a" * 305 + "|", (3, GSM7), id="305-plus-pipe-is-307-units-ascii"),
        pytest.param("Price: 5€ [promo]", (1, GSM7), id="mixed-extension-in-text"),
    ],
)
def test_extension_characters_count_two(body: str, expected: tuple[int, Encoding]) -> None:
    """Each GSM-7 extension character costs an escape plus itself: two units."""
    assert_counted(body, expected)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param("^{}\\[]~|€", (1, GSM7), id="each-extension-once-is-18-units"),
        pytest.param("|" * 153, (2, GSM7), id="153-pipes-are-306-units"),
        pytest.param("|" * 154, (3, GSM7), id="154-pipes-are-308-units"),
        pytest.param("€" * 153, (2, GSM7), id="153-euros-are-306-units"),
        pytest.param("€" * 154, (3, GSM7), id="154-euros-are-308-units"),
    ],
)
def test_body_of_only_extension_characters(body: str, expected: tuple[int, Encoding]) -> None:
    """A body made only of extension characters is GSM-7 at two units per character."""
    assert_counted(body, expected)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param("Café mañana über à", (1, GSM7), id="e-acute-n-tilde-u-umlaut-a-grave"),
        pytest.param("é" * 160, (1, GSM7), id="160-e-acute"),
        pytest.param("é" * 161, (2, GSM7), id="161-e-acute"),
        pytest.param("ÄÖÑÜ§¿äöñüà" * 10, (1, GSM7), id="110-gsm-letters"),
        pytest.param("Ελλάδα", (1, UCS2), id="greek-lowercase-is-ucs2"),
        pytest.param("ΔΦΓΛΩ", (1, GSM7), id="greek-capitals-in-gsm7"),
        pytest.param("á", (1, UCS2), id="a-acute-is-not-gsm7"),
        pytest.param("crème brûlée", (1, UCS2), id="e-grave-ok-but-u-circumflex-not"),
    ],
)
def test_accents(body: str, expected: tuple[int, Encoding]) -> None:
    """Accented letters in the GSM-7 table keep the body GSM-7; others make it UCS-2."""
    assert_counted(body, expected)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param("á" * 70, (1, UCS2), id="70-units-fit-one"),
        pytest.param("á" * 71, (2, UCS2), id="71-units-split-in-two"),
        pytest.param("á" * 134, (2, UCS2), id="67x2-exactly-two"),
        pytest.param("á" * 135, (3, UCS2), id="67x2+1-three"),
        pytest.param("`" + "a" * 69, (1, UCS2), id="backtick-makes-ascii-ucs2-70"),
        pytest.param("a" * 70 + "`", (2, UCS2), id="backtick-makes-ascii-ucs2-71"),
        pytest.param("a" * 159 + "á", (3, UCS2), id="one-non-gsm-char-turns-160-into-ucs2"),
        pytest.param("€" * 69 + "á", (1, UCS2), id="extension-chars-count-one-in-ucs2"),
    ],
)
def test_ucs2_boundaries(body: str, expected: tuple[int, Encoding]) -> None:
    """UCS-2 bodies: 70 units in one segment, then 67 per segment."""
    assert_counted(body, expected)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param("😀", (1, UCS2), id="one-emoji"),
        pytest.param("😀" * 35, (1, UCS2), id="35-emoji-are-70-units"),
        pytest.param("😀" * 35 + "a", (2, UCS2), id="35-emoji-plus-one-is-71-units"),
        pytest.param("😀" * 36, (2, UCS2), id="36-emoji-are-72-units"),
        pytest.param("😀" * 67, (2, UCS2), id="67-emoji-are-134-units"),
        pytest.param("😀" * 67 + "a", (3, UCS2), id="67-emoji-plus-one-is-135-units"),
        pytest.param("a" * 69 + "☺", (1, UCS2), id="bmp-symbol-is-one-unit"),
        pytest.param("Hi 👋🏽", (1, UCS2), id="emoji-with-skin-tone-is-four-units"),
    ],
)
def test_emoji_count_utf16_units(body: str, expected: tuple[int, Encoding]) -> None:
    """Characters outside the BMP (most emoji) are surrogate pairs: two UTF-16 units."""
    assert_counted(body, expected)


# An independent statement of the rule for ASCII, written from the GSM 03.38 table: the ASCII
# characters outside GSM-7 are the backtick, DEL and the control characters other than LF and CR;
# form feed and ``^ { } \ [ ] ~ |`` are extension characters.
_ASCII_EXTENSION = set("^{}\\[]~|\f")
_ASCII_NOT_GSM7 = {"`", "\x7f"} | {chr(c) for c in range(32) if chr(c) not in "\n\r\f"}


def _reference_ascii(body: str) -> tuple[int, Encoding]:
    if any(c in _ASCII_NOT_GSM7 for c in body):
        units = len(body)
        return (1 if units <= 70 else -(-units // 67)), UCS2
    units = sum(2 if c in _ASCII_EXTENSION else 1 for c in body)
    return (1 if units <= 160 else -(-units // 153)), GSM7


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=400))
def test_ascii_bodies_follow_the_rule(body: str) -> None:
    """Any ASCII body counts as the written-out rule says, on the str and the bytes path."""
    expected = _reference_ascii(body)
    assert_counted(body, expected)
    fast = count_segments_ascii(body.encode("ascii"))
    assert fast == (expected if expected[1] is GSM7 else None)


@given(st.text(max_size=400))
def test_client_and_emulator_counters_agree_on_any_text(body: str) -> None:
    """For any body, the client's counter (with its fast paths) and the emulator's plain one
    give the same segments and encoding."""
    segments, encoding = count_segments(body)
    assert segments_of(body) == (segments, encoding is GSM7)
