"""The emulator's counters, as `GET /_emulator/stats` and `RunningEmulator.stats()` show them.

    requests_by_status   {"201": n, "400": n, ...}; requests whose answer a fault lost are
                         counted as "dropped" (drop_before, drop_after), "hang" or "truncated"
                         instead, since the client never saw a status it could act on
    requests_total       every request to /api, answered or not (401s and 404s included)
    messages_queued      messages accepted ("queued" in an answer, or lost with the answer)
    messages_rejected    messages refused in-band (the `errors` of a 201 answer)
    dropped_stale        of the queued ones, those the send-rate model drops as stale
    largest_request_*    the most messages / body bytes seen in one request
    in_flight            requests being handled now (hung ones included); peak_in_flight the most
    over_in_flight_cap   requests answered 429 because max_in_flight were being handled already
    faults               how many requests got each fault, and how many got added latency
    per_list             per configured sending list: queued, rejected, dropped_stale, requests

Counters are plain ints bumped a few times per request, never per message, and a snapshot
is built only when asked for, so keeping them costs nothing measurable.
"""

from __future__ import annotations

from collections import Counter
from typing import TypedDict

from streamsend.emulator._faults import Fault
from streamsend.emulator._ratemodel import ListCounts, SendRateModel

#: The `requests_by_status` keys of requests whose answer a fault lost.
DROPPED = "dropped"
HUNG = "hang"
TRUNCATED = "truncated"


class FaultCounts(TypedDict):
    """How many requests got each fault, and how many got added latency."""

    error_5xx: int
    rate_429: int
    drop_before: int
    drop_after: int
    hang: int
    truncated_body: int
    gateway_after: int
    partial_500: int
    latency: int


class EmulatorStatsSnapshot(TypedDict):
    """The stats as `GET /_emulator/stats` serves them (see the module docstring)."""

    requests_by_status: dict[str, int]
    requests_total: int
    messages_queued: int
    messages_rejected: int
    dropped_stale: int
    largest_request_messages: int
    largest_request_bytes: int
    peak_in_flight: int
    in_flight: int
    over_in_flight_cap: int
    faults: FaultCounts
    per_list: dict[str, ListCounts]


class EmulatorStats:
    """Request and message counters for one emulator run."""

    __slots__ = (
        "by_status",
        "dropped_stale",
        "faults",
        "in_flight",
        "largest_request_bytes",
        "largest_request_messages",
        "latency_faults",
        "messages_queued",
        "messages_rejected",
        "over_in_flight_cap",
        "peak_in_flight",
        "rate_model",
        "requests_total",
    )

    def __init__(self, rate_model: SendRateModel) -> None:
        self.rate_model = rate_model  # holds the per-list counters
        self.by_status: Counter[str] = Counter()
        self.requests_total = 0
        self.messages_queued = 0
        self.messages_rejected = 0
        self.dropped_stale = 0
        self.largest_request_messages = 0
        self.largest_request_bytes = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.over_in_flight_cap = 0
        self.faults: Counter[Fault] = Counter()
        self.latency_faults = 0

    def request_started(self) -> int:
        """Count a new request; return its sequence number (1-based, in arrival order)."""
        self.requests_total += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        return self.requests_total

    def request_ended(self) -> None:
        """The handler of a request is done (answered, dropped or cancelled)."""
        self.in_flight -= 1

    def body_read(self, size: int) -> None:
        """Note the size of a request body that was read in full."""
        self.largest_request_bytes = max(self.largest_request_bytes, size)

    def messages_seen(self, count: int) -> None:
        """Note the length of a request's `messages` array."""
        self.largest_request_messages = max(self.largest_request_messages, count)

    def snapshot(self) -> EmulatorStatsSnapshot:
        """All counters as one JSON-ready dict."""
        return {
            "requests_by_status": dict(self.by_status),
            "requests_total": self.requests_total,
            "messages_queued": self.messages_queued,
            "messages_rejected": self.messages_rejected,
            "dropped_stale": self.dropped_stale,
            "largest_request_messages": self.largest_request_messages,
            "largest_request_bytes": self.largest_request_bytes,
            "peak_in_flight": self.peak_in_flight,
            "in_flight": self.in_flight,
            "over_in_flight_cap": self.over_in_flight_cap,
            "faults": {
                "error_5xx": self.faults[Fault.ERROR_5XX],
                "rate_429": self.faults[Fault.RATE_429],
                "drop_before": self.faults[Fault.DROP_BEFORE],
                "drop_after": self.faults[Fault.DROP_AFTER],
                "hang": self.faults[Fault.HANG],
                "truncated_body": self.faults[Fault.TRUNCATED_BODY],
                "gateway_after": self.faults[Fault.GATEWAY_AFTER],
                "partial_500": self.faults[Fault.PARTIAL_500],
                "latency": self.latency_faults,
            },
            "per_list": {
                name: sending_list.counters()
                for name, sending_list in self.rate_model.lists.items()
            },
        }
