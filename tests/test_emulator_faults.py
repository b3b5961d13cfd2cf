"""Fault injection over real HTTP: what a client observes for each fault, and what was queued.

For every fault the test checks both sides: the aiohttp client's view (a status, an exception)
and the emulator's record (ledger, stats), because the client's job is to tell "not sent" from
"maybe sent", and the ledger is what says which one was true.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp
import pytest

from streamsend.emulator import EmulatorConfig, FaultConfig, RunningEmulator, run_emulator
from streamsend.emulator._faults import Fault, FaultInjector
from streamsend.testing import (
    API_KEY,
    V1_LIST,
    V2_LIST,
    EmulatorFactory,
    post,
    read_ledger,
)

OTHER_LIST = "pn_other000list"
MESSAGES = [{"to_msisdn": f"+1415555{n:04d}", "body": f"message {n}"} for n in range(5)]
PAYLOAD = {"from_phone_number_id": V1_LIST, "messages": MESSAGES}


def bulk_url(emu: RunningEmulator) -> str:
    return emu.base_url + "/v1/messages/bulk"


def no_server_errors_logged(caplog: pytest.LogCaptureFixture) -> bool:
    """True when aiohttp logged nothing at WARNING or above (no 'Error handling request')."""
    return not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def wait_until(condition: Callable[[], bool], limit_s: float = 5.0) -> None:
    """Poll `condition` until it returns true (failing after a generous sanity limit)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_error_5xx_queues_nothing(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """A 5xx fault answers 500/502/503/504 with a JSON error, v1 headers, and queues nothing."""
    emu = await emulator(faults=FaultConfig(error_5xx=1.0))
    reply = await post(session, bulk_url(emu), PAYLOAD)
    assert reply.status in (500, 502, 503, 504)
    assert reply.json()["code"] in {
        "internal_error",
        "bad_gateway",
        "service_unavailable",
        "gateway_timeout",
    }
    assert reply.headers["Deprecation"] == "true"
    assert read_ledger(emu.ledger_path) == []
    stats = emu.stats()
    assert stats["faults"]["error_5xx"] == 1
    assert stats["requests_by_status"] == {str(reply.status): 1}
    assert stats["messages_queued"] == 0


async def test_error_5xx_uses_all_four_statuses(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """Over many requests the 5xx fault answers each of 500, 502, 503 and 504."""
    emu = await emulator(faults=FaultConfig(error_5xx=1.0, seed=3))
    statuses = {(await post(session, bulk_url(emu), PAYLOAD)).status for _ in range(40)}
    assert statuses == {500, 502, 503, 504}


@pytest.mark.parametrize(("retry_after_s", "header"), [(3.0, "3"), (0.2, "1"), (0.0, "0")])
async def test_rate_429_sends_retry_after_and_queues_nothing(
    emulator: EmulatorFactory, session: aiohttp.ClientSession, retry_after_s: float, header: str
) -> None:
    """A 429 fault carries Retry-After in whole seconds (rounded up, 0 allowed), queues nothing."""
    emu = await emulator(faults=FaultConfig(rate_429=1.0, retry_after_s=retry_after_s))
    reply = await post(
        session,
        emu.base_url + "/v2/send/bulk",
        {"messages": [{"to": "+14155551234", "list_number": V2_LIST, "body": "x"}]},
    )
    assert reply.status == 429
    assert reply.headers["Retry-After"] == header
    assert reply.json()["code"] == "rate_limited"
    assert read_ledger(emu.ledger_path) == []
    assert emu.stats()["faults"]["rate_429"] == 1
    assert emu.stats()["requests_by_status"] == {"429": 1}


async def test_drop_before_disconnects_and_queues_nothing(
    emulator: EmulatorFactory, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """drop_before: the client sees the server disconnect; nothing reached the ledger."""
    emu = await emulator(faults=FaultConfig(drop_before=1.0))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(session, bulk_url(emu), PAYLOAD)
    assert read_ledger(emu.ledger_path) == []
    stats = emu.stats()
    assert (stats["faults"]["drop_before"], stats["messages_queued"]) == (1, 0)
    assert stats["requests_by_status"] == {"dropped": 1}
    await wait_until(lambda: emu.stats()["in_flight"] == 0)
    assert no_server_errors_logged(caplog)


async def test_drop_after_disconnects_after_queueing(
    emulator: EmulatorFactory, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """drop_after: the client sees the same disconnect, but the messages were queued."""
    emu = await emulator(faults=FaultConfig(drop_after=1.0))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(session, bulk_url(emu), PAYLOAD)
    assert [r["to"] for r in read_ledger(emu.ledger_path)] == [m["to_msisdn"] for m in MESSAGES]
    stats = emu.stats()
    assert (stats["faults"]["drop_after"], stats["messages_queued"]) == (1, 5)
    assert stats["requests_by_status"] == {"dropped": 1}
    await wait_until(lambda: emu.stats()["in_flight"] == 0)
    assert no_server_errors_logged(caplog)


async def test_hang_queues_and_never_answers(
    emulator: EmulatorFactory, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """hang: the client times out with no answer; the messages were queued; the handler ends."""
    emu = await emulator(faults=FaultConfig(hang=1.0))
    with pytest.raises(asyncio.TimeoutError):
        async with session.post(
            bulk_url(emu),
            json=PAYLOAD,
            headers={"X-Api-Key": API_KEY},
            timeout=aiohttp.ClientTimeout(total=0.3),
        ) as response:
            await response.read()
    assert len(read_ledger(emu.ledger_path)) == 5
    stats = emu.stats()
    assert (stats["faults"]["hang"], stats["requests_by_status"]) == (1, {"hang": 1})
    # The client gave up and closed the connection: the hung handler is released.
    await wait_until(lambda: emu.stats()["in_flight"] == 0)
    assert no_server_errors_logged(caplog)


async def test_truncated_body_sends_201_then_cuts_the_body(
    emulator: EmulatorFactory, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """truncated_body: the client gets 201 and headers, then a payload error; messages queued."""
    emu = await emulator(faults=FaultConfig(truncated_body=1.0))
    async with session.post(
        bulk_url(emu), json=PAYLOAD, headers={"X-Api-Key": API_KEY}
    ) as response:
        assert response.status == 201
        assert response.headers["Deprecation"] == "true"
        assert int(response.headers["Content-Length"]) > 0
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    assert len(read_ledger(emu.ledger_path)) == 5
    stats = emu.stats()
    assert (stats["faults"]["truncated_body"], stats["messages_queued"]) == (1, 5)
    assert stats["requests_by_status"] == {"truncated": 1}
    assert no_server_errors_logged(caplog)


async def test_latency_delays_the_answer(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """Added latency holds the answer back (at least most of the configured mean)."""
    emu = await emulator(faults=FaultConfig(latency_ms=150.0))
    started = time.monotonic()
    reply = await post(session, bulk_url(emu), PAYLOAD)
    assert time.monotonic() - started >= 0.1
    assert reply.status == 201
    assert emu.stats()["faults"]["latency"] == 1


def test_latency_spread_stays_within_bounds() -> None:
    """Latency is drawn uniformly within mean +/- spread, and not all draws are equal."""
    injector = FaultInjector(FaultConfig(latency_ms=100.0, latency_spread_ms=40.0, seed=5))
    delays = [injector.draw().delay_s for _ in range(500)]
    assert all(0.06 <= delay <= 0.14 for delay in delays)
    assert max(delays) - min(delays) > 0.06


def test_fault_fractions_partition_the_draws() -> None:
    """Each fault gets roughly its fraction of requests; the rest get none."""
    config = FaultConfig(error_5xx=0.1, rate_429=0.2, drop_before=0.05, hang=0.05, seed=11)
    injector = FaultInjector(config)
    drawn = [injector.draw().fault for _ in range(10_000)]
    shares = {fault: drawn.count(fault) / len(drawn) for fault in (*Fault, None)}
    assert shares[Fault.ERROR_5XX] == pytest.approx(0.1, abs=0.02)
    assert shares[Fault.RATE_429] == pytest.approx(0.2, abs=0.02)
    assert shares[Fault.DROP_BEFORE] == pytest.approx(0.05, abs=0.015)
    assert shares[Fault.HANG] == pytest.approx(0.05, abs=0.015)
    assert shares[Fault.DROP_AFTER] == shares[Fault.TRUNCATED_BODY] == 0
    assert shares[None] == pytest.approx(0.6, abs=0.03)


async def statuses_for(emu: RunningEmulator, session: aiohttp.ClientSession) -> list[int]:
    return [(await post(session, bulk_url(emu), PAYLOAD)).status for _ in range(30)]


async def test_same_seed_reproduces_the_faults(
    emulator: EmulatorFactory, session: aiohttp.ClientSession, tmp_path: object
) -> None:
    """Two emulators with the same seed fault the same requests of the same sequence."""
    faults = FaultConfig(error_5xx=0.3, rate_429=0.2, seed=42)
    first = await statuses_for(await emulator(faults=faults, ledger_path=None), session)
    second = await statuses_for(await emulator(faults=faults, ledger_path=None), session)
    other_seed = FaultConfig(error_5xx=0.3, rate_429=0.2, seed=43)
    third = await statuses_for(await emulator(faults=other_seed, ledger_path=None), session)
    assert first == second
    assert 201 in first
    assert set(first) - {201}  # some requests were faulted
    assert third != first


async def test_fault_lists_limit_faults_to_those_lists(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """With `lists` set, only requests for those sending lists are faulted."""
    emu = await emulator(
        v1_lists=(V1_LIST, OTHER_LIST), faults=FaultConfig(error_5xx=1.0, lists=(OTHER_LIST,))
    )
    spared = await post(session, bulk_url(emu), PAYLOAD)
    hit = await post(session, bulk_url(emu), {**PAYLOAD, "from_phone_number_id": OTHER_LIST})
    assert spared.status == 201
    assert hit.status >= 500
    assert emu.stats()["faults"]["error_5xx"] == 1


async def test_faults_after_queueing_spare_request_level_errors(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """A request with nothing to queue (missing_from) is answered even when drawn to hang."""
    emu = await emulator(faults=FaultConfig(hang=1.0))
    reply = await post(session, bulk_url(emu), {"messages": MESSAGES})
    assert reply.status == 400
    assert reply.json()["code"] == "missing_from"
    assert emu.stats()["faults"]["hang"] == 0


async def test_unauthenticated_requests_draw_no_fault(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """Auth comes before faults: a request with a wrong key gets 401 even with error_5xx=1."""
    emu = await emulator(faults=FaultConfig(error_5xx=1.0))
    reply = await post(session, bulk_url(emu), PAYLOAD, key="trk_" + "x" * 32)
    assert reply.status == 401
    assert emu.stats()["faults"]["error_5xx"] == 0


async def test_stopping_does_not_wait_for_hung_requests(
    session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Leaving run_emulator with a request hanging stops promptly; the client is disconnected."""
    config = EmulatorConfig(api_keys=(API_KEY,), v1_lists=(V1_LIST,), faults=FaultConfig(hang=1.0))
    async with run_emulator(config) as emu:
        hung = asyncio.create_task(post(session, bulk_url(emu), PAYLOAD))
        await wait_until(lambda: emu.stats()["faults"]["hang"] == 1)
        started = time.monotonic()
    assert time.monotonic() - started < 2.0
    with pytest.raises(aiohttp.ClientConnectionError):
        await hung
    assert no_server_errors_logged(caplog)
