"""The retry policy, in one place: what an answer from the service proves, and what we do about it.

The rule behind every branch: a message is sent again only when the service has *proved* it did
not accept it. Resending after an answer that merely failed to arrive can text a person twice.

- 201 with a readable body: accepted; indexes listed in `errors` are rejected, the rest queued.
- 429: not accepted. Pause the whole sender for Retry-After (or a backoff), then retry.
- 500/502/503/504: not accepted (the docs call 5xx transient). Back off with jitter, retry.
- Connection refused, DNS, TLS, pool timeout, anything before the request's first byte left:
  not accepted. Back off, retry.
- 400, 404, 413 (request-level): refused as a whole; failed, no retry (a 413 is split in two).
- 401, 403, list_not_found: every later request would fail too; failed, and the run stops.
- A timeout or disconnect after sending, a 2xx we can't read: proves nothing. `unknown`, no
  resend unless the user opted into at-least-once with --resend-unknown.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import orjson

from streamsend._exceptions import FatalServiceError, MaybeSent, NotSent, RateLimited, Refused

#: Statuses the service uses for "try again": its docs call 5xx transient.
RETRYABLE_STATUSES = frozenset({500, 502, 503, 504})

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
class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog): sleep U(0, min(cap, base·2ⁿ)).

    Full jitter spreads the retries of many concurrent requests instead of having them hammer a
    recovering service in lockstep.
    """

    base: float = 0.5
    cap: float = 30.0

    def delay(self, retry_number: int, rng: random.Random) -> float:
        try:
            # ldexp is base·2ⁿ exactly; unlike base * 2**n it stays 0 for a zero base at any n.
            ceiling = min(self.cap, math.ldexp(self.base, retry_number))
        except OverflowError:  # base·2ⁿ past float range: long since at the cap
            ceiling = self.cap
        return rng.uniform(0.0, ceiling)


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


def v1_error_code(text: str) -> str:
    lowered = text.lower()
    for needle, code in _V1_ERROR_CODES:
        if needle in lowered:
            return code
    return "rejected"


def classify_response(
    status: int, body: bytes, retry_after: str | None, *, request: int
) -> Accepted:
    """Turn one HTTP answer into `Accepted`, or raise the SendError that says what it proves."""
    if 200 <= status < 300:
        try:
            parsed = orjson.loads(body)
            raw_errors = parsed.get("errors") or []
            errors: dict[int, tuple[str, str]] = {}
            for item in raw_errors:
                text = str(item.get("error") or item.get("message") or "rejected")
                code = item.get("code")
                errors[int(item["index"])] = (
                    str(code) if code else v1_error_code(text),
                    text,
                )
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
    if status == 429:
        raise RateLimited(
            text,
            retry_after=retry_after_seconds(retry_after),
            code=code or "rate_limited",
            status=status,
            request=request,
        )
    if status in RETRYABLE_STATUSES:
        raise NotSent(text, code=code or f"http_{status}", status=status, request=request)
    if status == 401 or code == "list_not_found" or status == 403:
        # 403 is "account suspended": like a bad key, every later request would fail too.
        raise FatalServiceError(text, code=code or f"http_{status}", status=status, request=request)
    if 400 <= status < 500:
        raise Refused(text, code=code or f"http_{status}", status=status, request=request)
    # Anything else (1xx/3xx, other 5xx) is outside the documented contract: the request may
    # have been processed, so it can't be resent safely.
    raise MaybeSent(text, code=code or f"http_{status}", status=status, request=request)


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
