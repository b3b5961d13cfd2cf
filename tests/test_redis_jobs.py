"""Scale-out end to end: enqueue, workers (in-process and SIGKILLed subprocesses), collect.

Against the real Redis (the shared one, a job per test; a private one where a test kills it)
and the emulator over loopback HTTP; the emulator's ledger says what reached the service. The
invariants checked everywhere: every line has exactly one outcome, and a line is in the ledger
more than once only if its outcome is `unknown`.
"""

from __future__ import annotations

import asyncio
import io
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamsend._collect import collect, job_status
from streamsend._config import Settings, load_settings
from streamsend._enqueue import enqueue
from streamsend._redis_job import RedisJob, connect
from streamsend._source import read_inputs
from streamsend._stats import RunStats
from streamsend._types import ExitCode
from streamsend._worker import MAX_DELIVERIES, Worker, WorkerOptions
from streamsend.testing import read_ledger
from tests.conftest import (
    API_KEY,
    EmulatorFactory,
    RecordingLog,
    clean_env,
    run_streamsend,
    write_numbered_input,
)
from tests.redis_fixtures import PrivateRedis, require_redis

HERE = Path(__file__).resolve().parent
LEASE_S = 1.0


def _sender() -> str:
    """A sending number of this test's own: rate keys in the shared Redis are per number."""
    return f"pn_{uuid.uuid4().hex[:10]}"


def _settings(sender: str, base_url: str = "http://127.0.0.1:9/api", **cli: Any) -> Settings:
    return load_settings(env={}, cli={"sender": sender, "base_url": base_url, **cli})


async def _enqueue_numbered(
    job: RedisJob, tmp: Path, lines: int, sender: str, invalid_every: int | None = None
) -> Path:
    path = tmp / "input.ndjson"
    write_numbered_input(path, lines, invalid_every=invalid_every)
    await enqueue(_settings(sender), job, read_inputs([str(path)]))
    return path


async def _run_worker(job: RedisJob, settings: Settings, log: RecordingLog | None = None) -> int:
    worker = Worker(
        settings,
        job,
        api_key=API_KEY,
        log=log or RecordingLog(),
        stats=RunStats(),
        options=WorkerOptions(lease=LEASE_S),
    )
    return await worker.run()


async def _collected(job: RedisJob) -> list[dict[str, Any]]:
    out = io.BytesIO()
    await collect(job, out, follow=False)
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


def _check_guarantee(
    outcomes: list[dict[str, Any]], ledger: list[dict[str, Any]], lines: int
) -> None:
    """One outcome per line; each queued line in the ledger once; only `unknown` lines twice."""
    by_line = Counter(o["line"] for o in outcomes)
    assert set(by_line) == set(range(1, lines + 1))
    assert max(by_line.values()) == 1
    status = {o["line"]: o["status"] for o in outcomes}
    sent = Counter(int(r["body"].removeprefix("m")) for r in ledger)
    for line, times in sent.items():
        assert times == 1 or status[line] == "unknown", (line, times, status[line])
    for line, line_status in status.items():
        if line_status == "queued":
            assert sent[line] == 1, line
        elif line_status in ("failed", "invalid"):
            assert sent[line] == 0, line


async def test_enqueue_twice_adds_nothing_and_invalid_lines_get_outcomes_at_once(
    job: RedisJob, tmp_path: Path
) -> None:
    """Entry IDs come from (input, line): a second enqueue of the same input adds nothing; an
    invalid line has its outcome in the job before any worker runs, and collect without
    --follow reports the job pending."""
    sender = _sender()
    path = await _enqueue_numbered(job, tmp_path, 50, sender, invalid_every=10)
    again = await enqueue(_settings(sender), job, read_inputs([str(path)]))
    assert (again.added, again.invalid, again.already) == (0, 0, 50)
    counts = await job.counts()
    assert (counts.lines, counts.done, counts.pending) == (50, 5, 45)
    assert counts.input_complete
    out = io.BytesIO()
    result = await collect(job, out, follow=False)
    assert result.exit_code == ExitCode.PENDING
    invalid = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert sorted(o["line"] for o in invalid) == [5, 15, 25, 35, 45]
    assert {o["status"] for o in invalid} == {"invalid"}


