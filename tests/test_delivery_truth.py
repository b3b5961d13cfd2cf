"""Delivery truth in the real world: what stands between a client and a real service.

Each test puts one real-world obstacle between streamsend and the emulator, scaled down so that
it takes about a second (a send rate of 1,200/min and a stale window of 1 s stand for the
service's 17,000/min and 30 minutes), and checks the core promise still holds: one true outcome
per line, nothing lost silently, nothing sent twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from streamsend._config import Settings
from streamsend._outcomes import MemorySink
from streamsend._pacing import parse_rate
from streamsend._pipeline import Pipeline
from streamsend._source import read_inputs
from streamsend._types import ExitCode
from streamsend.testing import API_KEY, V1_LIST, EmulatorFactory
from tests.conftest import clean_env, run_streamsend, write_numbered_input

RUN_TIMEOUT = 60.0
#: The scaled-down service: each list sends 1,200 messages a minute (20/s) and drops what would
#: wait in its queue over a second.
SEND_RATE = "1200/min"
STALE_AFTER_S = 1.0


def _events(stderr: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stderr.splitlines() if line.startswith(b"{")]


async def test_pacing_at_the_lists_rate_loses_nothing(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Paced at the list's send rate, no message waits in the service's queue long enough to
    be dropped: every `queued` outcome is true."""
    emu = await emulator(send_rate_per_min=parse_rate(SEND_RATE) * 60, stale_after_s=STALE_AFTER_S)
    write_numbered_input(tmp_path / "in.ndjson", 24)
    settings = Settings(
        base_url=emu.base_url, sender=V1_LIST, rate=parse_rate(SEND_RATE), linger_ms=5.0
    )
    sink = MemorySink()
    pipeline = Pipeline(
        settings, api_key=API_KEY, source=read_inputs([str(tmp_path / "in.ndjson")]), sink=sink
    )
    result = await pipeline.run()
    assert result.exit_code == ExitCode.OK
    assert len(sink.outcomes) == 24
    stats = emu.stats()
    assert (stats["messages_queued"], stats["dropped_stale"]) == (24, 0)


async def test_unlimited_is_explicit_and_warns(emulator: EmulatorFactory, tmp_path: Path) -> None:
    """`--rate unlimited` is the opt-out: the run warns at the start how many messages the
    service's stale window holds, and (against the scaled-down service) messages sent faster
    than the list drains go stale although their outcomes say `queued`: what the default
    pacing prevents."""
    emu = await emulator(send_rate_per_min=parse_rate(SEND_RATE) * 60, stale_after_s=STALE_AFTER_S)
    write_numbered_input(tmp_path / "in.ndjson", 60)
    code, _, stderr = await run_streamsend(
        [
            *("send", "in.ndjson", "--base-url", emu.base_url, "--from", V1_LIST),
            *("--rate", "unlimited", "--outcomes", "out.ndjson", "--log-format", "json"),
        ],
        env=clean_env(TRACKLY_API_KEY=API_KEY),
        cwd=tmp_path,
        timeout_s=RUN_TIMEOUT,
    )
    assert code == ExitCode.OK, stderr
    warnings = [e for e in _events(stderr) if e["event"] == "unpaced"]
    assert len(warnings) == 1
    assert warnings[0]["level"] == "warning"
    assert "510,000 messages" in warnings[0]["hint"]
    assert emu.stats()["dropped_stale"] > 0


async def test_a_bare_number_rate_is_refused_before_sending(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """`--rate 600` (per second? per minute?) is a usage error: exit 2, one line with the fix,
    nothing sent."""
    emu = await emulator()
    write_numbered_input(tmp_path / "in.ndjson", 3)
    code, _, stderr = await run_streamsend(
        ["send", "in.ndjson", "--base-url", emu.base_url, "--from", V1_LIST, "--rate", "600"],
        env=clean_env(TRACKLY_API_KEY=API_KEY),
        cwd=tmp_path,
        timeout_s=RUN_TIMEOUT,
    )
    assert code == ExitCode.USAGE
    assert stderr.count(b"\n") == 1
    assert b"600/min or 600/s" in stderr
    assert emu.stats()["requests_total"] == 0
