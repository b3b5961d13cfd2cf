"""Progress while a run goes on, and the summary at its end.

On a terminal, one live line on stderr, redrawn in place twice a second: lines done, rate,
counts by status, and the share of lines done with an ETA when the input size is known. Anywhere
else (a pipe, a log collector), a structured `progress` event every few seconds instead, since a
line rewritten with carriage returns is noise in a log file.

"Done" means a line has its final outcome, never that it was read: a paced run reads up to
tens of thousands of lines ahead of what it has sent, and an ETA from reading claimed 85% and
"ETA 0.9s" when 100 s remained. `ProgressEstimator` holds the rules.

Promises:
- Every number comes from one `StatsSnapshot`; nothing here counts anything itself, so the
  progress line, the progress events, the summary and the metrics endpoint agree.
- Cancelling `report_progress` leaves the terminal on a fresh line (the last state drawn once
  more, then a newline), so whatever is printed next starts at column 0.
- Drawing never raises into the run: a closed or broken stderr silently ends the display.
"""

from __future__ import annotations

import asyncio
import math
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TextIO

from structlog.typing import FilteringBoundLogger

from streamsend._models import Status
from streamsend._stats import RunStats, StatsSnapshot

#: How often the live line is redrawn. Faster is flicker; slower feels stuck.
LIVE_INTERVAL = 0.5

_CLEAR_LINE = "\r\x1b[K"


@dataclass(frozen=True, slots=True)
class Estimate:
    """Where a run stands, counted in lines with a final outcome."""

    done: int
    total: (
        int | None
    )  # lines to finish: exact once the input is read, projected before; None: stdin
    rate: float  # outcomes per second, smoothed
    eta_seconds: float | None

    @property
    def fraction(self) -> float | None:
        return None if not self.total else min(self.done / self.total, 1.0)


class ProgressEstimator:
    """Successive snapshots → an `Estimate`:

    - done: lines with a final outcome. total: the lines read, once the input is read whole;
      before that, the lines read so far projected over the input's size (bytes). Unknown size
      (stdin, a pipe): no total, so no percentage and no ETA.
    - rate: outcomes per second, an exponentially weighted average over about `smoothing`
      seconds, so one slow second or one burst of answers doesn't swing the ETA.
    - ETA: remaining / rate; when the run is paced, never less than remaining / the paced rate
      (`paced_rate(snapshot)`, messages per second over all senders), which caps what any burst
      of fast answers can promise.
    """

    def __init__(
        self,
        *,
        paced_rate: Callable[[StatsSnapshot], float | None] | None = None,
        smoothing: float = 10.0,
    ) -> None:
        self._paced_rate = paced_rate
        self._smoothing = smoothing
        self._last = (0.0, 0)  # (elapsed, done) at the last update; the run starts at (0, 0)
        self._rate = 0.0  # the exponentially weighted average, biased towards the initial 0

    def update(self, s: StatsSnapshot) -> Estimate:
        done = s.outcomes
        if (dt := s.elapsed - self._last[0]) > 0:
            instant = (done - self._last[1]) / dt
            self._rate += (1 - math.exp(-dt / self._smoothing)) * (instant - self._rate)
            self._last = (s.elapsed, done)
        # Divided by the weight the history so far carries: early in a run the average is then
        # of the seconds there have been, rather than dragged towards a zero no one measured.
        weight = 1 - math.exp(-self._last[0] / self._smoothing)
        rate = self._rate / weight if weight > 0 else 0.0
        total = _total_lines(s)
        eta = None
        if total is not None:
            remaining = max(total - done, 0)
            paced = self._paced_rate(s) if self._paced_rate is not None else None
            waits = [remaining / r for r in (rate, paced) if r]
            eta = 0.0 if remaining == 0 else (max(waits) if waits else None)
        return Estimate(done, total, rate, eta)


def _total_lines(s: StatsSnapshot) -> int | None:
    if not s.input_bytes_total:
        return None
    if s.input_bytes_read >= s.input_bytes_total:
        return s.lines_read
    if not s.input_bytes_read:
        return None
    return max(round(s.lines_read * s.input_bytes_total / s.input_bytes_read), s.lines_read)


def format_progress_line(s: StatsSnapshot, estimate: Estimate | None = None) -> str:
    """One line: lines done, msg/s, non-zero counts by status, requests in flight of the current
    limit (once the dispatcher runs), % done and ETA when known."""
    e = estimate if estimate is not None else ProgressEstimator().update(s)
    parts = [f"{s.outcomes:,} done", f"{e.rate:,.0f} msg/s"]
    counts = " ".join(f"{status} {n:,}" for status, n in _status_counts(s).items() if n)
    if counts:
        parts.append(counts)
    if s.concurrency_limit:
        # The limit adapts to the service (see `_concurrency`): a falling one says it is busy.
        parts.append(f"{s.in_flight}/{s.concurrency_limit} in flight")
    if e.fraction is not None:
        eta = e.eta_seconds
        parts.append(f"{e.fraction:.0%}" + ("" if eta is None else f" ETA {_duration(eta)}"))
    return " | ".join(parts)


