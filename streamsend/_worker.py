"""A worker: takes a job's entries from Redis and sends them, with the same promise as `send`.

Any number of workers, on any machines, share one job. Each one:

1. takes new entries of each sending number's stream (they are pending to it from then on) and
   batches them; the dispatcher paces each sending number with the shared Redis limiter;
2. before a request's first byte leaves, records "request started" in the job, which only
   succeeds while the entries are still its own (`RedisJournal`, fencing);
3. after the answer, commits the outcomes and acks the entries in one script (`RedisSink`);
4. renews the lease of what it holds every `lease / 3`; an entry idle for a whole lease
   belongs to a worker that stopped, and any worker takes it over (`XAUTOCLAIM`, every
   `lease / 2`): with a "started" record it may have been accepted, so it is reported
   `unknown` (sent again only with --resend-unknown); without one it is sent.

So only the lines of requests in flight when a worker died can end `unknown`, a dead worker's
entries are back in play within about 1.5 leases, and no line gets two outcomes. A worker stops
when the job is complete (its input is complete and every line has its outcome), or on
SIGINT/SIGTERM: it stops taking, drains what is in flight (up to --drain-timeout), and gives
back what it took but never started, for the others to send at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import orjson

from streamsend._batcher import Batcher
from streamsend._config import Settings
from streamsend._dispatch import Dispatcher
from streamsend._expiry import Expiry
from streamsend._models import BatchOutcome, Message, Outcome, Status
from streamsend._pipeline import dispatch_settings
from streamsend._redis_job import RedisJob, until_reachable
from streamsend._redis_limiter import RedisRateLimiter
from streamsend._redis_seams import Holdings, RedisJournal, RedisSink
from streamsend._stats import RunStats
from streamsend._types import ApiVersion, ExitCode, Logger

#: A dead worker's entries are taken over after one lease, found within half a lease more.
DEFAULT_LEASE_S = 10.0
_HEARTBEAT_S = 2.0
#: Workers that may take a line and stop before starting its request, before it is `failed`.
MAX_DELIVERIES = 5
_IDLE_POLL_S = (0.02, 0.5)  # an empty read waits from the first to the second, doubling


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    lease: float = DEFAULT_LEASE_S
    name: str | None = None  # unique per process by default (host, pid, a random tag)


def worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


class Worker:
    """One worker process's work on one job (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        job: RedisJob,
        *,
        api_key: str,
        log: Logger,
        stats: RunStats | None = None,
        options: WorkerOptions | None = None,
    ) -> None:
        options = options or WorkerOptions()
        self.settings = settings
        self.job = job
        self.name = options.name or worker_name()
        self.stats = stats or RunStats()
        self._api_key = api_key
        self._lease = options.lease
        self._log = log
        self._holdings = Holdings()
        # The moments (`send_before`) enqueue packed into the entries we hold: checked before
        # every attempt, so a line that waited in the job past its moment is `expired`.
        self._expiry = Expiry(expire_after=None)
        self._stopping = asyncio.Event()
        self._stop_requests = 0
        self._started_ms = int(time.time() * 1000)

    def request_stop(self) -> None:
        """First call: stop taking entries and drain; second call: stop at once."""
        self._stop_requests += 1
        self._stopping.set()
        self._log.warning("stopping" if self._stop_requests == 1 else "stopping_now")

    async def run(self) -> ExitCode:
        job, log = self.job, self._log
        api_version: ApiVersion = "v2" if await job.api_version() == "v2" else "v1"
        settings = replace(self.settings, api_version=api_version)
        number = await job.new_worker_number()
        self._limiter = limiter = RedisRateLimiter(
            job.client, settings.rate_for, batch_size=settings.batch_size, log=log
        )
        journal = RedisJournal(job, self.name, self._holdings, log)
        self._sink = sink = RedisSink(job, self.name, self._holdings, log)
        self._batcher = Batcher(
            api_version=api_version,
            max_messages=settings.batch_size,
            linger=0,
            cap_for_sender=limiter.batch_cap,
        )
        self._dispatcher = dispatcher = Dispatcher(
            dispatch_settings(
                settings,
                self._api_key,
                # Taken entries wait here under our lease: enough to keep every request slot
                # busy, not so much that one worker hoards a job the others could share.
                max_waiting_messages=settings.most_in_flight * settings.batch_size,
            ),
            sink=sink,
            journal=journal,
            stats=self.stats,
            limiter=limiter,
            # Request numbers unique across the job's workers: they name requests in outcomes.
            first_request=number * 1_000_000 + 1,
            log=log,
            expiry=self._expiry,
        )
        log.info("worker_start", worker=self.name, job=job.name, lease_s=self._lease)
        complete = False
        async with dispatcher:
            helpers = [
                asyncio.create_task(self._renew_leases(), name="renew"),
                asyncio.create_task(self._reclaim_loop(), name="reclaim"),
                asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            ]
            taker = asyncio.create_task(self._take_loop(), name="take")
            stop_wait = asyncio.create_task(self._stopping.wait())
            abort_wait = asyncio.create_task(dispatcher.aborted.wait())
            try:
                await asyncio.wait(
                    [taker, stop_wait, abort_wait], return_when=asyncio.FIRST_COMPLETED
                )
                if not taker.done():
                    taker.cancel()
                await asyncio.gather(taker, return_exceptions=True)
                if not taker.cancelled():
                    taker.result()  # a failure to read the job is raised, after the cleanup
                    complete = True
                await self._drain()
            finally:
                for task in (*helpers, stop_wait, abort_wait):
                    task.cancel()
                await asyncio.gather(*helpers, stop_wait, abort_wait, return_exceptions=True)
                await sink.flush()
                await journal.sync()
                await self._give_back()
                await self._heartbeat(final=True)
        if dispatcher.crashed is not None:
            raise dispatcher.crashed
        log.info("worker_stop", worker=self.name, complete=complete, fenced=sink.fenced_lines)
        if dispatcher.fatal is not None:
            return ExitCode.ABORTED
        if self._stop_requests:
            return ExitCode.INTERRUPTED
        return ExitCode.OK

    # -- taking entries -------------------------------------------------------------------------

    async def _take_loop(self) -> None:
        """Take new entries until the job is complete (or we are stopped)."""
        job, log = self.job, self._log
        idle = _IDLE_POLL_S[0]
        while True:
            took = 0
            streams = await until_reachable(job.sender_streams, log, "read")
            for stream in streams:
                sender = job.sender_of(stream)
                cap = self._limiter.batch_cap(sender)
                # Hold no more than keeps every request slot busy (about 1.6 s of a paced
                # number's rate): the other workers take the rest, and share the work.
                # With adaptive concurrency, the slots there are now (the limit grows only when
                # work waits for a slot, which the one extra batch provides).
                slots = self.stats.concurrency_limit or self.settings.most_in_flight
                await self._holdings.wait_below((slots + 1) * cap)
                count = 2 * cap
                flat = await until_reachable(
                    partial(job.take, stream, self.name, count), log, "take"
                )
                if flat:
                    took += len(flat) // 2
                    messages = await job.unpack_entries(sender, flat, self._expiry)
                    await self._submit(stream, messages)
            if took:
                idle = _IDLE_POLL_S[0]
                continue
            counts = await until_reachable(job.counts, log, "job status")
            if counts.complete:
                return
            await asyncio.sleep(idle)
            idle = min(_IDLE_POLL_S[1], idle * 2)

    async def _submit(self, stream: str, messages: list[Message]) -> None:
        """Hand entries now pending to us to the dispatcher, as batches."""
        self._holdings.add(stream, self.job.ids_of(messages))
        self.stats.lines_read += len(messages)
        batches = self._batcher.add_many(messages, time.monotonic())
        batches += self._batcher.flush_all()
        for batch in batches:
            await self._dispatcher.submit(batch)

    # -- leases ---------------------------------------------------------------------------------

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            for stream, ids in self._holdings.snapshot():
                for start in range(0, len(ids), 1000):
                    chunk = ids[start : start + 1000]
                    lost = await until_reachable(
                        partial(self.job.renew, stream, self.name, chunk),
                        self._log,
                        "renew",
                    )
                    if lost:
                        self._holdings.drop(stream, lost)
                        self._log.warning("lease_lost", step="renew", lines=len(lost))

    async def _reclaim_loop(self) -> None:
        while True:
            for stream in await until_reachable(self.job.sender_streams, self._log, "reclaim"):
                await until_reachable(partial(self._reclaim, stream), self._log, "reclaim")
            await asyncio.sleep(self._lease / 2)

    async def _reclaim(self, stream: str) -> None:
        """Take over the entries of workers that stopped renewing, and decide for each."""
        job = self.job
        found = await job.reclaim(stream, self.name, int(self._lease * 1000))
        sender = job.sender_of(stream)
        if found.deleted:
            lost: list[Outcome] = []
            for id_ in found.deleted:
                number, line = id_.split(b"-")
                lost.append(
                    Outcome(
                        await job.source_name(int(number)),
                        int(line),
                        Status.FAILED,
                        "entry_deleted",
                        "the job's entry for this line was deleted before it was sent",
                        sender=sender,
                    )
                )
            self._sink.write_unowned(lost)
        if not found.entries:
            if found.deleted:
                await self._sink.flush()
            return
        # Our own entries come back too when a renewal came late: they are in our lanes or in
        # flight already, and taking them again would send them twice.
        held = self._holdings.by_stream.get(stream, set())
        entries = [entry for entry in found.entries if entry[0] not in held]
        if not entries:
            return
        flat: list[bytes] = [part for entry in entries for part in entry]
        messages = await job.unpack_entries(sender, flat, self._expiry)
        to_send: list[Message] = []
        unknown: dict[int, list[Message]] = {}
        poison: list[Message] = []
        for (id_, _), message in zip(entries, messages, strict=True):
            record = found.started.get(id_)
            if record is not None and not self.settings.resend_unknown:
                unknown.setdefault(int(record.split(b" ")[1]), []).append(message)
            elif record is None and found.deliveries.get(id_, 0) > MAX_DELIVERIES:
                poison.append(message)
            else:
                to_send.append(message)
        if poison:
            # Taken by worker after worker, each of which stopped before even starting a
            # request for it: something about the line stops workers. Give up on it (never
            # sent, so `failed`), rather than let it stop every worker in turn.
            self._holdings.add(stream, job.ids_of(poison))
            self._sink.write_batch(
                BatchOutcome(
                    poison,
                    Status.FAILED,
                    0,
                    0,
                    sender,
                    "delivery_limit",
                    f"taken by {MAX_DELIVERIES} workers that all stopped before sending it; "
                    "never sent",
                )
            )
            self.stats.count_outcome(Status.FAILED.value, sender, len(poison))
        self._log.info(
            "reclaimed",
            sender=sender,
            to_send=len(to_send),
            unknown=sum(map(len, unknown.values())),
            deleted=len(found.deleted),
            failed=len(poison),
        )
        for request, carried in unknown.items():
            self._holdings.add(stream, job.ids_of(carried))
            self._sink.write_batch(
                BatchOutcome(
                    carried,
                    Status.UNKNOWN,
                    request,
                    0,
                    sender,
                    "in_flight_at_crash",
                    "a worker stopped while this line's request was in flight; it may have been "
                    "accepted (use --resend-unknown to send it again)",
                )
            )
            self.stats.count_outcome(Status.UNKNOWN.value, sender, len(carried))
        if unknown or poison or found.deleted:
            await self._sink.flush()
        if to_send:
            await self._submit(stream, to_send)

    async def _give_back(self) -> None:
        """Entries taken and never started: idle at once, so the others send them now."""
        for stream, ids in self._holdings.snapshot():
            for start in range(0, len(ids), 1000):
                with contextlib.suppress(Exception):
                    await self.job.release(
                        stream, self.name, ids[start : start + 1000], int(self._lease * 1000)
                    )

    async def _drain(self) -> None:
        """Wait for the requests in flight; once stopping, for at most --drain-timeout."""
        drain = asyncio.create_task(self._dispatcher.drain())
        second = asyncio.create_task(self._second_stop())
        try:
            timeout = self.settings.drain_timeout if self._stop_requests else None
            await asyncio.wait([drain, second], timeout=timeout, return_when="FIRST_COMPLETED")
            if not drain.done():
                self._log.warning("drain_cut", drain_timeout=self.settings.drain_timeout)
                # Requests still in flight are abandoned: reported `unknown` if they were sent,
                # given back (sent by another worker) if not.
                await self._dispatcher.cancel()
        finally:
            for task in (drain, second):
                task.cancel()
            await asyncio.gather(drain, second, return_exceptions=True)

    async def _second_stop(self) -> None:
        while self._stop_requests < 2:
            self._stopping.clear()
            await self._stopping.wait()

    # -- heartbeat ------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await self._heartbeat(final=False)
            await asyncio.sleep(_HEARTBEAT_S)

    async def _heartbeat(self, *, final: bool) -> None:
        beat: dict[str, Any] = {
            "started_ms": self._started_ms,
            "beat_ms": int(time.time() * 1000),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "holding": self._holdings.count(),
            "stopped": final,
        }
        with contextlib.suppress(Exception):
            await self.job.heartbeat(self.name, orjson.dumps(beat))
