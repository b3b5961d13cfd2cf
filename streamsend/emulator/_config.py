"""What an emulator run is configured with, and the checks that make a configuration usable.

`EmulatorConfig` and `FaultConfig` are plain frozen records; `check_config` is the one place
that refuses nonsense (a fraction above 1, a v2 list number that isn't E.164, no API key), so
the in-process API, the command line and the TOML file all fail the same way, with
`EmulatorConfigError` naming the offending setting.

The parsers for human-friendly values (`17000/min`, `30m`) live here too, because both the
command line and the TOML file accept them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from streamsend._pacing import DEFAULT_RATE_PER_MIN, SERVICE_STALE_AFTER_S, parse_rate

#: The service's strict E.164 form: "+", then 8 to 15 digits, the first not 0.
E164 = re.compile(r"\+[1-9][0-9]{7,14}")

#: The documented default send rate of a sending list.
DEFAULT_SEND_RATE_PER_MIN = float(DEFAULT_RATE_PER_MIN)
#: Messages that would wait longer than this in a list's queue are dropped by the service.
DEFAULT_STALE_AFTER_S = float(SERVICE_STALE_AFTER_S)

_EMPTY_RATES: Mapping[str, float] = MappingProxyType({})

#: The fault fractions of `FaultConfig`, in the order they partition a request's draw.
_FRACTIONS = (
    "error_5xx",
    "rate_429",
    "drop_before",
    "drop_after",
    "hang",
    "truncated_body",
    "gateway_after",
    "partial_500",
)


class EmulatorConfigError(ValueError):
    """A setting of the emulator is unusable; the message names the setting and the problem."""


#: The sending list the emulator knows when none is configured (`send --emulator`, the demo):
#: the v1 id and the v2 number from the API documentation's examples.
DEFAULT_V1_LIST = "pn_abc123def456"
DEFAULT_V2_LIST = "+18005551000"


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Which faults to inject, as fractions of requests, drawn from one seeded generator.

    The eight fault fractions partition one uniform draw per request, so together they may not
    exceed 1. `lists`, when non-empty, limits every fault (latency included) to requests for
    those sending lists (v1 ids or v2 list numbers).
    """

    seed: int = 0
    error_5xx: float = 0.0
    rate_429: float = 0.0
    retry_after_s: float = 1.0
    latency_ms: float = 0.0
    latency_spread_ms: float = 0.0
    drop_before: float = 0.0
    drop_after: float = 0.0
    hang: float = 0.0
    truncated_body: float = 0.0
    # A gateway's 502/504 after the service behind it queued the request (see `_faults`).
    gateway_after: float = 0.0
    # A 500 after the first half of the request's messages were queued.
    partial_500: float = 0.0
    lists: tuple[str, ...] = ()

    @property
    def any_enabled(self) -> bool:
        """True when some request could be faulted or delayed."""
        return self.fault_total > 0 or self.latency_ms > 0 or self.latency_spread_ms > 0

    @property
    def fault_total(self) -> float:
        """The fraction of requests that get one of the eight faults."""
        return math.fsum(float(getattr(self, name)) for name in _FRACTIONS)


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """Everything a running emulator needs: where to listen, what exists, how it misbehaves."""

    host: str = "127.0.0.1"
    port: int = 0  # 0 picks a free port; `RunningEmulator.port` tells which
    api_keys: tuple[str, ...] = ()
    v1_lists: tuple[str, ...] = ()  # from_phone_number_id values that exist
    v2_lists: tuple[str, ...] = ()  # list numbers (E.164) that exist
    send_rate_per_min: float = DEFAULT_SEND_RATE_PER_MIN  # per sending list
    list_rates_per_min: Mapping[str, float] = field(default_factory=lambda: _EMPTY_RATES)
    stale_after_s: float = DEFAULT_STALE_AFTER_S
    ledger_path: Path | None = None
    validate: bool = True
    # Both set: serve HTTPS with this certificate chain and key (PEM), to rehearse a TLS setup
    # (a private CA, a proxy tunnelling with CONNECT) end to end.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Requests beyond this many in flight are answered 429 with Retry-After, as a gateway that
    # caps concurrency would (None: no cap). For rehearsing adaptive concurrency.
    max_in_flight: int | None = None
    faults: FaultConfig = field(default_factory=FaultConfig)


