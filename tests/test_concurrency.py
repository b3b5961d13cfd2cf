"""Adaptive request concurrency (`_concurrency`) and the emulator's in-flight cap.

The controller is driven with a fake clock and a simulated service, so what is checked is its
behaviour (where the limit goes, how often the service is pushed past its cap), never how fast
anything ran. End to end, a real pipeline runs against an emulator that caps requests in flight.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import aiohttp
import pytest

from streamsend._concurrency import ConcurrencyLimit
from streamsend._config import load_settings
from streamsend._exceptions import ConfigError
from streamsend._journal import FileJournal
from streamsend._outcomes import FileSink
from streamsend._pipeline import Pipeline
from streamsend._progress import format_progress_line
from streamsend._source import read_inputs
from streamsend._stats import RunStats
from streamsend.emulator import FaultConfig
from streamsend.testing import API_KEY, V1_LIST, EmulatorFactory, post, read_ledger
from tests.conftest import ndjson_records, write_numbered_input


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def simulate(
    slots: ConcurrencyLimit,
    clock: FakeClock,
    *,
    seconds: float,
    cap: int | None = None,
    latency: float = 0.1,
    latency_at: dict[int, float] | None = None,
) -> tuple[list[int], int]:
    """A service answering every request after `latency` s (or `latency_at[in_flight]`), and
    429 at once to requests beyond `cap` in flight; the client always has work waiting. Steps of
    one latency: each step fills the limit, then every request is answered. Returns the limit
    after each step and how many requests were refused."""
    limits: list[int] = []
    refused = 0
    end = clock.now + seconds
    while clock.now < end:
        in_flight = slots.limit
        took = (latency_at or {}).get(in_flight, latency)
        epoch = slots.epoch
        answers = [cap is None or n < cap for n in range(in_flight)]
        for accepted in sorted(answers):  # the refusals come back first: they are immediate
            if not accepted:
                refused += 1
                slots.observe(0.001, answered=False, back_pressure=True, epoch=epoch)
        clock.now += took
        for accepted in answers:
            if accepted:
                slots.in_flight = in_flight  # every slot was taken: the limit was reached
                slots.observe(took, answered=True, back_pressure=False, epoch=epoch)
        slots.in_flight = 0
        limits.append(slots.limit)
    return limits, refused


def test_grows_to_the_maximum_while_latency_stays_flat() -> None:
    """With work waiting and a flat latency the limit climbs from 1 to max_concurrency."""
    clock = FakeClock()
    slots = ConcurrencyLimit(32, adaptive=True, clock=clock)
    assert slots.limit == 1
    limits, refused = simulate(slots, clock, seconds=10)
    assert refused == 0
    assert limits[-1] == 32
    assert max(limits) == 32


def test_settles_under_a_cap_and_rarely_pushes_past_it() -> None:
    """Against a service that refuses (429) what is beyond 4 in flight, the limit settles at 4:
    after the first 5 s it is 4 most of the time, and under 1% of the requests are refused."""
    clock = FakeClock()
    slots = ConcurrencyLimit(32, adaptive=True, clock=clock)
    simulate(slots, clock, seconds=5, cap=4)
    limits, refused = simulate(slots, clock, seconds=120, cap=4)
    requests = sum(min(limit, 4) for limit in limits) + refused
    assert max(limits) <= 5  # 5 only while probing whether the cap moved
    assert limits.count(4) / len(limits) > 0.95
    assert refused / requests < 0.01
    assert refused > 0  # it did probe: a raised cap would be found


def test_a_push_back_shrinks_the_limit_at_once_and_counts_once() -> None:
    """A 429 lowers the limit immediately; more 429s to requests sent before that decrease
    don't lower it again, while one to a request sent after it does."""
    clock = FakeClock()
    slots = ConcurrencyLimit(32, adaptive=True, clock=clock)
    simulate(slots, clock, seconds=2)  # grows without trouble
    before = slots.limit
    epoch = slots.epoch
    slots.observe(0.001, answered=False, back_pressure=True, epoch=epoch)
    after = slots.limit
    assert after < before
    for _ in range(5):
        slots.observe(0.001, answered=False, back_pressure=True, epoch=epoch)
    assert slots.limit == after
    slots.observe(0.001, answered=False, back_pressure=True, epoch=slots.epoch)
    assert slots.limit < after


