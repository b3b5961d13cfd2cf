"""Mapping lower-level errors onto streamsend's own (`map_transport_error`), and the error tree.

The rule under test: before any byte of a request reached the socket, no error can mean the
service queued it (*not sent*, safe to retry); after that, every transport error is ambiguous
(*maybe sent*), except a failure to connect, which by definition sent nothing. An error type the
mapping doesn't know raises TypeError, and the tables below must name every aiohttp client error,
so that a new one added by an aiohttp upgrade fails a test instead of slipping through.

The last tests put real malformed answers on a loopback socket and check the Sender turns each
into an outcome instead of a crash.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import aiohttp
import aiohttp.client_exceptions as client_exceptions
import pytest
from aiohttp.client_reqrep import ConnectionKey, RequestInfo
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from streamsend._attempts import TRANSPORT_ERRORS, Backoff
from streamsend._dispatch import Dispatcher, DispatchSettings
from streamsend._exceptions import (
    ConfigError,
    FatalServiceError,
    InputError,
    MaybeSent,
    NotSent,
    RateLimited,
    Refused,
    SendError,
    StreamsendError,
    map_transport_error,
)
from streamsend._models import Batch, Message, Status
from streamsend._outcomes import MemorySink
from streamsend._pacing import LocalRateLimiter
from streamsend._stats import RunStats
from streamsend._validate import Validator

KEY = ConnectionKey("app.tracklysms.com", 443, True, True, None, None, None, "app.tracklysms.com")
INFO = RequestInfo(
    URL("https://app.tracklysms.com/api/v1/messages/bulk"),
    "POST",
    CIMultiDictProxy(CIMultiDict()),
    URL("https://app.tracklysms.com/api/v1/messages/bulk"),
)
REFUSED = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
URL_TEXT = "https://app.tracklysms.com/api"


# Connecting failed: nothing left us, whatever `transmitted` says. (exception, expected code)
CONNECT_ERRORS: dict[type[BaseException], Callable[[], BaseException]] = {
    aiohttp.ClientConnectorError: lambda: aiohttp.ClientConnectorError(KEY, REFUSED),
    aiohttp.ClientConnectorDNSError: lambda: aiohttp.ClientConnectorDNSError(
        KEY, socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    ),
    aiohttp.ClientProxyConnectionError: lambda: aiohttp.ClientProxyConnectionError(KEY, REFUSED),
    client_exceptions.UnixClientConnectorError: lambda: client_exceptions.UnixClientConnectorError(
        "/run/trackly.sock", KEY, REFUSED
    ),
    aiohttp.ClientSSLError: lambda: aiohttp.ClientSSLError(KEY, ssl.SSLError(1, "handshake")),
    aiohttp.ClientConnectorSSLError: lambda: aiohttp.ClientConnectorSSLError(
        KEY, ssl.SSLError(1, "handshake failure")
    ),
    aiohttp.ClientConnectorCertificateError: lambda: aiohttp.ClientConnectorCertificateError(
        KEY, ssl.SSLCertVerificationError(1, "certificate verify failed")
    ),
}

# Everything else: not sent before transmission, maybe sent after. (factory, expected code)
OTHER_ERRORS: dict[type[BaseException], tuple[Callable[[], BaseException], str]] = {
    TimeoutError: (TimeoutError, "timeout"),  # asyncio.TimeoutError is the same class
    aiohttp.ServerTimeoutError: (lambda: aiohttp.ServerTimeoutError("read timed out"), "timeout"),
    aiohttp.ConnectionTimeoutError: (
        lambda: aiohttp.ConnectionTimeoutError("connect timed out"),
        "timeout",
    ),
    aiohttp.SocketTimeoutError: (lambda: aiohttp.SocketTimeoutError("sock_read"), "timeout"),
    aiohttp.ServerDisconnectedError: (aiohttp.ServerDisconnectedError, "disconnected"),
    aiohttp.ClientPayloadError: (
        lambda: aiohttp.ClientPayloadError("Response payload is not completed"),
        "truncated_response",
    ),
    ssl.SSLError: (lambda: ssl.SSLError(1, "bad record mac"), "tls_error"),
    ssl.SSLEOFError: (lambda: ssl.SSLEOFError(8, "EOF in violation of protocol"), "tls_error"),
    ssl.SSLCertVerificationError: (
        lambda: ssl.SSLCertVerificationError(1, "certificate verify failed"),
        "tls_error",
    ),
    aiohttp.ClientError: (lambda: aiohttp.ClientError("generic"), "transport_error"),
    aiohttp.ClientConnectionError: (
        lambda: aiohttp.ClientConnectionError("Connection closed"),
        "transport_error",
    ),
    aiohttp.ClientConnectionResetError: (
        lambda: aiohttp.ClientConnectionResetError("Cannot write to closing transport"),
        "transport_error",
    ),
    aiohttp.ClientOSError: (
        lambda: aiohttp.ClientOSError(errno.ECONNRESET, "Connection reset by peer"),
        "transport_error",
    ),
    aiohttp.ServerConnectionError: (
        lambda: aiohttp.ServerConnectionError("server broke"),
        "transport_error",
    ),
    aiohttp.ServerFingerprintMismatch: (
        lambda: aiohttp.ServerFingerprintMismatch(b"a" * 32, b"b" * 32, "example.com", 443),
        "transport_error",
    ),
    aiohttp.ClientResponseError: (
        lambda: aiohttp.ClientResponseError(INFO, (), status=400, message="Invalid status line"),
        "transport_error",
    ),
    aiohttp.ContentTypeError: (
        lambda: aiohttp.ContentTypeError(INFO, (), message="unexpected mimetype"),
        "transport_error",
    ),
    aiohttp.WSServerHandshakeError: (
        lambda: aiohttp.WSServerHandshakeError(INFO, (), message="not a websocket"),
        "transport_error",
    ),
    aiohttp.ClientHttpProxyError: (
        lambda: aiohttp.ClientHttpProxyError(INFO, (), status=407),
        "transport_error",
    ),
    aiohttp.TooManyRedirects: (
        lambda: aiohttp.TooManyRedirects(INFO, (), message="too many"),
        "transport_error",
    ),
    client_exceptions.UploadAbortedError: (
        lambda: client_exceptions.UploadAbortedError("body not sent"),
        "transport_error",
    ),
    aiohttp.InvalidURL: (lambda: aiohttp.InvalidURL(URL_TEXT), "transport_error"),
    aiohttp.InvalidUrlClientError: (
        lambda: aiohttp.InvalidUrlClientError(URL_TEXT),
        "transport_error",
    ),
    aiohttp.RedirectClientError: (
        lambda: aiohttp.RedirectClientError("redirect"),
        "transport_error",
    ),
    aiohttp.InvalidUrlRedirectClientError: (
        lambda: aiohttp.InvalidUrlRedirectClientError(URL_TEXT),
        "transport_error",
    ),
    aiohttp.NonHttpUrlClientError: (
        lambda: aiohttp.NonHttpUrlClientError("ftp://example.com"),
        "transport_error",
    ),
    aiohttp.NonHttpUrlRedirectClientError: (
        lambda: aiohttp.NonHttpUrlRedirectClientError("ftp://example.com"),
        "transport_error",
    ),
    OSError: (lambda: OSError(errno.EIO, "I/O error"), "transport_error"),
    ConnectionResetError: (
        lambda: ConnectionResetError(errno.ECONNRESET, "reset"),
        "transport_error",
    ),
    ConnectionAbortedError: (
        lambda: ConnectionAbortedError(errno.ECONNABORTED, "aborted"),
        "transport_error",
    ),
    BrokenPipeError: (lambda: BrokenPipeError(errno.EPIPE, "Broken pipe"), "transport_error"),
    ConnectionRefusedError: (lambda: REFUSED, "transport_error"),
    socket.gaierror: (
        lambda: socket.gaierror(socket.EAI_AGAIN, "Temporary failure"),
        "transport_error",
    ),
}


def _subclasses(cls: type[BaseException]) -> Iterator[type[BaseException]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_aiohttp_client_error_has_a_case_here() -> None:
    """Each aiohttp ClientError class (today's and any an upgrade adds) is classified by a case.

    A new class fails here until someone decides whether it can mean "maybe sent".
    """
    known = CONNECT_ERRORS.keys() | OTHER_ERRORS.keys()
    aiohttp_errors = {
        cls for cls in _subclasses(aiohttp.ClientError) if cls.__module__.startswith("aiohttp")
    }
    assert aiohttp_errors - known == set()


@pytest.mark.parametrize(
    "factory", list(CONNECT_ERRORS.values()), ids=[c.__name__ for c in CONNECT_ERRORS]
)
@pytest.mark.parametrize("transmitted", [False, True], ids=["before-sending", "after-sending"])
def test_connect_errors_are_always_not_sent(
    factory: Callable[[], BaseException], transmitted: bool
) -> None:
    """A failure to connect (refused, DNS, TLS handshake, proxy) sent nothing: NotSent, retried."""
    exc = factory()
    assert isinstance(exc, TRANSPORT_ERRORS)  # the sender catches it at all
    mapped = map_transport_error(exc, transmitted=transmitted, request=9)
    assert type(mapped) is NotSent
    # An untrusted certificate is told apart: it is no outage to wait out (see _attempts).
    code = (
        "tls_error" if isinstance(exc, aiohttp.ClientConnectorCertificateError) else "connect_error"
    )
    assert (mapped.code, mapped.request, mapped.status) == (code, 9, None)


@pytest.mark.parametrize(
    ("factory", "code"), list(OTHER_ERRORS.values()), ids=[c.__name__ for c in OTHER_ERRORS]
)
def test_errors_before_transmission_are_not_sent(
    factory: Callable[[], BaseException], code: str
) -> None:
    """Before the request's first byte left, any transport error proves nothing was queued."""
    exc = factory()
    assert isinstance(exc, TRANSPORT_ERRORS)
    mapped = map_transport_error(exc, transmitted=False, request=3)
    assert type(mapped) is NotSent
    assert (mapped.code, mapped.request) == (code, 3)


@pytest.mark.parametrize(
    ("factory", "code"),
    [(f, c) for f, c in OTHER_ERRORS.values() if c != "tls_error"],
    ids=[cls.__name__ for cls, (_, c) in OTHER_ERRORS.items() if c != "tls_error"],
)
def test_errors_after_transmission_are_maybe_sent(
    factory: Callable[[], BaseException], code: str
) -> None:
    """After the request left, a timeout, disconnect or cut-off body is ambiguous: MaybeSent."""
    mapped = map_transport_error(factory(), transmitted=True, request=4)
    assert type(mapped) is MaybeSent
    assert (mapped.code, mapped.request) == (code, 4)


@pytest.mark.parametrize(
    "cls", [ssl.SSLError, ssl.SSLEOFError, ssl.SSLCertVerificationError], ids=lambda c: c.__name__
)
def test_tls_errors_after_transmission_are_maybe_sent(cls: type[BaseException]) -> None:
    """A TLS error on an established connection (after the request left) is ambiguous too."""
    factory, _ = OTHER_ERRORS[cls]
    mapped = map_transport_error(factory(), transmitted=True, request=5)
    assert type(mapped) is MaybeSent


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("not a transport error"),
        KeyError("x"),
        RuntimeError("Session is closed"),
        asyncio.CancelledError(),
        KeyboardInterrupt(),
        asyncio.IncompleteReadError(b"", 10),
    ],
    ids=lambda e: type(e).__name__,
)
@pytest.mark.parametrize("transmitted", [False, True], ids=["before-sending", "after-sending"])
def test_unmapped_error_types_raise_type_error(exc: BaseException, transmitted: bool) -> None:
    """An error type outside the mapping is a programming error: TypeError, chained to it."""
    with pytest.raises(TypeError, match="unmapped error type") as caught:
        map_transport_error(exc, transmitted=transmitted, request=1)
    assert caught.value.__cause__ is exc


