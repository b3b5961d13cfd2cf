"""The library entry point (`streamsend.Client`) against the emulator over loopback HTTP.

What a Python caller relies on: each message sent gets exactly one Outcome, numbered in the
order given; `outcomes()` hands them out during the run; a fatal answer stops the run, says so in
`result`, and refuses further messages.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from streamsend import Client, ExitCode, Settings, Status
from streamsend.testing import API_KEY, V1_LIST, EmulatorFactory, FaultConfig, read_ledger


def _settings(base_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "base_url": base_url,
        "sender": V1_LIST,
        "linger_ms": 5.0,
        "batch_size": 50,
        "rate": None,  # unpaced: these tests are about delivery, not pacing
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def _people(count: int, start: int = 0) -> list[dict[str, object]]:
    return [
        {"to_msisdn": f"+1415555{n:04d}", "body": f"Hi {n}!", "ref": f"p-{n}"}
        for n in range(start, start + count)
    ]


async def test_send_and_send_many_give_one_outcome_each_in_order(
    emulator: EmulatorFactory,
) -> None:
    """`send` and `send_many` number messages 1, 2, 3... in the order given; after the block
    every message has one `queued` outcome with its ref, and the service has each once."""
    emu = await emulator()
    async with Client(_settings(emu.base_url), api_key=API_KEY) as client:
        assert await client.send(_people(1)[0]) == 1
        assert await client.send_many(_people(120, start=1)) == 121
        assert await client.send_many([]) == 121  # nothing sent, the last number stays
    assert client.result is not None
    assert client.result.exit_code is ExitCode.OK
    assert sorted(o.line for o in client.results) == list(range(1, 122))
    assert {o.status for o in client.results} == {Status.QUEUED}
    assert {o.line: o.ref for o in client.results}[5] == "p-4"
    ledger = read_ledger(emu.ledger_path)
    assert sorted(r["to"] for r in ledger) == sorted(str(p["to_msisdn"]) for p in _people(121))


async def test_invalid_messages_get_their_outcome_without_being_sent(
    emulator: EmulatorFactory,
) -> None:
    """A message the service would refuse gets an `invalid` outcome and never reaches it; the
    run ends `NOT_ALL_QUEUED`."""
    emu = await emulator()
    async with Client(_settings(emu.base_url), api_key=API_KEY) as client:
        await client.send_many([{"to_msisdn": "555", "body": "x"}, *_people(3)])
    assert client.result is not None
    assert client.result.exit_code is ExitCode.NOT_ALL_QUEUED
    by_line = {o.line: o for o in client.results}
    assert (by_line[1].status, by_line[1].code) == (Status.INVALID, "invalid_phone")
    assert {by_line[n].status for n in (2, 3, 4)} == {Status.QUEUED}
    assert len(read_ledger(emu.ledger_path)) == 3


async def test_outcomes_are_handed_out_during_the_run(emulator: EmulatorFactory) -> None:
    """`outcomes()` yields outcomes while messages are still being sent, each once; `results`
    ends up holding every outcome exactly once."""
    emu = await emulator()
    seen: list[int] = []
    async with Client(_settings(emu.base_url), api_key=API_KEY) as client:
        first_sixty = asyncio.Event()

        async def consume() -> None:
            async for outcome in client.outcomes():
                seen.append(outcome.line)
                if len(seen) == 60:
                    first_sixty.set()

        consumer = asyncio.create_task(consume())
        await client.send_many(_people(60))
        async with asyncio.timeout(10):
            await first_sixty.wait()  # the first outcomes arrive before any more is sent
        await client.send_many(_people(40, start=60))
    await consumer
    assert sorted(seen) == list(range(1, 101))
    assert sorted(o.line for o in client.results) == list(range(1, 101))


async def test_a_fatal_answer_stops_the_client(emulator: EmulatorFactory) -> None:
    """An unknown sending list (404) stops the run: result says aborted (exit 3), the lines of
    the refused request are `failed`, and sending more raises instead of queueing silently."""
    emu = await emulator()
    client = Client(_settings(emu.base_url, sender="pn_unknown00000"), api_key=API_KEY)
    async with client:
        await client.send_many(_people(10))
        async with asyncio.timeout(10):
            async for _ in client.outcomes():
                break  # the refused request's outcomes are written before the run stops
        async with asyncio.timeout(10):
            await client.aclose()  # the pipeline ends by itself
        with pytest.raises(RuntimeError, match="stopped"):
            await client.send(_people(1)[0])
    assert client.result is not None
    assert (client.result.exit_code, client.result.aborted) == (ExitCode.ABORTED, True)
    assert {o.status for o in client.results} == {Status.FAILED}
    assert {o.code for o in client.results} == {"list_not_found"}
    assert read_ledger(emu.ledger_path) == []


async def test_leaving_on_an_error_stops_at_once(emulator: EmulatorFactory) -> None:
    """An exception inside the `async with` block stops the run at once and propagates; the
    client is closed and holds a result."""
    emu = await emulator(faults=FaultConfig(latency_ms=200))
    client = Client(_settings(emu.base_url), api_key=API_KEY)

    async def use_and_fail() -> None:
        async with client:
            await client.send_many(_people(20))
            raise ValueError("the caller's own error")

    with pytest.raises(ValueError, match="the caller's own error"):
        await use_and_fail()
    assert client.result is not None
    assert client.result.interrupted


async def test_using_the_client_outside_its_block_is_refused(tmp_path: Path) -> None:
    """`send` before entering the block, or `aclose` without it, raise a clear error."""
    client = Client(_settings("http://127.0.0.1:9/api"), api_key=API_KEY)
    with pytest.raises(RuntimeError, match="async with"):
        await client.send(_people(1)[0])
    with pytest.raises(RuntimeError, match="async with"):
        await client.aclose()
