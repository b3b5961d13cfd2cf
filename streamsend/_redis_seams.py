"""The seams of a run, kept in a Redis job: a worker's `Journal` and `OutcomeSink`.

A worker runs the same dispatcher as `send` (lanes, attempt loop, recorder); what changes is
where the records go:

- `RedisJournal`: `record_start` + `sync` is the job's "request started" record, written only
  while the request's entries are still pending to this worker (fencing: a worker that lost
  them raises `LeaseLost`, and the attempt loop drops the request unsent);
- `RedisSink`: a request's outcomes are committed with its acks in one script, again only if
  the entries are still this worker's; a fenced commit is dropped, and the worker that took
  the entries over reports them (`unknown`, since their "started" record is there).

The rate limiter is `_redis_limiter.RedisRateLimiter`; the worker's input is the job's streams.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Sequence
from functools import partial

from streamsend._exceptions import LeaseLost
from streamsend._journal import ResumeState
from streamsend._models import BatchOutcome, Message, Outcome
from streamsend._outcomes import OutcomeEncoder
from streamsend._redis_job import RedisJob, until_reachable
from streamsend._types import Logger


class Holdings:
    """The entries a worker holds (taken, not committed), per stream: what its lease renews."""

    def __init__(self) -> None:
        self.by_stream: defaultdict[str, set[bytes]] = defaultdict(set)
        self.dropped = asyncio.Event()  # set whenever entries leave: room to take more

    def add(self, stream: str, ids: Sequence[bytes]) -> None:
        self.by_stream[stream].update(ids)

    def drop(self, stream: str, ids: Sequence[bytes]) -> None:
        held = self.by_stream.get(stream)
        if held is not None:
            held.difference_update(ids)
            self.dropped.set()

    async def wait_below(self, limit: int) -> None:
        while self.count() >= limit:
            self.dropped.clear()
            await self.dropped.wait()

    def count(self) -> int:
        return sum(len(ids) for ids in self.by_stream.values())

    def snapshot(self) -> list[tuple[str, list[bytes]]]:
        return [(stream, sorted(ids)) for stream, ids in self.by_stream.items() if ids]


class RedisJournal:
    """The `Journal` seam for a worker: "request started" records in the job (see above)."""

    def __init__(self, job: RedisJob, worker: str, holdings: Holdings, log: Logger) -> None:
        self._job = job
        self._worker = worker
        self._holdings = holdings
        self._log = log
        self._pending: list[tuple[int, Sequence[Message]]] = []
        self._unsent: list[tuple[int, Sequence[Message]]] = []
        self._carried: dict[int, Sequence[Message]] = {}
        self._refused: set[int] = set()
        self._by_task: dict[asyncio.Task[object] | None, int] = {}
        self._lock = asyncio.Lock()
        self._named = 0  # the highest request number recorded
        self._kept = 0  # the highest one written to the job

    def record_start(self, request: int, messages: Sequence[Message]) -> None:
        self._pending.append((request, messages))
        self._carried[request] = messages
        self._by_task[asyncio.current_task()] = request
        self._named = max(self._named, request)

    def record_unsent(self, request: int) -> None:
        carried = self._carried.pop(request, None)
        if carried is not None and not self._drop_pending(request):
            self._unsent.append((request, carried))

    def record_done(self, request: int) -> None:
        # The commit already deleted the records, with the acks (see RedisSink); a start still
        # waiting for sync() is moot now.
        self._carried.pop(request, None)
        self._drop_pending(request)

    def _drop_pending(self, request: int) -> bool:
        """Forget a start record not written yet; whether there was one."""
        kept = [p for p in self._pending if p[0] != request]
        dropped = len(kept) != len(self._pending)
        self._pending = kept
        return dropped

    async def sync(self) -> None:
        """Write the start records recorded so far; raise `LeaseLost` when the caller's own
        request was refused (another worker holds one of its entries now)."""
        mine = self._by_task.pop(asyncio.current_task(), None)
        job = self._job
        async with self._lock:
            pending, self._pending = self._pending, []
            unsent, self._unsent = self._unsent, []
            for request, messages in pending:
                stream = job.stream(messages[0].sender)
                ids = await until_reachable(partial(job.ids_for, messages), self._log, "start")
                started = await until_reachable(
                    partial(job.start, stream, self._worker, request, ids),
                    self._log,
                    "request started",
                )
                if started:
                    self._kept = max(self._kept, request)
                else:
                    self._refused.add(request)
                    self._carried.pop(request, None)
                    # Stop renewing them: whichever of them are still ours go idle and are
                    # reclaimed (and sent, having no record) by whoever looks next.
                    self._holdings.drop(stream, ids)
            for request, messages in unsent:
                ids = await until_reachable(partial(job.ids_for, messages), self._log, "unsent")
                await until_reachable(
                    partial(
                        job.forget_start, job.stream(messages[0].sender), self._worker, request, ids
                    ),
                    self._log,
                    "request unsent",
                )
        if mine is not None and mine in self._refused:
            self._refused.discard(mine)
            if self._log is not None:
                self._log.warning("lease_lost", request=mine, step="start")
            raise LeaseLost(f"request {mine}: its entries belong to another worker now")

    def resume_state(self, *, resend_unknown: bool) -> ResumeState:
        """The job read back as `send --resume` would read a journal. A worker never needs it
        (it takes over a stopped worker's entries, deciding from their "started" records); it
        is what an operator's tool, or a test, reads to see what is in flight."""
        return self._job.resume_state(resend_unknown=resend_unknown)

    def close(self) -> None:
        if self._named > self._kept:
            # Named but never synced: keep the number taken, so none is used twice.
            self._job.note_request_named(self._named)
            self._kept = self._named
        self._carried.clear()


class RedisSink:
    """The `OutcomeSink` seam in a job: each write is one commit (outcomes, acks, counters).

    With `worker`, a commit acks the entries of its lines and holds only while they are still
    the worker's (fencing); without one (`worker=None`), outcomes are appended for lines that
    have no entry. `flush` commits what was written, all in one pipeline: it is the durability
    point (with `appendfsync always` on the server, see the README).
    """

    def __init__(
        self, job: RedisJob, worker: str | None, holdings: Holdings | None, log: Logger
    ) -> None:
        self._job = job
        self._worker = worker
        self._holdings = holdings
        self._log = log
        self._encoder = OutcomeEncoder()
        # (stream or "", outcome bytes, counts by status, the lines whose entries it acks)
        self._buffer: list[tuple[str, bytes, dict[str, int], Sequence[Message | Outcome]]] = []
        self._lock = asyncio.Lock()
        self._closed = False
        self.fenced_lines = 0  # outcomes dropped because another worker took the entries

    def write(self, outcomes: Sequence[Outcome]) -> None:
        if not outcomes:
            return
        self._check_open()
        if self._worker is None:
            self._append("", outcomes, [])
            return
        by_sender: dict[str | None, list[Outcome]] = defaultdict(list)
        for outcome in outcomes:
            by_sender[outcome.sender].append(outcome)
        for sender, group in by_sender.items():
            if sender is None:  # a line with no entry (refused before it had a sender)
                self._append("", group, [])
            else:
                self._append(self._job.stream(sender), group, group)

    def write_unowned(self, outcomes: Sequence[Outcome]) -> None:
        """Outcomes of lines whose entries are gone (deleted while pending): nothing to ack."""
        if outcomes:
            self._check_open()
            self._append("", outcomes, [])

    def write_batch(self, result: BatchOutcome) -> None:
        if not result.messages:
            return
        self._check_open()
        counts = {status.value: n for status, n in result.count_by_status().items()}
        if self._worker is None:
            self._buffer.append(("", self._encoder.encode_batch(result), counts, ()))
        else:
            stream = self._job.stream(result.sender)
            data = self._encoder.encode_batch(result)
            self._buffer.append((stream, data, counts, result.messages))

    async def flush(self) -> None:
        async with self._lock:
            # Outcomes written while an earlier flush ran are committed here; a caller whose
            # outcomes that earlier flush took waits for the lock, so it returns after them.
            buffer, self._buffer = self._buffer, []
            if not buffer:
                return
            worker = self._worker or ""
            job = self._job
            all_ids = [
                await until_reachable(partial(job.ids_for, lines), self._log, "commit")
                if lines
                else []
                for _, _, _, lines in buffer
            ]

            async def commit_all() -> list[int]:
                async with job.client.pipeline(transaction=False) as pipe:
                    for (stream, data, counts, _), ids in zip(buffer, all_ids, strict=True):
                        await job.commit(
                            pipe,
                            stream=stream or job.meta,
                            worker=worker,
                            outcomes=data,
                            counts=counts,
                            ids=ids,
                        )
                    replies: list[int] = await pipe.execute()
                    return replies

            replies = await until_reachable(commit_all, self._log, "commit")
            for (stream, _, _, _), ids, committed in zip(buffer, all_ids, replies, strict=True):
                if self._holdings is not None and ids:
                    self._holdings.drop(stream, ids)
                if not committed:
                    # Another worker took these entries over: it reports them (`unknown`:
                    # their "started" record is there). Ours would be a second outcome.
                    self.fenced_lines += len(ids)
                    if self._log is not None:
                        self._log.warning("lease_lost", step="commit", lines=len(ids))

    def close(self) -> None:
        if self._buffer and self._log is not None:
            # Not committed, so still pending in the job: another worker reclaims them.
            self._log.warning("outcomes_not_committed", commits=len(self._buffer))
            self._buffer.clear()
        self._closed = True

    def _append(self, stream: str, outcomes: Sequence[Outcome], acked: Sequence[Outcome]) -> None:
        counts = Counter(o.status.value for o in outcomes)
        self._buffer.append((stream, self._encoder.encode(outcomes), dict(counts), acked))

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("outcome written after the sink was closed")
