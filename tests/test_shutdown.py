"""Shutdown is a tested path: graceful drain on a signal, a second signal, drain timeouts, cancel.

The promises (streamsend._pipeline, README): on SIGTERM or SIGINT stop reading, send what is
already batched, wait for requests in flight up to --drain-timeout, write every outcome and exit
130; a second signal stops at once, leaving a journal --resume can use; requests still in flight
when the drain stops are `unknown` if they were transmitted. In-process, a pipeline stopped or
cancelled leaves no task of its own running.

The subprocess tests run `streamsend send` against `streamsend emulator` (its own process, with a
ledger and latency so that requests are in flight when the signal comes). Every line's body is
unique (`m<line>`), which is how a ledger record is traced to its line.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamsend._config import Settings
from streamsend._dispatch import Dispatcher, DispatchSettings
from streamsend._journal import Decision, FileJournal, ResumeState
from streamsend._models import Batch, Message, Outcome, Status
from streamsend._outcomes import MemorySink
from streamsend._pacing import LocalRateLimiter
from streamsend._pipeline import Pipeline
from streamsend._source import read_inputs
from streamsend._stats import RunStats
from streamsend._types import ExitCode
from streamsend._validate import Validator
from streamsend.emulator import EmulatorConfig, FaultConfig, RunningEmulator, run_emulator
from streamsend.testing import API_KEY, V1_LIST
from tests.conftest import (
    clean_env,
    emulator_subprocess,
    ledger_lines,
    outcome_history,
    write_numbered_input,
)

# -- helpers: the two processes ----------------------------------------------------------------

# The outcomes and the ledger are read with skip_torn=False: a signal never tears a line (unlike
# SIGKILL in test_resume), so every record must be whole.


def start_send(
    tmp_path: Path, base_url: str, *flags: str, name: str = "send"
) -> subprocess.Popen[bytes]:
    with (tmp_path / f"{name}.log").open("wb") as stderr:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "streamsend", "send", str(tmp_path / "input.ndjson")),
                *("--outcomes", str(tmp_path / "outcomes.ndjson"), "--log-format", "json"),
                *flags,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=clean_env(
                TRACKLY_API_KEY=API_KEY,
                STREAMSEND_BASE_URL=base_url,
                STREAMSEND_FROM=V1_LIST,
                STREAMSEND_BATCH_SIZE="1000",
                STREAMSEND_CONCURRENCY="4",
                STREAMSEND_RATE="unlimited",  # these tests are about stopping, not pacing
            ),
        )


def wait_for_acceptance(proc: subprocess.Popen[bytes], ledger: Path) -> None:
    """Until the service has accepted a first request (its answer still delayed by latency)."""
    deadline = time.monotonic() + 30
    while not (ledger.exists() and ledger.stat().st_size):
        assert proc.poll() is None, "the run ended before anything was accepted"
        assert time.monotonic() < deadline
        time.sleep(0.005)


def events(tmp_path: Path, name: str = "send") -> list[str]:
    found = []
    for raw in (tmp_path / f"{name}.log").read_bytes().splitlines():
        try:
            found.append(str(orjson.loads(raw)["event"]))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue
    return found


# -- signals -----------------------------------------------------------------------------------


def test_sigterm_drains_then_resume_completes(tmp_path: Path) -> None:
    """SIGTERM mid-stream: in-flight requests are answered, the run exits 130 within the drain
    timeout with no `unknown` outcome and without reading on; --resume sends the rest, and
    then every line has exactly one outcome and is in the ledger exactly once."""
    lines = 60_000  # more than the sender buffers, so some input is still unread at the signal
    write_numbered_input(tmp_path / "input.ndjson", lines)
    drain_timeout = 20
    with emulator_subprocess(tmp_path, "--latency-ms", "100") as emu:
        proc = start_send(tmp_path, emu.base_url, "--drain-timeout", str(drain_timeout))
        wait_for_acceptance(proc, emu.ledger)
        proc.send_signal(signal.SIGTERM)
        # The bound is the promise itself (the drain timeout), with room for start-up: an
        # unresponsive drain would take the whole input, or hang.
        code = proc.wait(timeout=drain_timeout + 10)
        first = outcome_history(tmp_path / "outcomes.ndjson", skip_torn=False)
        resumed = start_send(tmp_path, emu.base_url, "--resume", name="resume")
        assert resumed.wait(timeout=120) == 0, (tmp_path / "resume.log").read_text()[-2000:]
    assert code == 130, (tmp_path / "send.log").read_text()[-2000:]
    assert "stopping" in events(tmp_path)
    assert 0 < len(first) < lines
    assert {o["status"] for h in first.values() for o in h} == {"queued"}
    history = outcome_history(tmp_path / "outcomes.ndjson", skip_torn=False)
    assert set(history) == set(range(1, lines + 1))
    assert all(len(h) == 1 and h[0]["status"] == "queued" for h in history.values())
    assert Counter(ledger_lines(emu.ledger, skip_torn=False)) == Counter(range(1, lines + 1))


def test_second_signal_stops_at_once_and_resume_handles_the_journal(tmp_path: Path) -> None:
    """SIGTERM, then SIGINT while requests wait for their (slow) answers: the run stops without
    waiting for them. Those requests were transmitted, so their lines are `unknown`, and --resume
    neither resends nor re-reports them, while it sends every line the cut left unsent."""
    lines = 8000
    write_numbered_input(tmp_path / "input.ndjson", lines)
    with emulator_subprocess(tmp_path, "--latency-ms", "1500") as emu:
        proc = start_send(tmp_path, emu.base_url, "--drain-timeout", "60")
        wait_for_acceptance(proc, emu.ledger)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)  # the first signal is being handled: draining has begun
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
        first = outcome_history(tmp_path / "outcomes.ndjson", skip_torn=False)
        resumed = start_send(tmp_path, emu.base_url, "--resume", name="resume")
        # 1: the resume's exit code covers the whole file, and the cut lines stay `unknown`.
        assert resumed.wait(timeout=120) == 1, (tmp_path / "resume.log").read_text()[-2000:]
    assert code == 130, (tmp_path / "send.log").read_text()[-2000:]
    assert "stopping_now" in events(tmp_path)
    # Had it waited, these would be queued: the answers were 1.5 s away.
    assert first
    assert {(o["status"], o["code"]) for h in first.values() for o in h} == {
        ("unknown", "cancelled")
    }
    in_ledger = Counter(ledger_lines(emu.ledger, skip_torn=False))
    history = outcome_history(tmp_path / "outcomes.ndjson", skip_torn=False)
    assert set(history) == set(range(1, lines + 1))
    for line, outcomes in history.items():
        assert len(outcomes) == 1, (line, outcomes)
        status = outcomes[0]["status"]
        assert (status, in_ledger[line]) in (("queued", 1), ("unknown", 1), ("unknown", 0))
        assert (status == "unknown") == (line in first)


def test_drain_timeout_shorter_than_a_hung_request_reports_unknown(tmp_path: Path) -> None:
    """Requests that hang past the drain timeout are abandoned: their lines are `unknown` (they
    were transmitted, and here the service did queue them), the run exits 130, and a resume
    skips them rather than sending them a second time."""
    lines = 8000
    write_numbered_input(tmp_path / "input.ndjson", lines)
    with emulator_subprocess(tmp_path, "--hang", "1.0") as emu:
        proc = start_send(tmp_path, emu.base_url, "--drain-timeout", "0.5", "--timeout", "120")
        wait_for_acceptance(proc, emu.ledger)
        time.sleep(0.3)  # let the other workers' requests reach the service too
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 130, (tmp_path / "send.log").read_text()[-2000:]
    assert "drain_timeout" in events(tmp_path)
    history = outcome_history(tmp_path / "outcomes.ndjson", skip_torn=False)
    in_ledger = Counter(ledger_lines(emu.ledger, skip_torn=False))
    assert history
    assert {(o["status"], o["code"]) for h in history.values() for o in h} == {
        ("unknown", "cancelled")
    }
    assert set(history) == set(in_ledger)
    resume = ResumeState.load(
        str(tmp_path / "outcomes.ndjson"),
        str(tmp_path / "outcomes.ndjson.journal"),
        resend_unknown=False,
    )
    source = str(tmp_path / "input.ndjson")
    decisions = Counter(resume.decide(source, n) for n in range(1, lines + 1))
    assert decisions == {Decision.WAS_UNKNOWN: len(history), Decision.SEND: lines - len(history)}


# -- in-process: stop and cancel leave nothing behind ------------------------------------------


def _own_tasks() -> set[asyncio.Task[Any]]:
    """Running tasks but this test's and the emulator's (whose handlers end on their own)."""
    return {
        task
        for task in asyncio.all_tasks()
        if task is not asyncio.current_task()
        and not getattr(task.get_coro(), "__qualname__", "").startswith("RequestHandler.")
    }


async def _pipeline_in_flight(
    tmp_path: Path, emu: RunningEmulator, sink: MemorySink, journal: FileJournal, lines: int = 5000
) -> tuple[Pipeline, asyncio.Task[Any]]:
    write_numbered_input(tmp_path / "input.ndjson", lines)
    settings = Settings(
        base_url=emu.base_url,
        sender=V1_LIST,
        batch_size=500,
        concurrency=2,
        linger_ms=10,
        drain_timeout=30,
        fsync="off",
        rate=None,  # unpaced: requests must be in flight at once
    )
    pipeline = Pipeline(
        settings,
        api_key=API_KEY,
        source=read_inputs([str(tmp_path / "input.ndjson")]),
        sink=sink,
        journal=journal,
    )
    run = asyncio.create_task(pipeline.run())
    while emu.stats()["in_flight"] < 2:  # both workers' requests reached the service
        assert not run.done()
        await asyncio.sleep(0.005)
    return pipeline, run


@pytest.mark.parametrize("how", ["request_stop-twice", "cancel-the-run"])
async def test_stopping_or_cancelling_the_pipeline_leaves_no_task_running(
    tmp_path: Path, how: str
) -> None:
    """Stopped at once (request_stop twice) or cancelled while requests are in flight, the
    pipeline reports those requests `unknown`, journals the rest consistently, and leaves no task
    of its own (reader, linger, lane workers, waiters) behind."""
    sink = MemorySink()
    journal_path = tmp_path / "journal"
    journal = FileJournal(str(journal_path), fsync=False)
    faults = FaultConfig(latency_ms=2000)  # answers come long after the stop
    config = EmulatorConfig(api_keys=(API_KEY,), v1_lists=(V1_LIST,), faults=faults)
    async with run_emulator(config) as emu:
        before = _own_tasks()
        pipeline, run = await _pipeline_in_flight(tmp_path, emu, sink, journal)
        if how == "request_stop-twice":
            pipeline.request_stop()
            pipeline.request_stop()
            result = await run
            assert result.exit_code == ExitCode.INTERRUPTED
        else:
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run
        left = _own_tasks() - before
        assert left == set(), sorted(task.get_name() for task in left)
    journal.close()
    outcomes = list(sink.outcomes)
    assert outcomes
    assert {(o.status, o.code) for o in outcomes} == {(Status.UNKNOWN, "cancelled")}
    assert {o.request for o in outcomes} == {1, 2}
    # The journal agrees: what was in flight is settled by its outcome, the rest is to be sent.
    resume = ResumeState.load(str(tmp_path / "none"), str(journal_path), resend_unknown=False)
    source = str(tmp_path / "input.ndjson")
    in_flight = {o.line for o in outcomes}
    for line in range(1, 5001):
        expected = Decision.MARK_UNKNOWN if line in in_flight else Decision.SEND
        assert resume.decide(source, line) is expected, line


class _SlowSyncJournal(FileJournal):
    """A journal whose sync (an fsync, normally) takes until the test lets it go."""

    def __init__(self, path: str) -> None:
        super().__init__(path, fsync=True)
        self.syncing = asyncio.Event()
        self.release = asyncio.Event()

    async def sync(self) -> None:
        self.syncing.set()
        await self.release.wait()


async def test_cancelled_while_journaling_a_request_journals_it_unsent(tmp_path: Path) -> None:
    """Cancelled during the fsync of a request's start record (before it was sent), the request
    is journaled `unsent`: resume sends its lines instead of taking them for in flight."""
    journal_path = tmp_path / "journal"
    journal = _SlowSyncJournal(str(journal_path))
    validator = Validator(api_version="v1", default_sender=V1_LIST)
    messages = []
    for n in range(1, 4):
        raw = orjson.dumps({"to_msisdn": f"+1415{n:07d}", "body": f"m{n}"})
        message = validator.validate("in.ndjson", n, raw)
        assert isinstance(message, Message)
        messages.append(message)
    sink = MemorySink()
    dispatcher = Dispatcher(
        DispatchSettings(base_url="http://127.0.0.1:9/api", api_version="v1", api_key=API_KEY),
        sink=sink,
        journal=journal,
        stats=RunStats(),
        limiter=LocalRateLimiter(lambda _: None, batch_size=1000),
    )

    async with dispatcher:
        await dispatcher.submit(Batch(V1_LIST, tuple(messages)))
        await journal.syncing.wait()
        await dispatcher.cancel()
    journal.close()
    outcomes: list[Outcome] = list(sink.outcomes)
    assert outcomes == []  # nothing was sent, so nothing is known or unknown
    resume = ResumeState.load(str(tmp_path / "none"), str(journal_path), resend_unknown=False)
    assert [resume.decide("in.ndjson", n) for n in range(1, 4)] == [Decision.SEND] * 3