def check_config(config: EmulatorConfig) -> None:
    """Raise `EmulatorConfigError` unless `config` describes a usable emulator."""
    if not config.api_keys:
        raise EmulatorConfigError(
            "no API key configured: give --api-key, api_keys in the config, or TRACKLY_API_KEY"
        )
    if any(not key for key in config.api_keys):
        raise EmulatorConfigError("api_keys: an API key is empty")
    if not 0 <= config.port <= 65535:
        raise EmulatorConfigError(f"port: {config.port} is not a TCP port (0-65535)")
    for list_id in config.v1_lists:
        if not list_id or list_id != list_id.strip():
            raise EmulatorConfigError(f"v1_lists: {list_id!r} is not a usable sending-list id")
    for number in config.v2_lists:
        if not E164.fullmatch(number):
            raise EmulatorConfigError(f"v2_lists: {number!r} is not an E.164 number")
    if (config.tls_cert is None) != (config.tls_key is None):
        raise EmulatorConfigError("tls_cert and tls_key go together: give both to serve HTTPS")
    if config.max_in_flight is not None and config.max_in_flight < 1:
        raise EmulatorConfigError(f"max_in_flight: {config.max_in_flight} must be 1 or more")
    _check_rate("send_rate_per_min", config.send_rate_per_min)
    known = set(config.v1_lists) | set(config.v2_lists)
    for name, rate in config.list_rates_per_min.items():
        if name not in known:
            raise EmulatorConfigError(f"list_rates_per_min: {name!r} is not a configured list")
        _check_rate(f"list_rates_per_min[{name!r}]", rate)
    if not (math.isfinite(config.stale_after_s) and config.stale_after_s > 0):
        raise EmulatorConfigError(f"stale_after_s: {config.stale_after_s} is not a positive time")
    _check_faults(config.faults)


def _check_rate(name: str, rate: float) -> None:
    if not (math.isfinite(rate) and rate > 0):
        raise EmulatorConfigError(f"{name}: {rate} is not a positive rate")


def _check_faults(faults: FaultConfig) -> None:
    for name in _FRACTIONS:
        value = getattr(faults, name)
        if not 0.0 <= value <= 1.0:
            raise EmulatorConfigError(f"faults.{name}: {value} is not a fraction between 0 and 1")
    if faults.fault_total > 1.0 + 1e-9:
        raise EmulatorConfigError(
            f"faults: the fault fractions add up to {faults.fault_total:g}, more than 1"
        )
    for name in ("retry_after_s", "latency_ms", "latency_spread_ms"):
        value = getattr(faults, name)
        if not (math.isfinite(value) and value >= 0):
            raise EmulatorConfigError(f"faults.{name}: {value} must be zero or more")


def parse_rate_per_min(text: str) -> float:
    """Parse a send rate such as `17000/min` or `300/s` (streamsend's own `parse_rate`: the unit
    is required, so `--send-rate 600` can't mean one thing here and another to `send`)."""
    try:
        value: float = parse_rate(text) * 60
    except ValueError as exc:
        raise EmulatorConfigError(f"send rate: {exc}") from None
    _check_rate(f"send rate {text!r}", value)
    return value


_DURATION = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*")
_DURATION_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration_s(text: str) -> float:
    """Parse a duration such as `30m`, `2s`, `1h`, `500ms` or bare seconds (`1800`)."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise EmulatorConfigError(f"duration {text!r}: expected e.g. 30m, 90s, 1h or seconds")
    return float(match.group(1)) * _DURATION_UNIT[match.group(2) or "s"]