async def test_workers_in_process_share_a_job_with_one_outcome_per_line(
    job: RedisJob, tmp_path: Path, emulator: EmulatorFactory
) -> None:
    """Two workers on one job at a shared rate: every line one outcome, every queued line in
    the ledger once, and `job status` shows the job complete with both workers' counts."""
    sender = _sender()
    emu = await emulator(v1_lists=(sender,))
    await _enqueue_numbered(job, tmp_path, 3000, sender, invalid_every=500)
    settings = _settings(sender, emu.base_url, rate="6000/s")
    codes = await asyncio.gather(_run_worker(job, settings), _run_worker(job, settings))
    assert list(codes) == [ExitCode.OK, ExitCode.OK]
    outcomes = await _collected(job)
    _check_guarantee(outcomes, read_ledger(emu.config.ledger_path), 3000)
    assert Counter(o["status"] for o in outcomes) == {"queued": 2994, "invalid": 6}
    status = await job_status(job)
    assert status["complete"]
    assert status["pending"] == 0
    assert sum(w["lines_done"] for w in status["workers"].values()) == 2994


async def test_a_busy_workers_own_late_leases_are_not_counted_as_deliveries(
    job: RedisJob, tmp_path: Path
) -> None:
    """A worker whose lease renewals come late claims its own entries back in its reclaim
    round; that must not count as a delivery, or a slow but living worker's lines reach
    MAX_DELIVERIES and end `failed` (`delivery_limit`) though never sent (seen in the
    3-worker demo under CPU load). A takeover by another worker still counts."""
    sender = _sender()
    await _enqueue_numbered(job, tmp_path, 20, sender)
    (stream,) = await job.sender_streams()
    taken = await job.take(stream, "worker-a", 20)
    assert len(taken) == 40  # [id, packed] per entry
    for _ in range(MAX_DELIVERIES + 2):
        await asyncio.sleep(0.03)
        found = await job.reclaim(stream, "worker-a", 20)  # its own lapsed entries
        assert len(found.entries) == 20
        assert set(found.deliveries.values()) == {1}
    await asyncio.sleep(0.03)
    found = await job.reclaim(stream, "worker-b", 20)  # a takeover
    assert len(found.entries) == 20
    assert set(found.deliveries.values()) == {2}


async def test_a_line_whose_moment_passed_while_in_the_job_is_expired_not_sent(
    job: RedisJob, tmp_path: Path, emulator: EmulatorFactory
) -> None:
    """`send_before` travels with the entry: a line still in its moment at enqueue but past it
    when a worker takes it ends `expired` and never reaches the service, as with `send`;
    lines with a later moment or none are queued once."""
    sender = _sender()
    emu = await emulator(v1_lists=(sender,))
    soon = datetime.now(UTC) + timedelta(seconds=1)
    moments = {1: soon, 2: None, 3: soon, 4: soon + timedelta(days=365)}
    path = tmp_path / "input.ndjson"
    with path.open("wb") as out:
        for n, moment in moments.items():
            line: dict[str, Any] = {"to_msisdn": f"+1415{n:07d}", "body": f"m{n}"}
            if moment is not None:
                line["send_before"] = moment.isoformat()
            out.write(orjson.dumps(line) + b"\n")
    result = await enqueue(_settings(sender), job, read_inputs([str(path)]))
    assert result.added == 4  # nothing had expired yet
    await asyncio.sleep((soon - datetime.now(UTC)).total_seconds() + 0.2)
    settings = _settings(sender, emu.base_url, rate="6000/s")
    assert await _run_worker(job, settings) == ExitCode.OK
    outcomes = await _collected(job)
    _check_guarantee(outcomes, read_ledger(emu.config.ledger_path), 4)
    status = {o["line"]: o["status"] for o in outcomes}
    assert status == {1: "expired", 2: "queued", 3: "expired", 4: "queued"}
    assert sorted(int(r["body"][1:]) for r in read_ledger(emu.config.ledger_path)) == [2, 4]


