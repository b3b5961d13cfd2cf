"""A local, faithful Trackly SMS service for demos, tests and benchmarks.

No machine here reaches the real service, so every claim streamsend makes (correct outcomes
under faults, exactly-once delivery, throughput) is measured against this emulator. It follows
the Trackly API documentation: the v1 and v2 bulk endpoints with their
request-level errors and in-band per-message errors, v1's deprecation headers, the 5,000,000
byte payload limit, and the per-list send rate with stale messages dropped silently.

Layout (each module is one part; `_app` builds on the others):

    _config      EmulatorConfig / FaultConfig and the checks that make them usable
    _validation  per-message validation, with a whole-request fast path
    _ratemodel   each sending list's queue: send rate and stale drops, O(1) per request
    _faults      seeded fault injection: which request misbehaves, and how
    _ledger      the NDJSON record of every accepted message
    _stats       the counters behind GET /_emulator/stats
    _app         the aiohttp service and `run_emulator`
    _command     the `streamsend emulator` command (also `python -m streamsend.emulator`)
    _segments    its own segment counter (the client's is checked against it, not shared)

Use it in-process (`streamsend.testing` has the test key and list names)::

    async with run_emulator(EmulatorConfig(api_keys=(key,), v1_lists=("pn_abc123def456",))) as emu:
        ...  # send to emu.base_url, then check emu.stats() and the ledger
"""

from streamsend.emulator._app import RunningEmulator, run_emulator
from streamsend.emulator._command import emulator_main
from streamsend.emulator._config import (
    DEFAULT_V1_LIST,
    DEFAULT_V2_LIST,
    EmulatorConfig,
    EmulatorConfigError,
    FaultConfig,
)
from streamsend.emulator._stats import EmulatorStatsSnapshot

__all__ = [
    "DEFAULT_V1_LIST",
    "DEFAULT_V2_LIST",
    "EmulatorConfig",
    "EmulatorConfigError",
    "EmulatorStatsSnapshot",
    "FaultConfig",
    "RunningEmulator",
    "emulator_main",
    "run_emulator",
]
