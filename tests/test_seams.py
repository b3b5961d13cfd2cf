"""The four seams (`streamsend._types`): one suite per Protocol, run on every implementation.

Each suite checks the invariants the Protocol's docstring states, through the Protocol only, so
an implementation added later (Redis-backed, columnar) joins by adding a factory to the
parametrisation below and must pass the same tests.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamsend._journal import Decision, FileJournal
from streamsend._models import BatchOutcome, Encoding, Message, Outcome, Status
from streamsend._outcomes import FileSink, MemorySink, OutcomeEncoder
from streamsend._pacing import LATENESS_SLACK_S, LocalRateLimiter
from streamsend._redis_job import RedisJob, pack_message
from streamsend._redis_limiter import RedisRateLimiter
from streamsend._redis_seams import Holdings, RedisJournal, RedisSink
from streamsend._source import read_inputs
from streamsend._types import Journal, LineBlock, LineSource, OutcomeSink, RateLimiter
from streamsend.testing import lines_from
from tests.redis_fixtures import (
    SHARED_REDIS_URL,
    close_tracked_clients,
    require_redis,
    tracked_client,
)

#: Jobs the Redis factories made in the shared Redis: deleted after each test.
_REDIS_JOBS: list[str] = []


@pytest.fixture(autouse=True)
async def _close_redis_clients() -> AsyncIterator[None]:
    """The Redis implementations' clients closed, and their jobs deleted, after each test."""
    yield
    await close_tracked_clients()
    if _REDIS_JOBS:
        client: Any = redis.Redis.from_url(SHARED_REDIS_URL)
        try:
            while _REDIS_JOBS:
                keys = list(client.scan_iter(match=f"streamsend:job:{{{_REDIS_JOBS.pop()}}}:*"))
                if keys:
                    client.delete(*keys)
        finally:
            client.close()


# -- LineSource ---------------------------------------------------------------------------------

LineSourceFactory = Callable[[list[bytes], Path], LineSource]


def _file_source(lines: list[bytes], tmp: Path) -> LineSource:
    path = tmp / "input.ndjson"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return read_inputs([str(path)], chunk_size=7)  # tiny chunks: lines span many reads


def _file_source_crlf_bom(lines: list[bytes], tmp: Path) -> LineSource:
    path = tmp / "input.ndjson"
    path.write_bytes(b"\xef\xbb\xbf" + b"".join(line + b"\r\n" for line in lines))
    return read_inputs([str(path)], chunk_size=5)


def _pipe_source(lines: list[bytes], tmp: Path) -> LineSource:
    """stdin as a pipe, written by another thread while the source reads."""
    read_fd, write_fd = os.pipe()
    data = b"".join(line + b"\n" for line in lines)

    def write() -> None:
        with os.fdopen(write_fd, "wb") as writer:
            for start in range(0, len(data), 3):
                writer.write(data[start : start + 3])
                writer.flush()

    threading.Thread(target=write, daemon=True).start()
    return read_inputs(["-"], stdin=os.fdopen(read_fd, "rb"))


def _memory_source(lines: list[bytes], tmp: Path) -> LineSource:
    return lines_from(lines, "-")


LINE_SOURCES: dict[str, LineSourceFactory] = {
    "file": _file_source,
    "file-crlf-bom": _file_source_crlf_bom,
    "stdin-pipe": _pipe_source,
    "memory": _memory_source,
}

_EXAMPLE_LINES = [
    [b'{"to_msisdn":"+14155550001","body":"a"}'],
    [b"one", b"", b"three", b""],
    [b"x" * 50, b"", b"y", b"z" * 3],
    [b"\xc3\xa9t\xc3\xa9", b"{}", b"[]"],
]


@pytest.fixture(params=sorted(LINE_SOURCES))
def line_source(request: pytest.FixtureRequest) -> LineSourceFactory:
    factory: LineSourceFactory = LINE_SOURCES[request.param]
    return factory