async def test_three_worker_processes_keep_one_rate_per_sending_number(
    redis_url: str, tmp_path: Path, emulator: EmulatorFactory
) -> None:
    """3 `streamsend worker` processes, one sending number, `--rate`: one outcome per line,
    each queued line in the ledger once, and no 1 s window at the service above the rate plus
    one batch (the shared GCRA's bound; the ±3% of the rate is a benchmark's, not a test's)."""
    sender = _sender()
    emu = await emulator(v1_lists=(sender,))
    job_name = f"test-{uuid.uuid4().hex[:12]}"
    path = tmp_path / "input.ndjson"
    write_numbered_input(path, 6000)
    env = clean_env(TRACKLY_API_KEY=API_KEY, STREAMSEND_REDIS=redis_url)
    code, _, err = await run_streamsend(
        ["enqueue", str(path), "--job", job_name, "--from", sender], env=env, timeout_s=60
    )
    assert code == 0, err
    rate = 2000  # per second
    worker = ["worker", "--job", job_name, "--base-url", emu.base_url, "--rate", f"{rate}/s"]
    try:
        results = await asyncio.gather(
            *(run_streamsend([*worker, "--lease", "2s"], env=env, timeout_s=90) for _ in range(3))
        )
        assert [r[0] for r in results] == [0, 0, 0], [r[2][-500:] for r in results]
        code, out, err = await run_streamsend(
            ["collect", "--job", job_name, "--outcomes", "-"], env=env, timeout_s=60
        )
        assert code == 0, err
        outcomes = [orjson.loads(line) for line in out.splitlines()]
        ledger = read_ledger(emu.config.ledger_path)
        _check_guarantee(outcomes, ledger, 6000)
        cap = int(rate * 0.2)  # one batch at this rate (PACE_GRANULARITY_S)
        times = sorted(r["t"] for r in ledger)
        j = 0
        for i, start in enumerate(times):
            while j < len(times) and times[j] < start + 1.0:
                j += 1
            # Arrival times add the request's own latency, so a batch admitted at the edge of
            # the window can arrive inside it: one batch of slack on top of the bound.
            assert j - i <= rate + 2 * cap, (start, j - i)
        status_code, status_out, _ = await run_streamsend(
            ["job", "status", job_name], env=env, timeout_s=60
        )
        assert status_code == 0
        assert len(orjson.loads(status_out)["workers"]) == 3
    finally:
        await run_streamsend(["job", "purge", job_name], env=env, timeout_s=60)


@pytest.mark.parametrize("point", ["taken", "started", "mid_request", "committed"])
async def test_a_worker_killed_at_any_point_leaves_no_line_twice_or_without_outcome(
    point: str, job: RedisJob, redis_url: str, tmp_path: Path, emulator: EmulatorFactory
) -> None:
    """A worker SIGKILLed after taking entries, after "request started", mid-request or after a
    commit: another worker takes its entries over once its lease runs out and finishes the job;
    every line has one outcome, and only lines of the request in flight at the kill (reported
    `unknown`) may be in the ledger twice. Before "started", nothing may end unknown."""
    sender = _sender()
    emu = await emulator(v1_lists=(sender,))
    lines = 2000
    await _enqueue_numbered(job, tmp_path, lines, sender)
    settings = _settings(sender, emu.base_url, rate="4000/s")
    env = clean_env(TRACKLY_API_KEY=API_KEY, STREAMSEND_REDIS=redis_url)
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, str(HERE / "worker_killed_at.py"), point),
        *("--job", job.name, "--base-url", emu.base_url, "--rate", "4000/s", "--lease", "1s"),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        _, err = await process.communicate()
    assert process.returncode == -9, err[-2000:]
    assert await _run_worker(job, settings) == ExitCode.OK
    outcomes = await _collected(job)
    _check_guarantee(outcomes, read_ledger(emu.config.ledger_path), lines)
    unknown = [o for o in outcomes if o["status"] == "unknown"]
    if point == "taken":
        assert not unknown
    if point in ("started", "mid_request"):
        assert unknown, "the killed request's lines are reported unknown"
        assert {o["code"] for o in unknown} == {"in_flight_at_crash"}
    assert len(unknown) <= 1000  # at most one request's lines: the one in flight


