"""Every error streamsend raises, and the one place lower-level errors are mapped onto them.

    StreamsendError
    ├── ConfigError            bad flag, config file or environment value (exit 2)
    ├── InputError             an input file can't be opened or read (exit 2)
    ├── LeaseLost              a worker's entries were taken over by another worker (it
    │                          stopped renewing its lease): it must not send or commit them
    └── SendError              one request attempt went wrong; carries the request's number,
                               the HTTP status (when there was one) and a machine code
        ├── NotSent            the service certainly did not accept it: safe to retry
        │   └── RateLimited    429 or 503: pause the sending number for `retry_after`
        │                      seconds (or a backoff), then retry
        ├── MaybeSent          the request left us and no readable answer came back, or a
        │                      500/502/504 (see `_protocol.ANSWERS`): the messages may be
        │                      queued. Never resent unless the user opts in.
        └── Refused            a request-level error (400, 404, 413): don't retry
            └── FatalServiceError  401, 403 (suspended) or list_not_found: every later
                                   request would fail too, so the run stops

The distinction that matters for SMS is between *not sent*, *maybe sent* and *refused*: a message
resent after a *maybe sent* error can reach a person twice, which costs money and trust.
"""

from __future__ import annotations


class StreamsendError(Exception):
    """Base class of everything streamsend raises on purpose."""


class ConfigError(StreamsendError):
    """A flag, config file or environment value is wrong. The message names it and the fix."""


class InputError(StreamsendError):
    """An input can't be opened or read."""


class LeaseLost(StreamsendError):
    """Another worker of the job took over this request's entries: drop the request unsent.

    Raised by `RedisJournal.sync` before the request's first byte leaves (fencing); the worker
    that took the entries over sends them, or reports them `unknown`, itself.
    """


class SendError(StreamsendError):
    """One attempt at one request failed."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status: int | None = None,
        request: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code  # the service's machine code, or ours (e.g. "timeout")
        self.status = status  # the HTTP status, when there was one
        self.request = request  # the request sequence number


class NotSent(SendError):
    """The service certainly did not accept the request (429, 503, or it never left us)."""


class RateLimited(NotSent):
    """429 or 503, "not now": this sending number pauses for `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: float | None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class MaybeSent(SendError):
    """The request was transmitted and no readable answer came: its messages may be queued."""


class Refused(SendError):
    """A request-level error from the service (400, 404, 413): retrying can't help."""


class FatalServiceError(Refused):
    """401, 403 or list_not_found: every later request would fail the same way: the run stops."""


def map_transport_error(exc: BaseException, *, transmitted: bool, request: int | None) -> SendError:
    """Map an aiohttp/OS/timeout error of one attempt to *not sent* or *maybe sent*.

    `transmitted` says whether any byte of the request reached the socket (tracked with aiohttp's
    trace hooks). Before that, nothing can have been accepted whatever the error was; after it,
    every transport failure is ambiguous, because the service may have queued the messages and
    lost only the answer.
    """
    # Imported here, not at the top: every command imports this module, and `--help`, `check`
    # and `config show` must not pay ~0.15 s of CPU for aiohttp's client and its SSL set-up.
    import asyncio
    import ssl

    import aiohttp

    kind: type[SendError] = MaybeSent if transmitted else NotSent
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return kind("the request timed out", code="timeout", request=request)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        # Not an outage (see `_attempts`): waiting won't make the certificate trusted.
        return NotSent(f"TLS certificate not trusted: {exc}", code="tls_error", request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        # Connecting failed (refused, DNS, TLS handshake): the request never left.
        return NotSent(f"could not connect: {exc}", code="connect_error", request=request)
    if isinstance(exc, ssl.SSLError) and not transmitted:
        return NotSent(f"TLS failed: {exc}", code="tls_error", request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return kind("the server closed the connection", code="disconnected", request=request)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return kind("the response body was cut off", code="truncated_response", request=request)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return kind(
            f"transport error: {type(exc).__name__}", code="transport_error", request=request
        )
    raise TypeError(f"unmapped error type {type(exc).__name__}") from exc
