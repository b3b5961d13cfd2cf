"""Seeded, reproducible fault injection: which requests misbehave, and how.

One `random.Random(seed)` is drawn exactly twice per authenticated request, in arrival order,
whatever the request turns out to be: once for the fault, once for the latency spread. So a
given seed and a given order of requests reproduce the same faults, and changing the
`lists` filter or the body of one request doesn't shift the faults of all later ones.

The eight fault fractions partition the first draw `u` in a fixed order:

    [0, error_5xx)       answered 500/502/503/504 (which one is read from `u` too), nothing queued
    next rate_429        answered 429 with Retry-After, nothing queued
    next drop_before     connection closed before anything is queued
    next drop_after      messages queued, then the connection closed with no answer
    next hang            messages queued, and no answer ever (until the client gives up)
    next truncated_body  messages queued, 201 sent with a body cut off mid-way
    next gateway_after   messages queued, then a gateway's 502 or 504 (read from `u`) instead of
                         the 201: what a reverse proxy answers when its upstream was slow
    next partial_500     the first half of the messages queued, then a 500
    the rest             no fault

Faults of the first three kinds are decided before the request is processed; the others only
apply to requests that were accepted (a request-level error such as `missing_from` is answered
normally, because there was nothing to queue). The two last kinds are appended after the others
so that a seed gives the same faults as before they existed.
"""

from __future__ import annotations

import math
import random
from enum import StrEnum
from typing import NamedTuple

from streamsend.emulator._config import FaultConfig

_5XX_STATUSES = (500, 502, 503, 504)
_GATEWAY_STATUSES = (502, 504)


class Fault(StrEnum):
    """The kinds of fault, named as the stats endpoint counts them."""

    ERROR_5XX = "error_5xx"
    RATE_429 = "rate_429"
    DROP_BEFORE = "drop_before"
    DROP_AFTER = "drop_after"
    HANG = "hang"
    TRUNCATED_BODY = "truncated_body"
    GATEWAY_AFTER = "gateway_after"
    PARTIAL_500 = "partial_500"


#: Faults decided before the request is processed: nothing is queued.
BEFORE_QUEUEING = frozenset({Fault.ERROR_5XX, Fault.RATE_429, Fault.DROP_BEFORE})


class FaultDraw(NamedTuple):
    """What one request gets: a fault (or None), the 5xx status to use (error_5xx,
    gateway_after), and added latency."""

    fault: Fault | None
    status_5xx: int
    delay_s: float


NO_FAULT = FaultDraw(None, 500, 0.0)


class FaultInjector:
    """Draws each request's fault from one seeded generator, in the order requests arrive."""

    __slots__ = ("_bounds", "_config", "_random", "lists", "retry_after_header")

    def __init__(self, config: FaultConfig) -> None:
        self._config = config
        # Reproducibility is the point here, not unpredictability.
        self._random = random.Random(config.seed)
        self.lists = frozenset(config.lists)
        # Retry-After is integer seconds on the wire (RFC 9110). Round up so a client that honours
        # it never comes back early; 0 stays 0 so tests can retry at once.
        retry_after = config.retry_after_s
        self.retry_after_header = "0" if retry_after <= 0 else str(max(1, math.ceil(retry_after)))
        bounds: list[tuple[float, Fault]] = []
        upper = 0.0
        for fault in Fault:
            fraction = getattr(config, fault.value)
            if fraction > 0:
                upper += fraction
                bounds.append((upper, fault))
        self._bounds = tuple(bounds)

    @property
    def enabled(self) -> bool:
        """False when no request can be faulted or delayed (then `draw` isn't worth calling)."""
        return self._config.any_enabled

    def draw(self) -> FaultDraw:
        """The next request's fault and latency. Call once per authenticated request."""
        u = self._random.random()
        v = self._random.random()
        config = self._config
        delay_ms = config.latency_ms + (2.0 * v - 1.0) * config.latency_spread_ms
        delay_s = max(0.0, delay_ms) / 1000.0
        lower = 0.0
        for upper, fault in self._bounds:
            if u < upper:
                # Which 5xx: the position of `u` inside the fault's own slice, so no extra draw.
                share = (u - lower) / (upper - lower)
                statuses = _GATEWAY_STATUSES if fault is Fault.GATEWAY_AFTER else _5XX_STATUSES
                status = statuses[min(len(statuses) - 1, int(share * len(statuses)))]
                return FaultDraw(fault, status, delay_s)
            lower = upper
        return FaultDraw(None, 500, delay_s)

    def applies_to(self, lists: frozenset[str]) -> bool:
        """True when a request for these sending lists may be faulted (the `lists` filter)."""
        return not self.lists or not self.lists.isdisjoint(lists)