def test_rising_latency_shrinks_the_limit() -> None:
    """When latency grows with concurrency (the service queues what it can't serve), the limit
    stops where latency starts to rise instead of climbing to the maximum."""
    clock = FakeClock()
    slots = ConcurrencyLimit(32, adaptive=True, clock=clock)
    queueing = {n: 0.1 * max(1.0, n / 6) for n in range(1, 33)}  # flat up to 6, then linear
    limits, refused = simulate(slots, clock, seconds=60, latency_at=queueing)
    assert refused == 0
    assert max(limits[len(limits) // 2 :]) < 16


def test_no_growth_without_demand() -> None:
    """A limit that was never reached (too little work to fill it) does not grow."""
    clock = FakeClock()
    slots = ConcurrencyLimit(32, adaptive=True, clock=clock)
    slots.limit = 4
    for _ in range(50):
        clock.now += 0.1
        slots.in_flight = 1
        slots.observe(0.1, answered=True, back_pressure=False, epoch=slots.epoch)
        slots.in_flight = 0
    assert slots.limit == 4


def test_a_fixed_number_never_moves() -> None:
    """`concurrency = N` holds N whatever the answers say."""
    clock = FakeClock()
    slots = ConcurrencyLimit(8, adaptive=False, clock=clock)
    limits, refused = simulate(slots, clock, seconds=5, cap=4)
    assert set(limits) == {8}
    assert refused > 0


async def test_slots_are_granted_in_order_and_a_cancelled_waiter_passes_its_slot_on() -> None:
    """Waiters get slots first come, first served; a waiter cancelled after its slot was granted
    gives it to the next one, so no slot leaks."""
    slots = ConcurrencyLimit(1, adaptive=False)
    await slots.acquire()
    order: list[str] = []

    async def wait(name: str) -> None:
        await slots.acquire()
        order.append(name)

    first = asyncio.create_task(wait("first"))
    second = asyncio.create_task(wait("second"))
    await asyncio.sleep(0)
    slots.release()  # granted to `first`...
    first.cancel()  # ...which is cancelled before it runs: the slot must reach `second`
    await asyncio.gather(first, return_exceptions=True)
    await second
    assert order == ["second"]
    assert slots.in_flight == 1
    slots.release()
    assert slots.in_flight == 0


def test_concurrency_setting_is_auto_by_default_or_a_number() -> None:
    """`concurrency` defaults to auto (max_concurrency 32), takes a number, and names both
    accepted forms when given something else."""
    assert load_settings(env={}).concurrency == "auto"
    assert load_settings(env={}).max_concurrency == 32
    assert load_settings(env={}, cli={"concurrency": "6"}).concurrency == 6
    assert load_settings(env={"STREAMSEND_CONCURRENCY": "AUTO"}).concurrency == "auto"
    with pytest.raises(ConfigError, match=r"^--concurrency: .*expected auto or a whole number"):
        load_settings(env={}, cli={"concurrency": "lots"})


def test_progress_line_shows_the_limit() -> None:
    """The progress line says how many requests are in flight of the current limit."""
    stats = RunStats()
    stats.in_flight, stats.concurrency_limit = 3, 7
    assert "3/7 in flight" in format_progress_line(stats.snapshot())


async def test_emulator_answers_429_beyond_its_in_flight_cap(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """With max_in_flight 1, of two requests at once one is queued and the other answered 429
    with Retry-After and nothing queued; the stats count the refusal."""
    emu = await emulator(max_in_flight=1, faults=FaultConfig(latency_ms=200))
    url = emu.base_url + "/v1/messages/bulk"
    payloads = [
        {
            "from_phone_number_id": V1_LIST,
            "messages": [{"to_msisdn": f"+1415555000{n}", "body": "hi"}],
        }
        for n in range(2)
    ]
    replies = await asyncio.gather(*(post(session, url, p) for p in payloads))
    assert sorted(r.status for r in replies) == [201, 429]
    refused = next(r for r in replies if r.status == 429)
    assert refused.json()["code"] == "too_many_in_flight"
    assert refused.headers["Retry-After"] == "1"
    assert len(read_ledger(emu.ledger_path)) == 1
    assert emu.stats()["over_in_flight_cap"] == 1


async def test_a_run_against_a_capped_service_queues_every_line(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """A default (auto) run against a service capping 3 requests in flight: every line is
    queued exactly once, the 429s beyond the cap were retried, and the limit ends near the cap."""
    emu = await emulator(max_in_flight=3, faults=FaultConfig(latency_ms=10, retry_after_s=0))
    source = tmp_path / "in.ndjson"
    write_numbered_input(source, 3000)
    settings = load_settings(
        env={},
        cli={
            "base_url": emu.base_url,
            "sender": V1_LIST,
            "batch_size": "20",
            "outcomes": str(tmp_path / "out.ndjson"),
            "fsync": "off",
            "retries": "50",
            "rate": "unlimited",
        },
    )
    assert settings.concurrency == "auto"
    assert settings.journal_path is not None
    stats = RunStats()
    sink = FileSink.open_path(settings.outcomes, fsync=False)
    journal = FileJournal(settings.journal_path, fsync=False)
    try:
        pipeline = Pipeline(
            settings,
            api_key=API_KEY,
            source=read_inputs([str(source)]),
            sink=sink,
            journal=journal,
            stats=stats,
        )
        await pipeline.run()
    finally:
        sink.close()
        journal.close()
    outcomes = ndjson_records(Path(settings.outcomes), skip_torn=False)
    assert sorted(o["line"] for o in outcomes) == list(range(1, 3001))
    assert {o["status"] for o in outcomes} == {"queued"}
    assert len(read_ledger(emu.ledger_path)) == 3000
    refused = emu.stats()["over_in_flight_cap"]
    assert refused > 0  # slow start went past the cap, and the run recovered
    assert refused < math.ceil(3000 / 20) * 0.2
    assert 1 <= stats.concurrency_limit <= 4