@pytest.mark.parametrize("lines", _EXAMPLE_LINES)
async def test_line_source_hands_on_every_line_once_numbered_from_one(
    line_source: LineSourceFactory, lines: list[bytes], tmp_path: Path
) -> None:
    """Every line comes out once, in order, without its line ending or a BOM, numbered from 1
    with no gap between blocks; blank lines come out as b"" (they keep the numbering)."""
    blocks: list[LineBlock] = [block async for block in line_source(lines, tmp_path)]
    expected_next: dict[str, int] = {}
    seen: list[bytes | None] = []
    for block in blocks:
        assert block.first_line == expected_next.get(block.source, 1)
        expected_next[block.source] = block.first_line + len(block.lines)
        seen.extend(block.lines)
    assert seen == lines
    assert len(expected_next) == 1


async def test_line_source_of_nothing_yields_no_line(
    line_source: LineSourceFactory, tmp_path: Path
) -> None:
    """An empty input has no lines at all."""
    lines = [line for block in [b async for b in line_source([], tmp_path)] for line in block.lines]
    assert lines == []


# -- OutcomeSink --------------------------------------------------------------------------------


@dataclass
class SinkUnderTest:
    sink: OutcomeSink
    read_back: Callable[[], list[dict[str, object]]]


def _file_sink(tmp: Path, name: str) -> SinkUnderTest:
    path = tmp / f"{name}.ndjson"
    sink = FileSink.open_path(str(path), fsync=True)
    return SinkUnderTest(
        sink, lambda: [orjson.loads(line) for line in path.read_bytes().splitlines()]
    )


def _memory_sink(tmp: Path, name: str) -> SinkUnderTest:
    sink = MemorySink()
    encoder = OutcomeEncoder()  # compared as the outcomes file would hold them
    return SinkUnderTest(
        sink,
        lambda: [orjson.loads(line) for line in encoder.encode(list(sink.outcomes)).splitlines()],
    )


def _redis_sink(tmp: Path, name: str) -> SinkUnderTest:
    """A job's outcome stream (a job of its own on the shared Redis), read back as `collect`
    reads it."""
    require_redis(SHARED_REDIS_URL)
    job = RedisJob(tracked_client(SHARED_REDIS_URL), f"test-sink-{uuid.uuid4().hex[:12]}")
    _REDIS_JOBS.append(job.name)
    sink = RedisSink(job, None, None, None)

    def read_back() -> list[dict[str, object]]:
        client: Any = redis.Redis.from_url(SHARED_REDIS_URL)
        try:
            data = b"".join(fields[b"o"] for _, fields in client.xrange(job.outcomes))
            for key in (job.outcomes, job.meta):  # read more than once: expire, don't delete
                client.expire(key, 600)
        finally:
            client.close()
        return [orjson.loads(line) for line in data.splitlines()]

    return SinkUnderTest(sink, read_back)


OUTCOME_SINKS: dict[str, Callable[[Path, str], SinkUnderTest]] = {
    "file": _file_sink,
    "memory": _memory_sink,
    "redis": _redis_sink,
}


@pytest.fixture(params=sorted(OUTCOME_SINKS))
def make_sink(request: pytest.FixtureRequest) -> Callable[[Path, str], SinkUnderTest]:
    factory: Callable[[Path, str], SinkUnderTest] = OUTCOME_SINKS[request.param]
    return factory


_refs = st.one_of(
    st.just(b""),
    st.integers(-(2**63), 2**63).map(orjson.dumps),
    st.text(max_size=8).map(orjson.dumps),
)


