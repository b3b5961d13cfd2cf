"""Pacing: how fast each sending number may send, in this process (the local `RateLimiter`).

The service drains each sending list at its send rate and drops what waits longer than 30
minutes, so pacing is the client's job. Each sending number gets its own leaky bucket
(aiolimiter): sending numbers never wait on each other.

Promises (the `RateLimiter` Protocol's invariants):
- over any window of t seconds one sending number is admitted at most rate × t + burst, where the
  burst is one batch plus `LATENESS_SLACK_S` of the rate;
- a paced sending number's batches carry at most `PACE_GRANULARITY_S` of its rate, so the achieved
  rate is smooth at the scale of seconds instead of arriving in bursts of 1,000 (17,000/min → 56);
- a sending number with no rate is admitted at once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiolimiter import AsyncLimiter

#: The service's documented default send rate of a sending list: 17,000 messages a minute. It
#: is also streamsend's default: faster than this, the service's queue grows, and what waits in
#: it longer than `SERVICE_STALE_AFTER_S` is dropped silently while the outcomes say `queued`.
DEFAULT_RATE_PER_MIN = 17_000
DEFAULT_RATE = f"{DEFAULT_RATE_PER_MIN}/min"
#: The service drops a message that waited in a sending list's queue longer than this.
SERVICE_STALE_AFTER_S = 30 * 60
#: How the user opts out of pacing (flags, STREAMSEND_RATE, TOML): one spelling, on purpose.
UNLIMITED = "unlimited"

_RATE = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*")
_UNIT_SECONDS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60}
_UNIT_SECONDS |= {"h": 3600, "hour": 3600}


def parse_rate(text: str) -> float:
    """'17000/min', '300/s' or '7200/h' → messages per second (streamsend's and the emulator's
    one parser). The unit is required: a bare `600` means 600/s to one tool and 600/min to
    another, a trap that once paced a campaign 60 times too fast."""
    match = _RATE.fullmatch(text)
    if match is None:
        if re.fullmatch(r"\s*\d+(?:\.\d+)?\s*", text):
            number = text.strip()
            raise ValueError(
                f"{number!r} has no unit: write {number}/min or {number}/s "
                f"(the service's default send rate is {DEFAULT_RATE})"
            )
        raise ValueError(f"{text!r} is not a rate like {DEFAULT_RATE}, 300/s or 7200/h")
    per_second = float(match[1]) / _UNIT_SECONDS[match[2]]
    if not (math.isfinite(per_second) and per_second > 0):  # 400 nines parse as inf
        raise ValueError(f"{text!r}: a rate must be a finite number above zero")
    return per_second


def format_rate(per_second: float | None) -> str:
    """A rate as the user would write it (`17000/min`, `300/s`), or `unlimited`."""
    if per_second is None:
        return UNLIMITED
    per_minute = per_second * 60
    if per_second != round(per_second, 3) and math.isclose(per_minute, round(per_minute)):
        return f"{round(per_minute)}/min"  # 17000/min, not 283.333/s
    return f"{per_second:g}/s"


# A batch carries at most this many seconds' worth of a paced sender's rate.
PACE_GRANULARITY_S = 0.2
# How much of a paced sender's rate the limiter may bank to make up for late timer wake-ups.
LATENESS_SLACK_S = 0.005


def batch_cap_for_rate(rate_per_s: float | None, batch_size: int) -> int:
    """The most messages one request should carry at this rate (see PACE_GRANULARITY_S)."""
    if rate_per_s is None:
        return batch_size
    return max(1, min(batch_size, int(rate_per_s * PACE_GRANULARITY_S)))


class LocalRateLimiter:
    """One leaky bucket per sending number, in this process."""

    def __init__(self, rate_for: Callable[[str], float | None], *, batch_size: int) -> None:
        self._rate_for = rate_for
        self._batch_size = batch_size
        self._buckets: dict[str, AsyncLimiter | None] = {}

    def batch_cap(self, sender: str) -> int:
        return batch_cap_for_rate(self._rate_for(sender), self._batch_size)

    async def acquire(self, sender: str, messages: int) -> None:
        if sender in self._buckets:
            bucket = self._buckets[sender]
        else:
            bucket = self._buckets[sender] = self._new_bucket(sender)
        if bucket is not None:
            # A batch is never above the cap (batch_cap), but a caller asking for more than the
            # bucket holds would wait for ever: take what one bucket can give.
            await bucket.acquire(min(messages, bucket.max_rate))

    def _new_bucket(self, sender: str) -> AsyncLimiter | None:
        rate = self._rate_for(sender)
        if not rate:
            return None
        # Imported on first use: `_config` imports this module for the rate constants, so every
        # command would otherwise pay aiolimiter's import (~25 ms: it reads package metadata).
        from aiolimiter import AsyncLimiter

        cap = self.batch_cap(sender)
        # A leaky bucket of one batch, plus a little slack: the bucket can't drain below empty,
        # so with no slack every wake-up's timer lateness (~1 ms) is lost for good and the rate
        # erodes (-2% at 20,000/s, -12% at 100,000/s, measured). The slack keeps that lateness
        # as credit; a burst is at most one batch + 5 ms of the rate.
        capacity = cap + min(cap, rate * LATENESS_SLACK_S)
        return AsyncLimiter(capacity, capacity / rate)
