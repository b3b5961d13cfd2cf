"""The write-ahead journal, and reading it back for `--resume`.

Before a request is transmitted, the journal records which input lines it carries (`start`); if
it turns out it was never transmitted, `unsent`; once its outcomes are written, `done`. After a
crash at any moment, every line falls in exactly one case:

- its last outcome is final (queued, rejected, invalid): skip it;
- its last outcome is `unknown`: skip it, unless --resend-unknown;
- a request that carried it started after its last outcome and wasn't recorded `unsent`: it may
  have been accepted, so it gets `unknown` now, an outcome naming that request (sent again only
  with --resend-unknown);
- otherwise (no outcome, or `failed`): send it.

Request numbers grow across runs, which is what orders a line's outcome against the requests
that carried it. Records are single JSON lines appended with one write; a line torn by a crash is
necessarily the last one, and is cut off when the journal is opened again.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from itertools import groupby
from operator import attrgetter

import orjson

from streamsend._columns import Columns, line_runs
from streamsend._durable import GroupSync, cut_torn_line
from streamsend._fingerprint import ALGORITHMS, Fingerprint
from streamsend._models import DELIBERATE_STATUSES, FINAL_STATUSES, Message, Status

_SOURCE = attrgetter("source")


class Decision(IntEnum):
    SEND = 0
    SKIP = 1
    MARK_UNKNOWN = 2  # was in flight when the previous run stopped
    WAS_UNKNOWN = 3  # already reported unknown by an earlier run


def line_ranges(messages: Sequence[Message]) -> dict[str, list[list[int]]]:
    """Compress a batch's line numbers into [first, last] runs per source."""
    if not messages:
        return {}
    # Lines of a source only increase within a batch and inputs are read one after another
    # (the CLI refuses an input named twice), so equal sources at both ends mean one input, and
    # a batch's messages come in one stretch per input.
    if type(messages) is Columns or messages[0].source == messages[-1].source:
        return {messages[0].source: line_runs(messages)}
    ranges: dict[str, list[list[int]]] = {}
    for source, stretch in groupby(messages, key=_SOURCE):
        ranges.setdefault(source, []).extend(line_runs(list(stretch)))
    return ranges


def _expand(runs: list[list[int]]) -> Iterator[int]:
    for first, last in runs:
        yield from range(first, last + 1)


class FileJournal:
    """The `Journal` in a file beside the outcomes file (see the module docstring).

    `sync()` makes the start records written so far durable (with the fsync policy on);
    `resume_state()` reads back this journal together with the outcomes file it belongs to.
    """

    def __init__(self, path: str, *, fsync: bool, outcomes_path: str | None = None) -> None:
        self.path = path
        self.outcomes_path = outcomes_path
        self._fsync = fsync
        # Read access too: a torn last record is found and cut off (see cut_torn_line).
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        cut_torn_line(self._fd)
        self._group_sync = GroupSync(self._fd)

    def record_start(self, request: int, messages: Sequence[Message]) -> None:
        # os.write on an O_APPEND descriptor: one record, one syscall, no user-space buffer
        # that a crash could leave half-written behind a later record.
        os.write(
            self._fd,
            orjson.dumps({"start": request, "lines": line_ranges(messages)}) + b"\n",
        )
        self._group_sync.wrote()

    def record_input(self, source: str, fingerprint: Fingerprint) -> None:
        """How far `source` has been read, and the fingerprint of its lines so far (see
        `_fingerprint`): written before any line of that stretch can be sent."""
        os.write(
            self._fd,
            orjson.dumps(
                {
                    "input": source,
                    "lines": fingerprint.lines,
                    "bytes": fingerprint.nbytes,
                    fingerprint.algorithm: fingerprint.digest,
                }
            )
            + b"\n",
        )

    def record_unsent(self, request: int) -> None:
        os.write(self._fd, b'{"unsent":%d}\n' % request)

    def record_done(self, request: int) -> None:
        os.write(self._fd, b'{"done":%d}\n' % request)

    async def sync(self) -> None:
        """Make every start record written so far durable (with the fsync policy on)."""
        if self._fsync:
            await self._group_sync.sync()

    def resume_state(self, *, resend_unknown: bool) -> ResumeState:
        """What earlier runs left, from this journal and its outcomes file."""
        return ResumeState.load(self.outcomes_path, self.path, resend_unknown=resend_unknown)

    def close(self) -> None:
        if self._fsync:
            self._group_sync.sync_now()
        os.close(self._fd)


@dataclass(slots=True)
class _SourceState:
    decisions: bytearray = field(default_factory=bytearray)
    last_request: array[int] = field(default_factory=lambda: array("q"))
    settled_well: bytearray = field(default_factory=bytearray)  # 1: its last outcome is queued

    def ensure(self, line: int) -> None:
        missing = line + 1 - len(self.decisions)
        if missing > 0:
            self.decisions.extend(bytes(missing))
            self.last_request.extend([0] * missing)
            self.settled_well.extend(bytes(missing))


