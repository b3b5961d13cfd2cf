"""The pace holds on the wire: the send gate is passed after the journal is durable, right before
each request leaves (`Lanes.space_send`).

Requests take their turn at the limiter before they are journaled; the journal's fsync can hold
a few of them back and release them together, which once put 2-3 batches above `--rate` in one
second. The gate spaces such a bunch out again; these tests check where it sits and that a
pipeline gives it the run's rates (behaviour, not timing).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from streamsend._config import load_settings
from streamsend._dispatch import Dispatcher, DispatchSettings
from streamsend._journal import FileJournal, ResumeState
from streamsend._models import Batch, Message
from streamsend._outcomes import MemorySink
from streamsend._pacing import LocalRateLimiter
from streamsend._pipeline import Pipeline
from streamsend._source import read_inputs
from streamsend._stats import RunStats
from streamsend._validate import Validator
from streamsend.testing import API_KEY, V1_LIST, EmulatorFactory, read_ledger
from tests.conftest import write_numbered_input


class RecordingJournal:
    """A FileJournal that logs its starts and syncs into a shared event list."""

    def __init__(self, path: Path, events: list[str]) -> None:
        self._journal = FileJournal(str(path), fsync=False)
        self._events = events

    def record_start(self, request: int, messages: Sequence[Message]) -> None:
        self._journal.record_start(request, messages)
        self._events.append(f"start {request}")

    def record_unsent(self, request: int) -> None:
        self._journal.record_unsent(request)

    def record_done(self, request: int) -> None:
        self._journal.record_done(request)

    async def sync(self) -> None:
        await self._journal.sync()
        self._events.append("sync")

    def resume_state(self, *, resend_unknown: bool) -> ResumeState:
        return self._journal.resume_state(resend_unknown=resend_unknown)

    def close(self) -> None:
        self._journal.close()


class RecordingGate:
    """A send gate that admits at once and logs each request, with what the service had then."""

    def __init__(self, events: list[str], ledger: Path) -> None:
        self._events = events
        self._ledger = ledger

    def batch_cap(self, sender: str) -> int:
        return 1000

    async def acquire(self, sender: str, messages: int) -> None:
        self._events.append(f"gate {len(read_ledger(self._ledger))}")


def _messages(first: int, count: int) -> tuple[Message, ...]:
    validator = Validator(api_version="v1", default_sender=V1_LIST)
    out = []
    for line in range(first, first + count):
        raw = b'{"to_msisdn": "+1415555%04d", "body": "m%d"}' % (line, line)
        message = validator.validate("in.ndjson", line, raw)
        assert isinstance(message, Message)
        out.append(message)
    return tuple(out)


async def test_the_gate_is_passed_after_the_journal_sync_and_before_sending(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """For every request: its start record, then a sync, then the gate, while the service has
    not yet seen its messages."""
    emu = await emulator()
    assert emu.ledger_path is not None
    events: list[str] = []
    journal = RecordingJournal(tmp_path / "journal", events)
    dispatcher = Dispatcher(
        DispatchSettings(base_url=emu.base_url, api_version="v1", api_key=API_KEY, concurrency=1),
        sink=MemorySink(),
        journal=journal,
        stats=RunStats(),
        limiter=LocalRateLimiter(lambda _: None, batch_size=1000),
        send_gate=RecordingGate(events, emu.ledger_path),
    )
    async with dispatcher:
        for first in (1, 11, 21):
            await dispatcher.submit(Batch(V1_LIST, _messages(first, 10)))
        await dispatcher.drain()
    journal.close()
    assert events == [
        *("start 1", "sync", "gate 0"),
        *("start 2", "sync", "gate 10"),
        *("start 3", "sync", "gate 20"),
    ]


async def test_a_pipeline_gates_sends_at_the_run_rates(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """A pipeline that builds its own limiter also builds the gate, with the same rates; one
    given a limiter (shared, Redis) leaves the pace to it."""
    emu = await emulator()
    source = tmp_path / "in.ndjson"
    write_numbered_input(source, 5)
    settings = load_settings(
        env={},
        cli={"base_url": emu.base_url, "sender": V1_LIST, "rate": "300/s", "fsync": "off"},
    )
    built = Pipeline(
        settings, api_key=API_KEY, source=read_inputs([str(source)]), sink=MemorySink()
    )
    gate = built.dispatcher.lanes.send_gate
    assert isinstance(gate, LocalRateLimiter)
    assert gate.batch_cap(V1_LIST) == 60  # 0.2 s of 300/s: the run's rate
    given = Pipeline(
        settings,
        api_key=API_KEY,
        source=read_inputs([str(source)]),
        sink=MemorySink(),
        limiter=LocalRateLimiter(settings.rate_for, batch_size=1000),
    )
    assert given.dispatcher.lanes.send_gate is None
