"""Progress line, summary, and the reporting loop, on an injected clock and sleep."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Iterator
from typing import TextIO

import pytest
from structlog.testing import capture_logs

from streamsend._logs import configure_logging, get_logger, reset_logging
from streamsend._progress import (
    LIVE_INTERVAL,
    ProgressEstimator,
    format_progress_line,
    format_summary,
    report_progress,
    summary_fields,
)
from streamsend._stats import RunStats


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TickingSleep:
    """Stands in for asyncio.sleep: records each delay, advances the clock, and lets the test
    act between ticks; it yields to the loop once so cancellation can land."""

    def __init__(self, clock: FakeClock, stats: RunStats, ticks_before_stop: int) -> None:
        self.clock = clock
        self.stats = stats
        self.delays: list[float] = []
        self.ticks_before_stop = ticks_before_stop
        self.stopped = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.clock.now += delay
        self.stats.count_outcome("queued", "pn_a", 10)
        if len(self.delays) >= self.ticks_before_stop:
            self.stopped.set()
        await asyncio.sleep(0)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class BrokenStream(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError("stderr is gone")


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    reset_logging()


def _stats(clock: FakeClock) -> RunStats:
    stats = RunStats(clock=clock)
    stats.count_outcome("queued", "pn_a", 1200)
    stats.count_outcome("rejected", "pn_a", 30)
    stats.count_outcome("invalid", None, 20)
    stats.observe_request("201", 0.1)
    stats.observe_request("201", 0.2)
    stats.observe_request("500", 0.3)
    stats.retries = 1
    stats.segments_sent = 1300
    stats.lines_read = 1252
    return stats


async def _run_until_stopped(
    stats: RunStats,
    sleep: TickingSleep,
    *,
    live: bool,
    stream: TextIO,
    interval: float = 5.0,
    columns: Callable[[], int] | None = None,
) -> None:
    """Run report_progress until `sleep` has ticked enough, then cancel it as a run would."""
    task = asyncio.create_task(
        report_progress(
            stats,
            interval=interval,
            live=live,
            stream=stream,
            log=get_logger(),
            sleep=sleep,
            columns=columns,
        )
    )
    await sleep.stopped.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --- formatting ----------------------------------------------------------------------------------


def test_progress_line_with_known_input_size() -> None:
    """The line shows done, msg/s, non-zero statuses, the share of lines done, and the ETA."""
    clock = FakeClock()
    stats = _stats(clock)
    stats.input_bytes_total = 400_000
    stats.input_bytes_read = 100_000
    clock.now = 10.0
    # A quarter of the input read holds 1,252 lines: 5,008 in all, 1,250 done (25%); 3,758
    # left at 125 outcomes/s is 30.1 s.
    assert format_progress_line(stats.snapshot()) == (
        "1,250 done | 125 msg/s | queued 1,200 rejected 30 invalid 20 | 25% ETA 30.1s"
    )


def test_progress_line_without_input_size() -> None:
    """Reading from a pipe (size unknown): no percentage and no ETA."""
    clock = FakeClock()
    stats = _stats(clock)
    clock.now = 2.5
    assert format_progress_line(stats.snapshot()) == (
        "1,250 done | 500 msg/s | queued 1,200 rejected 30 invalid 20"
    )


def test_progress_line_eta_in_minutes_and_hours() -> None:
    """Long ETAs read as minutes and seconds, or hours and minutes."""
    clock = FakeClock()
    stats = RunStats(clock=clock)
    stats.input_bytes_total = stats.input_bytes_read = 1_000_000
    stats.lines_read = 10_000
    stats.count_outcome("queued", "pn_a", 100)
    clock.now = 1.0  # 100 lines per second: 9,900 left is 99 s
    assert format_progress_line(stats.snapshot()).endswith("1% ETA 1m39s")
    clock.now = 100.0  # 1 line per second: 9,900 s
    assert format_progress_line(stats.snapshot()).endswith("1% ETA 2h45m")


def _read_ahead(clock: FakeClock, *, lines: int, read: int, done: int, at: float) -> RunStats:
    """A run that has read `read` of `lines` equal lines and finished `done` by time `at`."""
    stats = RunStats(clock=clock)
    stats.input_bytes_total = lines * 100
    stats.input_bytes_read = read * 100
    stats.lines_read = read
    stats.count_outcome("queued", "pn_a", done)
    clock.now = at
    return stats


def test_paced_run_reading_ahead_shows_lines_done_and_the_paced_eta() -> None:
    """At --rate 17000/min the reader runs far ahead of the sending. The issue's case: 1,456
    done after 5 s of a 30,000-line file read whole showed "85% ETA 0.9s"; it is 5% done,
    and at most 283/s leaves at least 28,544 / 283.3 = 100.7 s."""
    clock = FakeClock()
    stats = _read_ahead(clock, lines=30_000, read=30_000, done=1_456, at=5.0)
    estimator = ProgressEstimator(paced_rate=lambda s: 17_000 / 60)
    estimate = estimator.update(stats.snapshot())
    assert estimate.total == 30_000
    assert format_progress_line(stats.snapshot(), estimate).endswith("| 5% ETA 1m41s")


def test_eta_never_beats_the_paced_rate() -> None:
    """At 20,000/s on 200k lines, a burst of 17,000 answers in 0.5 s (34,000/s measured) with
    a quarter of the input read: 8% done, and the ETA is remaining / 20,000 (9.2 s), not 3 s."""
    clock = FakeClock()
    stats = _read_ahead(clock, lines=200_000, read=50_000, done=17_000, at=0.5)
    estimate = ProgressEstimator(paced_rate=lambda s: 20_000.0).update(stats.snapshot())
    assert estimate.total == 200_000
    assert estimate.fraction == pytest.approx(0.085)
    assert estimate.eta_seconds == pytest.approx(183_000 / 20_000)
    unpaced = ProgressEstimator().update(stats.snapshot())
    assert unpaced.eta_seconds == pytest.approx(183_000 / 34_000)


def test_rate_is_smoothed_over_outcomes() -> None:
    """The rate follows outcomes per second, smoothed: a second without outcomes lowers it
    (and the ETA grows) without zeroing it; a stall of many seconds brings it near zero."""
    clock = FakeClock()
    stats = _read_ahead(clock, lines=100_000, read=100_000, done=1_000, at=1.0)
    estimator = ProgressEstimator(smoothing=10.0)
    first = estimator.update(stats.snapshot())
    assert first.rate == pytest.approx(1_000)
    clock.now = 2.0  # no outcome in the last second
    stalled = estimator.update(stats.snapshot())
    assert 0 < stalled.rate < first.rate
    assert stalled.eta_seconds is not None
    assert first.eta_seconds is not None
    assert stalled.eta_seconds > first.eta_seconds
    clock.now = 60.0
    assert estimator.update(stats.snapshot()).rate < 5


def test_unknown_total_has_no_percentage_and_finished_input_has_eta_zero() -> None:
    """stdin (no size): no total, no fraction, no ETA. Every line done: ETA 0, 100%."""
    clock = FakeClock()
    stats = RunStats(clock=clock)
    stats.lines_read = 10
    stats.count_outcome("queued", "pn_a", 5)
    clock.now = 1.0
    estimate = ProgressEstimator().update(stats.snapshot())
    assert (estimate.total, estimate.fraction, estimate.eta_seconds) == (None, None, None)
    stats = _read_ahead(clock, lines=10, read=10, done=10, at=2.0)
    finished = ProgressEstimator().update(stats.snapshot())
    assert (finished.fraction, finished.eta_seconds) == (1.0, 0.0)


def test_summary_fields() -> None:
    """The summary fields hold every status (zeros included), senders, rate, segments, codes."""
    clock = FakeClock()
    stats = _stats(clock)
    clock.now = 5.0
    fields = summary_fields(stats.snapshot())
    assert fields["by_status"] == {
        "queued": 1200,
        "rejected": 30,
        "invalid": 20,
        "failed": 0,
        "unknown": 0,
        "suppressed": 0,
        "duplicate": 0,
        "expired": 0,
    }
    assert fields["by_sender"] == {"pn_a": {"queued": 1200, "rejected": 30}}
    assert fields["outcomes"] == 1250
    assert fields["messages_per_second"] == 250.0
    assert fields["send_rate"] == 240.0
    assert fields["elapsed_seconds"] == 5.0
    assert fields["segments_sent"] == 1300
    assert fields["requests_by_code"] == {"201": 2, "500": 1}
    assert fields["retries"] == 1


def test_format_summary() -> None:
    """The human summary gives counts by status, msg/s, elapsed, segments and requests."""
    clock = FakeClock()
    stats = _stats(clock)
    clock.now = 5.0
    assert format_summary(stats.snapshot()) == (
        "1,250 lines in 5.0s, 250 msg/s\n"
        "  queued 1,200 · rejected 30 · invalid 20 · failed 0 · unknown 0 · suppressed 0 · "
        "duplicate 0 · expired 0\n"
        "  segments sent 1,300 · requests 3 (201: 2, 500: 1) · retries 1"
    )


def test_format_summary_warns_about_unknown_and_splits_senders() -> None:
    """Unknown outcomes get a warning line; several senders each get a line."""
    clock = FakeClock()
    stats = _stats(clock)
    stats.count_outcome("unknown", "pn_b", 4)
    clock.now = 5.0
    text = format_summary(stats.snapshot())
    assert "  pn_a: queued 1,200 · rejected 30" in text
    assert "  pn_b: unknown 4" in text
    assert text.endswith("4 unknown: these may have been sent; check them before sending again")


# --- the reporting loop --------------------------------------------------------------------------


async def test_live_line_redraws_in_place_and_ends_on_a_fresh_line() -> None:
    """Live mode redraws one line with \\r + erase every LIVE_INTERVAL; cancelling leaves the
    final state drawn and the cursor on a new line."""
    clock = FakeClock()
    stats = RunStats(clock=clock)
    stream = FakeTerminal()
    sleep = TickingSleep(clock, stats, ticks_before_stop=3)
    await _run_until_stopped(stats, sleep, live=True, stream=stream, columns=lambda: 200)

    assert sleep.delays == [LIVE_INTERVAL] * 3
    text = stream.getvalue()
    assert text.endswith("\n")
    assert text.count("\n") == 1
    draws = text.removesuffix("\n").split("\r\x1b[K")
    assert draws[0] == ""
    assert draws[1].startswith("0 done")
    assert draws[-1].startswith("30 done")  # the last state, drawn again on cancellation
    assert len(draws) == 1 + 3 + 1  # first draw, one per tick, the final one


async def test_live_line_is_cut_to_the_terminal_width() -> None:
    """A line wider than the terminal is shortened, so redraws don't leave wrapped rows behind."""
    clock = FakeClock()
    stats = RunStats(clock=clock)
    stats.count_outcome("invalid", None, 123_456)
    stream = FakeTerminal()
    sleep = TickingSleep(clock, stats, ticks_before_stop=1)
    await _run_until_stopped(stats, sleep, live=True, stream=stream, columns=lambda: 20)

    draws = stream.getvalue().removesuffix("\n").split("\r\x1b[K")[1:]
    assert draws
    assert all(len(draw) < 20 for draw in draws)
    assert all(draw.endswith("…") for draw in draws)


