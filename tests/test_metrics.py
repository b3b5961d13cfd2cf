"""The metrics endpoint: a real aiohttp server on loopback, scraped like Prometheus would."""

from __future__ import annotations

import socket

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamsend._exceptions import ConfigError
from streamsend._metrics import serve_metrics
from streamsend._models import Status
from streamsend._stats import LATENCY_BUCKETS, RunStats

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _scrape(base_url: str) -> tuple[str, Samples]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(base_url + "/metrics") as response,
    ):
        assert response.status == 200
        text = await response.text()
        content_type = response.headers["Content-Type"]
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return content_type, samples


def _get(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def _driven_stats(clock: FakeClock) -> RunStats:
    stats = RunStats(clock=clock)
    stats.lines_read = 120
    stats.count_outcome("queued", "pn_a", 70)
    stats.count_outcome("queued", "pn_b", 20)
    stats.count_outcome("rejected", "pn_a", 3)
    stats.count_outcome("unknown", "pn_b", 2)
    stats.count_outcome("invalid", None, 5)
    for latency in (0.004, 0.05, 0.05, 0.3, 45.0):
        stats.observe_request("201", latency)
    stats.observe_request("500", 0.02)
    stats.observe_request("timeout", 30.0)
    stats.in_flight = 2
    stats.concurrency_limit = 6
    stats.queue_depth_probes["batches_waiting"] = lambda: 4
    stats.queue_depth_probes["messages_buffered"] = lambda: 1
    stats.rate_wait_seconds = 1.5
    stats.retries = 2
    stats.segments_sent = 131
    clock.now += 10.0
    return stats


async def test_metrics_agree_with_the_stats() -> None:
    """Every metric on /metrics is the number the RunStats holds, in Prometheus text format."""
    stats = _driven_stats(FakeClock())
    async with serve_metrics(stats, port=0) as url:
        content_type, samples = await _scrape(url)

    assert content_type.startswith("text/plain; version=0.0.4")
    messages = "streamsend_messages_total"
    assert _get(samples, messages, status="queued", sender="pn_a") == 70
    assert _get(samples, messages, status="queued", sender="pn_b") == 20
    assert _get(samples, messages, status="rejected", sender="pn_a") == 3
    assert _get(samples, messages, status="unknown", sender="pn_b") == 2
    assert _get(samples, messages, status="invalid", sender="") == 5
    assert _get(samples, messages, status="failed", sender="") == 0
    assert ("streamsend_messages_total", frozenset({("status", "queued"), ("sender", "")})) not in (
        samples
    )

    assert _get(samples, "streamsend_requests_total", code="201") == 5
    assert _get(samples, "streamsend_requests_total", code="500") == 1
    assert _get(samples, "streamsend_requests_total", code="timeout") == 1

    duration = "streamsend_request_duration_seconds"
    assert _get(samples, duration + "_bucket", le="0.005") == 1
    assert _get(samples, duration + "_bucket", le="0.025") == 2  # + the 0.02 s 500
    assert _get(samples, duration + "_bucket", le="0.05") == 4  # 0.05 falls in le="0.05"
    assert _get(samples, duration + "_bucket", le="0.5") == 5
    assert _get(samples, duration + "_bucket", le="30.0") == 6  # 30.0 falls in le="30.0"
    assert _get(samples, duration + "_bucket", le="+Inf") == 7
    assert _get(samples, duration + "_count") == 7
    assert _get(samples, duration + "_sum") == pytest.approx(0.004 + 0.1 + 0.3 + 45 + 0.02 + 30)
    assert sum(1 for name, _ in samples if name == duration + "_bucket") == len(LATENCY_BUCKETS) + 1

    assert _get(samples, "streamsend_requests_in_flight") == 2
    assert _get(samples, "streamsend_concurrency_limit") == 6
    assert _get(samples, "streamsend_queue_depth", queue="batches_waiting") == 4
    assert _get(samples, "streamsend_queue_depth", queue="messages_buffered") == 1
    assert _get(samples, "streamsend_rate_limit_wait_seconds_total") == 1.5
    assert _get(samples, "streamsend_retries_total") == 2
    assert _get(samples, "streamsend_send_rate_messages_per_second") == pytest.approx(9.0)
    assert _get(samples, "streamsend_segments_total") == 131
    assert _get(samples, "streamsend_lines_read_total") == 120


async def test_each_scrape_reads_the_stats_afresh() -> None:
    """Counts that change between scrapes show up in the next scrape (nothing is cached)."""
    clock = FakeClock()
    stats = RunStats(clock=clock)
    depth = [3]
    stats.queue_depth_probes["batches_waiting"] = lambda: depth[0]
    async with serve_metrics(stats, port=0) as url:
        _, before = await _scrape(url)
        stats.count_outcome("queued", "pn_a", 10)
        stats.observe_request("201", 0.1)
        depth[0] = 0
        clock.now += 2.0
        _, after = await _scrape(url)

    assert _get(before, "streamsend_messages_total", status="queued", sender="") == 0
    assert _get(after, "streamsend_messages_total", status="queued", sender="pn_a") == 10
    assert _get(before, "streamsend_requests_in_flight") == 0
    assert _get(after, "streamsend_request_duration_seconds_count") == 1
    assert _get(before, "streamsend_queue_depth", queue="batches_waiting") == 3
    assert _get(after, "streamsend_queue_depth", queue="batches_waiting") == 0
    assert _get(after, "streamsend_send_rate_messages_per_second") == pytest.approx(5.0)


async def test_every_status_is_present_from_the_first_scrape() -> None:
    """Before anything happens, each status has a zero series, so rate() and alerts work."""
    async with serve_metrics(RunStats(), port=0) as url:
        _, samples = await _scrape(url)
    for status in Status:
        assert _get(samples, "streamsend_messages_total", status=status.value, sender="") == 0


async def test_healthz() -> None:
    """/healthz answers 200 "ok"."""
    async with (
        serve_metrics(RunStats(), port=0) as url,
        aiohttp.ClientSession() as session,
        session.get(url + "/healthz") as response,
    ):
        assert response.status == 200
        assert await response.text() == "ok"


async def test_server_stops_when_the_block_ends() -> None:
    """After the block, the port no longer answers."""
    async with serve_metrics(RunStats(), port=0) as url:
        pass
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorError):
            await session.get(url + "/healthz")


async def test_port_in_use_is_a_config_error() -> None:
    """A taken port is a clear ConfigError naming the address, not an OSError traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
            async with serve_metrics(RunStats(), port=port):
                pass
