"""Dispatching: batches become HTTP requests, paced per sending number, retried only when safe.

The dispatcher is the pool of workers between the batcher and the service, in three parts:
`_lanes` (per sending number: queue, pacing, 429 pause; shared request slots and budget),
`_attempts` (one request and its retries: what each answer proves) and `_recorder` (journal
records, outcomes and stats of each request). This module owns the HTTP session and the workers.

The session reaches the service the way curl would from the same shell: through the proxy that
HTTPS_PROXY / HTTP_PROXY / ALL_PROXY name (lower-case forms first) unless NO_PROXY exempts the
host, or through the `proxy` setting, which overrides them; and it trusts the system's CAs
(SSL_CERT_FILE / SSL_CERT_DIR still apply) plus the private CA of the `ca_bundle` setting.

Promises:
- Every batch handed to `submit()` ends with exactly one outcome per message, written to the
  sink, unless the run is aborted by a fatal service answer or cut short by a second signal
  (then the lines of requests never transmitted get no outcome, and --resume sends them).
- At most `concurrency` requests are in flight across all sending numbers (with `concurrency`
  None, a number `_concurrency` adapts within 1..`max_concurrency`), and at most
  `max_waiting_messages` wait in the lanes before `submit()` makes the producer wait.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from streamsend._attempts import Abort, AttemptLoop, Backoff, mark_transmitted
from streamsend._concurrency import DEFAULT_MAX_CONCURRENCY, ConcurrencyLimit
from streamsend._exceptions import ConfigError, FatalServiceError
from streamsend._expiry import Expiry
from streamsend._http import aiohttp, load_deferred_cas
from streamsend._lanes import Lane, Lanes
from streamsend._logs import library_logger
from streamsend._models import Batch
from streamsend._protocol import protocol_for
from streamsend._recorder import Recorder
from streamsend._stats import RunStats
from streamsend._types import ApiVersion, Journal, Logger, OutcomeSink, RateLimiter

if TYPE_CHECKING:
    import ssl


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    base_url: str
    api_version: ApiVersion
    api_key: str
    concurrency: int | None = None  # None: adaptive (see `_concurrency`) up to max_concurrency
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    timeout: float = 30.0
    retries: int = 5
    resend_unknown: bool = False
    backoff: Backoff = field(default_factory=Backoff)
    # How long a sending number's service may stay down or unreachable before the run stops.
    give_up_after: float = 300.0
    # Messages waiting in all lanes before `submit()` makes the producer wait (see `_lanes`).
    max_waiting_messages: int = 20_000
    proxy: str | None = None  # None: from the environment; "": none (see `proxy_for`)
    ca_bundle: str | None = None  # PEM file of CAs trusted besides the system's

    @property
    def most_in_flight(self) -> int:
        """The most requests that can ever be in flight at once."""
        return self.max_concurrency if self.concurrency is None else self.concurrency


def proxy_for(url: str, setting: str | None, env: Mapping[str, str]) -> str | None:
    """The proxy to reach `url` through, or None to connect directly; curl's rules.

    `setting` (the `proxy` setting) wins over the environment; "" means no proxy at all.
    Otherwise https:// URLs use https_proxy/HTTPS_PROXY, http:// ones http_proxy/HTTP_PROXY,
    either falling back to all_proxy/ALL_PROXY. NO_PROXY (a comma list of hosts, domain
    suffixes, IP networks, `host:port`, or `*`) exempts a host whichever way the proxy was named.
    A proxy given without a scheme is an http:// one, as curl takes it.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    proxy = setting if setting is not None else _first_env(env, f"{scheme}_proxy", "all_proxy")
    if not proxy or _bypassed(parts.hostname or "", parts.port, _first_env(env, "no_proxy")):
        return None
    return proxy if "://" in proxy else "http://" + proxy


def _first_env(env: Mapping[str, str], *names: str) -> str:
    for name in names:
        for spelling in (name, name.upper()):
            if env.get(spelling, "").strip():
                return env[spelling].strip()
    return ""


def _bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    host = host.lower().rstrip(".")
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        entry_host, _, entry_port = entry.rpartition(":") if _has_port(entry) else (entry, "", "")
        if entry_port and port is not None and entry_port != str(port):
            continue
        entry_host = entry_host.strip("[]").lstrip(".").rstrip(".")
        if host == entry_host or host.endswith("." + entry_host):
            return True
        if _in_network(host, entry_host):
            return True
    return False


def _has_port(entry: str) -> bool:
    # "host:8443" and "[::1]:8443" carry a port; a bare IPv6 address ("::1") does not.
    return (entry.startswith("[") and "]:" in entry) or entry.count(":") == 1


def _in_network(host: str, entry: str) -> bool:
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False)
    except ValueError:  # a name, not an address or network
        return False


def tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """The system's trusted CAs (SSL_CERT_FILE / SSL_CERT_DIR apply) plus `ca_bundle`'s."""
    import ssl  # only for https:// URLs: building TLS support costs start-up time

    context = ssl.create_default_context()
    if ca_bundle:
        try:
            context.load_verify_locations(cafile=ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise ConfigError(
                f"ca_bundle: can't load CA certificates from {ca_bundle}: {reason}"
            ) from None
    return context


def open_session(
    settings: DispatchSettings,
    *,
    env: Mapping[str, str] | None = None,
    trace_configs: Sequence[aiohttp.TraceConfig] = (),
) -> aiohttp.ClientSession:
    """A session to the service: its proxy and CAs as `proxy_for` and `tls_context` say."""
    url = settings.base_url
    https = url.lower().startswith("https://")
    proxy = proxy_for(url, settings.proxy, os.environ if env is None else env)
    if proxy is not None and proxy.lower().startswith("https://"):
        load_deferred_cas()  # aiohttp reaches a TLS proxy with its own default context
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=settings.most_in_flight + 2,
            ssl=tls_context(settings.ca_bundle) if https else True,
        ),
        proxy=proxy,
        trace_configs=list(trace_configs),
        # Our own timeout wraps each attempt; aiohttp's default 5-minute total would
        # only blur which attempt timed out.
        timeout=aiohttp.ClientTimeout(total=None),
    )


class Dispatcher:
    """Delivers batches; one per run. Use as `async with Dispatcher(...) as dispatcher`."""

    def __init__(
        self,
        settings: DispatchSettings,
        *,
        sink: OutcomeSink,
        journal: Journal | None,
        stats: RunStats,
        limiter: RateLimiter,
        send_gate: RateLimiter | None = None,
        first_request: int = 1,
        log: Logger = None,
        rng: random.Random | None = None,
        session: aiohttp.ClientSession | None = None,
        expiry: Expiry | None = None,
    ) -> None:
        self.settings = settings
        log = log if log is not None else library_logger()
        self._session = session
        self._owns_session = session is None
        self._abort = Abort(log)
        self.lanes = Lanes(
            limiter=limiter,
            send_gate=send_gate,
            stats=stats,
            slots=ConcurrencyLimit(
                settings.most_in_flight, adaptive=settings.concurrency is None, stats=stats
            ),
            max_waiting_messages=settings.max_waiting_messages,
            on_open=self._start_workers,
        )
        self._attempts = AttemptLoop(
            protocol=protocol_for(settings.api_version),
            base_url=settings.base_url,
            api_key=settings.api_key,
            timeout=settings.timeout,
            retries=settings.retries,
            resend_unknown=settings.resend_unknown,
            backoff=settings.backoff,
            give_up_after=settings.give_up_after,
            lanes=self.lanes,
            recorder=Recorder(sink=sink, journal=journal, stats=stats, log=log),
            stats=stats,
            abort=self._abort,
            log=log,
            rng=rng or random.Random(),
            first_request=first_request,
            expiry=expiry,
        )
        self._attempts.session = session

    @property
    def aborted(self) -> asyncio.Event:
        """Set on a fatal answer or a crash: stop reading, start no new request."""
        return self._abort.event

    @property
    def fatal(self) -> FatalServiceError | None:
        return self._abort.fatal

    @property
    def crashed(self) -> Exception | None:
        """An error that is no service answer (a bug); the pipeline raises it after draining."""
        return self._abort.crashed

    async def __aenter__(self) -> Dispatcher:
        if self._session is None:
            trace = aiohttp.TraceConfig()
            trace.on_request_headers_sent.append(mark_transmitted)
            self._session = open_session(self.settings, trace_configs=[trace])
            self._attempts.session = self._session
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def submit(self, batch: Batch) -> None:
        """Queue a batch on its sending number's lane; waits while the lanes hold too much."""
        await self.lanes.submit(batch)

    def queued_batches(self) -> int:
        return self.lanes.queued_batches()

    async def drain(self) -> None:
        """Wait until every submitted batch has its outcomes."""
        for lane in self.lanes.all():
            for _ in lane.workers:
                lane.queue.put_nowait(None)
        workers = self._workers()
        if workers:
            await asyncio.gather(*workers)

    async def cancel(self) -> None:
        """Stop at once: requests in flight are abandoned (and reported `unknown` if sent)."""
        workers = self._workers()
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    async def aclose(self) -> None:
        await self.cancel()
        if self._session is not None and self._owns_session:
            await self._session.close()

    def _workers(self) -> list[asyncio.Task[None]]:
        return [w for lane in self.lanes.all() for w in lane.workers]

    def _start_workers(self, lane: Lane) -> None:
        lane.workers = [
            asyncio.create_task(self._work(lane), name=f"lane-{lane.sender}-{i}")
            for i in range(self.settings.most_in_flight)
        ]

    async def _work(self, lane: Lane) -> None:
        while True:
            batch = await lane.queue.get()
            if batch is None:
                return
            self.lanes.taken(batch)
            if self._abort.is_set():
                continue  # no outcome: --resume sends these lines later
            try:
                await self._attempts.deliver(lane, batch.messages)
            except Exception as exc:
                # Not a service answer but a bug. Stop the run as a fatal answer does (reading
                # stops, requests in flight finish) and let the pipeline raise it. Left to end
                # this task, it would go unseen until drain(), and the pipeline swallowed it.
                # This request's lines keep no outcome; the journal has them for --resume.
                self._abort.on_crash(exc)
                return
