"""The send-rate model: lists drain at their rate, and messages that would wait too long drop.

The model's arithmetic is tested with explicit times (no sleeping); two HTTP tests show that a
burst drops and paced traffic doesn't on a running emulator.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from streamsend.emulator._ratemodel import SendingList, SendRateModel
from streamsend.testing import V1_LIST, EmulatorFactory, post

OTHER_LIST = "pn_slow00000001"


def v1_payload(count: int, list_id: str = V1_LIST) -> dict[str, object]:
    messages = [{"to_msisdn": f"+1415555{n:04d}", "body": "x"} for n in range(count)]
    return {"from_phone_number_id": list_id, "messages": messages}


def test_burst_beyond_the_stale_limit_drops_the_tail() -> None:
    """At 10/s with a 2 s limit, 100 messages at once keep 21 (waits 0..2.0 s) and drop 79."""
    sending_list = SendingList(V1_LIST, rate_per_min=600)
    assert sending_list.admit(100, now=1000.0, stale_after_s=2.0) == 79
    assert (sending_list.queued, sending_list.dropped_stale) == (100, 79)
    # The kept 21 occupy the list for 2.1 s; anything arriving meanwhile waits behind them.
    assert sending_list.backlog_s(1000.0) == pytest.approx(2.1)


def test_backlogged_list_drops_everything_new() -> None:
    """Right after a burst that filled the stale window, a new request is dropped entirely."""
    sending_list = SendingList(V1_LIST, rate_per_min=600)
    sending_list.admit(100, now=0.0, stale_after_s=2.0)
    assert sending_list.admit(5, now=0.05, stale_after_s=2.0) == 5


def test_traffic_at_the_send_rate_never_drops() -> None:
    """Requests paced exactly at the list's rate keep the queue short: nothing is dropped."""
    sending_list = SendingList(V1_LIST, rate_per_min=17_000)
    per_request = 1000
    interval = per_request / (17_000 / 60)  # seconds of sending per request
    for n in range(500):
        assert sending_list.admit(per_request, now=n * interval, stale_after_s=1800) == 0
    assert sending_list.dropped_stale == 0


def test_pushing_at_twice_the_rate_loses_half_in_the_long_run() -> None:
    """Sustained over-pushing drops what the list can't send within the stale window."""
    sending_list = SendingList(V1_LIST, rate_per_min=60)  # 1 message/s
    for second in range(1000):
        sending_list.admit(2, now=float(second), stale_after_s=10.0)
    # The list sends ~1/s for 1000 s plus the 10 s window: about 1010 of 2000 are kept.
    assert sending_list.dropped_stale == pytest.approx(990, abs=3)


def test_queue_drains_while_idle() -> None:
    """After the list has had time to send its backlog, a burst starts from an empty queue."""
    sending_list = SendingList(V1_LIST, rate_per_min=600)
    assert sending_list.admit(20, now=0.0, stale_after_s=2.0) == 0
    assert sending_list.backlog_s(10.0) == 0.0
    assert sending_list.admit(20, now=10.0, stale_after_s=2.0) == 0


def test_per_list_rate_overrides() -> None:
    """A list with its own rate uses it; the others use the default."""
    model = SendRateModel(
        [V1_LIST, OTHER_LIST], rate_per_min=6000, overrides={OTHER_LIST: 60}, stale_after_s=1.0
    )
    assert model.admit(V1_LIST, 100, now=0.0) == 0
    assert model.admit(OTHER_LIST, 100, now=0.0) == 98


async def test_burst_over_http_counts_dropped_stale(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """100 messages at once to a 600/min list with a 2 s limit: 79 dropped, all answered queued."""
    emu = await emulator(send_rate_per_min=600.0, stale_after_s=2.0)
    reply = await post(session, emu.base_url + "/v1/messages/bulk", v1_payload(100))
    assert reply.json()["queued_count"] == 100
    stats = emu.stats()
    assert stats["dropped_stale"] == 79
    assert stats["per_list"][V1_LIST]["dropped_stale"] == 79
    assert stats["messages_queued"] == 100


async def test_paced_traffic_over_http_drops_nothing(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """Requests spaced at the list's rate (10 messages per 0.1 s at 100/s) lose nothing."""
    emu = await emulator(send_rate_per_min=6000.0, stale_after_s=0.5)
    for _ in range(8):
        await post(session, emu.base_url + "/v1/messages/bulk", v1_payload(10))
        await asyncio.sleep(0.1)
    stats = emu.stats()
    assert stats["messages_queued"] == 80
    assert stats["dropped_stale"] == 0


async def test_list_rate_override_over_http(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """list_rates_per_min slows one list down: the same burst drops there and not elsewhere."""
    emu = await emulator(
        v1_lists=(V1_LIST, OTHER_LIST),
        list_rates_per_min={OTHER_LIST: 60.0},
        stale_after_s=5.0,
    )
    for list_id in (V1_LIST, OTHER_LIST):
        await post(session, emu.base_url + "/v1/messages/bulk", v1_payload(50, list_id))
    per_list = emu.stats()["per_list"]
    assert per_list[V1_LIST]["dropped_stale"] == 0
    assert per_list[OTHER_LIST]["dropped_stale"] == 44  # keeps waits 0..5 s at 1/s: 6 messages
