"""Collecting a job: its outcomes as the NDJSON `send` writes, and how far along it is.

`collect` copies the job's outcome stream to a file, in commit order (each line appears once:
the job holds exactly one outcome per line). With `follow` it keeps copying until the job is
complete, then ends with `send`'s exit code; without it, it copies what there is and says how
many lines are still pending (`ExitCode.PENDING`). `job_status` reads the counters, the oldest
pending line and the workers' heartbeats.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, BinaryIO

import orjson

from streamsend._redis_job import GROUP, JobCounts, RedisJob, enqueued_ms, until_reachable
from streamsend._types import ExitCode, Logger

_FOLLOW_POLL_S = 0.2


@dataclass(frozen=True, slots=True)
class Collected:
    lines: int  # outcome lines written
    counts: JobCounts  # the job's counters when collecting stopped

    @property
    def exit_code(self) -> ExitCode:
        if not self.counts.complete:
            return ExitCode.PENDING
        not_queued = sum(n for s, n in self.counts.by_status.items() if s != "queued")
        return ExitCode.NOT_ALL_QUEUED if not_queued else ExitCode.OK


async def collect(job: RedisJob, out: BinaryIO, *, follow: bool, log: Logger = None) -> Collected:
    """Write the job's outcomes to `out` (see the module docstring)."""
    cursor = b"0-0"
    written = 0
    while True:
        # The counters are read before the outcomes: a job complete at that moment has every
        # outcome in the stream by then, so the read that follows gets them all.
        counts = await until_reachable(job.counts, log, "collect")
        while True:
            entries: list[tuple[bytes, dict[bytes, bytes]]] = await until_reachable(
                partial(job.client.xrange, job.outcomes, min=b"(" + cursor, count=200),
                log,
                "collect",
            )
            if not entries:
                break
            for entry_id, fields in entries:
                data = fields[b"o"]
                out.write(data)
                written += data.count(b"\n")
                cursor = entry_id
            out.flush()
        if counts.complete or not follow:
            return Collected(written, counts)
        await asyncio.sleep(_FOLLOW_POLL_S)


async def job_status(job: RedisJob) -> dict[str, Any]:
    """What `streamsend job status` prints: counts, the oldest pending line, the workers."""
    counts = await job.counts()
    now_ms = int(time.time() * 1000)
    oldest_ms: int | None = None
    for stream in await job.sender_streams():
        first = await _oldest_unacked(job, stream)
        if first is not None:
            oldest_ms = first if oldest_ms is None else min(oldest_ms, first)
    workers: dict[str, Any] = {}
    raw: dict[bytes, bytes] = await job.client.hgetall(job.workers)
    done_by = {k.decode()[5:]: int(v) for k, v in raw.items() if k.startswith(b"done:")}
    for key, value in raw.items():
        name = key.decode()
        if name.startswith("done:"):
            continue
        beat = orjson.loads(value)
        seconds = max(0.001, (beat["beat_ms"] - beat["started_ms"]) / 1000)
        done = done_by.get(name, 0)
        workers[name] = {
            "lines_done": done,
            "lines_per_s": round(done / seconds, 1),
            "last_heartbeat_s_ago": round((now_ms - beat["beat_ms"]) / 1000, 1),
            "stopped": beat.get("stopped", False),
        }
    return {
        "job": job.name,
        "lines": counts.lines,
        "input_complete": counts.input_complete,
        "done": counts.done,
        "by_status": counts.by_status,
        "pending": counts.pending,
        "oldest_pending_age_s": (
            None if oldest_ms is None else round((now_ms - oldest_ms) / 1000, 1)
        ),
        "complete": counts.complete,
        "workers": workers,
    }


async def _oldest_unacked(job: RedisJob, stream: str) -> int | None:
    """When the oldest line of `stream` without an outcome was enqueued (ms), if any."""
    client = job.client
    candidates: list[bytes] = []
    pending = await client.xpending(stream, GROUP)
    if pending["pending"]:
        candidates.append(pending["min"])
    groups = await client.xinfo_groups(stream)
    last = next((g["last-delivered-id"] for g in groups if g["name"] == GROUP.encode()), None)
    if last is not None:
        undelivered = await client.xrange(stream, min=b"(" + last, count=1)
        if undelivered:
            candidates.append(undelivered[0][0])
    if not candidates:
        return None
    first = min(candidates, key=lambda i: tuple(map(int, i.split(b"-"))))
    entry = await client.xrange(stream, min=first, max=first, count=1)
    return enqueued_ms(entry[0][1][b"m"]) if entry else None
