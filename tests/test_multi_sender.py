"""Many sending numbers in one stream (issue 7): per-line senders, per-sender batches and pacing.

Against the in-process emulator, over loopback HTTP:
- an input line names its own sender (v1 `from_phone_number_id`), overriding --from; a request
  only ever carries one sender, and each line's outcome and the run's counts name that sender;
- with fifty senders the batcher's global `max_buffered` cap bounds what waits in open batches
  (a property of `Batcher`, and visible end to end as the largest request);
- each sender is paced at its own rate from the config's `[rates]` table, measured from the
  emulator ledger's arrival times, and a 429 storm on one sender leaves another at full rate.

Rates are measured as: the messages of every request of a sender after its first one, divided
by the time from its first request's arrival to its last one's. The first request is the
limiter's initial burst (aiolimiter's bucket starts empty), so it counts for neither the
messages nor the time; from then on each request waits for exactly its own size at the rate,
which makes this ratio the paced rate itself.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsend._batcher import Batcher
from streamsend._config import Settings, load_settings
from streamsend._models import Batch, Encoding, Message, Outcome, Status
from streamsend._outcomes import MemorySink
from streamsend._pipeline import Pipeline
from streamsend._progress import summary_fields
from streamsend._types import ExitCode
from streamsend.emulator import FaultConfig, RunningEmulator
from streamsend.testing import API_KEY, V1_LIST, EmulatorFactory, lines_from, read_ledger
from tests.conftest import RecordingLog

RATE_TOLERANCE = 0.05  # the acceptance criterion: within 5% of the limit


def v1_line(to: str, sender: str | None = None, body: str = "Hello") -> bytes:
    fields: dict[str, object] = {"to_msisdn": to, "body": body}
    if sender is not None:
        fields["from_phone_number_id"] = sender
    return orjson.dumps(fields)


def phone(n: int) -> str:
    """A distinct E.164 number per n, so the ledger tells every line apart."""
    return f"+1415{n:07d}"


def pipeline(
    emu: RunningEmulator, lines: Sequence[bytes], *, settings: Settings | None = None, **fields: Any
) -> tuple[Pipeline, MemorySink]:
    # Unpaced unless a test gives rates: most of these tests are about lanes, not pacing.
    given_settings = replace(
        settings or Settings(rate=None), base_url=emu.base_url, fsync="off", **fields
    )
    sink = MemorySink()
    run = Pipeline(
        given_settings,
        api_key=API_KEY,
        source=lines_from(lines),
        sink=sink,
        log=RecordingLog(),
    )
    return run, sink


def outcome_per_line(outcomes: Iterable[Outcome]) -> dict[int, Outcome]:
    """The outcomes by line number, asserting that no line has two."""
    by_line: dict[int, Outcome] = {}
    for outcome in outcomes:
        assert outcome.line not in by_line, f"line {outcome.line} has two outcomes"
        by_line[outcome.line] = outcome
    return by_line


def requests_by_id(records: Iterable[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    grouped: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        grouped[record["request"]].append(record)
    return grouped


def measured_rate(
    records: Iterable[dict[str, Any]], sending_list: str, *, until: float | None = None
) -> float:
    """Messages/s the emulator received for `sending_list`, excluding the first request's burst.

    `until` (a unix time) ends the measured span there instead of at the last arrival: for a
    sender that had not finished when the run was stopped, the time it sent nothing counts too.
    """
    arrivals: dict[int, tuple[float, int]] = {}
    for record in records:
        if record["list"] == sending_list:
            t, count = arrivals.get(record["request"], (record["t"], 0))
            arrivals[record["request"]] = (t, count + 1)
    ordered = sorted(arrivals.values())
    assert len(ordered) >= 2, f"{sending_list}: too few requests to measure a rate"
    first = ordered[0][0]
    end = ordered[-1][0] if until is None else until
    return sum(count for _, count in ordered[1:]) / (end - first)


def make_message(sender: str, line: int, wire_bytes: int = 40) -> Message:
    to = phone(line)
    body = "x" * max(1, wire_bytes - 30)
    wire = b'{"to_msisdn":"' + to.encode() + b'","body":"' + body.encode() + b'"}'
    return Message("-", line, to, sender, wire, b"", 1, Encoding.GSM7)


# -- per-line senders ---------------------------------------------------------------------------


async def test_interleaved_senders_each_request_carries_one_sender(
    emulator: EmulatorFactory,
) -> None:
    """Lines naming five senders, interleaved (some with none, so --from applies), go out in
    requests of one sender each; every message leaves from the sender its line named; every
    outcome names it; RunStats.by_sender and the summary count per sender as the outcomes do."""
    senders = [V1_LIST, "pn_north", "pn_south", "pn_east", "pn_west"]
    emu = await emulator(v1_lists=tuple(senders))
    rng = random.Random(7)
    lines: list[bytes] = []
    expected: dict[int, str] = {}  # line -> sender
    for n in range(1, 601):
        sender = rng.choice([*senders, None])  # None: the line names no sender, --from applies
        lines.append(v1_line(phone(n), sender))
        expected[n] = sender or V1_LIST
    run, sink = pipeline(emu, lines, sender=V1_LIST, batch_size=37, linger_ms=20)

    result = await run.run()

    assert result.exit_code == ExitCode.OK
    records = read_ledger(emu.ledger_path)
    assert len(records) == len(lines)
    requests = requests_by_id(records)
    assert len(requests) >= 600 // 37  # a small batch size: many requests per sender
    for request, carried in requests.items():
        assert len({r["list"] for r in carried}) == 1, f"request {request} mixes senders"
    sender_of_to = {r["to"]: r["list"] for r in records}
    assert sender_of_to == {phone(n): sender for n, sender in expected.items()}

    outcomes = outcome_per_line(sink.outcomes)
    assert set(outcomes) == set(expected)
    for n, outcome in outcomes.items():
        assert outcome.status is Status.QUEUED
        assert outcome.sender == expected[n]
    want = {sender: {"queued": count} for sender, count in Counter(expected.values()).items()}
    snapshot = run.stats.snapshot()
    assert snapshot.by_sender == want
    assert summary_fields(snapshot)["by_sender"] == want
    per_list = emu.stats()["per_list"]
    assert isinstance(per_list, dict)
    assert {name: per_list[name]["queued"] for name in senders} == {
        sender: counts["queued"] for sender, counts in want.items()
    }


# -- fifty senders and the global buffer cap ------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    senders=st.lists(st.integers(0, 49), min_size=1, max_size=600),
    max_buffered=st.integers(1, 400),
    max_messages=st.integers(1, 1000),
    wire_bytes=st.integers(30, 200),
)
def test_batcher_never_buffers_more_than_max_buffered(
    senders: list[int], max_buffered: int, max_messages: int, wire_bytes: int
) -> None:
    """Whatever the interleaving of fifty senders and whatever the cap (below the batch size
    too), at most `max_buffered` messages wait in open batches after every add and no batch is
    larger than the cap; every message still comes out exactly once, in its sender's order, in a
    batch of its sender only."""
    batcher = Batcher(max_messages=max_messages, max_buffered=max_buffered, linger=1e9)
    out: list[Batch] = []
    for line, index in enumerate(senders, start=1):
        out.extend(batcher.add(make_message(f"pn_{index:02d}", line, wire_bytes), float(line)))
        assert batcher.buffered <= max_buffered
        assert batcher.buffered == line - sum(len(batch) for batch in out)
    out.extend(batcher.flush_all())
    assert batcher.buffered == 0

    seen = [m.line for batch in out for m in batch.messages]
    assert sorted(seen) == list(range(1, len(senders) + 1))
    by_sender: dict[str, list[int]] = defaultdict(list)
    for batch in out:
        # A batch is messages that waited together, so it can't be larger than the cap either.
        assert 1 <= len(batch) <= min(max_messages, max_buffered)
        assert {m.sender for m in batch.messages} == {batch.sender}
        by_sender[batch.sender].extend(m.line for m in batch.messages)
    for lines in by_sender.values():
        assert lines == sorted(lines)


def test_batcher_flushes_the_least_recently_filled_batch_at_the_cap() -> None:
    """At the cap, the batch whose last message is oldest goes first: adding to A again makes B
    the least recently filled, so B (not A, not C) is flushed."""
    batcher = Batcher(max_messages=10, max_buffered=3, linger=1e9)
    assert batcher.add(make_message("A", 1), 0.0) == []
    assert batcher.add(make_message("B", 2), 0.0) == []
    assert batcher.add(make_message("C", 3), 0.0) == []
    flushed = batcher.add(make_message("A", 4), 0.0)
    assert [(batch.sender, [m.line for m in batch.messages]) for batch in flushed] == [("B", [2])]
    assert batcher.buffered == 3


async def test_fifty_senders_under_a_small_buffer_cap_each_line_one_outcome(
    emulator: EmulatorFactory,
) -> None:
    """Fifty senders in one shuffled stream with max_buffered=120 (one sender has 500 lines): no
    request carries more than the cap, every line gets exactly one outcome naming its sender,
    and every message reaches the service exactly once, from that sender."""
    senders = [f"pn_s{i:02d}" for i in range(50)]
    emu = await emulator(v1_lists=tuple(senders))
    plan = [senders[0]] * 500 + [s for s in senders[1:] for _ in range(20)]
    random.Random(50).shuffle(plan)
    lines = [v1_line(phone(n), sender) for n, sender in enumerate(plan, start=1)]
    # A long linger, so batches leave because of the cap (or the end of input), not the clock.
    run, sink = pipeline(emu, lines, max_buffered=120, linger_ms=10_000)

    result = await run.run()

    assert result.exit_code == ExitCode.OK
    outcomes = outcome_per_line(sink.outcomes)
    assert len(outcomes) == len(plan)
    for n, outcome in outcomes.items():
        assert (outcome.status, outcome.sender) == (Status.QUEUED, plan[n - 1])
    records = read_ledger(emu.ledger_path)
    assert sorted((r["to"], r["list"]) for r in records) == sorted(
        (phone(n), sender) for n, sender in enumerate(plan, start=1)
    )
    largest = emu.stats()["largest_request_messages"]
    assert isinstance(largest, int)
    assert 0 < largest <= 120
    assert run.stats.snapshot().by_sender == {
        sender: {"queued": count} for sender, count in Counter(plan).items()
    }


# -- per-sender pacing -----------------------------------------------------------------------------


def interleave(counts: dict[str, int]) -> list[str]:
    """Senders spread evenly through a stream, each `counts[s]` times (smooth weighted order)."""
    total = sum(counts.values())
    credit = dict.fromkeys(counts, 0.0)
    left = dict(counts)
    order: list[str] = []
    for _ in range(total):
        for sender in credit:
            credit[sender] += counts[sender] / total if left[sender] else 0.0
        chosen = max((s for s in credit if left[s]), key=lambda s: credit[s])
        credit[chosen] -= 1.0
        left[chosen] -= 1
        order.append(chosen)
    return order


async def test_each_sender_is_paced_at_its_own_rate_from_the_config_table(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Three senders paced by a `[rates]` table (400/s, 200/s, 6000/min), each with ten seconds'
    worth of lines, interleaved: the ledger's arrival times show each at its own rate, within
    5%, over a ~10 s run."""
    rates = {"pn_fast": 400.0, "pn_mid": 200.0, "pn_slow": 100.0}
    config = tmp_path / "streamsend.toml"
    config.write_text('[rates]\npn_fast = "400/s"\npn_mid = "200/s"\npn_slow = "6000/min"\n')
    loaded = load_settings(config_path=str(config), env={})
    assert dict(loaded.sender_rates) == rates
    # The service's own send rate per list is set to match, as support would have set it.
    emu = await emulator(
        v1_lists=tuple(rates), list_rates_per_min={s: r * 60 for s, r in rates.items()}
    )
    plan = interleave({sender: int(rate * 10) for sender, rate in rates.items()})
    lines = [v1_line(phone(n), sender) for n, sender in enumerate(plan, start=1)]
    run, sink = pipeline(emu, lines, settings=loaded)

    result = await asyncio.wait_for(run.run(), timeout=30)

    assert result.exit_code == ExitCode.OK
    assert len(outcome_per_line(sink.outcomes)) == len(plan)
    records = read_ledger(emu.ledger_path)
    assert len(records) == len(plan)
    measured = {sender: measured_rate(records, sender) for sender in rates}
    for sender, limit in rates.items():
        assert abs(measured[sender] / limit - 1) <= RATE_TOLERANCE, (sender, measured, rates)
        carried = {
            len(c) for c in requests_by_id(r for r in records if r["list"] == sender).values()
        }
        # Paced batches hold 0.2 s of the sender's rate, so the rate is smooth, not bursts of 1,000.
        assert max(carried) <= int(limit * 0.2)


