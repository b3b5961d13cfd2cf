"""Expiry: reading send_before, the moment of each line (its own or --expire-after), and the
check before an attempt, on an injected clock."""

from __future__ import annotations

import pytest

from streamsend._expiry import Expiry, ndjson_deadlines, parse_send_before
from streamsend._models import Encoding, Message, Status
from streamsend._types import LineBlock


def _message(line: int) -> Message:
    return Message("in", line, "+14155550001", "pn", b"{}", b"", 1, Encoding.GSM7)


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1970-01-01T00:00:10Z", 10.0),
        ("1970-01-01T01:00:10+01:00", 10.0),
        ("1970-01-01T00:00:10.5+00:00", 10.5),
    ],
)
def test_rfc3339_times(text: str, expected: float) -> None:
    """RFC 3339 times with Z or an offset become Unix time."""
    assert parse_send_before(text) == expected


@pytest.mark.parametrize(("text", "why"), [("2026-12-02T10:00:00", "no time zone"), ("soon", "")])
def test_times_without_a_zone_or_unreadable_are_refused(text: str, why: str) -> None:
    """A time without a zone is ambiguous, and junk is junk: both are refused, saying why."""
    with pytest.raises(ValueError, match=why or "RFC 3339"):
        parse_send_before(text)


def test_ndjson_lines_get_their_moment() -> None:
    """A line's send_before becomes its deadline; a bad one makes the line invalid; lines
    without one are untouched."""
    block = LineBlock(
        "in",
        1,
        [
            b'{"to":"+14155550001","body":"a","send_before":"1970-01-01T00:00:10Z"}',
            b'{"to":"+14155550002","body":"b","send_before":"later"}',
            b'{"to":"+14155550003","body":"c"}',
        ],
        0,
    )
    read = ndjson_deadlines(block)
    assert read.deadlines == {1: 10.0}
    assert read.errors is not None
    assert read.errors[2][0] == "invalid_send_before"
    assert read.lines[1] == b""
    assert read.lines[2] == block.lines[2]


def test_moments_are_checked_when_read_and_before_each_attempt() -> None:
    """A line past its moment when read is expired at once; --expire-after counts from the
    read; the sooner of the two moments counts; late() finds those past it later."""
    clock = _Clock(100.0)
    expiry = Expiry(expire_after=30.0, clock=clock)
    messages = [_message(1), _message(2), _message(3)]
    block = LineBlock("in", 1, [b"", b"", b""], 0, deadlines={1: 50.0, 2: 110.0})
    expired = expiry.sort_out(messages, block)
    assert [(o.line, o.status) for o in expired] == [(1, Status.EXPIRED)]
    assert [m.line for m in messages] == [2, 3]
    assert expiry.late(messages) is None
    clock.now = 115.0  # past line 2's own moment, not yet line 3's (130)
    assert [m.line for m in expiry.late(messages) or []] == [2]
    clock.now = 131.0
    assert [m.line for m in expiry.late(messages) or []] == [2, 3]
    expiry.forget(messages)
    assert expiry.late(messages) is None
