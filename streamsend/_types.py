"""The shared types: aliases, exit codes, and the four seams a run is assembled from.

A run is wired from four pluggable parts, each a `Protocol` here so that another implementation
(Redis-backed, in-memory, columnar) can stand in without touching the pipeline:

    LineSource   where numbered input lines come from       _source.read_inputs, testing.lines_from
    OutcomeSink  where each line's one outcome goes         _outcomes.FileSink, _outcomes.MemorySink
    Journal      write-ahead records, read back on resume   _journal.FileJournal
    RateLimiter  n messages may leave for a sending number  _pacing.LocalRateLimiter

Each docstring states the invariants an implementation must keep; `tests/test_seams.py` runs one
suite per Protocol against every implementation, so a new one is checked by the same tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias

if TYPE_CHECKING:
    from streamsend._journal import ResumeState
    from streamsend._models import BatchOutcome, Message, Outcome

#: The Trackly bulk API versions streamsend speaks (see `_protocol`).
ApiVersion: TypeAlias = Literal["v1", "v2"]

#: A structlog bound logger (or anything with its methods). structlog's loggers are dynamic,
#: so this stays `Any` rather than a Protocol every test double would have to spell out.
Logger: TypeAlias = Any


class ExitCode(IntEnum):
    """Every exit code a `streamsend` command returns, and what it means."""

    OK = 0  # every line queued (send); the check or command succeeded
    NOT_ALL_QUEUED = 1  # the run finished, some lines were not queued
    USAGE = 2  # usage or config error: one line on stderr, no traceback
    ABORTED = 3  # a fatal service answer (bad key, suspended, no such list) or --give-up-after
    INTERNAL = 70  # sysexits' EX_SOFTWARE: an unexpected error, e.g. a full disk
    PENDING = 75  # sysexits' EX_TEMPFAIL: `collect` without --follow, the job isn't complete
    INTERRUPTED = 130  # stopped by SIGINT/SIGTERM (after draining)


@dataclass(frozen=True, slots=True)
class LineBlock:
    """Consecutive lines of one input: `lines[i]` is line `first_line + i` of `source`."""

    source: str  # the input path as given, "-" for stdin
    first_line: int
    lines: list[bytes | None]  # None: longer than the limit, dropped unread
    nbytes: int  # input bytes these lines came from, for progress
    # Lines the source itself refused (a malformed CSV record, a template field missing):
    # line -> (code, error); such a line is b"" in `lines` and gets an `invalid` outcome.
    errors: dict[int, tuple[str, str]] | None = None
    # Lines with a `send_before`: line -> the moment (Unix time) after which it must not leave.
    deadlines: dict[int, float] | None = None
    # When set, exactly `joined_lines(lines)`: the lines as read, in one piece. The source has
    # it for free where the input's bytes are the lines (LF endings, no BOM, no line over the
    # limit), so the stages that look at a whole block (`data()`: the `send_before` check, the
    # input fingerprint) need not join its lines again. Any change to `lines` drops it.
    text: bytes | None = None

    def data(self) -> bytes:
        """The block's lines in one piece (`joined_lines`), as the source kept them or joined."""
        return joined_lines(self.lines) if self.text is None else self.text


def joined_lines(lines: Sequence[bytes | None]) -> bytes:
    """The lines, each ended by a newline. A line too long to keep (None) stands as a NUL: it
    is "a line too long" wherever it is compared (the input fingerprint of two runs)."""
    if not lines:
        return b""
    if None in lines:
        lines = [b"\0" if raw is None else raw for raw in lines]
    return b"\n".join(lines) + b"\n"  # type: ignore[arg-type]


class LineSource(Protocol):
    """Where input lines come from: an async iterable of `LineBlock`s.

    Invariants:
    - every physical line of an input is handed on exactly once, in order, numbered from 1 within
      its own `source`; consecutive blocks of one source continue the numbering without a gap;
    - a blank line is handed on as b"" (it keeps the numbering right; it gets no outcome), a line
      over the length limit as None (never held in memory whole);
    - line content carries no line ending (LF, CRLF) and the first line no UTF-8 BOM;
    - a line the source refused itself is b"" in `lines` with its code and error in `errors`;
    - an input that can't be read raises `InputError` (the run drains, then reports it).
    """

    def __aiter__(self) -> AsyncIterator[LineBlock]: ...


class OutcomeSink(Protocol):
    """Where each line's one outcome goes.

    Invariants:
    - every outcome given to `write` or `write_batch` is kept exactly once, in the order given,
      and `write_batch(r)` keeps the same records as `write(r.outcomes())`;
    - `write` and `write_batch` don't block for long (they run on the event loop for every
      request); `flush` is the durability point: once it returns, what was written before it
      survives a crash (as far as the sink's fsync policy promises);
    - `close` flushes what is left; nothing is written after it.
    """

    def write(self, outcomes: Sequence[Outcome]) -> None: ...

    def write_batch(self, result: BatchOutcome) -> None: ...

    async def flush(self) -> None: ...

    def close(self) -> None: ...


class Journal(Protocol):
    """The write-ahead record of what each request carries, and the resume state read back.

    Invariants:
    - `record_start(request, messages)` is written before the request's first byte can leave, and
      once `sync()` returns it survives a crash (with the fsync policy on);
    - `record_unsent(request)` says the request certainly never left (its lines are sent again on
      resume); `record_done(request)` says its outcomes are written;
    - request numbers only grow, across runs too: `resume_state().next_request` is above every
      request the journal (or the outcomes) ever named;
    - reading back, a line carried by a started request that is neither `unsent` nor followed by
      an outcome naming a later request is in flight: `Decision.MARK_UNKNOWN`, never `SEND`
      (unless resend_unknown). A record torn by a crash is ignored, never misread.
    """

    def record_start(self, request: int, messages: Sequence[Message]) -> None: ...

    def record_unsent(self, request: int) -> None: ...

    def record_done(self, request: int) -> None: ...

    async def sync(self) -> None: ...

    def resume_state(self, *, resend_unknown: bool) -> ResumeState: ...

    def close(self) -> None: ...


class RateLimiter(Protocol):
    """Pacing per sending number: `acquire(sender, n)` returns when n messages may leave.

    Invariants:
    - over any window of t seconds, the messages admitted for one sending number are at most
      rate × t + burst, where the burst is at least one batch (else a full batch never passes);
    - sending numbers are independent: waiting on one never holds up another;
    - a sending number with no rate (unlimited) is admitted at once;
    - `batch_cap(sender)` is the most messages one request of that number should carry, so
      that a batch is never larger than what the limiter can admit at once.
    """

    async def acquire(self, sender: str, messages: int) -> None: ...

    def batch_cap(self, sender: str) -> int: ...
