"""The pipeline: source → validation → batcher → dispatcher → outcomes, for one run.

What it promises, end to end: every non-blank input line it reads gets exactly one outcome,
except when the run is aborted (a fatal service answer, a second signal or a drain timeout),
where lines that never reached the service get none and `--resume` sends them later.

Backpressure: the dispatcher's lanes hold a bounded number of waiting messages, `submit()` waits
when they are full, and the reader only reads the next chunk after the current one is batched. So
a slow or throttling service slows the reading, and memory stays flat whatever the input size.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from streamsend._attempts import Backoff
from streamsend._batcher import Batcher
from streamsend._campaign import Campaign, source_refusals
from streamsend._columns import Columns
from streamsend._config import Settings
from streamsend._dispatch import Dispatcher, DispatchSettings
from streamsend._fingerprint import InputFingerprints
from streamsend._journal import Decision, ResumeState
from streamsend._logs import library_logger
from streamsend._models import DELIBERATE_STATUSES, Batch, Message, Outcome, Status
from streamsend._pacing import LocalRateLimiter
from streamsend._stats import RunStats
from streamsend._types import (
    ExitCode,
    Journal,
    LineBlock,
    LineSource,
    Logger,
    OutcomeSink,
    RateLimiter,
)
from streamsend._validate import Validator

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RunResult:
    exit_code: ExitCode
    aborted: bool  # a fatal service answer stopped the run
    interrupted: bool  # a signal stopped the reading early


class Pipeline:
    """One run of the pipeline. `request_stop()` is the graceful drain; call it twice to cut."""

    def __init__(
        self,
        settings: Settings,
        *,
        api_key: str,
        source: LineSource,
        sink: OutcomeSink,
        journal: Journal | None = None,
        resume: ResumeState | None = None,
        limiter: RateLimiter | None = None,
        stats: RunStats | None = None,
        log: Logger = None,
        rng: random.Random | None = None,
        campaign: Campaign | None = None,
        fingerprints: InputFingerprints | None = None,
        columnar: bool = True,
    ) -> None:
        """`columnar=False` validates and batches every line as its own Message (the per-line
        path, which the tests compare the columnar path against)."""
        self.settings = settings
        self.stats = stats or RunStats()
        self._source = source
        self._sink = sink
        self._journal = journal
        self._resume = resume
        self._log = log if log is not None else library_logger()
        self._campaign = campaign if campaign is not None else Campaign.load(settings)
        self._sorts_out = self._campaign.sorts_out
        self._validator = Validator(
            api_version=settings.api_version,
            default_sender=settings.sender,
            max_line_bytes=settings.max_line_bytes,
            columnar=columnar,
        )
        send_gate = None
        if limiter is None:
            limiter = LocalRateLimiter(settings.rate_for, batch_size=settings.batch_size)
            # The same pace once more, right before each request leaves (see `Lanes.send_gate`).
            send_gate = LocalRateLimiter(settings.rate_for, batch_size=settings.batch_size)
        self._batcher = Batcher(
            api_version=settings.api_version,
            max_messages=settings.batch_size,
            linger=settings.linger_ms / 1000,
            max_buffered=settings.max_buffered,
            cap_for_sender=limiter.batch_cap,
        )
        self.dispatcher = Dispatcher(
            dispatch_settings(settings, api_key),
            sink=sink,
            journal=journal,
            stats=self.stats,
            limiter=limiter,
            send_gate=send_gate,
            first_request=resume.next_request if resume else 1,
            expiry=self._campaign.expiry,
            log=self._log,
            rng=rng,
        )
        self.stats.queue_depth_probes["batches_waiting"] = self.dispatcher.queued_batches
        self.stats.queue_depth_probes["messages_buffered"] = lambda: self._batcher.buffered
        self._stop_requests = 0
        self._fingerprints = fingerprints
        # A resumed input's lines kept until it is proved the same input (see _take_block).
        self._held_messages: list[Message] = []
        self._held_others: list[Outcome] = []
        self._stopped_at = 0.0  # monotonic time of the first stop request
        self._reader_waiting = False  # the reader is handing batches to a full dispatcher
        self._stopping = asyncio.Event()
        self._not_all_queued = False
        # Batches the batcher closed but the dispatcher hasn't taken yet, because the task handing
        # them over was cancelled while submit() waited for room (reading ended or stopped).
        # They are batched all the same, so run() sends them before the batcher's open ones.
        self._unsubmitted: list[Batch] = []

    def request_stop(self) -> None:
        """First call: stop reading, send what is batched, drain. Second call: stop at once."""
        self._stop_requests += 1
        self._stopping.set()
        if self._stop_requests == 1:
            self._stopped_at = time.monotonic()
            self._log.warning("stopping", hint="draining; signal again to stop at once")
        else:
            self._log.warning("stopping_now")

    async def run(self) -> RunResult:
        """Run to the end of input or a stop; if reading failed, drain, then raise InputError."""
        read_error: BaseException | None = None
        async with self.dispatcher:
            reader = asyncio.create_task(self._read_all(), name="reader")
            linger = asyncio.create_task(self._flush_lingering(), name="linger")
            stop_wait = asyncio.create_task(self._stopping.wait())
            abort_wait = asyncio.create_task(self.dispatcher.aborted.wait())
            try:
                await asyncio.wait(
                    [reader, stop_wait, abort_wait], return_when=asyncio.FIRST_COMPLETED
                )
                if not reader.done():
                    reader.cancel()  # stop reading; what is batched is still sent
                await asyncio.gather(reader, return_exceptions=True)
                if not reader.cancelled():
                    read_error = reader.exception()
                linger.cancel()
                await asyncio.gather(linger, return_exceptions=True)
                await self._drain()
            finally:
                helpers = (reader, linger, stop_wait, abort_wait)
                for task in helpers:
                    task.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
                await self._sink.flush()
        if self.dispatcher.crashed is not None:
            raise self.dispatcher.crashed
        if read_error is not None:
            raise read_error
        if self.dispatcher.fatal is not None:
            code = ExitCode.ABORTED
        elif self._stop_requests:
            code = ExitCode.INTERRUPTED
        elif self._not_all_queued or any(
            count
            for status, count in self.stats.by_status.items()
            if status not in DELIBERATE_STATUSES
        ):
            code = ExitCode.NOT_ALL_QUEUED
        else:
            code = ExitCode.OK
        return RunResult(code, self.dispatcher.fatal is not None, bool(self._stop_requests))

    async def _send_the_rest(self) -> None:
        """Send what is batched already (the batches a cancelled reader left in hand first),
        then wait until every submitted batch has its outcomes."""
        # A batch a cut-short stop never hands over has no outcome and was never journaled:
        # --resume sends it.
        leftovers = [*self._unsubmitted, *self._batcher.flush_all()]
        self._unsubmitted.clear()
        for batch in leftovers:
            if self.dispatcher.aborted.is_set():
                break
            await self.dispatcher.submit(batch)
        await self.dispatcher.drain()

    async def _drain(self) -> None:
        """Send what is batched and wait for every outcome. Once stopping, all of it (left-over
        batches included, which at a slow --rate can be minutes of sending) is bounded by
        drain_timeout counted from the first signal; at a second signal, nothing more is sent."""
        drain = asyncio.create_task(self._send_the_rest())
        waiters: list[asyncio.Task[Any]] = []
        try:
            if not self._stop_requests:
                stop = asyncio.create_task(self._stopping.wait())
                waiters.append(stop)
                await asyncio.wait([drain, stop], return_when=asyncio.FIRST_COMPLETED)
            if not drain.done() and self._stop_requests == 1:
                second = asyncio.create_task(self._second_stop())
                waiters.append(second)
                left = self._stopped_at + self.settings.drain_timeout - time.monotonic()
                await asyncio.wait(
                    [drain, second], timeout=max(0.0, left), return_when=asyncio.FIRST_COMPLETED
                )
                if not drain.done() and not second.done():
                    self._log.warning("drain_timeout", drain_timeout=self.settings.drain_timeout)
            if not drain.done():
                # Batches not handed over yet stay without an outcome and were never journaled
                # (--resume sends them); requests still in flight are abandoned: their lines are
                # reported `unknown` when they were transmitted, journaled `unsent` when not.
                drain.cancel()
                await asyncio.gather(drain, return_exceptions=True)
                await self.dispatcher.cancel()
                self._not_all_queued = True
        finally:
            # Also when run() itself is cancelled in one of the waits above: no helper task
            # may outlive the drain (a stop waiter would otherwise wait for ever).
            for task in waiters:
                task.cancel()
            if not drain.done():
                drain.cancel()
            await asyncio.gather(drain, *waiters, return_exceptions=True)

    async def _second_stop(self) -> None:
        while self._stop_requests < 2:
            self._stopping.clear()
            await self._stopping.wait()

    async def _read_all(self) -> None:
        fingerprints = self._fingerprints
        reading: str | None = None
        async for whole in self._source:
            if fingerprints is not None:
                # The whole block at once: one hash of the text as read (see LineBlock.text)
                # and one journal record, still before any line of the block can be sent.
                if reading is not None and whole.source != reading:
                    fingerprints.end(reading)
                reading = whole.source
                fingerprints.observe(whole)  # InputError when resume meets other input
            for block in _parts(whole, PART_LINES):
                hold = fingerprints is not None and fingerprints.pending(block.source)
                await self._take_block(block, hold=hold)
                if self.dispatcher.aborted.is_set():
                    return
                # Let timers run between parts (the pacing gate's above all: see PART_LINES).
                await asyncio.sleep(0)
        if fingerprints is not None and reading is not None:
            fingerprints.end(reading)

    async def _take_block(self, block: LineBlock, *, hold: bool = False) -> None:
        """Validate one block of lines, batch the messages, write the other outcomes.

        With `hold`, keep them instead: a resumed input is not trusted until it has been read as
        far as the earlier run read it (see `_fingerprint`), and nothing of it may go before."""
        columns: Columns | None = None  # the messages, on the columnar path (see validate_block)
        messages: list[Message] = []
        others: list[Outcome] = []  # invalid lines, and lines a crashed run left in flight
        if self._resume is None:
            columns, messages = self._validator.validate_block(
                block.source, block.first_line, block.lines, others
            )
            if block.errors:
                others.extend(source_refusals(block))
            if self._sorts_out or block.deadlines:
                others.extend(self._campaign.sort_out(columns or messages, block))
        else:
            self._take_resumed_lines(block, messages, others)
        stats = self.stats
        stats.input_bytes_read += block.nbytes
        stats.lines_read += len(messages) + len(others) + (len(columns) if columns else 0)
        if hold:
            self._held_messages.extend(columns or ())
            self._held_messages.extend(messages)
            self._held_others.extend(others)
            return
        if self._held_messages or self._held_others:
            messages = [*self._held_messages, *(columns or ()), *messages]
            columns = None
            others = [*self._held_others, *others]
            self._held_messages.clear()
            self._held_others.clear()
        if others:
            self._sink.write(others)
            for outcome in others:
                stats.count_outcome(outcome.status.value, outcome.sender)
            await self._sink.flush()
        # While the reader waits for room in the dispatcher, it holds the next lines already: the
        # linger must not send a partly filled batch then (see _flush_lingering).
        self._reader_waiting = True
        try:
            now = time.monotonic()
            batches = self._batcher.add_many(columns, now) if columns else []
            if messages:
                batches += self._batcher.add_many(messages, now)
            await self._submit_all(batches)
        finally:
            self._reader_waiting = False

    async def _submit_all(self, batches: list[Batch]) -> None:
        """Hand batches to the dispatcher; keep those a cancellation leaves in hand for run()."""
        for i, batch in enumerate(batches):
            try:
                await self.dispatcher.submit(batch)
            except asyncio.CancelledError:
                # submit() enqueues nothing when cancelled: this batch and the rest are ours.
                self._unsubmitted.extend(batches[i:])
                raise

    def _take_resumed_lines(
        self, block: LineBlock, messages: list[Message], others: list[Outcome]
    ) -> None:
        """Like `Validator.validate_lines`, but only for the lines an earlier run left to do."""
        resume = self._resume
        assert resume is not None
        validator = self._validator
        campaign = self._campaign
        # Only --dedupe needs the lines an earlier run settled: a later copy of one is still a
        # duplicate of it.
        remembering = campaign.dedupe is not None
        source = block.source
        line = block.first_line - 1
        for raw in block.lines:
            line += 1
            decision = resume.decide(source, line)
            kept: list[Message] = []
            if decision is Decision.SKIP or decision is Decision.WAS_UNKNOWN:
                # An earlier run's outcome stands, and counts in this run's exit code: 0 only
                # when every line of the input ends queued, whichever run queued it.
                if decision is Decision.WAS_UNKNOWN or not resume.settled_well(source, line):
                    self._not_all_queued = True
                if remembering and raw:
                    validator.validate_lines(source, line, [raw], kept, [])
                    campaign.remember(kept)
                continue
            if decision is Decision.SEND:
                validator.validate_lines(source, line, [raw], kept, others)
                if block.errors and line in block.errors:
                    others.extend(source_refusals(block, (line,)))
                if kept and (self._sorts_out or block.deadlines):
                    others.extend(campaign.sort_out(kept, block))
                messages.extend(kept)
                continue
            # MARK_UNKNOWN: it was in flight when the earlier run stopped.
            validator.validate_lines(source, line, [raw], kept, others)
            campaign.remember(kept)
            request = resume.in_flight_request(source, line)
            others.extend(_in_flight_at_crash(message, request) for message in kept)

    async def _flush_lingering(self) -> None:
        # Wake at the oldest open batch's deadline, and at least every 20 ms (a batch opened
        # while we sleep has a deadline we don't know yet): a line is on the wire within about
        # linger + 20 ms, for at most 50 cheap wake-ups a second.
        interval = max(0.001, min(self._batcher.linger / 5, 0.02))
        # A batch is "idle" only while the reader is idle too: when the reader is held up by
        # backpressure (a paced or slow service), its next lines would fill the batch anyway,
        # and sending it partly filled only adds requests (about one per block when paced).
        while True:
            deadline = self._batcher.next_deadline()
            if deadline is None or self._reader_waiting:
                delay = interval  # (a waiting reader: see below; no busy loop on a passed deadline)
            else:
                delay = max(0.0, min(interval, deadline - time.monotonic()))
            await asyncio.sleep(delay)
            if not self._reader_waiting:
                await self._submit_all(self._batcher.flush_due(time.monotonic()))


#: The most lines validated and batched in one go. The source reads 1 MiB at a time (about
#: 8,000 lines); taken whole, such a block held the event loop for 30 to 40 ms on this project's
#: 2-core machines, longer than the pacing bucket's 5 ms of slack, and `--rate 20000/s` came out
#: 3 to 8% short (the bucket was full while the loop was busy, and what it could not hold was
#: lost). 1,024 lines take about 3 ms, and run faster a line too (3.0 against 5.0 µs to
#: validate: the working set stays in the CPU's cache).
PART_LINES = 1024


def _parts(block: LineBlock, most: int) -> Iterator[LineBlock]:
    """`block` cut into blocks of at most `most` lines (each with its own refusals, deadlines
    and share of the bytes read)."""
    lines = block.lines
    if len(lines) <= most:
        yield block
        return
    shared = 0
    for start in range(0, len(lines), most):
        part = lines[start : start + most]
        first = block.first_line + start
        last = first + len(part) - 1
        end = start + len(part) >= len(lines)
        nbytes = block.nbytes - shared if end else block.nbytes * len(part) // len(lines)
        shared += nbytes
        yield LineBlock(
            block.source,
            first,
            part,
            nbytes,
            _within(block.errors, first, last),
            _within(block.deadlines, first, last),
        )


def _within(by_line: dict[int, _T] | None, first: int, last: int) -> dict[int, _T] | None:
    if not by_line:
        return None
    return {line: value for line, value in by_line.items() if first <= line <= last} or None


def dispatch_settings(settings: Settings, api_key: str, **changes: Any) -> DispatchSettings:
    """How a run's settings drive the dispatcher: one mapping for `send` and `worker` alike."""
    return DispatchSettings(
        base_url=settings.base_url,
        api_version=settings.api_version,
        api_key=api_key,
        concurrency=settings.fixed_concurrency,
        max_concurrency=settings.max_concurrency,
        timeout=settings.timeout,
        retries=settings.retries,
        give_up_after=settings.give_up_after,
        resend_unknown=settings.resend_unknown,
        backoff=Backoff(settings.backoff_base, settings.backoff_cap),
        proxy=settings.proxy,
        ca_bundle=settings.ca_bundle,
        **changes,
    )


def _in_flight_at_crash(message: Message, request: int | None) -> Outcome:
    # The outcome names the request the line was in flight with: request numbers are what
    # orders an outcome against the journal's start records, so without it the next resume
    # would take the line for in flight again and report it unknown once more.
    return Outcome(
        message.source,
        message.line,
        Status.UNKNOWN,
        "in_flight_at_crash",
        "a previous run stopped while this line's request was in flight; it may have been "
        "accepted (use --resend-unknown to send it again)",
        message.to,
        message.ref_json,
        0,
        request,
        message.sender,
        message.segments,
        message.encoding,
    )
