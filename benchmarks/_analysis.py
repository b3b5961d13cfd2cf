"""Turning measurements into figures: spreads, percentiles, and what the ledger says.

Pure functions over plain data, so the smoke test can check them on made-up numbers.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import orjson

_REQUEST_AND_TIME = re.compile(rb'"request":(\d+),"t":([0-9.eE+-]+)')


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The `fraction` quantile (0.5, 0.99) by linear interpolation; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def spread(values: Iterable[float]) -> dict[str, float] | None:
    """{median, min, max} of some runs' figures; None when no run counted."""
    listed = list(values)
    if not listed:
        return None
    return {"median": statistics.median(listed), "min": min(listed), "max": max(listed)}


@dataclass(frozen=True, slots=True)
class Arrival:
    """One request as the emulator's ledger recorded it."""

    request: int
    t: float  # arrival, unix time
    messages: int


def arrivals_from_ledger(ledger: bytes) -> list[Arrival]:
    """The requests of some ledger lines, in arrival order (each line is one message)."""
    counts: dict[int, int] = {}
    times: dict[int, float] = {}
    for request_text, time_text in _REQUEST_AND_TIME.findall(ledger):
        request = int(request_text)
        counts[request] = counts.get(request, 0) + 1
        times[request] = float(time_text)
    return sorted(
        (Arrival(request, times[request], counts[request]) for request in counts),
        key=lambda arrival: (arrival.t, arrival.request),
    )


def paced_accuracy(
    arrivals: Sequence[Arrival], *, target_per_s: float, batch: int, edge_s: float = 1.0
) -> dict[str, float]:
    """How closely the arrivals kept to `target_per_s`.

    - `achieved_per_s`: the steady-state rate, leaving out the first and last `edge_s` seconds
      (start-up, the leaky bucket's initial burst, the tail). With requests arriving at t_1..t_k
      inside that window, it is (messages of all but the last) / (t_k - t_1): each request's
      messages "use up" the time until the next one.
    - `whole_run_per_s`: the same over every request.
    - `max_excess_batches`: the most messages that arrived in any 1-second window starting at a
      request, minus the target, in batches of `batch` messages (the allowance is one batch).
    """
    if len(arrivals) < 3:
        raise ValueError("too few requests to measure a rate")
    first, last = arrivals[0].t, arrivals[-1].t
    steady = [a for a in arrivals if first + edge_s <= a.t <= last - edge_s]
    if len(steady) < 3:
        steady = list(arrivals)

    def rate(window: Sequence[Arrival]) -> float:
        span = window[-1].t - window[0].t
        return sum(a.messages for a in window[:-1]) / span if span > 0 else math.inf

    achieved = rate(steady)
    most = 0
    end = 0
    in_window = 0
    for start, arrival in enumerate(arrivals):
        while end < len(arrivals) and arrivals[end].t < arrival.t + 1.0:
            in_window += arrivals[end].messages
            end += 1
        most = max(most, in_window)
        in_window -= arrivals[start].messages
    return {
        "target_per_s": target_per_s,
        "achieved_per_s": achieved,
        "error_pct": (achieved / target_per_s - 1.0) * 100.0,
        "whole_run_per_s": rate(arrivals),
        "steady_window_s": steady[-1].t - steady[0].t,
        "max_messages_in_1s": float(most),
        "max_excess_batches": (most - target_per_s) / batch,
    }


def line_latencies(ledger: bytes, written_at: Mapping[str, float]) -> list[float]:
    """Per line: its request's arrival at the emulator minus when the line was written.

    `written_at` maps each written line's recipient (unique within a trickle run) to the unix
    time its write to the client's stdin began.
    """
    latencies: list[float] = []
    for line in ledger.splitlines():
        if not line:
            continue
        record = orjson.loads(line)
        written = written_at.get(record["to"])
        if written is not None:
            latencies.append(record["t"] - written)
    return latencies
