"""The Prometheus endpoint: `GET /metrics` and `GET /healthz` on a small aiohttp server.

Promises:
- Every number on `/metrics` is read from one `RunStats.snapshot()` taken when the scrape
  arrives: the endpoint keeps no counts of its own, so it can't drift from the progress line, the
  summary or the outcomes file.
- The exposition is prometheus_client's (`generate_latest`, text format 0.0.4), from a registry of
  our own, so nothing else in the process (a library's default-registry metrics) leaks in.
- Every message status is always present (at zero until it happens), so `rate()` and alerts on
  e.g. `unknown` work from the first scrape.

Scrapes cost one snapshot and a few hundred bytes of text; they run on the event loop, which is
fine at Prometheus' usual interval of seconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from streamsend._exceptions import ConfigError
from streamsend._models import Status
from streamsend._stats import LATENCY_BUCKETS, RunStats, StatsSnapshot


class StatsCollector:
    """A prometheus_client collector that turns one `StatsSnapshot` per scrape into metrics."""

    def __init__(self, stats: RunStats) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        snapshot = self._stats.snapshot()
        yield _messages(snapshot)

        requests = CounterMetricFamily(
            "streamsend_requests",
            "Request attempts by HTTP status, or by transport error (timeout, connect_error, ...).",
            labels=["code"],
        )
        for code, count in sorted(snapshot.requests_by_code.items()):
            requests.add_metric([code], count)
        yield requests

        # Python's float repr ("0.005", "1.0") is the `le` spelling Prometheus clients use.
        cumulative = snapshot.latency_bucket_counts
        buckets = [
            (repr(float(bound)), float(count))
            for bound, count in zip(LATENCY_BUCKETS, cumulative[:-1], strict=True)
        ]
        buckets.append(("+Inf", float(cumulative[-1])))
        yield HistogramMetricFamily(
            "streamsend_request_duration_seconds",
            "Time from sending a request to reading its whole answer, per attempt.",
            buckets=buckets,
            sum_value=snapshot.latency_sum,
        )

        yield GaugeMetricFamily(
            "streamsend_requests_in_flight",
            "Requests sent and not yet answered.",
            value=snapshot.in_flight,
        )
        yield GaugeMetricFamily(
            "streamsend_concurrency_limit",
            "Requests allowed in flight now: fixed by --concurrency N, or adapted to the "
            "service's latency and 429/503 answers (auto).",
            value=snapshot.concurrency_limit,
        )
        depths = GaugeMetricFamily(
            "streamsend_queue_depth",
            "Work waiting between stages: batches_waiting counts batches in the dispatcher's "
            "lanes, messages_buffered counts messages in open batches.",
            labels=["queue"],
        )
        for queue, depth in sorted(snapshot.queue_depths.items()):
            depths.add_metric([queue], depth)
        yield depths

        yield CounterMetricFamily(
            "streamsend_rate_limit_wait_seconds",
            "Time senders spent waiting for the send-rate limiter, summed over senders.",
            value=snapshot.rate_wait_seconds,
        )
        yield CounterMetricFamily(
            "streamsend_retries", "Request attempts that were retries.", value=snapshot.retries
        )
        yield GaugeMetricFamily(
            "streamsend_send_rate_messages_per_second",
            "Messages the service accepted (queued) per second, averaged since the start.",
            value=snapshot.send_rate,
        )
        yield CounterMetricFamily(
            "streamsend_segments",
            "SMS segments in the messages sent, as streamsend counts them (GSM-7 or UCS-2 rules).",
            value=snapshot.segments_sent,
        )
        yield CounterMetricFamily(
            "streamsend_lines_read",
            "Non-blank input lines read (blank and whitespace-only lines are skipped).",
            value=snapshot.lines_read,
        )


def _messages(snapshot: StatsSnapshot) -> CounterMetricFamily:
    messages = CounterMetricFamily(
        "streamsend_messages",
        "Input lines by final status and sending number (sender is empty for lines that never "
        "had one, such as invalid lines).",
        labels=["status", "sender"],
    )
    per_status_with_sender: dict[str, int] = {}
    for sender, counts in sorted(snapshot.by_sender.items()):
        for status, count in sorted(counts.items()):
            messages.add_metric([status, sender], count)
            per_status_with_sender[status] = per_status_with_sender.get(status, 0) + count
    statuses = [s.value for s in Status]
    statuses += sorted(set(snapshot.by_status) - set(statuses))
    for status in statuses:
        without_sender = snapshot.by_status.get(status, 0) - per_status_with_sender.get(status, 0)
        # The empty-sender series carries what no sender accounts for, and a zero for a status
        # that hasn't happened at all, so that every status exists from the first scrape.
        if without_sender > 0 or status not in per_status_with_sender:
            messages.add_metric([status, ""], without_sender)
    return messages


@asynccontextmanager
async def serve_metrics(
    stats: RunStats, *, host: str = "127.0.0.1", port: int
) -> AsyncIterator[str]:
    """Serve `/metrics` and `/healthz` for `stats` while the block runs; yields the base URL.

    `port=0` picks a free port (the URL tells which). Raises ConfigError when the address can't
    be bound, e.g. the port is taken.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats))

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4}
        )

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    # No access log: a scrape every few seconds would drown the events worth reading.
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise ConfigError(
                f"can't serve metrics on {host}:{port}: {exc.strerror or exc}"
            ) from exc
        bound_host, bound_port = runner.addresses[0][:2]
        shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        yield f"http://{shown_host}:{bound_port}"
    finally:
        await runner.cleanup()


__all__ = ["StatsCollector", "serve_metrics"]
