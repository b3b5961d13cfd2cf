"""Request slots: how many requests may be in flight at once, fixed or learned from the answers.

`concurrency = N` fixes the number. `concurrency = "auto"` (the default) learns it with AIMD, after
Vector's adaptive request concurrency (vectordotdev/vector, src/sinks/util/adaptive_concurrency and
its RFC): time is cut into windows about one round trip long; at the end of each window

- the limit grows by one when requests wanted more slots than there were (the limit was reached),
  no answer pushed back and the window's mean latency was no higher than the running average
  (an EWMA), i.e. more concurrency bought more throughput at no cost;
- it shrinks by 10% when the mean latency rose more than 2.5 standard deviations (and at least
  20%) above the average: the service is queueing what we send.

A push-back (429, 503, a timeout) shrinks the limit at once rather than at the window's end: a
429 pauses the sending number for its Retry-After, and when the pause ends every slot of a limit
left unchanged would be filled at once, to be refused again. Push-backs to requests that were
sent before the last decrease say nothing new and are not counted twice.

Two additions to Vector's scheme, both for a service that caps requests in flight and answers
429 beyond the cap (each 429 pauses the whole sending number for its Retry-After):
- slow start: from one slot the limit doubles per window until the first sign of trouble, then
  halves, so the cap is found in a few round trips rather than one slot per round trip (and
  after a push-back every step above the halved limit is a probe);
- the limit at which the service pushed back is remembered as a ceiling: growing to it again
  (a probe) waits 10 s, doubling to at most 60 s while probes keep failing at that limit, so a
  settled run sees a 429 every minute at most instead of every other window. A probe that
  passes forgets the ceiling.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from streamsend._stats import RunStats

#: `max_concurrency`'s default: adaptive concurrency never holds more requests in flight.
DEFAULT_MAX_CONCURRENCY = 32


@dataclass(frozen=True, slots=True)
class AimdSettings:
    """The controller's constants (Vector's defaults for the first three)."""

    decrease_ratio: float = 0.9
    ewma_alpha: float = 0.4
    rtt_deviation_scale: float = 2.5
    # A rise of the mean latency smaller than this fraction is noise, not queueing: with a
    # steady service the deviation is tiny and any slower window would shrink the limit.
    rtt_tolerance: float = 0.2
    first_probe_wait: float = 10.0  # seconds before growing back to a limit that was pushed back
    max_probe_wait: float = 60.0


class ConcurrencyLimit:
    """At most `limit` requests in flight; with `adaptive`, `limit` moves within 1..`maximum`.

    `acquire()` waits for a slot and returns the current `epoch` (the number of decreases so
    far), `release()` gives the slot back (FIFO: no request starves), and `observe()` reports
    each attempt's answer, with the epoch its slot was taken in, to the controller.
    """

    def __init__(
        self,
        maximum: int,
        *,
        adaptive: bool,
        stats: RunStats | None = None,
        settings: AimdSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.maximum = maximum
        self.adaptive = adaptive
        self.in_flight = 0
        self._settings = settings or AimdSettings()
        self._clock = clock
        self._stats = stats
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._slow_start = adaptive
        # The running average of per-window mean latencies and its variance (EWMA).
        self._past_mean: float | None = None
        self._past_var = 0.0
        self._window_end = 0.0
        self._window_sum = 0.0
        self._window_count = 0
        self._reached_limit = False
        self._ceiling: int | None = None  # the lowest limit the service pushed back at
        self._probe_wait = self._settings.first_probe_wait
        self._probe_after = 0.0
        self.epoch = 0
        self.limit = 0
        self._set_limit(1 if adaptive else maximum)

    async def acquire(self) -> int:
        if self.in_flight < self.limit and not self._waiters:
            self._take()
            return self.epoch
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted just as we were cancelled: pass the slot on
            else:
                self._waiters.remove(waiter)
            raise
        return self.epoch

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def observe(self, latency: float, *, answered: bool, back_pressure: bool, epoch: int) -> None:
        """One attempt ended after `latency` s. `answered`: the service processed it (its latency
        is a sample); `back_pressure`: it said it is too busy (429, 503) or did not answer in time;
        `epoch`: what `acquire()` returned for its slot.
        """
        if not self.adaptive:
            return
        now = self._clock()
        if back_pressure and epoch == self.epoch:
            self._decrease(now)
            self._start_window(now, latency)
            return
        if answered:
            self._window_sum += latency
            self._window_count += 1
        if self._past_mean is None and self._window_count == 0:
            return  # nothing to judge a window by yet
        if now < self._window_end:
            return
        current = self._window_sum / self._window_count if self._window_count else None
        if self._past_mean is not None and current is not None:
            self._adjust(current, now)
        if current is not None:
            self._update_average(current)
        self._start_window(now, latency)

    def _start_window(self, now: float, latency: float) -> None:
        self._window_end = now + (self._past_mean if self._past_mean is not None else latency)
        self._window_sum = 0.0
        self._window_count = 0
        self._reached_limit = self.in_flight >= self.limit or bool(self._waiters)

    def _adjust(self, current: float, now: float) -> None:
        assert self._past_mean is not None
        threshold = max(
            math.sqrt(self._past_var) * self._settings.rtt_deviation_scale,
            self._past_mean * self._settings.rtt_tolerance,
        )
        # (1e-9: a mean of equal latencies may come out one rounding step above them)
        if current <= self._past_mean * (1 + 1e-9):
            if self._reached_limit:
                self._grow(now)
        elif current >= self._past_mean + threshold:
            # Latency rose: the service (or the network) is queueing what we send. Not a
            # ceiling: latency is noisy, and only an explicit refusal proves a cap.
            self._shrink(ceiling=False, now=now)

    def _grow(self, now: float) -> None:
        if self._ceiling is not None and self.limit >= self._ceiling:
            self._ceiling = None  # a whole window at the ceiling without push-back: it moved
        if self.limit >= self.maximum:
            return
        wanted = min(self.limit * 2, self.maximum) if self._slow_start else self.limit + 1
        if self._ceiling is not None and wanted >= self._ceiling:
            # Up to just below the ceiling; one step onto it (the probe) once the wait is over.
            probe = now >= self._probe_after and self.limit + 1 == self._ceiling
            wanted = self._ceiling if probe else self._ceiling - 1
        if wanted > self.limit:
            self._set_limit(wanted)

    def _decrease(self, now: float) -> None:
        """The service pushed back at the current limit: remember it as the ceiling."""
        if self._ceiling is not None and self.limit >= self._ceiling:
            # A failed probe: wait twice as long before the next one.
            self._probe_wait = min(self._probe_wait * 2, self._settings.max_probe_wait)
        else:
            self._probe_wait = self._settings.first_probe_wait
        self._ceiling = self.limit if self._ceiling is None else min(self._ceiling, self.limit)
        self._shrink(ceiling=True, now=now)

    def _shrink(self, *, ceiling: bool, now: float) -> None:
        if self._slow_start:
            self._slow_start = False
            new = self.limit // 2
            if ceiling:
                # The cap lies somewhere between the last two limits: every step above the
                # lower one is a probe, not only the step onto the limit that was refused.
                self._ceiling = max(1, new) + 1
        else:
            new = math.floor(self.limit * self._settings.decrease_ratio)
        self._set_limit(max(1, min(new, self.limit - 1)))
        self.epoch += 1
        if ceiling:
            self._probe_after = now + self._probe_wait

    def _update_average(self, sample: float) -> None:
        if self._past_mean is None:
            self._past_mean = sample
            return
        alpha = self._settings.ewma_alpha
        diff = sample - self._past_mean
        increment = alpha * diff
        self._past_mean += increment
        self._past_var = (1 - alpha) * (self._past_var + diff * increment)

    def _set_limit(self, limit: int) -> None:
        self.limit = limit
        if self._stats is not None:
            self._stats.concurrency_limit = limit
        self._wake()

    def _take(self) -> None:
        self.in_flight += 1
        if self.in_flight >= self.limit:
            self._reached_limit = True

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._take()
                waiter.set_result(None)
        if self._waiters:
            # Requests are waiting for a slot: the limit is what holds them back.
            self._reached_limit = True
