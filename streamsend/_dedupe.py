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

Memory stays bounded on an endless stream: each message is kept as a 64-bit hash in a dict
whose value is the number of the block it came in (one shared int per block, the line is
looked up in the block only for a copy): about 90 bytes a message on the heap (the int 40,
the dict's entry 40 when full, the block's list 8), about 120 bytes of RSS with the
allocator's slack. Messages are kept in
generations of `window`; when the current generation is full, the one before it is dropped. So
a copy is caught when its first line is among the last `window` (default 2^18 = 262,144)
distinct messages, often up to twice that, and memory is at most two full generations, about
50 MB by default (measured on whole runs: peak RSS +55 to +67 MiB over `--dedupe off`, flat
from about 0.5M messages on; `benchmarks/campaign_memory.py`), whatever the length of the
stream (`--dedupe-window` trades one for the other; the default is `_config.DEDUPE_WINDOW`,
which once said 2^20 while this said 2^18: peak RSS +225 MiB at 5M messages). False
positives: two different messages share a 64-bit hash with probability 2^-64, so a message is
wrongly taken for a copy with probability at most 2·window/2^64 ≈ 2.8e-14 (one in 3.5·10^13
messages).

Why a dict of Python ints and not a compact table (16 bytes a message in an `array`): the
usual block is settled by `isdisjoint` and `update` in C, about 0.2 µs a message with the
hashing; probing an array from Python costs twice that, every int read from it being a new
object. Measured on the loopback benchmark, dedupe costs the run about 0.6 µs of CPU a
message (see the README's Performance).

The hash is Python's own (SipHash-1-3 over the wire bytes, or the recipient), computed in C.
It is randomised per process, which is fine: nothing hashed is kept across runs; a resumed run
hashes the lines again.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from typing import Literal

import orjson

from streamsend._columns import Columns, drop, lines_of, recipients_of, wires_of
from streamsend._config import DEDUPE_WINDOW
from streamsend._exceptions import ConfigError
from streamsend._models import Message, Outcome, Status, outcome_of
from streamsend._suppress import NumberSet
from streamsend._validate import is_e164

DedupeMode = Literal["message", "recipient", "off"]
DEFAULT_WINDOW = DEDUPE_WINDOW  # the one default, in _config
_KEY_OF = {"message": itemgetter(4), "recipient": itemgetter(2)}  # Message.wire, Message.to
# The same keys for a whole block, from Columns or a list alike.
_KEYS_OF: dict[str, Callable[[Sequence[Message]], Sequence[bytes | str]]] = {
    "message": wires_of,
    "recipient": recipients_of,
}


@dataclass(slots=True)
class _Block:
    """A block of messages that were remembered: which line each hash came from."""

    source: str
    hashes: list[int]  # the very int objects the generation's dict holds as keys
    first_line: int
    lines: array[int] | None  # None: consecutive lines from first_line (the usual block)

    def line_at(self, position: int) -> int:
        return self.first_line + position if self.lines is None else self.lines[position]


class Dedupe:
    """The messages seen so far in this run (see the module docstring)."""

    def __init__(self, mode: Literal["message", "recipient"], *, window: int = DEFAULT_WINDOW):
        if window < 1:
            raise ValueError("the dedupe window must hold at least one message")
        self.mode = mode
        self.window = window
        self._key_of = _KEY_OF[mode]
        self._keys_of = _KEYS_OF[mode]
        # hash -> the number of the block it was first seen in. One shared int per block, not
        # one object per message: the line is looked up in the block only for a copy.
        self._current: dict[int, int] = {}
        self._previous: dict[int, int] = {}
        self._blocks: dict[int, _Block] = {}
        self._current_blocks: list[int] = []
        self._previous_blocks: list[int] = []
        self._next_block = 0
        self._sources_of: dict[int, list[str]] = {}  # a block spanning inputs: each one's input

    @property
    def held(self) -> int:
        """How many messages are remembered now."""
        return len(self._current) + len(self._previous)

    def sort_out(self, messages: list[Message] | Columns) -> list[Outcome]:
        """Take the copies out of `messages` (in order) and return their `duplicate` outcomes;
        remember the others.

        This runs for every message of a default run, so the usual block (no copy in it) is
        settled by a few C-level operations over the whole block: hash every message, check
        that no hash is known yet, add them all. Only a block with a copy is walked message by
        message.
        """
        if not messages:
            return []
        hashes = list(map(hash, self._keys_of(messages)))
        current = self._current
        if current and len(current) + len(hashes) > self.window:
            self._rotate()
            current = self._current
        previous = self._previous
        number = self._next_block
        self._next_block += 1
        copies: list[tuple[int, int]] = []  # (index in messages, number of the first's block)
        if current.keys().isdisjoint(hashes) and (
            not previous or previous.keys().isdisjoint(hashes)
        ):
            before = len(current)
            current.update(zip(hashes, repeat(number)))
            if len(current) - before != len(hashes):
                # Copies within the block: the first of each hash stays, the others go.
                firsts: set[int] = set()
                for index, key in enumerate(hashes):
                    if key in firsts:
                        copies.append((index, number))
                    else:
                        firsts.add(key)
        else:
            get_current, get_previous = current.get, previous.get
            for index, key in enumerate(hashes):
                first = get_current(key)
                if first is None:
                    first = get_previous(key)
                    if first is None:
                        current[key] = number
                        continue
                copies.append((index, first))
        if type(messages) is Columns:
            source = messages.source
        else:
            source = messages[0].source
            if messages[-1].source != source:  # a block spanning inputs (read in turn)
                self._sources_of[number] = [m.source for m in messages]
                source = ""
        numbers = lines_of(messages)
        first_line = numbers[0]
        consecutive = numbers[-1] - first_line == len(numbers) - 1
        lines = None if consecutive else array("q", numbers)
        self._blocks[number] = _Block(source, hashes, first_line, lines)
        self._current_blocks.append(number)
        if not copies:
            return []
        outcomes = [self._duplicate(messages[index], first) for index, first in copies]
        drop(messages, {index for index, _ in copies})
        return outcomes

    def remember(self, messages: Sequence[Message]) -> None:
        """Note messages an earlier run settled (on --resume), in input order, without sending."""
        self.sort_out(list(messages))

    def _rotate(self) -> None:
        """The current generation is full: it becomes the previous one, the oldest is dropped."""
        for number in self._previous_blocks:
            del self._blocks[number]
            self._sources_of.pop(number, None)
        self._previous, self._current = self._current, {}
        self._previous_blocks, self._current_blocks = self._current_blocks, []

    def _duplicate(self, m: Message, first_block: int) -> Outcome:
        block = self._blocks[first_block]
        key = self._key_of(m)
        position = block.hashes.index(hash(key))  # the first message of the block with it
        line = block.line_at(position)
        source = block.source or self._sources_of[first_block][position]
        where = f"line {line}" if source == m.source else f"line {line} of {source}"
        what = "message" if self.mode == "message" else "recipient"
        return outcome_of(
            m,
            Status.DUPLICATE,
            "duplicate",
            f"the same {what} as {where} (--dedupe {self.mode})",
            duplicate_of=line,
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
