"""The attempt loop: one request, from its first attempt to its one outcome per line.

Promises:
- A request is journaled (and, with the fsync policy, on disk) before its first byte leaves.
- Its lines are sent again only when the service proved it did not accept them (see
  `_protocol.ANSWERS`): a 429 or 503 pauses the whole sending number, other "not sent" failures
  back off with full jitter; "maybe sent" (a 500/502/504 included) ends as `unknown` unless the
  user opted into --resend-unknown.
- Every request ends in exactly one of: outcomes for all its lines (then `done`), `unsent` in the
  journal (it certainly never left: --resume sends it), or `unknown` outcomes when a shutdown cut
  it short after it may have left.
"""

from __future__ import annotations

import asyncio
import io
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

from streamsend._columns import wires_of
from streamsend._exceptions import (
    FatalServiceError,
    LeaseLost,
    MaybeSent,
    NotSent,
    RateLimited,
    Refused,
    SendError,
    map_transport_error,
)
from streamsend._expiry import Expiry
from streamsend._http import aiohttp
from streamsend._lanes import Lane, Lanes
from streamsend._models import Message
from streamsend._protocol import Accepted, WireProtocol
from streamsend._recorder import Recorder
from streamsend._stats import RunStats
from streamsend._types import Logger

#: The lower-level errors `map_transport_error` handles; a test checks each maps to a SendError.
#: Here rather than in `_exceptions`, which every command imports and which so stays free of
#: aiohttp; the attempt loop is the one place they are caught.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,
    asyncio.TimeoutError,
    aiohttp.ClientError,
    OSError,
)

