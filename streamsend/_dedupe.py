"""Duplicates: the same message twice in one campaign is sent once (`--dedupe`, default on).

`--dedupe message` (the default): a line whose message is the same as an earlier line's (same
recipient, same rendered body, same everything that goes on the wire) is `duplicate`, with
`duplicate_of` naming the first line. `--dedupe recipient`: one message per recipient.
`--dedupe off`: every line is sent. A duplicate is final and a deliberate non-send (exit 0).
`--skip-sent OUTCOMES...` also makes `duplicate` every line to a recipient that an earlier
run's outcome file says was `queued`.

It holds across `--resume`: the resumed run reads the input from the start, and the lines an
earlier run settled are remembered (not sent) in input order, so a copy after them is still a
duplicate of the same first line.

Memory stays bounded on an endless stream: each message is kept as a 64-bit hash and where it
came from, in a dict (about 100 bytes a message), in generations of `window` messages; when the
current generation is full, the one before it is dropped. So a copy is caught when its first
line is among the last `window` (default 2^18 = 262,144) distinct messages, often up to twice
that, and memory is at most two full generations, about 50 MB by default, whatever the length
of the stream (`--dedupe-window` trades one for the other). False positives: two different
messages share a 64-bit hash with probability 2^-64, so a message is wrongly taken for a copy
with probability at most 2·window/2^64 ≈ 2.8e-14 (one in 3.5·10^13 messages).

Why a dict of Python ints and not a compact table (16 bytes a message in an `array`): the
usual block is settled by `isdisjoint` and `update` in C, about 0.2 µs a message; probing an
array from Python costs twice that, every int read from it being a new object. Measured on the
loopback benchmark, the dict costs the run a few per cent (see the README's Performance).

The hash is Python's own (SipHash-1-3 over the wire bytes, or the recipient), computed in C.
It is randomised per process, which is fine: nothing hashed is kept across runs; a resumed run
hashes the lines again.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Sequence
from operator import itemgetter
from typing import Literal

import orjson

from streamsend._exceptions import ConfigError
from streamsend._models import Message, Outcome, Status
from streamsend._suppress import NumberSet
from streamsend._validate import is_e164

DedupeMode = Literal["message", "recipient", "off"]
DEFAULT_WINDOW = 1 << 18
_LINE_BITS = 40  # a line number below 2^40 (a trillion lines) per input; the input's index above
_LINE_MASK = (1 << _LINE_BITS) - 1
_KEY_OF = {"message": itemgetter(4), "recipient": itemgetter(2)}  # Message.wire, Message.to
_LINE_OF = itemgetter(1)  # Message.line


class Dedupe:
    """The messages seen so far in this run (see the module docstring)."""

    def __init__(self, mode: Literal["message", "recipient"], *, window: int = DEFAULT_WINDOW):
        if window < 1:
            raise ValueError("the dedupe window must hold at least one message")
        self.mode = mode
        self.window = window
        self._key_of = _KEY_OF[mode]
        # hash -> where the message was first seen (input index << 40 | line)
        self._current: dict[int, int] = {}
        self._previous: dict[int, int] = {}
        self._sources: list[str] = []
        self._source_index: dict[str, int] = {}

    @property
    def held(self) -> int:
        """How many messages are remembered now."""
        return len(self._current) + len(self._previous)

    def sort_out(self, messages: list[Message]) -> list[Outcome]:
        """Take the copies out of `messages` (in order) and return their `duplicate` outcomes;
        remember the others.

        This runs for every message of a default run, so the usual block (no copy in it) is
        settled by a few C-level operations over the whole block: hash every message, check
        that no hash is known yet, add them all. Only a block with a copy is walked message by
        message.
        """
        if not messages:
            return []
        hashes = list(map(hash, map(self._key_of, messages)))
        first_source = messages[0].source
        if messages[-1].source == first_source:
            # The usual block: one input (inputs are read one after another).
            bits = self._source_bits(first_source)
            where = list(map(bits.__or__, map(_LINE_OF, messages)))
        else:
            where = [self._source_bits(m.source) | m.line for m in messages]
        current = self._current
        if current and len(current) + len(hashes) > self.window:
            self._previous, current = current, {}
            self._current = current
        previous = self._previous
        copies: list[tuple[int, int]] = []  # (index in messages, where the first copy was)
        if current.keys().isdisjoint(hashes) and previous.keys().isdisjoint(hashes):
            before = len(current)
            current.update(zip(hashes, where, strict=True))
            if len(current) - before == len(hashes):
                return []
            # Copies within the block: update() kept each hash's last line; put back the first.
            firsts: dict[int, int] = {}
            for key, seen in zip(hashes, where, strict=True):
                firsts.setdefault(key, seen)
            current.update(firsts)
            copies = [
                (index, firsts[key])
                for index, (key, seen) in enumerate(zip(hashes, where, strict=True))
                if firsts[key] != seen
            ]
        else:
            get_current, get_previous = current.get, previous.get
            for index, (key, seen) in enumerate(zip(hashes, where, strict=True)):
                first = get_current(key)
                if first is None:
                    first = get_previous(key)
                    if first is None:
                        current[key] = seen
                        continue
                copies.append((index, first))
        outcomes = [self._duplicate(messages[index], first) for index, first in copies]
        taken = {index for index, _ in copies}
        messages[:] = [m for index, m in enumerate(messages) if index not in taken]
        return outcomes

    def remember(self, messages: Sequence[Message]) -> None:
        """Note messages an earlier run settled (on --resume), in input order, without sending."""
        self.sort_out(list(messages))

    def _source_bits(self, source: str) -> int:
        index = self._source_index.get(source)
        if index is None:
            index = self._source_index[source] = len(self._sources)
            self._sources.append(source)
        return index << _LINE_BITS

    def _duplicate(self, m: Message, first: int) -> Outcome:
        line = first & _LINE_MASK
        source = self._sources[first >> _LINE_BITS]
        where = f"line {line}" if source == m.source else f"line {line} of {source}"
        what = "message" if self.mode == "message" else "recipient"
        return Outcome(
            m.source,
            m.line,
            Status.DUPLICATE,
            "duplicate",
            f"the same {what} as {where} (--dedupe {self.mode})",
            m.to,
            m.ref_json,
            0,
            None,
            m.sender,
            m.segments,
            m.encoding,
            line,
        )


_QUEUED = re.compile(rb'"status":"queued","to_msisdn":"\+([1-9][0-9]{7,14})"')


def load_sent_recipients(paths: Sequence[str]) -> NumberSet:
    """The recipients of every `queued` line in earlier runs' outcome files (--skip-sent).

    Outcome files streamsend wrote have `"status":"queued","to_msisdn":"+…"` side by side, so
    one regular expression per chunk finds them; a chunk where it finds fewer than its queued
    lines (a file written by something else) is read line by line.
    """
    digits = array("q")
    for path in paths:
        try:
            with open(path, "rb") as file:
                tail = b""
                while data := file.read(1 << 22):
                    data = tail + data
                    cut = data.rfind(b"\n") + 1
                    chunk, tail = data[:cut], data[cut:]
                    _queued_in(chunk, digits)
                _queued_in(tail, digits)
        except OSError as exc:
            raise ConfigError(f"--skip-sent: can't read {path}: {exc.strerror}") from None
    return NumberSet(digits)


def _queued_in(chunk: bytes, digits: array[int]) -> None:
    found = _QUEUED.findall(chunk)
    if len(found) == chunk.count(b'"queued"'):
        digits.extend(map(int, found))
        return
    for line in chunk.split(b"\n"):
        if b'"queued"' not in line:
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a torn last line of a crashed run
        if isinstance(record, dict) and record.get("status") == "queued":
            to = record.get("to_msisdn")
            if isinstance(to, str) and is_e164(to):
                digits.append(int(to[1:]))


__all__ = ["DEFAULT_WINDOW", "Dedupe", "DedupeMode", "load_sent_recipients"]