def test_the_error_tree_is_as_drawn() -> None:
    """The tree in `_exceptions`' docstring: the three SMS distinctions hang under SendError."""
    assert issubclass(ConfigError, StreamsendError)
    assert issubclass(InputError, StreamsendError)
    assert issubclass(SendError, StreamsendError)
    assert issubclass(RateLimited, NotSent)
    assert issubclass(FatalServiceError, Refused)
    for kind in (NotSent, MaybeSent, Refused):
        assert issubclass(kind, SendError)
    # The three are disjoint: no error is at once safe to retry and possibly accepted.
    assert not issubclass(MaybeSent, NotSent | Refused)
    assert not issubclass(NotSent, MaybeSent | Refused)
    assert not issubclass(Refused, NotSent | MaybeSent)


def test_rate_limited_carries_retry_after_and_the_send_error_fields() -> None:
    """RateLimited keeps Retry-After next to code, status and request number."""
    error = RateLimited("slow down", retry_after=2.0, code="rate_limited", status=429, request=8)
    assert (error.retry_after, error.code, error.status, error.request) == (
        2.0,
        "rate_limited",
        429,
        8,
    )


# -- real malformed answers on a socket --------------------------------------------------------


@asynccontextmanager
async def _raw_server(answer: bytes | None) -> AsyncIterator[str]:
    """A loopback server that reads one request and writes `answer` (None: closes at once)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            if answer is not None:
                writer.write(answer)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/api"
    finally:
        server.close()
        await server.wait_closed()


def _messages(count: int) -> tuple[Message, ...]:
    validator = Validator(api_version="v1", default_sender="pn_abc123def456")
    messages = []
    for line in range(1, count + 1):
        raw = b'{"to_msisdn": "+1415555%04d", "body": "hello %d"}' % (line, line)
        message = validator.validate("in.ndjson", line, raw)
        assert isinstance(message, Message)
        messages.append(message)
    return tuple(messages)


async def _send_one_batch(
    base_url: str, *, retries: int = 0, give_up_after: float = 300.0
) -> list[tuple[Status, str | None]]:
    sink = MemorySink()
    settings = DispatchSettings(
        base_url=base_url,
        api_version="v1",
        api_key="trk_" + "0" * 32,
        timeout=5,
        retries=retries,
        backoff=Backoff(0.001, 0.002),
        give_up_after=give_up_after,
    )
    dispatcher = Dispatcher(
        settings,
        sink=sink,
        journal=None,
        stats=RunStats(),
        limiter=LocalRateLimiter(lambda _: None, batch_size=1000),
    )
    async with dispatcher:
        await dispatcher.submit(Batch("pn_abc123def456", _messages(3)))
        await dispatcher.drain()
    return [(o.status, o.code) for o in sink.outcomes]


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        pytest.param(None, "disconnected", id="closed-without-answer"),
        pytest.param(b"HTTP/1.1 201 Created\r\nContent-Len", "disconnected", id="cut-in-headers"),
        pytest.param(b"garbage\r\n\r\n", "transport_error", id="not-http"),
        pytest.param(
            b'HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\n{"queued_count"',
            "truncated_response",
            id="body-shorter-than-content-length",
        ),
        pytest.param(
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "transport_error",  # aiohttp reports a bad chunk as a malformed response
            id="broken-chunked-body",
        ),
        pytest.param(
            b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nabc",
            "unreadable_response",
            id="2xx-not-json",
        ),
    ],
)
async def test_malformed_answers_become_unknown_outcomes(answer: bytes | None, code: str) -> None:
    """Every way an answer can break after the request left ends as `unknown`, never a crash."""
    async with _raw_server(answer) as base_url:
        outcomes = await _send_one_batch(base_url)
    assert outcomes == [(Status.UNKNOWN, code)] * 3


async def test_connection_refused_is_retried_until_giving_up_without_an_outcome() -> None:
    """Nothing listening: connect errors are NotSent, an outage: retried past --retries until
    --give-up-after, then the lines are left without an outcome (never sent: --resume)."""
    with socket.socket() as probe:  # a port that was free a moment ago and has no listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    outcomes = await _send_one_batch(url, retries=0, give_up_after=0.2)
    assert outcomes == []