async def test_redis_killed_mid_job_and_restarted_workers_reconnect_and_finish(
    private_redis: PrivateRedis, tmp_path: Path, emulator: EmulatorFactory
) -> None:
    """A private Redis (AOF, appendfsync always) SIGKILLed while two workers send, restarted on
    its files a moment later: the workers wait (sending nothing new), reconnect, and finish with
    one outcome per line and no queued line sent twice."""
    sender = _sender()
    emu = await emulator(v1_lists=(sender,))
    lines = 3000
    client = connect(private_redis.url)
    job = RedisJob(client, "kill-redis")
    try:
        await _enqueue_numbered(job, tmp_path, lines, sender)
        settings = _settings(sender, emu.base_url, rate="2000/s")
        log = RecordingLog()
        workers = asyncio.gather(_run_worker(job, settings, log), _run_worker(job, settings))
        while len(read_ledger(emu.config.ledger_path)) < 600:  # noqa: ASYNC110 - another task writes it
            await asyncio.sleep(0.02)
        private_redis.kill()
        await asyncio.sleep(0.5)
        private_redis.start()
        async with asyncio.timeout(60):
            assert list(await workers) == [ExitCode.OK, ExitCode.OK]
        outcomes = await _collected(job)
        _check_guarantee(outcomes, read_ledger(emu.config.ledger_path), lines)
    finally:
        await client.aclose()


async def test_fencing_refuses_start_and_commit_of_entries_another_worker_took(
    job: RedisJob, tmp_path: Path
) -> None:
    """Once another worker claims a worker's entries, its "started" record and its commit are
    refused (and write nothing), while the new owner's succeed."""
    sender = _sender()
    await _enqueue_numbered(job, tmp_path, 5, sender)
    stream = job.stream(sender)
    flat = await job.take(stream, "old", 10)
    ids = flat[0::2]
    assert len(ids) == 5
    assert await job.start(stream, "old", 1, ids)
    await asyncio.sleep(0.05)
    taken = await job.reclaim(stream, "new", 10)
    assert [e[0] for e in taken.entries] == ids
    assert set(taken.started) == set(ids)  # old's record: the new owner reports them unknown
    assert not await job.start(stream, "old", 2, ids)
    async with job.client.pipeline(transaction=False) as pipe:
        for worker in ("old", "new"):
            await job.commit(
                pipe, stream=stream, worker=worker, outcomes=b"x\n", counts={"unknown": 5}, ids=ids
            )
        assert await pipe.execute() == [0, 1]
    counts = await job.counts()
    assert (counts.done, counts.by_status) == (5, {"unknown": 5})
    assert await job.client.hlen(job.started) == 0


def test_a_missing_redis_fails_the_test_with_how_to_start_one() -> None:
    """No Redis at the URL: the fixture's check fails the test (never skips) and says how to
    start one."""
    with pytest.raises(pytest.fail.Exception, match="redis-server --port 6379"):
        require_redis("redis://127.0.0.1:1")


