"""The records that flow through the pipeline.

Every input line becomes either a `Message` (valid, to be sent) or an `Outcome` with status
`invalid`; every `Message` is carried by exactly one `Batch` per attempt and ends as one `Outcome`.

`Message` and `Outcome` are `NamedTuple`s rather than frozen dataclasses: they are created once per
input line on the hot path, and a frozen dataclass pays an `object.__setattr__` per field (about
three times the cost of a tuple). They are immutable and typed all the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

import orjson


class Status(StrEnum):
    """What became of one input line. The outcomes file holds these values and nothing else."""

    QUEUED = "queued"  # the service accepted it
    REJECTED = "rejected"  # the service listed it in the response's `errors`
    INVALID = "invalid"  # refused here, never sent
    FAILED = "failed"  # certainly not accepted (request-level error, retries exhausted)
    UNKNOWN = "unknown"  # may or may not have been accepted: never resent silently
    SUPPRESSED = "suppressed"  # the recipient is on the opt-out list (--suppress): never sent
    DUPLICATE = "duplicate"  # sent already in this run or an earlier one (--dedupe, --skip-sent)
    EXPIRED = "expired"  # its moment (send_before, --expire-after) passed before it could leave


#: Statuses that end a line for good: `--resume` skips lines whose last outcome is one of these.
FINAL_STATUSES = frozenset(
    {
        Status.QUEUED,
        Status.REJECTED,
        Status.INVALID,
        Status.SUPPRESSED,
        Status.DUPLICATE,
        Status.EXPIRED,
    }
)

#: Statuses that are deliberate non-sends: they don't make the exit code 1.
DELIBERATE_STATUSES = frozenset({Status.QUEUED, Status.SUPPRESSED, Status.DUPLICATE})


class Encoding(StrEnum):
    GSM7 = "gsm7"
    UCS2 = "ucs2"


class Message(NamedTuple):
    """One validated input line, ready to be put in a request."""

    source: str  # the input path as given, "-" for stdin
    line: int  # 1-based physical line number in `source`
    to: str  # normalised recipient (E.164)
    sender: str  # v1 from_phone_number_id or v2 list_number
    wire: bytes  # this message as a JSON object in the request's `messages` array
    ref_json: bytes  # the caller's `ref` as encoded JSON, b"" when absent
    segments: int
    encoding: Encoding


class Outcome(NamedTuple):
    """The one result of one input line."""

    source: str
    line: int
    status: Status
    code: str | None = None
    error: str | None = None
    to_msisdn: str | None = None
    ref_json: bytes = b""
    attempts: int = 0
    request: int | None = None
    sender: str | None = None
    segments: int | None = None
    encoding: Encoding | None = None
    duplicate_of: int | None = None  # a `duplicate`: the line of the first copy

    @property
    def ref(self) -> object:
        """The caller's `ref`, decoded (None when the line had none)."""
        return orjson.loads(self.ref_json) if self.ref_json else None


def outcome_of(
    m: Message,
    status: Status,
    code: str | None,
    error: str | None,
    *,
    attempts: int = 0,
    request: int | None = None,
    duplicate_of: int | None = None,
) -> Outcome:
    """The outcome of a valid message: what became of it, with what it carries (recipient,
    sender, segments), whether it was sent (a request's answer) or held back (suppressed,
    duplicate, expired), so the summary, the metrics and a later `--skip-sent` see them alike.
    """
    return Outcome(
        m.source,
        m.line,
        status,
        code,
        error,
        m.to,
        m.ref_json,
        attempts,
        request,
        m.sender,
        m.segments,
        m.encoding,
        duplicate_of,
    )


@dataclass(frozen=True, slots=True)
class Batch:
    """The messages of one request: one sender, at most 1,000 messages, under 5,000,000 bytes.

    `messages` is a tuple, or `_columns.Columns` on the columnar path (the same Messages when
    indexed or iterated)."""

    sender: str
    messages: Sequence[Message]

    def __len__(self) -> int:
        return len(self.messages)


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """The outcomes of one request's messages, without building an Outcome per message.

    Every message gets `status` (with `code` and `error`), except the indexes in `rejections`,
    which the service refused one by one. Sinks that write bytes encode straight from the
    messages (see `_outcomes`); `outcomes()` expands the records for everything else.
    """

    messages: Sequence[Message]
    status: Status
    request: int
    attempts: int
    sender: str
    code: str | None = None
    error: str | None = None
    rejections: dict[int, tuple[str, str]] | None = None  # index -> (code, error text)

    def __len__(self) -> int:
        return len(self.messages)

    def count_by_status(self) -> dict[Status, int]:
        rejected = len(self.rejections) if self.rejections else 0
        counts = {self.status: len(self.messages) - rejected}
        if rejected:
            counts[Status.REJECTED] = rejected
        return counts

    def outcome_at(self, index: int) -> Outcome:
        m = self.messages[index]
        status, code, error = self.status, self.code, self.error
        if self.rejections and index in self.rejections:
            status = Status.REJECTED
            code, error = self.rejections[index]
        # A batch's messages all have its sending number, so m.sender is self.sender.
        return outcome_of(m, status, code, error, attempts=self.attempts, request=self.request)

    def outcomes(self) -> list[Outcome]:
        return [self.outcome_at(i) for i in range(len(self.messages))]
