"""How many SMS segments a body costs, and in which encoding.

The rules (from the Trackly API documentation, restated in the README): a body made only of GSM
03.38 characters is GSM-7, 160 characters in one segment or 153 per segment when split, where the
extension characters ``^ { } \\ [ ] ~ | €`` (and form feed) take two; any other character makes the
whole body UCS-2, 70 UTF-16 code units in one segment or 67 per segment when split.
"""

from __future__ import annotations

from streamsend._models import Encoding

# GSM 03.38 basic character set (the default alphabet), as the characters it maps to.
_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# The extension table: each costs an escape character plus itself.
_GSM7_EXTENSION = frozenset("^{}\\[]~|€\f")
_GSM7_ALL = _GSM7_BASIC | _GSM7_EXTENSION

# ASCII characters outside GSM-7 (controls other than LF/CR, and the backtick). An ASCII body
# without them is GSM-7, which lets the common case skip the per-character set lookups.
_ASCII_NOT_GSM7 = bytes(c for c in range(128) if chr(c) not in _GSM7_ALL)
_ASCII_EXTENSION = "".join(sorted(c for c in _GSM7_EXTENSION if c.isascii()))


def count_segments(body: str) -> tuple[int, Encoding]:
    """Return (segments, encoding) for a message body."""
    if body.isascii():
        counted = count_segments_ascii(body.encode("ascii"))
        if counted is not None:
            return counted
    elif _GSM7_ALL.issuperset(body):
        units = len(body) + sum(1 for c in body if c in _GSM7_EXTENSION)
        return _gsm7_segments(units), Encoding.GSM7
    # UTF-16 code units: characters outside the BMP (most emoji) take two.
    units = len(body.encode("utf-16-le")) // 2
    return (1 if units <= 70 else -(-units // 67)), Encoding.UCS2


_ASCII_EXTENSION_BYTES = _ASCII_EXTENSION.encode("ascii")
#: ASCII characters that need more than a length to count: non-GSM-7 ones and extension ones.
ASCII_SEGMENT_SPECIAL = _ASCII_NOT_GSM7 + _ASCII_EXTENSION_BYTES


def count_segments_ascii(raw: bytes) -> tuple[int, Encoding] | None:
    """(segments, GSM7) for an ASCII body given as bytes, or None when it isn't GSM-7.

    The validator's fast path has the body as bytes already; counting here saves a decode. One
    `translate` settles the common body (no extension or non-GSM characters) in C.
    """
    size = len(raw)
    if len(raw.translate(None, ASCII_SEGMENT_SPECIAL)) == size:
        return (1 if size <= 160 else -(-size // 153)), Encoding.GSM7
    if len(raw.translate(None, _ASCII_NOT_GSM7)) != size:
        return None
    units = size + size - len(raw.translate(None, _ASCII_EXTENSION_BYTES))
    return _gsm7_segments(units), Encoding.GSM7


def _gsm7_segments(units: int) -> int:
    return 1 if units <= 160 else -(-units // 153)