@st.composite
def batch_outcomes(draw: st.DrawFn) -> BatchOutcome:
    size = draw(st.integers(1, 12))
    sources = draw(st.lists(st.sampled_from(["in.ndjson", 'b\\x"y', "-"]), min_size=1, max_size=2))
    first = draw(st.integers(1, 10_000))
    messages = [
        Message(
            sources[min(i * len(sources) // size, len(sources) - 1)],
            first + i,
            "+1415555" + f"{i:04d}",
            "pn_a",
            b"{}",
            draw(_refs),
            draw(st.integers(1, 11)),
            draw(st.sampled_from(list(Encoding))),
        )
        for i in range(size)
    ]
    status = draw(st.sampled_from([Status.QUEUED, Status.FAILED, Status.UNKNOWN]))
    text = draw(st.one_of(st.none(), st.text(max_size=20)))
    rejected = draw(st.sets(st.integers(0, size - 1), max_size=size))
    return BatchOutcome(
        messages,
        status,
        draw(st.integers(1, 10**6)),
        draw(st.integers(1, 6)),
        "pn_a",
        None if status is Status.QUEUED else "code",
        None if status is Status.QUEUED else (text or "error"),
        rejections={i: ("invalid_phone", f"bad {i} \u00e9") for i in rejected} or None,
    )


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(results=st.lists(batch_outcomes(), min_size=1, max_size=4))
async def test_sink_write_batch_keeps_what_write_keeps(
    make_sink: Callable[[Path, str], SinkUnderTest],
    tmp_path_factory: pytest.TempPathFactory,
    results: list[BatchOutcome],
) -> None:
    """`write_batch(r)` keeps exactly the records `write(r.outcomes())` keeps, each once and in
    order, for any request outcome (rejections, refs, several sources)."""
    tmp = tmp_path_factory.mktemp("sink")
    by_batch, by_outcome = make_sink(tmp, "batch"), make_sink(tmp, "outcome")
    for result in results:
        by_batch.sink.write_batch(result)
        by_outcome.sink.write(result.outcomes())
    for under_test in (by_batch, by_outcome):
        await under_test.sink.flush()
        under_test.sink.close()
    expected = [o for result in results for o in result.outcomes()]
    assert by_batch.read_back() == by_outcome.read_back()
    assert [(r["source"], r["line"]) for r in by_batch.read_back()] == [
        (o.source, o.line) for o in expected
    ]


async def test_sink_keeps_every_outcome_once_in_order(
    make_sink: Callable[[Path, str], SinkUnderTest], tmp_path: Path
) -> None:
    """Outcomes written across several writes and flushes come back once each, in order."""
    under_test = make_sink(tmp_path, "outcomes")
    written = [
        Outcome("in", line, Status.INVALID, "invalid_json", f"line {line}") for line in range(1, 8)
    ]
    under_test.sink.write(written[:3])
    await under_test.sink.flush()
    under_test.sink.write(written[3:])
    await under_test.sink.flush()
    under_test.sink.close()
    assert [(r["line"], r["status"], r["error"]) for r in under_test.read_back()] == [
        (o.line, "invalid", o.error) for o in written
    ]


# -- Journal ------------------------------------------------------------------------------------


@dataclass
class JournalUnderTest:
    """A journal with the outcome sink of its run, and how to reopen both after a crash."""

    journal: Journal
    sink: OutcomeSink
    reopen: Callable[[], Journal]
    tear: Callable[[], None]  # leave half a record at the end, as a crash mid-write does


def _file_journal(tmp: Path) -> JournalUnderTest:
    outcomes = tmp / "outcomes.ndjson"
    path = tmp / "outcomes.ndjson.journal"

    def reopen() -> Journal:
        return FileJournal(str(path), fsync=True, outcomes_path=str(outcomes))

    def tear() -> None:
        with open(path, "ab") as file:
            file.write(b'{"start":99,"lines":{"in":[[1')

    return JournalUnderTest(reopen(), FileSink.open_path(str(outcomes), fsync=True), reopen, tear)


def _redis_journal(tmp: Path) -> JournalUnderTest:
    """A worker's journal in a job on the shared Redis: lines 1-10 of input "in" enqueued and
    taken by the worker (a journal only records requests of entries its worker holds)."""
    require_redis(SHARED_REDIS_URL)
    name = f"test-journal-{uuid.uuid4().hex[:12]}"
    _REDIS_JOBS.append(name)
    setup: Any = redis.Redis.from_url(SHARED_REDIS_URL)
    probe = RedisJob(tracked_client(SHARED_REDIS_URL), name)
    stream = probe.stream("pn_a")
    try:
        setup.hset(probe.meta, mapping={"sources": 1, "source:in": 1, "name:1": "in"})
        setup.xgroup_create(stream, "workers", id="0", mkstream=True)
        for message in _messages(range(1, 11)):
            setup.xadd(stream, {"m": pack_message(message, 0)}, id=f"1-{message.line}")
        setup.xreadgroup("workers", "suite", {stream: ">"}, count=100)
        for key in (probe.meta, stream):  # cleaned up by expiry: the test reopens the journal
            setup.expire(key, 600)
    finally:
        setup.close()

    def reopen() -> Journal:
        job = RedisJob(tracked_client(SHARED_REDIS_URL), name)
        return RedisJournal(job, "suite", Holdings(), None)

    def tear() -> None:
        client: Any = redis.Redis.from_url(SHARED_REDIS_URL)
        try:  # a record no worker could have written: unreadable, so ignored
            client.hset(probe.started, "1-10", "half")
            for key in (probe.started, probe.outcomes):
                client.expire(key, 600)
        finally:
            client.close()

    sink = RedisSink(probe, "suite", Holdings(), None)
    return JournalUnderTest(reopen(), sink, reopen, tear)


JOURNALS: dict[str, Callable[[Path], JournalUnderTest]] = {
    "file": _file_journal,
    "redis": _redis_journal,
}


@pytest.fixture(params=sorted(JOURNALS))
def journal_under_test(request: pytest.FixtureRequest, tmp_path: Path) -> JournalUnderTest:
    return JOURNALS[request.param](tmp_path)


def _messages(lines: range, source: str = "in") -> list[Message]:
    return [
        Message(source, n, f"+1415555{n:04d}", "pn_a", b"{}", b"", 1, Encoding.GSM7) for n in lines
    ]


async def test_journal_read_back_decides_each_line(journal_under_test: JournalUnderTest) -> None:
    """After a crash: lines of a started request with no later outcome are in flight
    (MARK_UNKNOWN), lines of an `unsent` request and lines never journaled are sent, lines whose
    request wrote its outcomes are skipped; a torn last record is ignored."""
    j, sink = journal_under_test.journal, journal_under_test.sink
    j.record_start(1, _messages(range(1, 4)))  # in flight at the crash
    j.record_start(2, _messages(range(4, 7)))
    j.record_unsent(2)  # certainly never left
    j.record_start(3, _messages(range(7, 10)))
    sink.write_batch(BatchOutcome(_messages(range(7, 10)), Status.QUEUED, 3, 1, "pn_a"))
    await sink.flush()
    j.record_done(3)
    await j.sync()
    j.close()
    sink.close()
    journal_under_test.tear()

    state = journal_under_test.reopen().resume_state(resend_unknown=False)
    decisions = {line: state.decide("in", line) for line in range(1, 11)}
    assert decisions == {
        **dict.fromkeys(range(1, 4), Decision.MARK_UNKNOWN),
        **dict.fromkeys(range(4, 7), Decision.SEND),
        **dict.fromkeys(range(7, 10), Decision.SKIP),
        10: Decision.SEND,
    }
    assert state.in_flight_request("in", 2) == 1
    assert state.next_request > 3

    again = journal_under_test.reopen().resume_state(resend_unknown=True)
    assert again.decide("in", 2) is Decision.SEND  # --resend-unknown sends what was in flight


async def test_journal_request_numbers_grow_across_runs(
    journal_under_test: JournalUnderTest,
) -> None:
    """A run resumed twice never reuses a request number: next_request passes every one named."""
    j = journal_under_test.journal
    j.record_start(41, _messages(range(1, 2)))
    j.close()
    journal_under_test.sink.close()
    first = journal_under_test.reopen()
    state = first.resume_state(resend_unknown=False)
    assert state.next_request >= 42
    first.record_start(state.next_request, _messages(range(2, 3)))
    first.close()
    assert journal_under_test.reopen().resume_state(resend_unknown=False).next_request > (
        state.next_request
    )


# -- RateLimiter --------------------------------------------------------------------------------

RATE = 2000.0  # messages per second for "paced"
BATCH = 1000  # the configured batch size


def _local_limiter() -> RateLimiter:
    rates = {"paced": RATE, "other": RATE}
    return LocalRateLimiter(rates.get, batch_size=BATCH)


def _redis_limiter() -> RateLimiter:
    """The shared GCRA limiter, on rate keys of its own in the shared Redis."""
    require_redis(SHARED_REDIS_URL)
    rates = {"paced": RATE, "other": RATE}
    return RedisRateLimiter(
        tracked_client(SHARED_REDIS_URL),
        rates.get,
        batch_size=BATCH,
        prefix=f"streamsend-test:{uuid.uuid4().hex[:12]}:rate:",
    )


RATE_LIMITERS: dict[str, Callable[[], RateLimiter]] = {
    "local": _local_limiter,
    "redis": _redis_limiter,
}


@pytest.fixture(params=sorted(RATE_LIMITERS))
def limiter(request: pytest.FixtureRequest) -> RateLimiter:
    return RATE_LIMITERS[request.param]()


async def test_limiter_never_admits_more_than_rate_times_window_plus_burst(
    limiter: RateLimiter,
) -> None:
    """Several concurrent takers of one sending number: over every window between two
    admissions, what was admitted is at most rate × window + burst (one batch and the slack).

    The bound can only be broken by admitting too much; a slow machine admits less."""
    loop = asyncio.get_running_loop()
    cap = limiter.batch_cap("paced")
    take = max(1, cap // 4)
    admitted: list[tuple[float, int]] = []
    deadline = loop.time() + 0.6

    async def taker() -> None:
        while loop.time() < deadline:
            await limiter.acquire("paced", take)
            admitted.append((loop.time(), take))

    await asyncio.gather(*(taker() for _ in range(4)))
    burst = cap + RATE * LATENESS_SLACK_S
    assert len(admitted) > 8
    for i, (start, _) in enumerate(admitted):
        total = 0
        for end, amount in admitted[i:]:
            total += amount
            # The time an admission is seen can lag the moment it was made by a loop iteration;
            # 1 ms of the rate covers that and nothing more.
            assert total <= RATE * (end - start) + burst + RATE * 0.001, (start, end, total)


async def test_limiter_batch_cap_fits_in_one_admission(limiter: RateLimiter) -> None:
    """A batch of `batch_cap` messages is admitted (the burst holds at least one batch), and the
    cap carries at most a fraction of a second of the rate, so pacing stays smooth."""
    cap = limiter.batch_cap("paced")
    assert 1 <= cap <= RATE  # at most a second's worth
    async with asyncio.timeout(5):
        await limiter.acquire("paced", cap)


async def test_limiter_unlimited_sender_is_admitted_at_once(limiter: RateLimiter) -> None:
    """A sending number with no rate takes whole batches, again and again, without waiting."""
    assert limiter.batch_cap("free") == BATCH
    async with asyncio.timeout(5):
        for _ in range(100):
            await limiter.acquire("free", BATCH)


async def test_limiter_sending_numbers_do_not_wait_on_each_other(limiter: RateLimiter) -> None:
    """While one number's taker waits for its rate, another number is admitted first."""
    cap = limiter.batch_cap("paced")
    await limiter.acquire("paced", cap)  # empties the bucket of "paced"
    order: list[str] = []

    async def take(sender: str) -> None:
        await limiter.acquire(sender, cap)
        order.append(sender)

    async with asyncio.timeout(5):
        waiting = asyncio.create_task(take("paced"))
        await asyncio.sleep(0)  # "paced" is now waiting for its bucket
        await take("other")
        await waiting
    assert order == ["other", "paced"]


def test_implementations_are_the_protocols() -> None:
    """The implementations satisfy their Protocols structurally (mypy checks these lines)."""
    sources: list[LineSource] = [lines_from([b"x"])]
    sinks: list[OutcomeSink] = [MemorySink()]
    limiters: list[RateLimiter] = [_local_limiter()]
    journal_types: list[type[Journal]] = [FileJournal, RedisJournal]
    assert len(sources) == len(sinks) == len(limiters) == 1
    assert len(journal_types) == 2