def summary_fields(s: StatsSnapshot) -> dict[str, object]:
    """The run's totals as plain fields, for the final `summary` event and `progress` events."""
    return {
        "elapsed_seconds": round(s.elapsed, 3),
        "lines_read": s.lines_read,
        "outcomes": s.outcomes,
        "by_status": _status_counts(s),
        "by_sender": {sender: dict(counts) for sender, counts in sorted(s.by_sender.items())},
        "messages_per_second": round(s.messages_per_second, 1),
        "send_rate": round(s.send_rate, 1),
        "segments_sent": s.segments_sent,
        "requests_by_code": dict(sorted(s.requests_by_code.items())),
        "retries": s.retries,
        "rate_limit_wait_seconds": round(s.rate_wait_seconds, 3),
    }


def format_summary(s: StatsSnapshot) -> str:
    """A short human block for the end of a run (no trailing newline)."""
    counts = _status_counts(s)
    lines = [
        f"{s.outcomes:,} lines in {_duration(s.elapsed)}, {s.messages_per_second:,.0f} msg/s",
        "  " + " · ".join(f"{status} {n:,}" for status, n in counts.items()),
    ]
    requests = sum(s.requests_by_code.values())
    by_code = ", ".join(f"{code}: {n:,}" for code, n in sorted(s.requests_by_code.items()))
    lines.append(
        f"  segments sent {s.segments_sent:,} · requests {requests:,}"
        + (f" ({by_code})" if by_code else "")
        + f" · retries {s.retries:,}"
    )
    if len(s.by_sender) > 1:
        for sender, per_sender in sorted(s.by_sender.items()):
            shown = " · ".join(f"{status} {n:,}" for status, n in sorted(per_sender.items()) if n)
            lines.append(f"  {sender}: {shown}")
    if s.deprecation:
        lines.append(f"  note: {s.deprecation}")
    if counts.get(Status.UNKNOWN.value):
        # The one status that needs a person: resending blindly can text someone twice.
        lines.append(
            f"  {counts[Status.UNKNOWN.value]:,} unknown: these may have been sent; "
            "check them before sending again"
        )
    return "\n".join(lines)


async def report_progress(
    stats: RunStats,
    *,
    interval: float = 5.0,
    live: bool,
    stream: TextIO,
    log: FilteringBoundLogger,
    estimator: ProgressEstimator | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    columns: Callable[[], int] | None = None,
) -> None:
    """Report progress until cancelled.

    `live`: redraw one line on `stream` every LIVE_INTERVAL seconds (use when stderr is a
    terminal). Otherwise: a `progress` event on `log` every `interval` seconds. `estimator`
    (default: unpaced) turns snapshots into done/total/ETA; `sleep` and `columns` (the
    terminal width) are injectable for tests.
    """
    estimator = estimator if estimator is not None else ProgressEstimator()
    if not live:
        while True:
            await sleep(interval)
            s = stats.snapshot()
            log.info("progress", **summary_fields(s), **_position_fields(s, estimator.update(s)))

    def line() -> str:
        s = stats.snapshot()
        return format_progress_line(s, estimator.update(s))

    width = columns if columns is not None else _terminal_columns
    drawn = False
    try:
        while True:
            drawn = _draw(stream, line(), width()) or drawn
            await sleep(LIVE_INTERVAL)
    finally:
        if drawn:
            _draw(stream, line(), width(), end="\n")


def _draw(stream: TextIO, line: str, columns: int, end: str = "") -> bool:
    # A line wider than the terminal wraps, and `\r` then returns only to the start of the last
    # row, leaving the earlier rows behind on every redraw; so the line is cut to fit.
    if columns > 1 and len(line) >= columns:
        line = line[: columns - 2] + "…"
    try:
        stream.write(_CLEAR_LINE + line + end)
        stream.flush()
    except (OSError, ValueError):  # stderr closed or broken: progress is not worth failing for
        return False
    return True


def _terminal_columns() -> int:
    return shutil.get_terminal_size(fallback=(80, 24)).columns


def _position_fields(s: StatsSnapshot, e: Estimate) -> dict[str, object]:
    fields: dict[str, object] = {
        "outcomes_per_second": round(e.rate, 1),
        "in_flight": s.in_flight,
        "concurrency_limit": s.concurrency_limit,
    }
    if e.fraction is not None:
        fields["total_lines"] = e.total
        fields["percent_done"] = round(100 * e.fraction, 1)
        fields["eta_seconds"] = None if e.eta_seconds is None else round(e.eta_seconds, 1)
    return fields


def _status_counts(s: StatsSnapshot) -> dict[str, int]:
    """Counts for every status, in the Status order, then any others the stats hold."""
    counts = {status.value: s.by_status.get(status.value, 0) for status in Status}
    counts.update((k, v) for k, v in sorted(s.by_status.items()) if k not in counts)
    return counts


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


__all__ = [
    "LIVE_INTERVAL",
    "Estimate",
    "ProgressEstimator",
    "format_progress_line",
    "format_summary",
    "report_progress",
    "summary_fields",
]
