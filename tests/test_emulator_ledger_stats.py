"""The ledger's format and the stats counters, as the end-to-end tests of other stages read them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import orjson

from streamsend.emulator import FaultConfig
from streamsend.testing import (
    API_KEY,
    V1_LIST,
    V2_LIST,
    EmulatorFactory,
    post,
    read_ledger,
)

TRICKY_BODIES = ['He said "hi"\n\tthen left \\ ✓', "emoji 😀 and €", "</script>\u2028\x00"]


async def test_ledger_lines_have_the_documented_fields(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """Each accepted message is one line: list, to, body, request, t, api, and nothing else."""
    emu = await emulator()
    before = time.time()
    await post(session, emu.base_url + "/v1/messages/bulk", {"messages": []}, key=None)  # 401
    await post(
        session,
        emu.base_url + "/v1/messages/bulk",
        {
            "from_phone_number_id": V1_LIST,
            "messages": [
                {"to_msisdn": "+14155551234", "body": "one"},
                {"to": "14155550000", "body": "two"},
            ],
        },
    )
    await post(
        session,
        emu.base_url + "/v2/send/bulk",
        {"messages": [{"to": "+14155551234", "list_number": V2_LIST, "body": "three"}]},
    )
    after = time.time()
    records = read_ledger(emu.ledger_path)
    assert [sorted(r) for r in records] == [["api", "body", "list", "request", "t", "to"]] * 3
    assert [(r["list"], r["to"], r["body"], r["request"], r["api"]) for r in records] == [
        (V1_LIST, "+14155551234", "one", 2, "v1"),
        (V1_LIST, "+14155550000", "two", 2, "v1"),
        (V2_LIST, "+14155551234", "three", 3, "v2"),
    ]
    assert all(before <= r["t"] <= after for r in records)
    assert records[0]["t"] == records[1]["t"]  # one arrival time per request


async def test_ledger_keeps_bodies_exactly(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """Bodies that need JSON escaping come back from the ledger unchanged (v1 and v2 paths)."""
    emu = await emulator()
    v1 = [{"to_msisdn": "+14155551234", "body": body} for body in TRICKY_BODIES]
    v2 = [{"to": "+14155551234", "list_number": V2_LIST, "body": body} for body in TRICKY_BODIES]
    await post(
        session,
        emu.base_url + "/v1/messages/bulk",
        {"from_phone_number_id": V1_LIST, "messages": v1},
    )
    await post(session, emu.base_url + "/v2/send/bulk", {"messages": v2})
    ledger = emu.ledger_path
    assert ledger is not None
    lines = ledger.read_bytes().splitlines()
    assert len(lines) == 6
    assert [orjson.loads(line)["body"] for line in lines] == TRICKY_BODIES * 2


async def test_ledger_appends_across_restarts(
    emulator: EmulatorFactory, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A ledger path reused by a second emulator is appended to, not overwritten."""
    payload = {
        "from_phone_number_id": V1_LIST,
        "messages": [{"to_msisdn": "+14155551234", "body": "x"}],
    }
    for _ in range(2):
        emu = await emulator(ledger_path=tmp_path / "shared.ndjson")
        await post(session, emu.base_url + "/v1/messages/bulk", payload)
    assert len(read_ledger(tmp_path / "shared.ndjson")) == 2


def files_in(directory: Path) -> list[Path]:
    return list(directory.iterdir())


async def test_no_ledger_when_no_path(
    emulator: EmulatorFactory, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Without a ledger path, nothing is written anywhere and the answer is the same."""
    emu = await emulator(ledger_path=None)
    payload = {
        "from_phone_number_id": V1_LIST,
        "messages": [{"to_msisdn": "+14155551234", "body": "x"}],
    }
    assert (await post(session, emu.base_url + "/v1/messages/bulk", payload)).status == 201
    assert emu.ledger_path is None
    assert files_in(tmp_path) == []


async def test_stats_count_statuses_messages_and_sizes(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """Stats count each status, queued/rejected messages, and the largest request."""
    emu = await emulator()
    url = emu.base_url + "/v1/messages/bulk"
    good = {"to_msisdn": "+14155551234", "body": "x"}
    big = {"from_phone_number_id": V1_LIST, "messages": [good] * 7 + [{"to_msisdn": "1"}]}
    await post(session, url, big)  # 201: 7 queued, 1 rejected
    await post(session, url, {"messages": [good]})  # 400 missing_from
    await post(session, url, {"from_phone_number_id": "pn_nope", "messages": [good]})  # 404
    await post(session, url, big, key=None)  # 401
    await post(session, url, data=b"x" * 5_000_001)  # 413
    stats = emu.stats()
    assert stats["requests_by_status"] == {"201": 1, "400": 1, "404": 1, "401": 1, "413": 1}
    assert stats["requests_total"] == 5
    assert (stats["messages_queued"], stats["messages_rejected"]) == (7, 1)
    assert stats["largest_request_messages"] == 8
    assert stats["largest_request_bytes"] == len(orjson.dumps(big))  # the 413 was never read
    assert stats["per_list"][V1_LIST] == {
        "queued": 7,
        "rejected": 1,
        "dropped_stale": 0,
        "requests": 1,
    }
    assert stats["in_flight"] == 0


async def test_stats_endpoint_needs_no_key_and_matches(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """GET /_emulator/stats answers without a key, equals emu.stats(), and isn't counted."""
    emu = await emulator()
    payload = {
        "from_phone_number_id": V1_LIST,
        "messages": [{"to_msisdn": "+14155551234", "body": "x"}],
    }
    await post(session, emu.base_url + "/v1/messages/bulk", payload)
    async with session.get(emu.stats_url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/json")
        served = orjson.loads(await response.read())
    assert served == emu.stats()
    assert served["requests_total"] == 1
    assert set(served["faults"]) == {
        "error_5xx",
        "rate_429",
        "drop_before",
        "drop_after",
        "hang",
        "truncated_body",
        "gateway_after",
        "partial_500",
        "latency",
    }


async def test_peak_in_flight_counts_concurrent_requests(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """Requests handled at the same time raise peak_in_flight; in_flight returns to 0."""
    emu = await emulator(faults=FaultConfig(latency_ms=300.0))
    payload = {
        "from_phone_number_id": V1_LIST,
        "messages": [{"to_msisdn": "+14155551234", "body": "x"}],
    }
    replies = await asyncio.gather(
        *(post(session, emu.base_url + "/v1/messages/bulk", payload) for _ in range(3))
    )
    assert [r.status for r in replies] == [201] * 3
    stats = emu.stats()
    assert (stats["peak_in_flight"], stats["in_flight"]) == (3, 0)
    assert stats["faults"]["latency"] == 3


async def test_running_emulator_describes_itself(emulator: EmulatorFactory, tmp_path: Path) -> None:
    """base_url, port, api_key and ledger_path say where and how to reach the emulator."""
    emu = await emulator()
    assert emu.port > 0
    assert emu.base_url == f"http://127.0.0.1:{emu.port}/api"
    assert emu.api_key == API_KEY
    assert emu.ledger_path == tmp_path / "ledger.ndjson"