async def test_broken_stream_does_not_break_the_run() -> None:
    """A stderr that fails on write stops the display quietly; only the cancellation remains."""
    clock = FakeClock()
    stats = RunStats(clock=clock)
    sleep = TickingSleep(clock, stats, ticks_before_stop=2)
    await _run_until_stopped(stats, sleep, live=True, stream=BrokenStream(), columns=lambda: 80)
    assert sleep.delays == [LIVE_INTERVAL] * 2


async def test_not_live_emits_progress_events_and_writes_nothing() -> None:
    """Off a terminal, a `progress` event every `interval` seconds; the stream is left alone."""
    configure_logging(stream=io.StringIO())
    clock = FakeClock()
    stats = RunStats(clock=clock)
    stats.input_bytes_total = stats.input_bytes_read = 1000
    stats.lines_read = 40
    stream = io.StringIO()
    sleep = TickingSleep(clock, stats, ticks_before_stop=3)
    with capture_logs() as captured:
        await _run_until_stopped(stats, sleep, interval=5.0, live=False, stream=stream)

    # Each event follows its sleep; the third sleep is where the cancellation lands.
    assert sleep.delays == [5.0, 5.0, 5.0]
    assert stream.getvalue() == ""
    assert [e["event"] for e in captured] == ["progress", "progress"]
    assert [e["by_status"]["queued"] for e in captured] == [10, 20]
    assert captured[0]["elapsed_seconds"] == 5.0
    # Lines done, not input read: 10 of 40 lines after 5 s, at 2 lines/s: 15 s to go.
    assert captured[0]["percent_done"] == 25.0
    assert captured[0]["total_lines"] == 40
    assert captured[0]["eta_seconds"] == 15.0