# aiohttp's threshold (aiohttp.payload.TOO_LARGE_BYTES_BODY) for "a large body as raw bytes".
_LARGE_BODY_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog): sleep U(0, min(cap, base·2ⁿ)).

    Full jitter spreads the retries of many concurrent requests instead of having them hammer a
    recovering service in lockstep.
    """

    base: float = 0.5
    cap: float = 30.0

    def delay(self, retry_number: int, rng: random.Random) -> float:
        try:
            # ldexp is base·2ⁿ exactly; unlike base * 2**n it stays 0 for a zero base at any n.
            ceiling = min(self.cap, math.ldexp(self.base, retry_number))
        except OverflowError:  # base·2ⁿ past float range: long since at the cap
            ceiling = self.cap
        return rng.uniform(0.0, ceiling)

    def outage_pause(self, failures: int, rng: random.Random) -> float:
        """How long a sending number pauses after its `failures`-th failure in an outage:
        exponential, with "equal" jitter (at least half the ceiling), so that the probes of a
        long outage space out instead of sometimes coming right back."""
        ceiling = self.cap if failures > 64 else min(self.cap, math.ldexp(self.base, failures - 1))
        return ceiling / 2 + rng.uniform(0.0, ceiling / 2)


class Abort:
    """Whether the run must start no new request, and why: a fatal answer or a crash (a bug)."""

    def __init__(self, log: Logger) -> None:
        self.event = asyncio.Event()  # set: stop reading, start nothing new
        self.fatal: FatalServiceError | None = None
        self.crashed: Exception | None = None
        self._log = log

    def is_set(self) -> bool:
        return self.event.is_set()

    def on_fatal(self, failure: FatalServiceError, request: int) -> None:
        if self.fatal is None:
            self.fatal = failure
            self._log.error(
                "fatal_service_answer",
                request=request,
                code=failure.code,
                status=failure.status,
                error=str(failure),
            )
        self.event.set()

    def on_give_up(self, failure: FatalServiceError) -> None:
        """The service was down longer than --give-up-after: stop as a fatal answer does (the
        caller has logged why)."""
        if self.fatal is None:
            self.fatal = failure
        self.event.set()

    def on_crash(self, exc: Exception) -> None:
        if self.crashed is None:
            self.crashed = exc
        self.event.set()


class AttemptLoop:
    """Delivers one request at a time for a lane's worker (see the module's promises)."""

    def __init__(
        self,
        *,
        protocol: WireProtocol,
        base_url: str,
        api_key: str,
        timeout: float,
        retries: int,
        resend_unknown: bool,
        backoff: Backoff,
        give_up_after: float,
        lanes: Lanes,
        recorder: Recorder,
        stats: RunStats,
        abort: Abort,
        log: Logger,
        rng: random.Random,
        first_request: int,
        expiry: Expiry | None = None,
    ) -> None:
        self.session: aiohttp.ClientSession | None = None  # set by the dispatcher
        self._protocol = protocol
        self._url = base_url.rstrip("/") + protocol.endpoint
        self._headers = {"X-Api-Key": api_key, "Content-Type": "application/json"}
        self._timeout = timeout
        self._retries = retries
        self._resend_unknown = resend_unknown
        self._backoff = backoff
        self._give_up_after = give_up_after
        self._lanes = lanes
        self._recorder = recorder
        self._stats = stats
        self._abort = abort
        self._log = log
        self._rng = rng
        self._next_request = first_request
        self._warned_deprecated = False
        self._expiry = expiry

    async def deliver(self, lane: Lane, messages: Sequence[Message]) -> None:
        request = self._next_request
        self._next_request += 1
        recorder = self._recorder
        body = self._protocol.request_body(lane.sender, wires_of(messages))
        attempts = 0
        journaled = False
        maybe_accepted = False  # some attempt may have been accepted (only with --resend-unknown)
        ctx = SimpleNamespace(transmitted=False)  # the current attempt's transmission flag
        offered = messages
        try:
            while True:
                await self._lanes.wait_for_turn(lane, len(messages))
                if self._abort.is_set():
                    # A fatal answer elsewhere: leave these lines without an outcome for --resume.
                    if journaled and not maybe_accepted:
                        recorder.unsent(request)
                    elif maybe_accepted:
                        recorder.failed(
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
                async with self._lanes.request_slot(lane) as epoch:
                    # After the rate, a pause or a backoff, and the wait for a slot: a line past
                    # its moment now must not leave (see _expiry).
                    if self._expiry is not None and (late := self._expiry.late(messages)):
                        recorder.expired(request, lane.sender, late, attempts - 1)
                        gone = set(late)
                        messages = tuple(m for m in messages if m not in gone)
                        if not messages:
                            break
                        body = self._protocol.request_body(lane.sender, wires_of(messages))
                    if not journaled:
                        recorder.started(request, messages)
                        # Journaled from here on: a cancellation during the fsync just below
                        # must still record the request `unsent` (see the CancelledError
                        # handler), or resume would take its lines for in flight.
                        journaled = True
                        try:
                            await recorder.sync_started()
                        except LeaseLost:
                            # A worker's entries went to another worker (fencing, see
                            # _redis_seams): that one sends them; this request never leaves.
                            return
                    await self._lanes.space_send(lane, len(messages))
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
                self._lanes.slots.observe(
                    latency,
                    answered=failure is None,
                    back_pressure=_is_back_pressure(failure),
                    epoch=epoch,
                )
                recorder.attempt(
                    request,
                    sender=lane.sender,
                    messages=len(messages),
                    body_bytes=len(body),
                    code=_answer_code(failure),
                    latency=latency,
                    attempt=attempts,
                )
                if failure is None or not _is_outage(failure):
                    self._note_service_up(lane)
                if failure is None:
                    fatal = recorder.accepted(request, lane.sender, messages, attempts, accepted)
                    if fatal is not None:
                        self._abort.on_fatal(fatal, request)
                        return
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
                    recorder.unsent(request)  # a 413 proves nothing was queued
                    journaled = False  # the halves are new requests that answer for themselves
                    half = len(messages) // 2
                    await self.deliver(lane, messages[:half])
                    await self.deliver(lane, messages[half:])
                    return
                if maybe_accepted and not isinstance(failure, MaybeSent):
                    # An earlier attempt may have gone through: the honest answer is unknown.
                    failure = MaybeSent(
                        str(failure), code=failure.code, status=failure.status, request=request
                    )
                recorder.failed(request, lane.sender, messages, attempts, failure)
                break
        except asyncio.CancelledError:
            if journaled:
                recorder.abandoned(
                    request,
                    lane.sender,
                    messages,
                    attempts,
                    transmitted=maybe_accepted or ctx.transmitted,
                )
            raise
        finally:
            if self._expiry is not None:
                self._expiry.forget(offered)
        await recorder.finished(request)

    def _retry_delay(
        self, failure: SendError, attempts: int, lane: Lane, request: int, size: int
    ) -> float | None:
        """Seconds to wait before the next attempt, or None when this failure is final."""
        if isinstance(failure, FatalServiceError):
            self._abort.on_fatal(failure, request)
            return None
        if _is_outage(failure):
            self._note_outage(failure, lane, request)
            if isinstance(failure, NotSent):
                # Down or unreachable, and certainly not sent: wait with the lane (its pause,
                # then one probe at a time) and try again. An outage is bounded by
                # --give-up-after, not by --retries: otherwise it would burn the whole input,
                # every batch `failed` in turn. After giving up, the loop's abort check leaves
                # these lines without an outcome, for --resume.
                self._stats.retries += 1
                return 0.0
            if self._abort.is_set():
                return None  # gave up: a maybe-sent request ends `unknown`, not resent
        if attempts > self._retries:
            return None
        if isinstance(failure, RateLimited):
            # Pause the whole lane, not just this request: the service says this number is busy
            # (429) or that it can't take requests now (503).
            delay = failure.retry_after
            if delay is None:
                delay = self._backoff.delay(attempts - 1, self._rng)
            lane.pause(delay)
            self._stats.retries += 1
            self._log.warning(
                "rate_limited",
                sender=lane.sender,
                request=request,
                retry_after=delay,
                attempt=attempts,
            )
            return 0.0  # the lane's pause does the waiting, for every request of this number
        if isinstance(failure, NotSent) or (
            isinstance(failure, MaybeSent) and self._resend_unknown
        ):
            delay = self._backoff.delay(attempts - 1, self._rng)
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

    def _note_outage(self, failure: SendError, lane: Lane, request: int) -> None:
        """Open the lane's breaker (or keep it open) and pause the lane; give up (stop the run)
        when the outage has lasted longer than --give-up-after."""
        failures = lane.note_outage()
        assert lane.outage_since is not None
        down_for = time.monotonic() - lane.outage_since
        if failures == 1:
            # Every outage logs at least one warning, so an alert can catch it.
            self._log.warning(
                "service_unavailable",
                sender=lane.sender,
                request=request,
                code=failure.code,
                status=failure.status,
                error=str(failure),
                give_up_after=self._give_up_after,
            )
        if down_for >= self._give_up_after:
            if not self._abort.is_set():
                self._log.error(
                    "giving_up",
                    sender=lane.sender,
                    down_for=round(down_for, 1),
                    give_up_after=self._give_up_after,
                    code=failure.code,
                    hint="lines not sent have no outcome: rerun with --resume to send them",
                )
            self._abort.on_give_up(
                FatalServiceError(
                    f"the service was unavailable for {down_for:.1f} s (--give-up-after)",
                    code="gave_up",
                    status=failure.status,
                    request=request,
                )
            )
            for each in self._lanes.all():
                each.wake()  # requests waiting out a pause see the stop now
            return
        retry_after = failure.retry_after if isinstance(failure, RateLimited) else None
        pause = self._backoff.outage_pause(failures, self._rng)
        lane.pause(next_probe_in(pause, retry_after, self._give_up_after - down_for))

    def _note_service_up(self, lane: Lane) -> None:
        lasted = lane.note_answer()
        if lasted is not None:
            self._log.info("service_back", sender=lane.sender, down_for=round(lasted, 3))

    async def _attempt(self, body: bytes, request: int, ctx: SimpleNamespace) -> Accepted:
        assert self.session is not None
        try:
            async with asyncio.timeout(self._timeout):
                # aiohttp writes a bytes body in one go and warns (ResourceWarning) past 1 MiB
                # that this may block the loop; a BytesIO is written in chunks, still with a
                # Content-Length. A fresh one per attempt: it is consumed by sending.
                data = io.BytesIO(body) if len(body) > _LARGE_BODY_BYTES else body
                async with self.session.post(
                    self._url, data=data, headers=self._headers, trace_request_ctx=ctx
                ) as response:
                    raw = await response.read()
                    self._note_deprecation(response)
                    return self._protocol.classify(
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
        hint = (
            self._protocol.deprecation_hint
            or f"the service says API {self._protocol.version} is deprecated"
        )
        # Kept in the stats too, so the human summary (and the demo) can say it in words.
        self._stats.deprecation = hint
        self._log.warning(
            "api_deprecated",
            deprecation=deprecation,
            x_api_deprecated=response.headers.get("X-API-Deprecated"),
            hint=hint,
        )


def next_probe_in(pause: float, retry_after: float | None, until_give_up: float) -> float:
    """How long a sending number in an outage waits before its next probe: the backoff pause,
    at least a 503's Retry-After, but never past the --give-up-after deadline, so the run gives
    up when the user said (after one last probe), not up to a whole backoff cap later."""
    if retry_after is not None:
        pause = max(pause, retry_after)
    return max(0.0, min(pause, until_give_up))


def _is_outage(failure: SendError) -> bool:
    """A 5xx, or no answer at all: the service is down or unreachable (see `_lanes`)."""
    if failure.code == "truncated_response":
        return False  # an answer began: the service is up, the connection broke
    if failure.code == "tls_error":
        return False  # a certificate we don't trust: waiting won't fix it, --retries bound it
    return failure.status is None or failure.status >= 500


def _is_back_pressure(failure: SendError | None) -> bool:
    """The service said it is too busy (429, 503) or didn't answer in time: fewer in flight."""
    if failure is None:
        return False
    return isinstance(failure, RateLimited) or failure.status == 503 or failure.code == "timeout"


def _answer_code(failure: SendError | None) -> str:
    """The label of an attempt's answer in stats and logs: the HTTP status or our error code."""
    if failure is None:
        return "201"
    return str(failure.status) if failure.status else failure.code


async def mark_transmitted(
    session: aiohttp.ClientSession, ctx: SimpleNamespace, params: object
) -> None:
    """aiohttp trace hook: the request's headers reached the socket, so it may be processed."""
    request_ctx = ctx.trace_request_ctx
    if request_ctx is not None:
        request_ctx.transmitted = True
