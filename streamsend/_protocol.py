"""The Trackly wire format: everything that differs between API versions, one value per version.

A `WireProtocol` says where requests go, how a request body and each message in it are spelt,
which field names the sending number, and what an answer proves. Validation, batching and the
dispatcher ask it instead of testing the version themselves, so a v3 would touch this module (and
its tests) only.

What an answer proves is the table `ANSWERS` (the README shows the same table; a test keeps them
equal). The rule behind every row: a message is sent again only when the service *proved* it did
not accept it; resending after an answer that merely failed to arrive can text a person twice.
"Transient" in the docs is about availability, not about whether the request was processed: a
502 or 504 comes from a gateway in front of the service, often after the upstream accepted the
request, and a 500 can come after part of a batch was queued. Only 429 and 503 say "not
processed". Transport failures (no answer at all) are mapped in `_exceptions.map_transport_error`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import orjson

from streamsend._exceptions import FatalServiceError, MaybeSent, RateLimited, Refused
from streamsend._types import ApiVersion

#: "Not processed, come back later": the sending number pauses (Retry-After or a backoff).
RETRYABLE_STATUSES = frozenset({429, 503})
#: 5xx answers that may come after the request (or part of it) was accepted: `unknown`.
AMBIGUOUS_STATUSES = frozenset({500, 502, 504})


@dataclass(frozen=True, slots=True)
class Answer:
    """One row of `ANSWERS`: an answer, what it proves, the lines' outcome, whether resent."""

    answer: str
    proves: str
    outcome: str
    resent: str


#: What each answer proves: the one place this is decided, shown as is in the README.
ANSWERS: tuple[Answer, ...] = (
    Answer(
        "2xx, readable body",
        "accepted; the indexes in `errors` refused",
        "`queued`, `rejected`",
        "no",
    ),
    Answer(
        "429",
        "not accepted: this sending number is busy",
        "`failed` once `--retries` are used up",
        "yes: the sending number pauses for `Retry-After` (or a backoff)",
    ),
    Answer(
        "503",
        "not accepted: the service is unavailable",
        "none if it stays down past `--give-up-after` (exit 3; `--resume` sends it)",
        "yes: the sending number pauses (`Retry-After` honoured), then probes one request",
    ),
    Answer(
        "500",
        "maybe: part of the batch may have been queued",
        "`unknown`",
        "only with `--resend-unknown`; the sending number pauses as for a 503",
    ),
    Answer(
        "502, 504",
        "maybe: a gateway's answer; the service behind it may have accepted",
        "`unknown`",
        "only with `--resend-unknown`; the sending number pauses as for a 503",
    ),
    Answer(
        "400, 404, 413",
        "refused as a whole; nothing queued",
        "`failed` (a 413 splits the batch and logs an error)",
        "no",
    ),
    Answer(
        "401, 403, `list_not_found`",
        "every later request would fail too",
        "`failed`; the run stops (exit 3)",
        "no",
    ),
    Answer(
        "no connection (refused, DNS, TLS), or a failure before the request left",
        "not accepted",
        "none if it lasts past `--give-up-after` (exit 3; `--resume` sends it)",
        "yes: as for a 503",
    ),
    Answer(
        "timeout or disconnect after the request left; a 2xx that can't be read; any other status",
        "maybe",
        "`unknown`",
        "only with `--resend-unknown`",
    ),
)


def answers_table() -> str:
    """`ANSWERS` as the Markdown table the README carries."""
    rows = ["| answer | proves | outcome | sent again |", "|---|---|---|---|"]
    rows += [f"| {a.answer} | {a.proves} | {a.outcome} | {a.resent} |" for a in ANSWERS]
    return "\n".join(rows) + "\n"


# v1 reports per-message problems as text only; these give the outcome a machine code too.
_V1_ERROR_CODES = (
    ("invalid phone", "invalid_phone"),
    ("missing phone", "missing_to"),
    ("missing message body", "missing_body"),
    ("missing body", "missing_body"),
    ("exceeds 1600", "body_too_long"),
)


@dataclass(frozen=True, slots=True)
class Accepted:
    """A readable 2xx answer: which indexes of the request the service refused, and why."""

    errors: dict[int, tuple[str, str]]  # index -> (code, error text)
    queued_count: int | None


