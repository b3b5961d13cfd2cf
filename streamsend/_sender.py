"""Sending: batches become HTTP requests, paced per sending number, retried only when it is safe.

Promises:
- Every batch handed to `submit()` ends with exactly one outcome per message, written to the
  sink, unless the run is aborted by a fatal service answer or cut short by a second signal
  (then the lines of requests never transmitted get no outcome, and --resume sends them).
- A request is journaled before its first byte is transmitted.
- Each sending number has its own lane: its own queue, its own leaky-bucket limiter (aiolimiter)
  and its own pause after a 429, so one slow or throttled sender doesn't hold up the others.
  At most `concurrency` requests are in flight across all lanes.
- Messages are resent only after the service proved it did not accept them (see `_retry`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import aiohttp
import structlog
from aiolimiter import AsyncLimiter

from streamsend._batcher import encode_request_body
from streamsend._exceptions import (
    TRANSPORT_ERRORS,
    FatalServiceError,
    MaybeSent,
    NotSent,
    RateLimited,
    Refused,
    SendError,
    map_transport_error,
)
from streamsend._journal import Journal
from streamsend._models import Batch, BatchOutcome, Message, Status
from streamsend._outcomes import OutcomeSink
from streamsend._retry import Accepted, Backoff, classify_response
from streamsend._stats import RunStats

# A batch carries at most this many seconds' worth of a paced sender's rate, so the achieved rate
# is smooth at the scale of seconds instead of arriving in bursts of 1,000 (17,000/min → 56).
PACE_GRANULARITY_S = 0.2
# How much of a paced sender's rate the limiter may bank to make up for late timer wake-ups.
LATENESS_SLACK_S = 0.005

_ENDPOINTS = {"v1": "/v1/messages/bulk", "v2": "/v2/send/bulk"}
# aiohttp's threshold (aiohttp.payload.TOO_LARGE_BYTES_BODY) for "a large body as raw bytes".
_LARGE_BODY_BYTES = 1 << 20


def batch_cap_for_rate(rate_per_s: float | None, batch_size: int) -> int:
    if rate_per_s is None:
        return batch_size
    return max(1, min(batch_size, int(rate_per_s * PACE_GRANULARITY_S)))


@dataclass(frozen=True, slots=True)
class SenderSettings:
    base_url: str
    api_version: str
    api_key: str
    concurrency: int = 8
    timeout: float = 30.0
    retries: int = 5
    resend_unknown: bool = False
    backoff: Backoff = field(default_factory=Backoff)
    # Messages waiting in all lanes before `submit()` makes the producer wait. One budget for
    # all senders, not one per lane: a throttled sender's backlog can grow into it while the
    # others keep flowing, instead of stopping the reader (and so every sender) at once.
    max_waiting_messages: int = 20_000


class _Lane:
    """One sending number: its queue, its pacing and its 429 pause."""

    def __init__(self, sender: str, rate_per_s: float | None, cap: int) -> None:
        self.sender = sender
        # Unbounded by itself; the Sender's shared budget bounds all lanes together.
        self.queue: asyncio.Queue[Batch | None] = asyncio.Queue()
        self.limiter: AsyncLimiter | None = None
        if rate_per_s:
            # A leaky bucket of one batch, plus a little slack: the bucket can't drain below
            # empty, so with no slack every wake-up's timer lateness (~1 ms) is lost for good
            # and the rate erodes (-2% at 20,000/s, -12% at 100,000/s, measured). The slack
            # keeps that lateness as credit; a burst is at most one batch + 5 ms of the rate.
            capacity = cap + min(cap, rate_per_s * LATENESS_SLACK_S)
            self.limiter = AsyncLimiter(capacity, capacity / rate_per_s)
        self.paused_until = 0.0
        self.workers: list[asyncio.Task[None]] = []


class Sender:
    """Delivers batches; one per run. Use as `async with Sender(...) as sender`."""

    def __init__(
        self,
        settings: SenderSettings,
        *,
        sink: OutcomeSink,
        journal: Journal | None,
        stats: RunStats,
        rate_for_sender: Callable[[str], float | None],
        cap_for_sender: Callable[[str], int],
        first_request: int = 1,
        log: Any = None,
        rng: random.Random | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.settings = settings
        self._sink = sink
        self._journal = journal
        self._stats = stats
        self._rate_for_sender = rate_for_sender
        self._cap_for_sender = cap_for_sender
        self._next_request = first_request
        self._log = log if log is not None else structlog.get_logger("streamsend.sender")
        self._rng = rng or random.Random()
        self._session = session
        self._owns_session = session is None
        self._in_flight = asyncio.Semaphore(settings.concurrency)
        self._lanes: dict[str, _Lane] = {}
        self._waiting_messages = 0  # in lane queues, not yet taken by a worker
        self._room = asyncio.Event()
        self._url = settings.base_url.rstrip("/") + _ENDPOINTS[settings.api_version]
        self._headers = {"X-Api-Key": settings.api_key, "Content-Type": "application/json"}
        self._warned_deprecated = False
        self.fatal: FatalServiceError | None = None
        self.crashed: Exception | None = None  # an error that is no service answer (a bug)
        self.aborted = asyncio.Event()  # set on a fatal answer or a crash: stop reading

    async def __aenter__(self) -> Sender:
        if self._session is None:
            trace = aiohttp.TraceConfig()
            trace.on_request_headers_sent.append(_mark_transmitted)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.settings.concurrency + 2),
                trace_configs=[trace],
                # Our own timeout wraps each attempt; aiohttp's default 5-minute total would
                # only blur which attempt timed out.
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- feeding ---------------------------------------------------------------------------

    async def submit(self, batch: Batch) -> None:
        """Queue a batch on its sender's lane; waits while the lanes hold too many messages."""
        while self._waiting_messages >= self.settings.max_waiting_messages:
            self._room.clear()
            await self._room.wait()
        lane = self._lanes.get(batch.sender)
        if lane is None:
            lane = self._open_lane(batch.sender)
        self._waiting_messages += len(batch.messages)
        lane.queue.put_nowait(batch)

    def queued_batches(self) -> int:
        return sum(lane.queue.qsize() for lane in self._lanes.values())

    def _open_lane(self, sender: str) -> _Lane:
        lane = _Lane(
            sender,
            self._rate_for_sender(sender),
            self._cap_for_sender(sender),
        )
        self._lanes[sender] = lane
        lane.workers = [
            asyncio.create_task(self._work(lane), name=f"lane-{sender}-{i}")
            for i in range(self.settings.concurrency)
        ]
        return lane

    async def drain(self) -> None:
        """Wait until every submitted batch has its outcomes."""
        for lane in self._lanes.values():
            for _ in lane.workers:
                lane.queue.put_nowait(None)
        workers = [w for lane in self._lanes.values() for w in lane.workers]
        if workers:
            await asyncio.gather(*workers)

    async def cancel(self) -> None:
        """Stop at once: requests in flight are abandoned (and reported `unknown` if sent)."""
        workers = [w for lane in self._lanes.values() for w in lane.workers]
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    async def aclose(self) -> None:
        await self.cancel()
        if self._session is not None and self._owns_session:
            await self._session.close()

    # -- delivering --------------------------------------------------------------------------

    async def _work(self, lane: _Lane) -> None:
        while True:
            batch = await lane.queue.get()
            if batch is None:
                return
            self._waiting_messages -= len(batch.messages)
            self._room.set()
            if self.aborted.is_set():
                continue  # no outcome: --resume sends these lines later
            try:
                await self._deliver(lane, batch.messages)
            except Exception as exc:
                # Not a service answer but a bug. Stop the run as a fatal answer does (reading
                # stops, requests in flight finish) and let the pipeline raise it. Left to end
                # this task, it would go unseen until drain(), and the pipeline swallowed it.
                # This request's lines keep no outcome; the journal has them for --resume.
                if self.crashed is None:
                    self.crashed = exc
                self.aborted.set()
                return

    async def _deliver(self, lane: _Lane, messages: Sequence[Message]) -> None:
        request = self._next_request
        self._next_request += 1
        body = encode_request_body(
            self.settings.api_version, Batch(lane.sender, tuple(messages), 0)
        )
        attempts = 0
        journaled = False
        maybe_accepted = False  # some attempt may have been accepted (only with --resend-unknown)
        ctx = SimpleNamespace(transmitted=False)  # the current attempt's transmission flag
        try:
            while True:
                await self._wait_for_turn(lane, len(messages))
                if self.aborted.is_set():
                    # A fatal answer elsewhere: leave these lines without an outcome for --resume.
                    if journaled and not maybe_accepted and self._journal is not None:
                        self._journal.record_unsent(request)
                    elif maybe_accepted:
                        self._finish_failed(
                            request,
                            lane.sender,
                            messages,
                            attempts,
                            MaybeSent(
                                "the run stopped before this request could be resent",
                                code="aborted",
                                request=request,
                            ),
                        )
                    return
                attempts += 1
                ctx = SimpleNamespace(transmitted=False)
                async with self._request_slot(lane):
                    if not journaled and self._journal is not None:
                        self._journal.record_start(request, messages)
                        # Journaled from here on: a cancellation during the fsync just below
                        # must still record the request `unsent` (see the CancelledError
                        # handler), or resume would take its lines for in flight.
                        journaled = True
                        await self._journal.sync()
                    journaled = True
                    self._stats.in_flight += 1
                    started = time.monotonic()
                    try:
                        accepted = await self._attempt(body, request, ctx)
                    except SendError as error:
                        failure: SendError | None = error
                    else:
                        failure = None
                    finally:
                        self._stats.in_flight -= 1
                        latency = time.monotonic() - started
                ctx = SimpleNamespace(transmitted=False)  # the attempt is over, one way or another
                code = (
                    "201"
                    if failure is None
                    else (str(failure.status) if failure.status else failure.code)
                )
                self._stats.observe_request(code, latency)
                self._log.debug(
                    "request",
                    request=request,
                    sender=lane.sender,
                    messages=len(messages),
                    bytes=len(body),
                    status=code,
                    latency_ms=round(latency * 1000, 1),
                    attempt=attempts,
                )
                if failure is None:
                    self._finish_accepted(request, lane.sender, messages, attempts, accepted)
                    break
                maybe_accepted = maybe_accepted or isinstance(failure, MaybeSent)
                delay = self._retry_delay(failure, attempts, lane, request, len(messages))
                if delay is not None:
                    if delay > 0:
                        await asyncio.sleep(delay)
                    continue
                if isinstance(failure, Refused) and failure.status == 413 and len(messages) > 1:
                    # Our byte cap should make this impossible: say so loudly, then send halves.
                    self._log.error(
                        "payload_too_large_split",
                        request=request,
                        messages=len(messages),
                        bytes=len(body),
                    )
                    if self._journal is not None:
                        self._journal.record_unsent(request)  # a 413 proves nothing was queued
                    journaled = False  # the halves are new requests that answer for themselves
                    half = len(messages) // 2
                    await self._deliver(lane, messages[:half])
                    await self._deliver(lane, messages[half:])
                    return
                if maybe_accepted and not isinstance(failure, MaybeSent):
                    # An earlier attempt may have gone through: the honest answer is unknown.
                    failure = MaybeSent(
                        str(failure), code=failure.code, status=failure.status, request=request
                    )
                self._finish_failed(request, lane.sender, messages, attempts, failure)
                break
        except asyncio.CancelledError:
            if journaled:
                self._abandon(
                    request, lane.sender, messages, attempts, maybe_accepted or ctx.transmitted
                )
            raise
        await self._sink.flush()
        if self._journal is not None:
            self._journal.record_done(request)

    @contextlib.asynccontextmanager
    async def _request_slot(self, lane: _Lane) -> AsyncIterator[None]:
        """One of the `concurrency` request slots, for a request of `lane`.

        A 429 for this sender may arrive while we wait for a slot; sending anyway would ignore
        the pause, so the slot is given back (others may use it) until the pause is over.
        """
        while True:
            await self._in_flight.acquire()
            if lane.paused_until <= time.monotonic():
                break
            self._in_flight.release()
            await _sleep_out_pause(lane)
        try:
            yield
        finally:
            self._in_flight.release()

    async def _wait_for_turn(self, lane: _Lane, amount: int) -> None:
        """Honour the sender's 429 pause, then its rate."""
        waited_from = time.monotonic()
        await _sleep_out_pause(lane)
        if lane.limiter is not None:
            await lane.limiter.acquire(min(amount, lane.limiter.max_rate))
        self._stats.rate_wait_seconds += time.monotonic() - waited_from

    def _retry_delay(
        self, failure: SendError, attempts: int, lane: _Lane, request: int, size: int
    ) -> float | None:
        """Seconds to wait before the next attempt, or None when this failure is final."""
        retries_left = attempts <= self.settings.retries
        if isinstance(failure, FatalServiceError):
            self._stop_on(failure, request)
            return None
        if not retries_left:
            return None
        if isinstance(failure, RateLimited):
            # Pause the whole lane, not just this request: the service says this sender is busy.
            delay = failure.retry_after
            if delay is None:
                delay = self.settings.backoff.delay(attempts - 1, self._rng)
            lane.paused_until = max(lane.paused_until, time.monotonic() + delay)
            self._stats.retries += 1
            self._log.warning(
                "rate_limited",
                sender=lane.sender,
                request=request,
                retry_after=delay,
                attempt=attempts,
            )
            return 0.0  # the lane's pause does the waiting, for every request of this sender
        if isinstance(failure, NotSent) or (
            isinstance(failure, MaybeSent) and self.settings.resend_unknown
        ):
            delay = self.settings.backoff.delay(attempts - 1, self._rng)
            self._stats.retries += 1
            self._log.info(
                "retrying",
                request=request,
                code=failure.code,
                attempt=attempts,
                messages=size,
                delay=round(delay, 3),
            )
            return delay
        return None  # Refused, or maybe sent without --resend-unknown

    def _stop_on(self, failure: FatalServiceError, request: int) -> None:
        """A fatal answer: no further request is started (see `aborted`)."""
        if self.fatal is None:
            self.fatal = failure
            self._log.error(
                "fatal_service_answer",
                request=request,
                code=failure.code,
                status=failure.status,
                error=str(failure),
            )
        self.aborted.set()

    async def _attempt(self, body: bytes, request: int, ctx: SimpleNamespace) -> Accepted:
        assert self._session is not None
        try:
            async with asyncio.timeout(self.settings.timeout):
                # aiohttp writes a bytes body in one go and warns (ResourceWarning) past 1 MiB
                # that this may block the loop; a BytesIO is written in chunks, still with a
                # Content-Length. A fresh one per attempt: it is consumed by sending.
                data = io.BytesIO(body) if len(body) > _LARGE_BODY_BYTES else body
                async with self._session.post(
                    self._url, data=data, headers=self._headers, trace_request_ctx=ctx
                ) as response:
                    raw = await response.read()
                    self._note_deprecation(response)
                    return classify_response(
                        response.status,
                        raw,
                        response.headers.get("Retry-After"),
                        request=request,
                    )
        except SendError:
            raise
        except TRANSPORT_ERRORS as exc:
            raise map_transport_error(exc, transmitted=ctx.transmitted, request=request) from exc

    def _note_deprecation(self, response: aiohttp.ClientResponse) -> None:
        if self._warned_deprecated:
            return
        deprecation = response.headers.get("Deprecation")
        if deprecation is None:
            return
        self._warned_deprecated = True
        self._log.warning(
            "api_deprecated",
            deprecation=deprecation,
            x_api_deprecated=response.headers.get("X-API-Deprecated"),
            hint="the v1 API is deprecated; move with --api-version v2 (see the README)",
        )

    # -- outcomes ----------------------------------------------------------------------------

    def _finish_accepted(
        self,
        request: int,
        sender: str,
        messages: Sequence[Message],
        attempts: int,
        accepted: Accepted,
    ) -> None:
        size = len(messages)
        rejections = {i: e for i, e in accepted.errors.items() if 0 <= i < size}
        unknown_list = {i for i, (code, _) in rejections.items() if code == "list_not_found"}
        if unknown_list and len(rejections) == size:
            # v2 reports an unknown list number per message, where v1 answers 404. It means the
            # same (every later request from this number fails too) and is handled the same:
            # those lines are `failed`, so --resume sends them once the number is fixed, and
            # the run stops.
            text = rejections[next(iter(unknown_list))][1]
            self._write(
                BatchOutcome(
                    messages,
                    Status.FAILED,
                    request,
                    attempts,
                    sender,
                    "list_not_found",
                    text,
                    rejections={i: e for i, e in rejections.items() if i not in unknown_list}
                    or None,
                )
            )
            self._stop_on(FatalServiceError(text, code="list_not_found", request=request), request)
            return
        if len(rejections) != len(accepted.errors):
            self._log.warning(
                "error_index_out_of_range",
                request=request,
                indexes=sorted(set(accepted.errors) - set(rejections)),
            )
        queued = size - len(rejections)
        if accepted.queued_count is not None and accepted.queued_count != queued:
            self._log.warning(
                "queued_count_mismatch",
                request=request,
                queued_count=accepted.queued_count,
                expected=queued,
            )
        self._write(
            BatchOutcome(
                messages, Status.QUEUED, request, attempts, sender, rejections=rejections or None
            )
        )
        self._stats.segments_sent += sum([m.segments for m in messages])

    def _finish_failed(
        self,
        request: int,
        sender: str,
        messages: Sequence[Message],
        attempts: int,
        failure: SendError,
    ) -> None:
        status = Status.UNKNOWN if isinstance(failure, MaybeSent) else Status.FAILED
        self._write_all(
            request,
            sender=sender,
            messages=messages,
            attempts=attempts,
            status=status,
            code=failure.code,
            error=str(failure),
        )

    def _abandon(
        self,
        request: int,
        sender: str,
        messages: Sequence[Message],
        attempts: int,
        transmitted: bool,
    ) -> None:
        """Cancelled mid-request (shutdown): say what is known, and nothing more."""
        if transmitted:
            self._write_all(
                request,
                sender=sender,
                messages=messages,
                attempts=attempts,
                status=Status.UNKNOWN,
                code="cancelled",
                error="the run stopped while this request was in flight",
            )
            if self._journal is not None:
                self._journal.record_done(request)
        elif self._journal is not None:
            self._journal.record_unsent(request)

    def _write_all(
        self,
        request: int,
        *,
        sender: str,
        messages: Sequence[Message],
        attempts: int,
        status: Status,
        code: str,
        error: str,
    ) -> None:
        self._write(BatchOutcome(messages, status, request, attempts, sender, code, error))

    def _write(self, result: BatchOutcome) -> None:
        self._sink.write_batch(result)
        for status, count in result.count_by_status().items():
            self._stats.count_outcome(status.value, result.sender, count)


async def _sleep_out_pause(lane: _Lane) -> None:
    # A loop, not one sleep: another request's 429 may extend the pause while we sleep.
    while (pause := lane.paused_until - time.monotonic()) > 0:  # noqa: ASYNC110
        await asyncio.sleep(pause)


async def _mark_transmitted(
    session: aiohttp.ClientSession, ctx: SimpleNamespace, params: object
) -> None:
    """aiohttp trace hook: the request's headers reached the socket, so it may be processed."""
    request_ctx = ctx.trace_request_ctx
    if request_ctx is not None:
        request_ctx.transmitted = True
