"""Live run statistics: the one object every stage updates and every observer reads.

The pipeline owns a `RunStats` and bumps its counters (cheap attribute and dict updates, a few per
request rather than per message where possible). Observers never keep counts of their own: the
Prometheus endpoint, the progress line, the JSON progress events and the final summary all read a
`StatsSnapshot`, so they cannot disagree with each other or with the outcomes file.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

#: Request latency histogram bounds, in seconds (Prometheus' defaults, plus 30 s for slow services).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    30.0,
)


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    """A consistent copy of the counters at one moment."""

    elapsed: float
    lines_read: int
    input_bytes_read: int
    input_bytes_total: int | None  # known when every input is a regular file
    by_status: dict[str, int]
    by_sender: dict[str, dict[str, int]]
    requests_by_code: dict[str, int]  # HTTP status ("201") or transport code ("timeout")
    latency_bucket_counts: tuple[int, ...]  # cumulative, one per LATENCY_BUCKETS bound, then +Inf
    latency_sum: float
    latency_count: int
    in_flight: int
    concurrency_limit: int  # requests allowed in flight now (adaptive concurrency moves it)
    queue_depths: dict[str, int]
    rate_wait_seconds: float
    retries: int
    segments_sent: int
    deprecation: str | None = None  # the service's deprecation notice, with what to do

    @property
    def outcomes(self) -> int:
        return sum(self.by_status.values())

    @property
    def messages_per_second(self) -> float:
        return self.outcomes / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def send_rate(self) -> float:
        """Messages accepted by the service per second since the start."""
        return self.by_status.get("queued", 0) / self.elapsed if self.elapsed > 0 else 0.0


@dataclass(slots=True)
class RunStats:
    """Mutable counters of one run. Only the event loop's thread touches them."""

    clock: Callable[[], float] = time.monotonic
    started: float = field(default=0.0)
    lines_read: int = 0
    input_bytes_read: int = 0
    input_bytes_total: int | None = None
    by_status: Counter[str] = field(default_factory=Counter)
    by_sender: dict[str, Counter[str]] = field(default_factory=dict)
    requests_by_code: Counter[str] = field(default_factory=Counter)
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    latency_count: int = 0
    in_flight: int = 0
    concurrency_limit: int = 0
    queue_depth_probes: dict[str, Callable[[], int]] = field(default_factory=dict)
    rate_wait_seconds: float = 0.0
    retries: int = 0
    segments_sent: int = 0
    deprecation: str | None = None

    def __post_init__(self) -> None:
        self.started = self.clock()

    def count_outcome(self, status: str, sender: str | None, n: int = 1) -> None:
        self.by_status[status] += n
        if sender is not None:
            per_sender = self.by_sender.get(sender)
            if per_sender is None:
                per_sender = self.by_sender[sender] = Counter()
            per_sender[status] += n

    def observe_request(self, code: str, latency: float) -> None:
        """One attempt finished with HTTP status or transport error `code` after `latency` s."""
        self.requests_by_code[code] += 1
        self.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS, latency)] += 1
        self.latency_sum += latency
        self.latency_count += 1

    def snapshot(self) -> StatsSnapshot:
        cumulative: list[int] = []
        running = 0
        for count in self.latency_buckets:
            running += count
            cumulative.append(running)
        return StatsSnapshot(
            elapsed=self.clock() - self.started,
            lines_read=self.lines_read,
            input_bytes_read=self.input_bytes_read,
            input_bytes_total=self.input_bytes_total,
            by_status=dict(self.by_status),
            by_sender={s: dict(c) for s, c in self.by_sender.items()},
            requests_by_code=dict(self.requests_by_code),
            latency_bucket_counts=tuple(cumulative),
            latency_sum=self.latency_sum,
            latency_count=self.latency_count,
            in_flight=self.in_flight,
            concurrency_limit=self.concurrency_limit,
            queue_depths={name: probe() for name, probe in self.queue_depth_probes.items()},
            rate_wait_seconds=self.rate_wait_seconds,
            retries=self.retries,
            segments_sent=self.segments_sent,
            deprecation=self.deprecation,
        )
