"""Columns: the valid messages of one input and one sending number, column by column.

The hot path of a run never builds a Python object per message: validation proves a whole run
of plain lines at once (see `_validate.Validator.validate_block`) and hands on its recipients,
wire bytes, refs and segment counts as lists; the batcher cuts requests as slices of those lists;
a request body is one join of the wire bytes; the outcome lines of a request are formatted from
the columns (see `_outcomes`), and its journal record names line runs (see `_journal`).

`Columns` is a `Sequence[Message]` all the same: every other consumer (expiry, a 413 split, the
library's in-memory sink, the tests) indexes or iterates it and gets the very `Message`s the
per-line path would have built. The accessor functions below (`wires_of`, `lines_of`, ...) are
how stages read a column from either kind of sequence without caring which one they were given.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial
from itertools import compress
from typing import TypeVar, overload

from streamsend._models import Encoding, Message

_T = TypeVar("_T")

# Message(...) runs NamedTuple's generated __new__; building the tuple directly skips that frame
# (the validator's per-line path builds its Messages with it too).
new_message = partial(tuple.__new__, Message)


class Columns(Sequence[Message]):
    """Messages of one `source` and one `sender`, in input order, one list per field.

    `tos` are the recipients as ASCII bytes (E.164 needs no decoding to be written out); `refs`
    are the callers' refs as encoded JSON (b"" when absent), as in `Message.ref_json`.
    """

    __slots__ = ("encodings", "lines", "refs", "segments", "sender", "source", "tos", "wires")

    def __init__(  # noqa: PLR0917 - one argument per column
        self,
        source: str,
        sender: str,
        lines: list[int],
        tos: list[bytes],
        wires: list[bytes],
        refs: list[bytes],
        segments: list[int],
        encodings: list[Encoding],
    ) -> None:
        self.source = source
        self.sender = sender
        self.lines = lines
        self.tos = tos
        self.wires = wires
        self.refs = refs
        self.segments = segments
        self.encodings = encodings

    @classmethod
    def of_messages(cls, source: str, sender: str, messages: Sequence[Message]) -> Columns:
        """Columns holding `messages` (all of `source` and `sender`): the per-line path's
        messages joining a columnar run."""
        return cls(
            source,
            sender,
            [m.line for m in messages],
            [m.to.encode("ascii") for m in messages],
            [m.wire for m in messages],
            [m.ref_json for m in messages],
            [m.segments for m in messages],
            [m.encoding for m in messages],
        )

    @classmethod
    def concat(cls, parts: Sequence[Columns]) -> Columns:
        """The parts one after another (all of one source and sender)."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        return cls(
            first.source,
            first.sender,
            _joined([p.lines for p in parts]),
            _joined([p.tos for p in parts]),
            _joined([p.wires for p in parts]),
            _joined([p.refs for p in parts]),
            _joined([p.segments for p in parts]),
            _joined([p.encodings for p in parts]),
        )

    def __len__(self) -> int:
        return len(self.lines)

    @overload
    def __getitem__(self, index: int) -> Message: ...

    @overload
    def __getitem__(self, index: slice) -> Columns: ...

    def __getitem__(self, index: int | slice) -> Message | Columns:
        if isinstance(index, slice):
            return Columns(
                self.source,
                self.sender,
                self.lines[index],
                self.tos[index],
                self.wires[index],
                self.refs[index],
                self.segments[index],
                self.encodings[index],
            )
        return new_message(
            (
                self.source,
                self.lines[index],
                self.tos[index].decode("ascii"),
                self.sender,
                self.wires[index],
                self.refs[index],
                self.segments[index],
                self.encodings[index],
            )
        )

    def __iter__(self) -> Iterator[Message]:
        for i in range(len(self.lines)):
            yield self[i]

    def __repr__(self) -> str:
        runs = line_runs(self)
        return f"Columns({self.source!r}, {self.sender!r}, {len(self)} messages, lines {runs})"

    def keep(self, kept: Sequence[bool]) -> None:
        """Keep only the messages whose flag is true, in place (dedupe and opt-outs take some
        out of a block before it is batched)."""
        for name in ("lines", "tos", "wires", "refs", "segments", "encodings"):
            setattr(self, name, list(compress(getattr(self, name), kept)))


def drop(messages: list[Message] | Columns, taken: set[int]) -> None:
    """Take the messages at the indexes in `taken` out of `messages`, in place."""
    if not taken:
        return
    if isinstance(messages, Columns):
        messages.keep([i not in taken for i in range(len(messages))])
    else:
        messages[:] = [m for i, m in enumerate(messages) if i not in taken]


def wires_of(messages: Sequence[Message]) -> list[bytes]:
    """The messages' wire bytes, for a request body or a dedupe key."""
    if type(messages) is Columns:
        return messages.wires
    return [m.wire for m in messages]


def lines_of(messages: Sequence[Message]) -> list[int]:
    if type(messages) is Columns:
        return messages.lines
    return [m.line for m in messages]


def recipients_of(messages: Sequence[Message]) -> list[str]:
    """The recipients as `Message.to` has them (str)."""
    if type(messages) is Columns:
        return [to.decode("ascii") for to in messages.tos]
    return [m.to for m in messages]


def recipient_numbers(messages: Sequence[Message]) -> list[int]:
    """The recipients' digits as integers (the opt-out lists' keys)."""
    if type(messages) is Columns:
        return [int(to[1:]) for to in messages.tos]
    return [int(m.to[1:]) for m in messages]


def segments_total(messages: Sequence[Message]) -> int:
    if type(messages) is Columns:
        return sum(messages.segments)
    return sum([m.segments for m in messages])


def line_runs(messages: Sequence[Message]) -> list[list[int]]:
    """The line numbers of messages of one source as [first, last] runs."""
    lines = lines_of(messages)
    if not lines:
        return []
    if lines[-1] - lines[0] == len(lines) - 1:  # the usual: consecutive lines
        return [[lines[0], lines[-1]]]
    runs = [[lines[0], lines[0]]]
    for line in lines[1:]:
        if runs[-1][1] + 1 == line:
            runs[-1][1] = line
        else:
            runs.append([line, line])
    return runs


__all__ = [
    "Columns",
    "drop",
    "line_runs",
    "lines_of",
    "new_message",
    "recipient_numbers",
    "recipients_of",
    "segments_total",
    "wires_of",
]


def _joined(lists: list[list[_T]]) -> list[_T]:
    """The lists one after another. `+=` copies each list's item pointers in one go, where
    `list(chain(...))` steps through them one by one: 3 ns an item against 11 here, six
    columns for nearly every request (a batch of 1,000 spans two parts of 1,024 lines)."""
    joined = lists[0].copy()
    for more in lists[1:]:
        joined += more
    return joined
