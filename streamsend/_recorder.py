"""Recording: the journal records, outcomes and stats of one request, whatever became of it.

The attempt loop decides what an answer means; the recorder writes it down, in the order that
keeps `--resume` right: `start` reaches the journal (and, with the fsync policy, the disk) before
the request's first byte can leave; the outcomes are written and flushed before `done`; a request
that certainly never left is recorded `unsent`, so its lines are sent again on resume.
"""

from __future__ import annotations

from collections.abc import Sequence

from streamsend._columns import segments_total
from streamsend._exceptions import FatalServiceError, MaybeSent, SendError
from streamsend._expiry import EXPIRED, EXPIRED_ERROR
from streamsend._models import BatchOutcome, Message, Status
from streamsend._protocol import Accepted
from streamsend._stats import RunStats
from streamsend._types import Journal, Logger, OutcomeSink


class Recorder:
    """Writes what became of each request to the journal, the outcome sink and the stats."""

    def __init__(
        self, *, sink: OutcomeSink, journal: Journal | None, stats: RunStats, log: Logger
    ) -> None:
        self._sink = sink
        self._journal = journal
        self._stats = stats
        self._log = log

    # -- the journal ----------------------------------------------------------------------------

    def started(self, request: int, messages: Sequence[Message]) -> None:
        if self._journal is not None:
            self._journal.record_start(request, messages)

    async def sync_started(self) -> None:
        """Make the start records written so far durable (before the request's first byte)."""
        if self._journal is not None:
            await self._journal.sync()

    def unsent(self, request: int) -> None:
        """The request certainly never left: --resume sends its lines again."""
        if self._journal is not None:
            self._journal.record_unsent(request)

    async def finished(self, request: int) -> None:
        """The request's outcomes are written: make them durable, then close it in the journal."""
        await self._sink.flush()
        if self._journal is not None:
            self._journal.record_done(request)

    # -- one attempt ----------------------------------------------------------------------------

    def attempt(
        self,
        request: int,
        *,
        sender: str,
        messages: int,
        body_bytes: int,
        code: str,
        latency: float,
        attempt: int,
    ) -> None:
        self._stats.observe_request(code, latency)
        self._log.debug(
            "request",
            request=request,
            sender=sender,
            messages=messages,
            bytes=body_bytes,
            status=code,
            latency_ms=round(latency * 1000, 1),
            attempt=attempt,
        )

    # -- outcomes -------------------------------------------------------------------------------

    def accepted(
        self,
        request: int,
        sender: str,
        messages: Sequence[Message],
        attempts: int,
        accepted: Accepted,
    ) -> FatalServiceError | None:
        """Outcomes of a readable 2xx answer; the fatal error when it means the run must stop."""
        size = len(messages)
        rejections = {i: e for i, e in accepted.errors.items() if 0 <= i < size}
        unknown_list = {i for i, (code, _) in rejections.items() if code == "list_not_found"}
        if unknown_list and len(rejections) == size:
            # v2 reports an unknown list number per message, where v1 answers 404. It means the
            # same (every later request from this number fails too) and is handled the same:
            # those lines are `failed`, so --resume sends them once the number is fixed, and
            # the run stops.
            text = rejections[next(iter(unknown_list))][1]
            self._write(
                BatchOutcome(
                    messages,
                    Status.FAILED,
                    request,
                    attempts,
                    sender,
                    "list_not_found",
                    text,
                    rejections={i: e for i, e in rejections.items() if i not in unknown_list}
                    or None,
                )
            )
            return FatalServiceError(text, code="list_not_found", request=request)
        if len(rejections) != len(accepted.errors):
            self._log.warning(
                "error_index_out_of_range",
                request=request,
                indexes=sorted(set(accepted.errors) - set(rejections)),
            )
        queued = size - len(rejections)
        if accepted.queued_count is not None and accepted.queued_count != queued:
            self._log.warning(
                "queued_count_mismatch",
                request=request,
                queued_count=accepted.queued_count,
                expected=queued,
            )
        self._write(
            BatchOutcome(
                messages, Status.QUEUED, request, attempts, sender, rejections=rejections or None
            )
        )
        self._stats.segments_sent += segments_total(messages)
        return None

    def failed(
        self,
        request: int,
        sender: str,
        messages: Sequence[Message],
        attempts: int,
        failure: SendError,
    ) -> None:
        """Every line of the request ends `failed`, or `unknown` when it may have been accepted."""
        status = Status.UNKNOWN if isinstance(failure, MaybeSent) else Status.FAILED
        self._write(
            BatchOutcome(messages, status, request, attempts, sender, failure.code, str(failure))
        )

    def expired(
        self, request: int, sender: str, messages: Sequence[Message], attempts: int
    ) -> None:
        """These lines' moment passed before the request could (again) leave: never sent.

        The outcomes name the request, which orders them after its journal `start` record, so
        a resume takes them as settled, not as in flight.
        """
        self._write(
            BatchOutcome(
                messages,
                Status.EXPIRED,
                request,
                attempts,
                sender,
                EXPIRED,
                EXPIRED_ERROR,
            )
        )

    def abandoned(
        self,
        request: int,
        sender: str,
        messages: Sequence[Message],
        attempts: int,
        *,
        transmitted: bool,
    ) -> None:
        """Cancelled mid-request (shutdown): say what is known, and nothing more."""
        if not transmitted:
            self.unsent(request)
            return
        self._write(
            BatchOutcome(
                messages,
                Status.UNKNOWN,
                request,
                attempts,
                sender,
                "cancelled",
                "the run stopped while this request was in flight",
            )
        )
        if self._journal is not None:
            self._journal.record_done(request)

    def _write(self, result: BatchOutcome) -> None:
        self._sink.write_batch(result)
        for status, count in result.count_by_status().items():
            self._stats.count_outcome(status.value, result.sender, count)
