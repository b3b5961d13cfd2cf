"""Lanes: one per sending number, each with its own queue of batches, pacing, pause and breaker.

A throttled or slow sending number must not hold up the others, so each has its own lane. What
the lanes share is bounded: at most `slots.limit` requests in flight across all of them (fixed, or
adapted to the service's answers: see `_concurrency`), and one
budget of waiting messages (`max_waiting_messages`). One budget rather than one bounded queue per
lane: a throttled number's backlog can grow into it while the others keep flowing, where a full
per-lane queue would stop the reader, and so every sending number, at once.

Each lane is also a circuit breaker. When its service is down or unreachable (a 5xx, a failed
connection), the lane pauses (the caller picks how long: exponentially longer each time), and
while the outage lasts its requests go one at a time: one probe tells whether the service is back,
instead of every waiting batch failing in turn and burning the input through its retries. The
first answer that proves the service is up closes the breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from streamsend._concurrency import ConcurrencyLimit
from streamsend._models import Batch
from streamsend._stats import RunStats
from streamsend._types import RateLimiter


class Lane:
    """One sending number: its queue of batches, its pause, its breaker and its workers."""

    def __init__(self, sender: str) -> None:
        self.sender = sender
        # Unbounded by itself; the shared budget in `Lanes` bounds all lanes together.
        self.queue: asyncio.Queue[Batch | None] = asyncio.Queue()
        self.paused_until = 0.0  # monotonic time; set by a 429, a 503 or an outage
        self.workers: list[asyncio.Task[None]] = []
        # The breaker: open (a time) while the service is down or unreachable for this number.
        self.outage_since: float | None = None
        self.outage_failures = 0  # failures since the breaker opened
        self.probe = asyncio.Lock()  # while open: one request at a time
        self._woken = asyncio.Event()

    async def sleep_out_pause(self) -> None:
        # A loop, not one sleep: another request's 429 may extend the pause while we sleep.
        while (pause := self.paused_until - time.monotonic()) > 0:
            self._woken.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._woken.wait()

    def pause(self, seconds: float) -> None:
        """Pause every request of this sending number (the service said it is busy)."""
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    def wake(self) -> None:
        """End the pause now: the run is stopping, and the waiting requests must see it."""
        self.paused_until = 0.0
        self._woken.set()

    def note_outage(self) -> int:
        """A failure that says the service is down or unreachable: open (or keep open) the
        breaker; returns the failures since it opened."""
        if self.outage_since is None:
            self.outage_since = time.monotonic()
        self.outage_failures += 1
        return self.outage_failures

    def note_answer(self) -> float | None:
        """An answer that proves the service is up: close the breaker; how long it was open."""
        if self.outage_since is None:
            return None
        lasted = time.monotonic() - self.outage_since
        self.outage_since = None
        self.outage_failures = 0
        return lasted


class Lanes:
    """The lanes of one run, the request slots and the waiting-message budget they share."""

    def __init__(
        self,
        *,
        limiter: RateLimiter,
        send_gate: RateLimiter | None = None,
        stats: RunStats,
        slots: ConcurrencyLimit,
        max_waiting_messages: int,
        on_open: Callable[[Lane], None],
    ) -> None:
        self._limiter = limiter
        self.send_gate = send_gate
        self._stats = stats
        self._max_waiting = max_waiting_messages
        self._on_open = on_open
        self.slots = slots
        self._lanes: dict[str, Lane] = {}
        self._waiting_messages = 0  # in lane queues, not yet taken by a worker
        self._room = asyncio.Event()

    def all(self) -> list[Lane]:
        return list(self._lanes.values())

    async def submit(self, batch: Batch) -> None:
        """Queue a batch on its sending number's lane; waits while the lanes hold too much."""
        while self._waiting_messages >= self._max_waiting:
            self._room.clear()
            await self._room.wait()
        lane = self._lanes.get(batch.sender)
        if lane is None:
            lane = self._lanes[batch.sender] = Lane(batch.sender)
            self._on_open(lane)
        self._waiting_messages += len(batch.messages)
        lane.queue.put_nowait(batch)

    def taken(self, batch: Batch) -> None:
        """A worker took `batch` off its lane's queue: its messages leave the budget."""
        self._waiting_messages -= len(batch.messages)
        self._room.set()

    def queued_batches(self) -> int:
        return sum(lane.queue.qsize() for lane in self._lanes.values())

    async def wait_for_turn(self, lane: Lane, messages: int) -> None:
        """Honour the sending number's 429 pause, then its rate."""
        waited_from = time.monotonic()
        await lane.sleep_out_pause()
        await self._limiter.acquire(lane.sender, messages)
        self._stats.rate_wait_seconds += time.monotonic() - waited_from

    async def space_send(self, lane: Lane, messages: int) -> None:
        """Keep the pace on the wire, not only at the limiter: wait on `send_gate` (a second
        bucket at the same rate) right before a request leaves.

        A request takes its turn at the limiter before it is journaled, and the journal's fsync
        (one for several requests: `GroupSync`) can hold a few granted requests back and then
        release them together: measured at 20,000/s with fsync per request, 2-3 batches above
        the rate in the worst second, though the grants were within one batch. The gate lets a
        paced stream through untouched and spaces out only such a bunch.
        """
        if self.send_gate is not None:
            waited_from = time.monotonic()
            await self.send_gate.acquire(lane.sender, messages)
            self._stats.rate_wait_seconds += time.monotonic() - waited_from

    @contextlib.asynccontextmanager
    async def request_slot(self, lane: Lane) -> AsyncIterator[int]:
        """One of the request slots (`slots.limit` of them), for a request of `lane`; yields the
        slots' epoch, which the attempt's `slots.observe()` call hands back.

        A 429 for this sending number may arrive while we wait for a slot; sending anyway would
        ignore the pause, so the slot is given back (others may use it) until the pause is over.
        While the lane's breaker is open, its requests take turns: each is a probe.
        """
        async with contextlib.AsyncExitStack() as stack:
            if lane.outage_since is not None:
                await lane.probe.acquire()
                if lane.outage_since is None:
                    lane.probe.release()  # the service came back while we waited
                else:
                    stack.callback(lane.probe.release)
            while True:
                epoch = await self.slots.acquire()
                if lane.paused_until <= time.monotonic():
                    break
                self.slots.release()
                await lane.sleep_out_pause()
            try:
                yield epoch
            finally:
                self.slots.release()