async def test_a_429_storm_on_one_sender_does_not_slow_another(emulator: EmulatorFactory) -> None:
    """Every request for sender A is answered 429 (Retry-After 1 s) while B's are not: B, with
    ten seconds' worth of lines interleaved with A's, still sends at its limit (within 5%) and
    finishes on time; only A is paused."""
    a, b = "pn_storm", "pn_calm"
    rates = {a: 400.0, b: 200.0}
    emu = await emulator(
        v1_lists=(a, b), faults=FaultConfig(rate_429=1.0, retry_after_s=1, lists=(a,))
    )
    plan = interleave({a: 4000, b: 2000})
    lines = [v1_line(phone(n), sender) for n, sender in enumerate(plan, start=1)]
    run, sink = pipeline(emu, lines, sender_rates=rates, retries=5)

    running = asyncio.create_task(run.run())
    deadline = time.monotonic() + 13.0  # B needs 10 s at its rate
    b_done = 0
    while time.monotonic() < deadline and not running.done():
        b_done = sum(1 for o in sink.outcomes if o.sender == b)
        if b_done == 2000:
            break
        await asyncio.sleep(0.1)
    stopped_at = time.time()
    run.request_stop()
    run.request_stop()
    await running

    records = read_ledger(emu.ledger_path)
    assert not [r for r in records if r["list"] == a]  # A was refused throughout
    faults = emu.stats()["faults"]
    assert isinstance(faults, dict)
    assert faults["rate_429"] > 0
    b_queued = sum(1 for r in records if r["list"] == b)
    b_rate = measured_rate(records, b, until=None if b_queued == 2000 else stopped_at)
    assert abs(b_rate / rates[b] - 1) <= RATE_TOLERANCE, f"B: {b_rate:.1f}/s, {b_queued} queued"
    assert b_queued == 2000