async def test_cli_needs_a_redis_and_an_existing_job(redis_url: str) -> None:
    """Without --redis or STREAMSEND_REDIS the commands say how to name one; collecting a job
    that doesn't exist is one clear line and exit 2."""
    code, _, err = await run_streamsend(["job", "status", "nope"], env=clean_env(), timeout_s=60)
    assert code == 2
    assert b"STREAMSEND_REDIS" in err
    missing = f"test-missing-{uuid.uuid4().hex[:8]}"
    code, _, err = await run_streamsend(
        ["collect", "--job", missing, "--outcomes", "-", "--redis", redis_url],
        env=clean_env(),
        timeout_s=60,
    )
    assert code == 2
    assert f"no job named {missing!r}".encode() in err
    assert b"Traceback" not in err
    require_redis(redis_url)


async def test_fencing_check_holds_when_the_ids_range_has_more_of_our_entries(
    job: RedisJob, tmp_path: Path
) -> None:
    """The ownership check reads the IDs' whole range at once; when that range holds more of
    the worker's entries than the reply's limit, each ID is still judged right: the worker's own
    pass, one another worker took is refused."""
    sender = _sender()
    await _enqueue_numbered(job, tmp_path, 300, sender)
    stream = job.stream(sender)
    ids = (await job.take(stream, "old", 300))[0::2]
    assert len(ids) == 300
    assert await job.start(stream, "old", 1, [ids[0], ids[-1]])
    await job.client.execute_command("XCLAIM", stream, "workers", "new", 0, ids[-1])
    assert not await job.start(stream, "old", 2, [ids[0], ids[-1]])
    assert await job.renew(stream, "old", [ids[0], ids[150], ids[-1]]) == [ids[-1]]


async def test_enqueue_reads_csv_with_a_template_as_send_does(
    job: RedisJob, tmp_path: Path
) -> None:
    """`enqueue` takes `send`'s input options: a CSV with a body template is enqueued row by
    row, and a row the template can't fill gets its `invalid` outcome at once."""
    from streamsend._campaign import Campaign

    path = tmp_path / "campaign.csv"
    path.write_text("to_msisdn,name\n+14155550001,Ana\n+14155550002,\n+14155550003,Bo\n")
    settings = _settings(_sender(), input_format="csv", template="Hi {name}!")
    columns = Campaign.load(settings).columns
    result = await enqueue(
        settings, job, read_inputs([str(path)], input_format="csv", columns=columns)
    )
    assert (result.added, result.invalid) == (2, 1)
    [invalid] = await _collected(job)
    assert invalid["status"] == "invalid"
    assert invalid["line"] == 3


async def test_a_line_every_worker_dies_on_ends_failed_after_the_delivery_limit(
    job: RedisJob, tmp_path: Path, emulator: EmulatorFactory
) -> None:
    """Entries taken by worker after worker, none of which started a request for them, end
    `failed` (never sent) once past the delivery limit, instead of stopping workers for ever;
    entries under the limit are sent."""
    sender = _sender()
    emu = await emulator(v1_lists=(sender,))
    await _enqueue_numbered(job, tmp_path, 6, sender)
    stream = job.stream(sender)
    ids = (await job.take(stream, "dead", 10))[0::2]
    # As if taken 10 times (3 of them) or once (the others), the last taker long silent.
    for claimed, retries in ((ids[:3], 10), (ids[3:], 1)):
        await job.client.xclaim(
            stream, "workers", "dead", 0, claimed, idle=600_000, retrycount=retries, justid=True
        )
    assert await _run_worker(job, _settings(sender, emu.base_url)) == ExitCode.OK
    outcomes = {o["line"]: o for o in await _collected(job)}
    assert {line: o["status"] for line, o in outcomes.items()} == {
        **dict.fromkeys((1, 2, 3), "failed"),
        **dict.fromkeys((4, 5, 6), "queued"),
    }
    assert outcomes[1]["code"] == "delivery_limit"
    assert sorted(int(r["body"][1:]) for r in read_ledger(emu.config.ledger_path)) == [4, 5, 6]
