"""Expiry: a message that can't leave before its moment is `expired`, never sent late.

A line's moment is its `send_before` (RFC 3339 with a time zone: `2026-12-02T14:00:00+01:00`),
or `--expire-after` (e.g. `2h`) from when the line was read, whichever is sooner. It is checked
when the line is read and again just before every attempt to send it (after waiting on the
rate, a 429 pause, a retry's backoff), so a one-time code or a delivery slot is never texted
after it has passed. An expired line is final: `--resume` doesn't send it, and it makes the exit
code 1, like any other line that should have gone and didn't.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime

import orjson

from streamsend._columns import Columns, drop, lines_of
from streamsend._models import Message, Outcome, Status, outcome_of
from streamsend._types import LineBlock

EXPIRED = "expired"
EXPIRED_ERROR = "its moment (send_before or --expire-after) passed before it could be sent"


def parse_send_before(text: str) -> float:
    """An RFC 3339 date-time as Unix time; ValueError saying what is wrong with it."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"`send_before` {text[:40]!r} is not an RFC 3339 time like 2026-12-02T14:00:00Z"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(
            f"`send_before` {text[:40]!r} has no time zone: add Z or an offset like +01:00"
        )
    return moment.timestamp()


def ndjson_deadlines(block: LineBlock) -> LineBlock:
    """Read the `send_before` of the NDJSON lines that have one into the block's deadlines.

    One substring search over the block decides whether any line has one at all: the usual
    campaign has none, and pays nothing per line.
    """
    if b"send_before" not in block.data():
        return block
    lines = list(block.lines)
    deadlines = dict(block.deadlines) if block.deadlines else {}
    errors = dict(block.errors) if block.errors else {}
    for i, raw in enumerate(lines):
        if not raw or b"send_before" not in raw:
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue  # the validator says what is wrong with it
        if not isinstance(obj, dict) or obj.get("send_before") is None:
            continue
        value = obj["send_before"]
        line = block.first_line + i
        if not isinstance(value, str):
            errors[line] = ("invalid_send_before", "`send_before` must be an RFC 3339 string")
            lines[i] = b""
            continue
        try:
            deadlines[line] = parse_send_before(value)
        except ValueError as exc:
            errors[line] = ("invalid_send_before", str(exc))
            lines[i] = b""
    return LineBlock(
        block.source, block.first_line, lines, block.nbytes, errors or None, deadlines or None
    )


class Expiry:
    """The moments of the lines in this run that have one, until they are sent or expired."""

    def __init__(
        self, *, expire_after: float | None, clock: Callable[[], float] = time.time
    ) -> None:
        self.expire_after = expire_after
        self._clock = clock
        self._deadlines: dict[tuple[str, int], float] = {}

    def sort_out(self, messages: list[Message] | Columns, block: LineBlock) -> list[Outcome]:
        """Note each message's moment; those already past it leave `messages` (in place) as
        outcomes."""
        deadlines = block.deadlines
        if not deadlines and self.expire_after is None:
            return []
        now = self._clock()
        read_by = None if self.expire_after is None else now + self.expire_after
        expired: list[Outcome] = []
        gone: set[int] = set()
        store = self._deadlines
        lines = lines_of(messages)
        one_source = messages.source if type(messages) is Columns else None
        for i, line in enumerate(lines):
            moment = deadlines.get(line) if deadlines else None
            if read_by is not None and (moment is None or read_by < moment):
                moment = read_by
            if moment is None:
                continue
            if moment <= now:
                expired.append(expired_outcome(messages[i], 0, None))
                gone.add(i)
            else:
                store[one_source or messages[i].source, line] = moment
        drop(messages, gone)
        return expired

    def moment_of(self, m: Message) -> float | None:
        """The message's moment (Unix time), if it has one: what `enqueue` carries to workers."""
        return self._deadlines.get((m.source, m.line)) if self._deadlines else None

    def remember(self, m: Message, moment: float) -> None:
        """Note a moment read back from elsewhere (a worker's entry), for `late` to check."""
        self._deadlines[m.source, m.line] = moment

    def late(self, messages: Sequence[Message]) -> list[Message] | None:
        """Those of `messages` past their moment now (None: none), just before an attempt."""
        store = self._deadlines
        if not store:
            return None  # the usual run: nothing to look up per message
        now = self._clock()
        late = [m for m in messages if store.get((m.source, m.line), now + 1) <= now]
        return late or None

    def forget(self, messages: Sequence[Message]) -> None:
        """The messages have their outcome: their moments are no longer needed."""
        if self._deadlines:
            for m in messages:
                self._deadlines.pop((m.source, m.line), None)


def expired_outcome(m: Message, attempts: int, request: int | None) -> Outcome:
    return outcome_of(m, Status.EXPIRED, EXPIRED, EXPIRED_ERROR, attempts=attempts, request=request)


__all__ = [
    "EXPIRED",
    "EXPIRED_ERROR",
    "Expiry",
    "expired_outcome",
    "ndjson_deadlines",
    "parse_send_before",
]