@dataclass(frozen=True, slots=True)
class WireProtocol:
    """One API version's wire format (see the module docstring)."""

    version: ApiVersion
    endpoint: str  # the bulk endpoint, below the base URL
    sender_field: str  # the field naming the sending number, on an input line
    recipient_field: str  # the recipient's field in a wire message
    # v1 names the sending list once per request; v2 carries `list_number` on each message.
    sender_in_envelope: bool
    e164_sender: bool  # the sending number is itself a phone number, in strict E.164
    # Fields of an input line passed through to the wire message when present (null = absent).
    passthrough: tuple[str, ...]
    deprecation_hint: str | None  # what to tell the user when the service says it's deprecated

    @property
    def other_sender_fields(self) -> tuple[str, ...]:
        """The sender fields of the other versions: a line naming one was written for them."""
        return tuple(p.sender_field for p in PROTOCOLS.values() if p.version != self.version)

    def envelope(self, sender: str) -> tuple[bytes, bytes]:
        """The bytes around the comma-joined messages of one request body."""
        if self.sender_in_envelope:
            return b'{"%b":%b,"messages":[' % (
                self.sender_field.encode(),
                orjson.dumps(sender),
            ), b"]}"
        return b'{"messages":[', b"]}"

    def request_body(self, sender: str, wires: list[bytes]) -> bytes:
        """A request body from the messages' wire bytes (see `Message.wire`)."""
        head, tail = self.envelope(sender)
        return head + b",".join(wires) + tail

    def plain_message_template(self, sender: str) -> bytes:
        """A `%`-template taking the recipient and body bytes of a plain line, in that order.

        Those bytes are complete JSON string contents (the validator's fast path proves it),
        so they drop in unchanged.
        """
        if self.sender_in_envelope:
            return b'{"%b":"%%b","body":"%%b"}' % self.recipient_field.encode()
        sender_json = orjson.dumps(sender).replace(b"%", b"%%")
        return b'{"%b":"%%b","%b":%b,"body":"%%b"}' % (
            self.recipient_field.encode(),
            self.sender_field.encode(),
            sender_json,
        )

    def message(self, to: str, sender: str, body: str, extra: dict[str, object]) -> bytes:
        """A message's wire bytes from its checked parts (`extra`: the passthrough fields)."""
        if self.sender_in_envelope:
            return orjson.dumps({self.recipient_field: to, "body": body})
        return orjson.dumps(
            {self.recipient_field: to, self.sender_field: sender, "body": body, **extra}
        )

    def error_code(self, item: dict[str, object], text: str) -> str:
        """The machine code of one per-message refusal in a 2xx answer's `errors`."""
        code = item.get("code")
        if code:
            return str(code)
        lowered = text.lower()  # v1 gives text only
        for needle, mapped in _V1_ERROR_CODES:
            if needle in lowered:
                return mapped
        return "rejected"

    def classify(
        self, status: int, body: bytes, retry_after: str | None, *, request: int
    ) -> Accepted:
        """Turn one HTTP answer into `Accepted`, or raise the SendError that says what it proves."""
        if 200 <= status < 300:
            try:
                parsed = orjson.loads(body)
                errors: dict[int, tuple[str, str]] = {}
                for item in parsed.get("errors") or []:
                    text = str(item.get("error") or item.get("message") or "rejected")
                    errors[int(item["index"])] = (self.error_code(item, text), text)
                queued = parsed.get("queued_count")
            except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
                # A 2xx we can't read still means the service took the request: ambiguous.
                raise MaybeSent(
                    f"HTTP {status} with an unreadable body",
                    code="unreadable_response",
                    status=status,
                    request=request,
                ) from exc
            return Accepted(errors, queued if isinstance(queued, int) else None)

        code, text = _error_fields(body, status)
        if status in RETRYABLE_STATUSES:
            raise RateLimited(
                text,
                retry_after=retry_after_seconds(retry_after),
                code=code or ("rate_limited" if status == 429 else "service_unavailable"),
                status=status,
                request=request,
            )
        if status in AMBIGUOUS_STATUSES:
            # Never resent silently: the lines may already be queued (see the module docstring).
            raise MaybeSent(text, code=code or f"http_{status}", status=status, request=request)
        if status in (401, 403) or code == "list_not_found":
            # 403 is "account suspended": like a bad key, every later request would fail too.
            raise FatalServiceError(
                text, code=code or f"http_{status}", status=status, request=request
            )
        if 400 <= status < 500:
            raise Refused(text, code=code or f"http_{status}", status=status, request=request)
        # Anything else (1xx/3xx, other 5xx) is outside the documented contract: the request may
        # have been processed, so it can't be resent safely.
        raise MaybeSent(text, code=code or f"http_{status}", status=status, request=request)


V1 = WireProtocol(
    version="v1",
    endpoint="/v1/messages/bulk",
    sender_field="from_phone_number_id",
    recipient_field="to_msisdn",
    sender_in_envelope=True,
    e164_sender=False,
    passthrough=(),
    deprecation_hint="the v1 API is deprecated; move with --api-version v2 (see the README)",
)
V2 = WireProtocol(
    version="v2",
    endpoint="/v2/send/bulk",
    sender_field="list_number",
    recipient_field="to",
    sender_in_envelope=False,
    e164_sender=True,
    passthrough=("contact_data", "metadata"),
    deprecation_hint=None,
)
PROTOCOLS: dict[ApiVersion, WireProtocol] = {"v1": V1, "v2": V2}


def protocol_for(version: ApiVersion) -> WireProtocol:
    return PROTOCOLS[version]


def retry_after_seconds(value: str | None) -> float | None:
    """The `Retry-After` header as seconds (the service sends integer seconds); None if absent."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # an HTTP-date: not used by this service; fall back to our own backoff
    if not math.isfinite(seconds):
        # float() also reads "inf", "nan" and "1e400"; an infinite pause would stop the sending
        # number for good, and NaN compares false with everything. Neither is delay-seconds.
        return None
    return max(seconds, 0.0)


def _error_fields(body: bytes, status: int) -> tuple[str | None, str]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, f"HTTP {status}"
    if not isinstance(parsed, dict):
        return None, f"HTTP {status}"
    code = parsed.get("code")
    text = parsed.get("error") or parsed.get("message") or f"HTTP {status}"
    return (str(code) if code else None), str(text)