@dataclass(slots=True)
class ResumeState:
    """What an earlier run left: a decision per (source, line), and where request numbers go on."""

    resend_unknown: bool = False
    next_request: int = 1
    sources: dict[str, _SourceState] = field(default_factory=dict)
    skipped_records: int = 0  # unreadable lines (a torn tail)
    # Per input: how far the earlier runs read it, and its fingerprint there (see _fingerprint).
    inputs: dict[str, Fingerprint] = field(default_factory=dict)

    def decide(self, source: str, line: int) -> Decision:
        state = self.sources.get(source)
        if state is None or line >= len(state.decisions):
            return Decision.SEND
        decision = Decision(state.decisions[line])
        if self.resend_unknown and decision in (Decision.MARK_UNKNOWN, Decision.WAS_UNKNOWN):
            return Decision.SEND
        return decision

    def settled_well(self, source: str, line: int) -> bool:
        """For a SKIP line: whether the outcome that stands is queued (or deliberately not
        sent: suppressed, duplicate), as the exit code 0 requires."""
        state = self.sources.get(source)
        return (
            state is not None and line < len(state.settled_well) and bool(state.settled_well[line])
        )

    def in_flight_request(self, source: str, line: int) -> int | None:
        """For a MARK_UNKNOWN line: the request that carried it when the earlier run stopped."""
        state = self.sources.get(source)
        if state is None or line >= len(state.last_request) or not state.last_request[line]:
            return None
        return state.last_request[line]

    def counts(self) -> dict[str, int]:
        totals = {d.name.lower(): 0 for d in Decision}
        for state in self.sources.values():
            for d in Decision:
                totals[d.name.lower()] += state.decisions.count(d.value)
        totals.pop("send")
        return totals

    @classmethod
    def load(
        cls, outcomes_path: str | None, journal_path: str, *, resend_unknown: bool
    ) -> ResumeState:
        resume = cls(resend_unknown=resend_unknown)
        highest = 0
        if outcomes_path is not None and os.path.exists(outcomes_path):
            for record in resume._records(outcomes_path):
                source, line, status = (
                    record.get("source"),
                    record.get("line"),
                    record.get("status"),
                )
                if not isinstance(source, str) or not isinstance(line, int) or line < 1:
                    resume.skipped_records += 1
                    continue
                request = record.get("request")
                request = request if isinstance(request, int) else 0
                highest = max(highest, request)
                state = resume.sources.setdefault(source, _SourceState())
                state.ensure(line)
                state.settled_well[line] = status in DELIBERATE_STATUSES
                if status in FINAL_STATUSES:
                    state.decisions[line] = Decision.SKIP
                elif status == Status.UNKNOWN:
                    state.decisions[line] = Decision.WAS_UNKNOWN
                else:  # failed: send again
                    state.decisions[line] = Decision.SEND
                state.last_request[line] = max(state.last_request[line], request)
        if os.path.exists(journal_path):
            started: dict[int, dict[str, list[list[int]]]] = {}
            for record in resume._records(journal_path):
                start, unsent, lines = (
                    record.get("start"),
                    record.get("unsent"),
                    record.get("lines"),
                )
                if isinstance(start, int) and isinstance(lines, dict):
                    started[start] = lines
                elif isinstance(unsent, int):
                    started.pop(unsent, None)
                else:
                    resume._note_input(record)
            for request, lines in started.items():
                highest = max(highest, request)
                for source, runs in lines.items():
                    state = resume.sources.setdefault(source, _SourceState())
                    for line in _expand(runs):
                        state.ensure(line)
                        if state.last_request[line] < request:
                            state.decisions[line] = Decision.MARK_UNKNOWN
                            # The `unknown` outcome written for it names this request, which
                            # orders it after this start record when the next resume reads both.
                            state.last_request[line] = request
        resume.next_request = highest + 1
        return resume

    def _note_input(self, record: dict[str, object]) -> None:
        source, lines, nbytes = record.get("input"), record.get("lines"), record.get("bytes")
        algorithm = next((name for name in ALGORITHMS if name in record), ALGORITHMS[0])
        digest = record.get(algorithm)
        if not (
            isinstance(source, str)
            and isinstance(lines, int)
            and isinstance(nbytes, int)
            and isinstance(digest, str)
        ):
            return
        known = self.inputs.get(source)
        if known is None or lines > known.lines:
            self.inputs[source] = Fingerprint(lines, nbytes, digest, algorithm)

    def _records(self, path: str) -> Iterator[dict[str, object]]:
        with open(path, "rb") as file:
            for raw in file:
                if not raw.strip():
                    continue
                try:
                    record = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    self.skipped_records += 1
                    continue
                if isinstance(record, dict):
                    yield record
                else:
                    self.skipped_records += 1
