"""Progress while a run goes on, and the summary at its end.

On a terminal, one live line on stderr, redrawn in place twice a second: messages done, rate,
counts by status, and how far through the input it is with an ETA when the input size is known.
Anywhere else (a pipe, a log collector), a structured `progress` event every few seconds instead,
since a line rewritten with carriage returns is noise in a log file.

Promises:
- Every number comes from one `StatsSnapshot`; nothing here counts anything itself, so the
  progress line, the progress events, the summary and the metrics endpoint agree.
- Cancelling `report_progress` leaves the terminal on a fresh line (the last state drawn once
  more, then a newline), so whatever is printed next starts at column 0.
- Drawing never raises into the run: a closed or broken stderr silently ends the display.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from typing import TextIO

from structlog.typing import FilteringBoundLogger

from streamsend._models import Status
from streamsend._stats import RunStats, StatsSnapshot

#: How often the live line is redrawn. Faster is flicker; slower feels stuck.
LIVE_INTERVAL = 0.5

_CLEAR_LINE = "\r\x1b[K"


def format_progress_line(s: StatsSnapshot) -> str:
    """One line: messages done, msg/s, non-zero counts by status, requests in flight of the
    current limit (once the dispatcher runs), input % and ETA when known."""
    parts = [f"{s.outcomes:,} done", f"{s.messages_per_second:,.0f} msg/s"]
    counts = " ".join(f"{status} {n:,}" for status, n in _status_counts(s).items() if n)
    if counts:
        parts.append(counts)
    if s.concurrency_limit:
        # The limit adapts to the service (see `_concurrency`): a falling one says it is busy.
        parts.append(f"{s.in_flight}/{s.concurrency_limit} in flight")
    if s.input_bytes_total:
        done = min(s.input_bytes_read / s.input_bytes_total, 1.0)
        eta = s.eta_seconds
        parts.append(f"{done:.0%}" + ("" if eta is None else f" ETA {_duration(eta)}"))
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
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    columns: Callable[[], int] | None = None,
) -> None:
    """Report progress until cancelled.

    `live`: redraw one line on `stream` every LIVE_INTERVAL seconds (use when stderr is a
    terminal). Otherwise: a `progress` event on `log` every `interval` seconds. `sleep` and
    `columns` (the terminal width) are injectable for tests.
    """
    if not live:
        while True:
            await sleep(interval)
            s = stats.snapshot()
            log.info("progress", **summary_fields(s), **_position_fields(s))

    width = columns if columns is not None else _terminal_columns
    drawn = False
    try:
        while True:
            drawn = _draw(stream, format_progress_line(stats.snapshot()), width()) or drawn
            await sleep(LIVE_INTERVAL)
    finally:
        if drawn:
            _draw(stream, format_progress_line(stats.snapshot()), width(), end="\n")


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


def _position_fields(s: StatsSnapshot) -> dict[str, object]:
    fields: dict[str, object] = {"in_flight": s.in_flight, "concurrency_limit": s.concurrency_limit}
    if not s.input_bytes_total:
        return fields
    eta = s.eta_seconds
    return fields | {
        "input_percent": round(100 * min(s.input_bytes_read / s.input_bytes_total, 1.0), 1),
        "eta_seconds": None if eta is None else round(eta, 1),
    }


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
    "format_progress_line",
    "format_summary",
    "report_progress",
    "summary_fields",
]
