"""The emulator's own segment counter, for the single-send answer's `segments` and `gsm7`.

Written apart from the client's (`streamsend._segments`, which has fast paths for ASCII bodies)
on purpose: were the emulator to import the client's counter, a counting bug would hide in both.
This one is the plain reading of the rules, character by character; a test checks the two agree
with each other and with hand-counted cases.
"""

from __future__ import annotations

# GSM 03.38: the basic character set, and the extension table whose characters cost two septets.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[]~|€\f")


def segments_of(body: str) -> tuple[int, bool]:
    """(segments, is GSM-7) for a body: 160/153 septets per segment, else 70/67 UTF-16 units."""
    septets = 0
    for char in body:
        if char in GSM7_BASIC:
            septets += 1
        elif char in GSM7_EXTENSION:
            septets += 2
        else:
            units = sum(2 if ord(c) > 0xFFFF else 1 for c in body)
            return (1 if units <= 70 else -(-units // 67)), False
    return (1 if septets <= 160 else -(-septets // 153)), True
