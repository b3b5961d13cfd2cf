"""`streamsend demo --workers N`: a rehearsal of scale-out, with one worker killed mid-run.

It starts the built-in emulator, enqueues a sample campaign into a job in the local Redis, runs
N `streamsend worker` processes on it at a shared rate, SIGKILLs one of them once about a third
of the lines are done, lets the others finish (they take over the dead worker's entries once its
lease runs out), and prints the collected summary with each worker's share. Nothing leaves the
machine.
"""

from __future__ import annotations

import asyncio
import collections
import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from streamsend._types import ExitCode

if TYPE_CHECKING:
    from streamsend._redis_job import RedisJob

#: The Redis the demo uses unless --redis / STREAMSEND_REDIS names another.
LOCAL_REDIS = "redis://127.0.0.1:6379"
_RATE_PER_S = 4000
_LEASE = "2s"


async def demo_cluster(
    *,
    workers: int,
    messages: int,
    keep: str | None,
    redis_url: str | None,
    write_campaign: Callable[[str, int], None],
) -> int:
    from streamsend._collect import collect
    from streamsend._config import load_settings
    from streamsend._enqueue import enqueue
    from streamsend._redis_job import RedisJob, connect, ping
    from streamsend._source import read_inputs
    from streamsend.emulator import DEFAULT_V1_LIST, EmulatorConfig, run_emulator

    url = redis_url or LOCAL_REDIS
    key = "trk_" + secrets.token_hex(16)
    client = connect(url)
    job = RedisJob(client, f"demo-{secrets.token_hex(4)}")
    try:
        await ping(client, url)
        config = EmulatorConfig(api_keys=(key,), v1_lists=(DEFAULT_V1_LIST,))
        with tempfile.TemporaryDirectory(prefix="streamsend-demo-") as scratch:
            folder = keep or scratch
            os.makedirs(folder, exist_ok=True)
            campaign = os.path.join(folder, "campaign.ndjson")
            outcomes = os.path.join(folder, "outcomes.ndjson")
            write_campaign(campaign, messages)
            settings = load_settings(env={}, cli={"sender": DEFAULT_V1_LIST})
            result = await enqueue(settings, job, read_inputs([campaign]))
            print(
                f"job {job.name} in {url}: {result.added:,} lines enqueued, {result.invalid} "
                "invalid lines reported at once"
            )
            async with run_emulator(config) as emulator:
                print(
                    f"{workers} workers sending at one shared rate of {_RATE_PER_S:,}/s to the "
                    f"built-in emulator ({emulator.base_url}) ...",
                    flush=True,
                )
                started = time.perf_counter()
                killed = await _run_workers(job, workers, url, key, emulator.base_url)
                elapsed = time.perf_counter() - started
            with open(outcomes, "wb") as out:  # noqa: ASYNC230 - one local file, once
                collected = await collect(job, out, follow=False)
            shares = await _shares(job)
        _print_summary(
            by_status=collected.counts.by_status,
            shares=shares,
            killed=killed,
            elapsed=elapsed,
            outcomes=outcomes,
            keep=keep,
        )
        # Like `demo`: the rehearsal worked once the job is complete (the bad lines are on purpose).
        return ExitCode.OK if collected.counts.complete else int(collected.exit_code)
    finally:
        await job.purge()
        await client.aclose()


async def _run_workers(
    job: RedisJob, workers: int, url: str, key: str, base_url: str
) -> tuple[int, str] | None:
    """Start the workers, SIGKILL the second once a third of the lines are done; wait for the
    others. Returns (pid, "killed at N lines done") of the killed worker."""
    env = {**os.environ, "STREAMSEND_REDIS": url, "TRACKLY_API_KEY": key}
    argv = [sys.executable, "-m", "streamsend", "worker", "--job", job.name]
    argv += ["--base-url", base_url, "--rate", f"{_RATE_PER_S}/s", "--lease", _LEASE]
    argv += ["--log-level", "error"]
    processes = [
        await asyncio.create_subprocess_exec(
            *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL
        )
        for _ in range(workers)
    ]
    killed: tuple[int, str] | None = None
    victim = processes[1] if workers > 1 else None
    total = (await job.counts()).lines
    while victim is not None and victim.returncode is None:
        counts = await job.counts()
        # Once it is at work (its first heartbeat names its pid), so that the kill is mid-run.
        started = any(f"-{victim.pid}-".encode() in k for k in await job.client.hkeys(job.workers))
        if counts.done >= total // 3 and started:
            victim.send_signal(signal.SIGKILL)
            killed = (victim.pid, f"killed at {counts.done:,} of {total:,} lines done")
            print(f"  SIGKILL to worker pid {victim.pid} ({killed[1]})", flush=True)
            break
        await asyncio.sleep(0.05)
    await asyncio.gather(*(p.wait() for p in processes))
    return killed


async def _shares(job: RedisJob) -> dict[str, int]:
    """Lines each worker committed, for every worker that sent a heartbeat (even none)."""
    raw = await job.client.hgetall(job.workers)
    done = {k.decode()[5:]: int(v) for k, v in raw.items() if k.startswith(b"done:")}
    names = [k.decode() for k in raw if not k.startswith(b"done:")]
    return {name: done.get(name, 0) for name in names}


def _print_summary(
    *,
    by_status: dict[str, int],
    shares: dict[str, int],
    killed: tuple[int, str] | None,
    elapsed: float,
    outcomes: str,
    keep: str | None,
) -> None:
    total = sum(by_status.values())
    print(f"\noutcomes: {total:,} lines in {elapsed:.2f} s")
    for status, count in collections.Counter(by_status).most_common():
        print(f"  {status:<9} {count:>9,}")
    print("each worker's share (lines it committed):")
    for name, count in sorted(shares.items(), key=lambda item: -item[1]):
        pid = name.split("-")[-2] if name.count("-") >= 2 else "?"
        mark = f"  <- {killed[1]}" if killed is not None and pid == str(killed[0]) else ""
        print(f"  {name:<36} {count:>9,}{mark}")
    unknown = by_status.get("unknown", 0)
    if killed is not None:
        print(
            f"{unknown:,} lines `unknown`: those of the requests the killed worker had in flight "
            "(they may have been accepted: never resent without --resend-unknown); the others "
            "took over the rest of its lines once its lease ran out"
        )
    if keep:
        print(f"outcomes kept in {outcomes}")
