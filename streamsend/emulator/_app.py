"""The emulator's HTTP service: routes, request handling, faults, and `run_emulator`.

Every request to `/api` goes through one path, in this order, which is the order the faults'
semantics depend on:

    0. beyond `max_in_flight` requests in flight (when set), answer 429 with Retry-After
    1. count it (its sequence number), check `X-Api-Key` (401s) before touching the body
    2. draw its fault and latency (seeded, in arrival order; see `_faults`)
    3. read the body, refusing more than 5,000,000 bytes (413), and decode it (400 invalid_json)
    4. a fault that comes before queueing (5xx, 429, drop_before) ends the request here
    5. request-level checks (missing_from, missing_messages, too_many_messages, list_not_found),
       then per-message validation; accepted messages go to the send-rate model and the ledger
    6. a fault that comes after queueing (drop_after, hang, truncated_body) loses the answer;
       otherwise the answer is sent, after the drawn latency

The handlers are written for throughput: a handful of dict and attribute operations per request,
per-message work only inside `_validation` (C-level on the common path) and, when asked for, the
ledger. The aiohttp runner has no access log and cancels a handler when its client disconnects,
which is also how a connection the emulator closes on purpose ends its own handler quietly.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import orjson
from aiohttp import web

from streamsend.emulator._config import EmulatorConfig, EmulatorConfigError, check_config
from streamsend.emulator._faults import (
    BEFORE_QUEUEING,
    NO_FAULT,
    Fault,
    FaultDraw,
    FaultInjector,
)
from streamsend.emulator._ledger import Ledger
from streamsend.emulator._ratemodel import SendingList, SendRateModel
from streamsend.emulator._segments import segments_of
from streamsend.emulator._stats import (
    DROPPED,
    HUNG,
    TRUNCATED,
    EmulatorStats,
    EmulatorStatsSnapshot,
)
from streamsend.emulator._validation import (
    BODY_TOO_LONG,
    MAX_MESSAGES,
    Accepted,
    accept_unvalidated,
    check_v1_messages,
    check_v2_messages,
    v1_message_error,
    v2_message_error,
)

if TYPE_CHECKING:
    import ssl

#: The documented 5 MB payload limit, read strictly as 5,000,000 bytes (not 5 MiB).
MAX_BODY_BYTES = 5_000_000
# aiohttp's own cap only guards `request.read()`, which we don't call; a little headroom keeps it
# from ever answering first, in its own text/plain format, instead of our JSON 413.
_CLIENT_MAX_SIZE = MAX_BODY_BYTES + 65_536
# Long enough for ordinary in-flight requests to be answered, short enough that stopping the
# emulator is prompt; hung requests don't wait for it (they are released when stopping begins).
_SHUTDOWN_TIMEOUT_S = 0.5

_V1_HEADERS: Mapping[str, str] = {"Deprecation": "true", "X-API-Deprecated": "v1 is deprecated"}
_JSON = "application/json"
_5XX_ERRORS = {
    500: ("internal_error", "Internal server error"),
    502: ("bad_gateway", "Bad gateway"),
    503: ("service_unavailable", "Service temporarily unavailable"),
    504: ("gateway_timeout", "Gateway timeout"),
}
# The single-send endpoints have no `errors` array; their per-message problems are request-level
# errors. v1's codes for them are not documented (assumed); v2 reuses its per-message codes.
_V1_SINGLE_CODES = {
    "Invalid message": "invalid_json",
    "Missing phone number": "missing_phone",
    "Invalid phone number format": "invalid_phone",
    "Missing message body": "missing_body",
    BODY_TOO_LONG: "body_too_long",
}


class Endpoint(Enum):
    """The API routes the emulator serves, under `/api`."""

    V1_BULK = "/v1/messages/bulk"
    V1_SINGLE = "/v1/messages"
    V2_BULK = "/v2/send/bulk"
    V2_SINGLE = "/v2/send"

    @property
    def api(self) -> str:
        return "v1" if self in (Endpoint.V1_BULK, Endpoint.V1_SINGLE) else "v2"


class _Refusal(Exception):
    """A request-level error: the request is answered with it and nothing is queued."""

    def __init__(self, status: int, code: str, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.code = code
        self.text = text


def _too_large() -> _Refusal:
    return _Refusal(413, "payload_too_large", f"Request body exceeds {MAX_BODY_BYTES} bytes")


async def _close_without_answer(request: web.BaseRequest) -> NoReturn:
    """Close the request's connection with no (further) answer, and end this handler.

    Closing the transport makes aiohttp cancel the handler (the runner has
    `handler_cancellation=True`), which it treats as a client disconnect: a debug line, no
    traceback. Returning or raising anything else would make it try to answer on a dead socket.
    """
    transport = request.transport
    if transport is not None:
        transport.close()
    await asyncio.get_running_loop().create_future()  # never set: cancellation ends the wait
    raise AssertionError("unreachable: the handler is cancelled when its connection closes")


def _first_half(payload: Any) -> Any:
    """The request with only the first half of its messages (at least one): what a service that
    failed midway through a batch has queued. Anything without a message array is unchanged."""
    messages = payload.get("messages") if isinstance(payload, dict) else None
    if type(messages) is not list or len(messages) < 2:
        return payload
    return {**payload, "messages": messages[: len(messages) // 2]}


def _lists_named(endpoint: Endpoint, payload: object) -> frozenset[str]:
    """The sending lists a decoded request names (for the faults' `lists` filter)."""
    if not isinstance(payload, dict):
        return frozenset()
    if endpoint is Endpoint.V2_BULK:
        messages = payload.get("messages")
        if not isinstance(messages, list):
            return frozenset()
        names = (m.get("list_number") for m in messages if isinstance(m, dict))
        return frozenset(name for name in names if isinstance(name, str))
    key = "list_number" if endpoint is Endpoint.V2_SINGLE else "from_phone_number_id"
    name = payload.get(key)
    return frozenset((name,)) if isinstance(name, str) else frozenset()


class EmulatorService:
    """The state of one running emulator and the handlers that use it."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self._keys = tuple(key.encode() for key in config.api_keys)
        names = dict.fromkeys((*config.v1_lists, *config.v2_lists))
        self.rate_model = SendRateModel(
            names,
            rate_per_min=config.send_rate_per_min,
            overrides=config.list_rates_per_min,
            stale_after_s=config.stale_after_s,
        )
        lists = self.rate_model.lists
        self._v1_lists: dict[str, SendingList] = {name: lists[name] for name in config.v1_lists}
        self._v2_lists: dict[str, SendingList] = {name: lists[name] for name in config.v2_lists}
        self._v2_names = frozenset(config.v2_lists)
        self.stats = EmulatorStats(self.rate_model)
        self.faults = FaultInjector(config.faults)
        self.ledger: Ledger | None = None
        if config.ledger_path is not None:
            try:
                self.ledger = Ledger(config.ledger_path)
            except OSError as exc:
                raise EmulatorConfigError(
                    f"ledger_path: cannot open {str(config.ledger_path)!r}: {exc.strerror}"
                ) from exc
        self.stopping = asyncio.Event()  # set when the server stops: releases hung requests
        self.app = self._make_app()

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=_CLIENT_MAX_SIZE)
        for endpoint in Endpoint:
            app.router.add_post("/api" + endpoint.value, self._handler_for(endpoint))
        app.router.add_get("/_emulator/stats", self._serve_stats)
        return app

    def _handler_for(
        self, endpoint: Endpoint
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        cap = self.config.max_in_flight

        async def handle(request: web.Request) -> web.StreamResponse:
            stats = self.stats
            sequence = stats.request_started()
            try:
                if cap is not None and stats.in_flight > cap:
                    return await self._over_in_flight_cap(request, endpoint)
                return await self._serve(request, endpoint, sequence)
            finally:
                stats.request_ended()

        return handle

    async def _over_in_flight_cap(self, request: web.Request, endpoint: Endpoint) -> web.Response:
        """429 before anything else (a gateway's answer): nothing is queued, the body is read
        only so that the connection stays usable."""
        await request.read()
        self.stats.over_in_flight_cap += 1
        headers = {**(_V1_HEADERS if endpoint.api == "v1" else {})}
        headers["Retry-After"] = self.faults.retry_after_header
        refusal = _Refusal(429, "too_many_in_flight", "Too many requests in flight, retry later")
        return self._refuse(refusal, headers)

    async def _serve_stats(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.stats.snapshot()), content_type=_JSON)

    def close(self) -> None:
        """Release what outlives requests (the ledger file)."""
        if self.ledger is not None:
            self.ledger.close()

    # -- one request ---------------------------------------------------------------------------

    async def _serve(
        self, request: web.Request, endpoint: Endpoint, sequence: int
    ) -> web.StreamResponse:
        arrival = time.time()
        headers = _V1_HEADERS if endpoint.api == "v1" else None
        refusal = self._check_api_key(request)
        if refusal is not None:
            return self._refuse(refusal, headers)
        faults = self.faults
        draw = faults.draw() if faults.enabled else NO_FAULT

        payload: Any = None
        try:
            body = await self._read_body(request)
            self.stats.body_read(len(body))
            payload = self._decode(body)
        except _Refusal as caught:
            refusal = caught
        if (
            draw is not NO_FAULT
            and faults.lists
            and not faults.applies_to(_lists_named(endpoint, payload))
        ):
            draw = NO_FAULT

        fault = draw.fault
        if fault in BEFORE_QUEUEING:
            return await self._fault_before_queueing(request, draw, headers)
        if fault is Fault.PARTIAL_500 and refusal is None:
            payload = _first_half(payload)
        if refusal is None:
            try:
                answer = self._accept(endpoint, payload, sequence, arrival)
            except _Refusal as caught:
                refusal = caught
        if refusal is not None:
            await self._delay(request, draw)
            return self._refuse(refusal, headers)

        if fault is Fault.HANG:
            self._count_fault(fault, HUNG)
            await self.stopping.wait()
            await _close_without_answer(request)
        await self._delay(request, draw)
        if fault is Fault.DROP_AFTER:
            self._count_fault(fault, DROPPED)
            await _close_without_answer(request)
        if fault is Fault.TRUNCATED_BODY:
            self._count_fault(fault, TRUNCATED)
            await self._answer_truncated(request, answer, headers)
        if fault is Fault.GATEWAY_AFTER or fault is Fault.PARTIAL_500:
            # The messages (or half of them) are queued and the ledger has them; the answer
            # says only that something went wrong, as a gateway or a crashing handler does.
            self.stats.faults[fault] += 1
            status = draw.status_5xx if fault is Fault.GATEWAY_AFTER else 500
            code, text = _5XX_ERRORS[status]
            return self._refuse(_Refusal(status, code, text), headers)
        self.stats.by_status["201"] += 1
        return web.Response(body=answer, status=201, headers=headers, content_type=_JSON)

    def _check_api_key(self, request: web.Request) -> _Refusal | None:
        given = request.headers.get("X-Api-Key")
        if not given:
            return _Refusal(401, "missing_api_key", "Missing API key (X-Api-Key header)")
        given_bytes = given.encode("utf-8", "surrogateescape")
        # Constant time, and every configured key is compared, so the timing tells nothing about
        # which key (or how much of one) matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given_bytes, key)
        if matched:
            return None
        return _Refusal(401, "invalid_api_key", "Invalid or revoked API key")

    async def _read_body(self, request: web.Request) -> bytes:
        """The whole body, refused (413) past 5,000,000 bytes without holding more than that."""
        length = request.content_length
        if length is not None and length > MAX_BODY_BYTES:
            raise _too_large()
        content = request.content
        chunks: list[bytes] = []
        size = 0
        while chunk := await content.readany():
            size += len(chunk)
            if size > MAX_BODY_BYTES:  # chunked, or a Content-Length that lied
                raise _too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _decode(body: bytes) -> Any:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _Refusal(400, "invalid_json", "Request body is not valid JSON") from None
        if not isinstance(payload, dict):
            raise _Refusal(400, "invalid_json", "Request body must be a JSON object")
        return payload

    def _refuse(self, refusal: _Refusal, headers: Mapping[str, str] | None) -> web.Response:
        self.stats.by_status[str(refusal.status)] += 1
        body = orjson.dumps({"error": refusal.text, "code": refusal.code})
        return web.Response(body=body, status=refusal.status, headers=headers, content_type=_JSON)

    def _count_fault(self, fault: Fault, status_key: str) -> None:
        self.stats.faults[fault] += 1
        self.stats.by_status[status_key] += 1

    async def _delay(self, request: web.Request, draw: FaultDraw) -> None:
        if draw.delay_s > 0:
            self.stats.latency_faults += 1
            # Stopping cuts the wait short (the connection closes unanswered, as a server going
            # down does): waiting out a long latency made SIGTERM take seconds.
            try:
                async with asyncio.timeout(draw.delay_s):
                    await self.stopping.wait()
            except TimeoutError:
                return
            await _close_without_answer(request)

    async def _fault_before_queueing(
        self, request: web.Request, draw: FaultDraw, headers: Mapping[str, str] | None
    ) -> web.Response:
        await self._delay(request, draw)
        fault = draw.fault
        assert fault is not None
        if fault is Fault.DROP_BEFORE:
            self._count_fault(fault, DROPPED)
            await _close_without_answer(request)
        self.stats.faults[fault] += 1
        if fault is Fault.RATE_429:
            refusal = _Refusal(429, "rate_limited", "Too many requests, retry later")
            headers = {**(headers or {}), "Retry-After": self.faults.retry_after_header}
        else:
            code, text = _5XX_ERRORS[draw.status_5xx]
            refusal = _Refusal(draw.status_5xx, code, text)
        return self._refuse(refusal, headers)

    async def _answer_truncated(
        self, request: web.Request, answer: bytes, headers: Mapping[str, str] | None
    ) -> NoReturn:
        """Send 201 and half the body under a Content-Length for all of it, then hang up."""
        response = web.StreamResponse(status=201, headers=headers)
        response.content_type = _JSON
        response.content_length = len(answer)
        await response.prepare(request)
        await response.write(answer[: len(answer) // 2])
        await _close_without_answer(request)

    # -- accepting messages --------------------------------------------------------------------

    def _accept(
        self, endpoint: Endpoint, payload: dict[str, Any], sequence: int, arrival: float
    ) -> bytes:
        """Check and queue a decoded request; return the 201 answer's body (or raise _Refusal)."""
        if endpoint is Endpoint.V1_BULK:
            return self._accept_v1_bulk(payload, sequence, arrival)
        if endpoint is Endpoint.V2_BULK:
            return self._accept_v2_bulk(payload, sequence, arrival)
        if endpoint is Endpoint.V1_SINGLE:
            return self._accept_v1_single(payload, sequence, arrival)
        return self._accept_v2_single(payload, sequence, arrival)

    def _bulk_messages(self, payload: dict[str, Any], too_many_status: int) -> list[Any]:
        messages = payload.get("messages")
        if type(messages) is not list or not messages:
            raise _Refusal(400, "missing_messages", "messages must be a non-empty array")
        self.stats.messages_seen(len(messages))
        if len(messages) > MAX_MESSAGES:
            raise _Refusal(
                too_many_status,
                "too_many_messages",
                f"At most {MAX_MESSAGES} messages per request, got {len(messages)}",
            )
        return messages

    @staticmethod
    def _v1_list_id(payload: dict[str, Any]) -> object:
        list_id = payload.get("from_phone_number_id")
        if list_id is None or list_id == "":
            raise _Refusal(400, "missing_from", "from_phone_number_id is required")
        return list_id

    def _v1_list(self, list_id: object) -> tuple[str, SendingList]:
        sending_list = self._v1_lists.get(list_id) if type(list_id) is str else None
        if sending_list is None:
            raise _Refusal(404, "list_not_found", "Sending list not found or not active")
        return sending_list.name, sending_list

    def _queue(self, sending_list: SendingList, queued: int, rejected: int) -> None:
        """Put accepted messages on a list's queue (the rate model) and count them."""
        stats = self.stats
        stats.dropped_stale += sending_list.admit(
            queued, time.monotonic(), self.rate_model.stale_after_s
        )
        sending_list.rejected += rejected
        sending_list.requests += 1
        stats.messages_queued += queued
        stats.messages_rejected += rejected

    def _accept_v1_bulk(self, payload: dict[str, Any], sequence: int, arrival: float) -> bytes:
        given_list = self._v1_list_id(payload)
        messages = self._bulk_messages(payload, too_many_status=400)
        list_id, sending_list = self._v1_list(given_list)
        if self.config.validate:
            accepted = check_v1_messages(messages)
        else:
            accepted = accept_unvalidated(messages, v2=False)
        queued = len(accepted.tos)
        self._queue(sending_list, queued, len(accepted.errors))
        if self.ledger is not None:
            self.ledger.record(
                api="v1",
                request=sequence,
                arrival=arrival,
                validated=self.config.validate,
                tos=accepted.tos,
                bodies=accepted.bodies,
                lists=list_id,
            )
        return orjson.dumps(
            {
                "queued_count": queued,
                "error_count": len(accepted.errors),
                "errors": accepted.errors,
                "deprecated": True,
            }
        )

    def _accept_v2_bulk(self, payload: dict[str, Any], sequence: int, arrival: float) -> bytes:
        messages = self._bulk_messages(payload, too_many_status=413)
        if self.config.validate:
            accepted = check_v2_messages(messages, self._v2_names)
        else:
            accepted = accept_unvalidated(messages, v2=True)
        self._queue_v2(accepted)
        if self.ledger is not None:
            assert accepted.lists is not None
            self.ledger.record(
                api="v2",
                request=sequence,
                arrival=arrival,
                validated=self.config.validate,
                tos=accepted.tos,
                bodies=accepted.bodies,
                lists=accepted.lists,
                sources=accepted.sources,
            )
        return orjson.dumps(
            {
                "success": True,
                "queued_count": len(accepted.tos),
                "error_count": len(accepted.errors),
                "errors": accepted.errors,
            }
        )

    def _queue_v2(self, accepted: Accepted) -> None:
        """Queue a v2 request's messages on their lists (nearly always all on one)."""
        lists = accepted.lists or []
        queued_by_list: Mapping[str | None, int]
        if lists and lists.count(lists[0]) == len(lists):
            queued_by_list = {lists[0]: len(lists)}
        else:
            queued_by_list = Counter(lists)
        rejected_by_list = accepted.rejected_by_list
        stats = self.stats
        for name in queued_by_list.keys() | rejected_by_list.keys():
            queued = queued_by_list.get(name, 0)
            sending_list = self._v2_lists.get(name) if name is not None else None
            if sending_list is None:  # an unknown list is only accepted with validation off
                stats.messages_queued += queued
                continue
            self._queue(sending_list, queued, rejected_by_list[name])
        # Rejected messages that name no configured list are counted in the totals only.
        stats.messages_rejected += len(accepted.errors) - rejected_by_list.total()

    def _accept_v1_single(self, payload: dict[str, Any], sequence: int, arrival: float) -> bytes:
        list_id, sending_list = self._v1_list(self._v1_list_id(payload))
        to: object = payload.get("to_msisdn", payload.get("to"))
        body = payload.get("body")
        if self.config.validate:
            error, to = v1_message_error(payload)
            if error is not None:
                raise _Refusal(400, _V1_SINGLE_CODES[error], error)
        self._queue(sending_list, 1, 0)
        if self.ledger is not None:
            self.ledger.record(
                api="v1",
                request=sequence,
                arrival=arrival,
                validated=self.config.validate,
                tos=[to],
                bodies=[body],
                lists=list_id,
                sources=[payload],
            )
        segments, gsm7 = segments_of(body) if isinstance(body, str) else (0, False)
        message_id = f"msg_{sequence:016x}"
        return orjson.dumps(
            {
                "message_id": message_id,
                "id": message_id,
                "status": "queued",
                "segments": segments,
                "gsm7": gsm7,
                "deprecated": True,
            }
        )

    def _accept_v2_single(self, payload: dict[str, Any], sequence: int, arrival: float) -> bytes:
        if self.config.validate:
            problem = v2_message_error(payload, self._v2_names)
            if problem is not None:
                code, text = problem
                raise _Refusal(404 if code == "list_not_found" else 400, code, text)
        list_number = payload.get("list_number")
        sending_list = self._v2_lists.get(list_number) if type(list_number) is str else None
        if sending_list is not None:
            self._queue(sending_list, 1, 0)
        else:  # only possible with validation off
            self.stats.messages_queued += 1
        if self.ledger is not None:
            self.ledger.record(
                api="v2",
                request=sequence,
                arrival=arrival,
                validated=self.config.validate,
                tos=[payload.get("to")],
                bodies=[payload.get("body")],
                lists=[list_number],
                sources=[payload],
            )
        return orjson.dumps({"success": True, "message_id": f"{sequence:08x}", "status": "queued"})


class RunningEmulator:
    """A started emulator: where it listens, and its counters."""

    __slots__ = ("_service", "base_url", "host", "port")

    def __init__(self, service: EmulatorService, host: str, port: int) -> None:
        self._service = service
        self.host = host
        self.port = port
        url_host = f"[{host}]" if ":" in host else host
        scheme = "https" if service.config.tls_cert is not None else "http"
        self.base_url = f"{scheme}://{url_host}:{port}/api"

    @property
    def config(self) -> EmulatorConfig:
        return self._service.config

    @property
    def api_key(self) -> str:
        """The first configured API key (the one a demo or test sends with)."""
        return self._service.config.api_keys[0]

    @property
    def ledger_path(self) -> Path | None:
        return self._service.config.ledger_path

    @property
    def stats_url(self) -> str:
        return self.base_url.removesuffix("/api") + "/_emulator/stats"

    def stats(self) -> EmulatorStatsSnapshot:
        """The counters, exactly as `GET /_emulator/stats` returns them."""
        return self._service.stats.snapshot()


def _server_tls(config: EmulatorConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    import ssl  # only when serving HTTPS: building TLS support costs start-up time

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise EmulatorConfigError(
            f"tls_cert/tls_key: can't load {config.tls_cert} with {config.tls_key}: {exc}"
        ) from None
    return context


@asynccontextmanager
async def run_emulator(config: EmulatorConfig) -> AsyncIterator[RunningEmulator]:
    """Serve the emulator in the running event loop for the duration of the `async with`.

    Raises `EmulatorConfigError` for an unusable config and `OSError` when it can't listen.
    Leaving the context stops it promptly: hung requests are dropped, not waited for.
    """
    check_config(config)
    service = EmulatorService(config)
    runner = web.AppRunner(
        service.app,
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
    )
    try:
        await runner.setup()
        site = web.TCPSite(runner, config.host, config.port, ssl_context=_server_tls(config))
        await site.start()
        port = runner.addresses[0][1]
        yield RunningEmulator(service, config.host, port)
    finally:
        service.stopping.set()
        await runner.cleanup()
        service.close()
