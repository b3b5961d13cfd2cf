"""The v2 bulk API end to end (issue 7): `--api-version v2` against the emulator and fakes.

What a v2 run promises, checked over loopback HTTP:
- each valid line goes out as `{"to", "list_number", "body"}` (plus the line's `contact_data` and
  `metadata`, passed through), with `to` normalised to strict E.164 first;
- a `to` that can't be normalised is refused locally (`invalid_phone`) and never sent;
- per-message errors (`index`, `code`, `error`) become `rejected` outcomes of the right lines
  with the service's own code; request-level errors (a wrong key) stop the run with exit 3;
- `too_many_messages` is 413 in v2, and a 413 makes the client send the batch in halves;
- v2 answers carry `success: true` and no deprecation, so no `api_deprecated` warning is
  logged; v1 runs log exactly one.

The emulator can't be made to reject, in-band and for the same list, a message our validator
passes (the two follow one rule), nor to answer 413 to a batch our batcher builds; those two
answers come from a small fake service instead, which answers as the v2 docs say.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from streamsend._config import Settings
from streamsend._models import Outcome, Status
from streamsend._outcomes import MemorySink
from streamsend._pipeline import (
    Pipeline,
)
from streamsend._types import ExitCode
from streamsend.emulator import RunningEmulator
from streamsend.testing import (
    API_KEY,
    V1_LIST,
    V2_LIST,
    EmulatorFactory,
    lines_from,
    post,
    read_ledger,
)
from tests.conftest import RecordingLog, clean_env, run_streamsend, serve_locally

OTHER_LIST = "+18005552000"  # a second configured v2 list number
UNKNOWN_LIST = "+18005559999"  # E.164, so our validator passes it, but no such list exists
WRONG_KEY = "trk_" + "0" * 32  # shaped like a key, so only the service can refuse it
CONTACT = {
    "first_name": "Ann",
    "last_name": "Lee",
    "custom_fields": {"tier": "gold", "visits": 3},
    "timezone": "America/Los_Angeles",
}
METADATA = {"campaign": "spring", "batch": 7}

Answer = tuple[int, dict[str, Any]]


def line(**fields: object) -> bytes:
    return orjson.dumps(fields)


def by_line(outcomes: Sequence[Outcome] | Sequence[dict[str, Any]]) -> dict[int, Any]:
    """Outcomes (records or dicts) by line number, asserting no line has two."""
    found: dict[int, Any] = {}
    for outcome in outcomes:
        number = outcome["line"] if isinstance(outcome, dict) else outcome.line
        assert number not in found, f"line {number} has two outcomes"
        found[number] = outcome
    return found


async def run_pipeline(
    base_url: str, lines: Sequence[bytes], **fields: Any
) -> tuple[int, dict[int, Outcome], RecordingLog]:
    """Run the pipeline in-process (v2, --from V2_LIST unless overridden) over `lines`."""
    defaults = Settings(
        base_url=base_url, api_version="v2", sender=V2_LIST, fsync="off", linger_ms=20.0, rate=None
    )
    settings = replace(defaults, **fields)
    sink = MemorySink()
    log = RecordingLog()
    pipeline = Pipeline(settings, api_key=API_KEY, source=lines_from(lines), sink=sink, log=log)
    result = await asyncio.wait_for(pipeline.run(), timeout=30)
    return result.exit_code, by_line(list(sink.outcomes)), log


async def run_cli(
    emu: RunningEmulator, tmp_path: Path, lines: Sequence[bytes], *args: str, key: str = API_KEY
) -> tuple[int, dict[int, dict[str, Any]], list[dict[str, Any]], bytes]:
    """`streamsend send` in a subprocess against `emu`: exit code, outcomes, JSON log events and
    the raw stderr. The emulator runs in this test's event loop, so the wait must be async."""
    source = tmp_path / "input.ndjson"
    source.write_bytes(b"\n".join(lines) + b"\n")
    outcomes = tmp_path / "outcomes.ndjson"
    code, _, stderr = await run_streamsend(
        [
            "send",
            str(source),
            "--base-url",
            emu.base_url,
            "--outcomes",
            str(outcomes),
            "--log-format",
            "json",
            "--linger-ms",
            "20",
            "--fsync",
            "off",
            *args,
        ],
        env=clean_env(TRACKLY_API_KEY=key),
        timeout_s=60,
    )
    events = [orjson.loads(raw) for raw in stderr.splitlines() if raw.startswith(b"{")]
    records = [orjson.loads(raw) for raw in outcomes.read_bytes().splitlines()]
    return code, by_line(records), events, stderr


@asynccontextmanager
async def fake_v2_service(
    answer: Callable[[list[dict[str, Any]]], Answer],
) -> AsyncIterator[tuple[str, list[list[dict[str, Any]]]]]:
    """A stand-in Trackly v2 bulk endpoint: `answer(messages)` decides each reply.

    Yields the base URL and the `messages` array of every request received, in order.
    """
    received: list[list[dict[str, Any]]] = []

    async def bulk(request: web.Request) -> web.Response:
        assert request.headers["X-Api-Key"] == API_KEY
        messages = orjson.loads(await request.read())["messages"]
        received.append(messages)
        status, body = answer(messages)
        return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")

    app = web.Application()
    app.router.add_post("/api/v2/send/bulk", bulk)
    async with serve_locally(app) as base_url:
        yield base_url, received


def queued_all(messages: list[dict[str, Any]]) -> Answer:
    count = len(messages)
    return 201, {"success": True, "queued_count": count, "error_count": 0, "errors": []}


# -- against the emulator ----------------------------------------------------------------------


async def test_v2_run_sends_to_list_number_body_and_passes_contact_data_through(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """`streamsend send --api-version v2`: valid lines are queued from their list number (the
    line's own `list_number`, else --from) with `to` normalised to E.164 and `contact_data` and
    `metadata` passed through unchanged; the outcomes say queued, with the sender."""
    emu = await emulator(v2_lists=(V2_LIST, OTHER_LIST))
    lines = [
        line(to="+14155550001", body="Hello"),
        line(to="14155550002", body="no plus", ref="r-2"),
        line(to="+14155550003", body="Hi {{messageId}}", contact_data=CONTACT, metadata=METADATA),
        line(to="+1 (415) 555-0004", body="formatted", list_number=OTHER_LIST),
    ]

    code, outcomes, _, _ = await run_cli(
        emu, tmp_path, lines, "--api-version", "v2", "--from", V2_LIST
    )

    assert code == ExitCode.OK
    assert {n: (o["status"], o["sender"]) for n, o in outcomes.items()} == {
        1: ("queued", V2_LIST),
        2: ("queued", V2_LIST),
        3: ("queued", V2_LIST),
        4: ("queued", OTHER_LIST),
    }
    assert outcomes[2]["ref"] == "r-2"
    assert outcomes[4]["to_msisdn"] == "+14155550004"
    ledger = sorted(read_ledger(emu.ledger_path), key=lambda r: str(r["to"]))
    assert [{k: v for k, v in r.items() if k not in ("request", "t")} for r in ledger] == [
        {"list": V2_LIST, "to": "+14155550001", "body": "Hello", "api": "v2"},
        {"list": V2_LIST, "to": "+14155550002", "body": "no plus", "api": "v2"},
        {
            "list": V2_LIST,
            "to": "+14155550003",
            "body": "Hi {{messageId}}",
            "contact_data": CONTACT,
            "metadata": METADATA,
            "api": "v2",
        },
        {"list": OTHER_LIST, "to": "+14155550004", "body": "formatted", "api": "v2"},
    ]


async def test_v2_unknown_list_number_fails_the_lines_and_stops_the_run_like_v1(
    emulator: EmulatorFactory,
) -> None:
    """A line naming an E.164 list number the service doesn't have passes our validator; v2
    answers it in-band (201, `list_not_found` on every message), which means what v1's 404
    means: the line is `failed` with the service's code and text (so `--resume` sends it once
    the number is fixed, where `rejected` would be final), and the run stops with exit 3. Lines
    of the good sender are queued or, if the stop came first, have no outcome (never both)."""
    emu = await emulator()
    lines = [
        line(to="+14155550001", body="one"),
        line(to="+14155550002", body="unknown list", list_number=UNKNOWN_LIST),
        line(to="+14155550003", body="three"),
    ]

    code, outcomes, _ = await run_pipeline(emu.base_url, lines)

    assert code == ExitCode.ABORTED
    failed = outcomes[2]
    assert (failed.status, failed.code, failed.sender) == (
        Status.FAILED,
        "list_not_found",
        UNKNOWN_LIST,
    )
    assert failed.error == "List number not found"
    ledger = {r["to"] for r in read_ledger(emu.ledger_path)}
    for number, to in ((1, "+14155550001"), (3, "+14155550003")):
        if number in outcomes:
            assert outcomes[number].status is Status.QUEUED
            assert to in ledger
        else:
            assert to not in ledger
    assert "+14155550002" not in ledger


async def test_v2_to_that_cannot_be_normalised_is_refused_locally_and_never_sent(
    emulator: EmulatorFactory,
) -> None:
    """A `to` without a country code (or not a number at all) can't become E.164: the line is
    `invalid` with `invalid_phone`, and the service never sees it (no request carries it)."""
    emu = await emulator()
    lines = [
        line(to="(415) 555-0001", body="no country code"),
        line(to="4155550002", body="ten digits"),
        line(to="+0415555000", body="leading zero"),
        line(to="+14155550004", body="fine"),
    ]

    code, outcomes, _ = await run_pipeline(emu.base_url, lines)

    assert code == ExitCode.NOT_ALL_QUEUED
    for number in (1, 2, 3):
        assert (outcomes[number].status, outcomes[number].code) == (
            Status.INVALID,
            "invalid_phone",
        )
        assert outcomes[number].request is None
    assert outcomes[4].status is Status.QUEUED
    stats = emu.stats()
    assert stats["messages_queued"] == 1
    assert stats["messages_rejected"] == 0
    assert stats["largest_request_messages"] == 1


async def test_v2_wrong_key_stops_the_run_with_exit_3(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """A key the service refuses (401 invalid_api_key) is a request-level error no retry can fix:
    the run stops with exit 3, nothing is queued, the request's lines are `failed` with the
    service's code, and the key appears nowhere in the logs."""
    emu = await emulator()
    lines = [line(to=f"+1415555{n:04d}", body="hi") for n in range(5)]

    code, outcomes, events, stderr = await run_cli(
        emu, tmp_path, lines, "--api-version", "v2", "--from", V2_LIST, key=WRONG_KEY
    )

    assert code == 3
    assert read_ledger(emu.ledger_path) == []
    assert outcomes  # the one request sent: its lines say why they failed
    assert {(o["status"], o["code"]) for o in outcomes.values()} == {("failed", "invalid_api_key")}
    fatal = [e for e in events if e.get("event") == "fatal_service_answer"]
    assert [(e["code"], e["status"]) for e in fatal] == [("invalid_api_key", 401)]
    assert WRONG_KEY.encode() not in stderr


async def test_v2_too_many_messages_is_413_and_success_bodies_say_success(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """On v2 the emulator answers 1,001 messages with 413 too_many_messages (v1: 400), accepts
    1,000 with `success: true` and no deprecation marks (v1: `deprecated: true` and headers)."""
    emu = await emulator()
    v2_url = emu.base_url + "/v2/send/bulk"
    v1_url = emu.base_url + "/v1/messages/bulk"

    def messages(count: int, **extra: str) -> list[dict[str, str]]:
        return [{"to": f"+1415{n:07d}", "body": "hi", **extra} for n in range(count)]

    too_many = await post(session, v2_url, {"messages": messages(1001, list_number=V2_LIST)})
    assert too_many.status == 413
    assert too_many.json()["code"] == "too_many_messages"
    v1_too_many = await post(
        session, v1_url, {"from_phone_number_id": V1_LIST, "messages": messages(1001)}
    )
    assert (v1_too_many.status, v1_too_many.json()["code"]) == (400, "too_many_messages")

    ok = await post(session, v2_url, {"messages": messages(1000, list_number=V2_LIST)})
    assert ok.status == 201
    assert ok.json() == {"success": True, "queued_count": 1000, "error_count": 0, "errors": []}
    assert "Deprecation" not in ok.headers
    v1_ok = await post(session, v1_url, {"from_phone_number_id": V1_LIST, "messages": messages(3)})
    assert v1_ok.json()["deprecated"] is True
    assert "success" not in v1_ok.json()
    assert v1_ok.headers["Deprecation"] == "true"


@pytest.mark.parametrize(
    ("version", "sender", "warnings"), [("v2", V2_LIST, 0), ("v1", V1_LIST, 1)]
)
async def test_deprecation_warning_is_logged_once_for_v1_and_never_for_v2(
    emulator: EmulatorFactory, tmp_path: Path, version: str, sender: str, warnings: int
) -> None:
    """A run of several requests logs `api_deprecated` exactly once on v1 (every v1 answer is
    marked deprecated) and not at all on v2."""
    emu = await emulator()
    lines = [line(to=f"+1415555{n:04d}", body="hi") for n in range(6)]

    code, outcomes, events, _ = await run_cli(
        emu, tmp_path, lines, "--api-version", version, "--from", sender, "--batch-size", "2"
    )

    assert code == ExitCode.OK
    assert len(outcomes) == 6
    assert len({o["request"] for o in outcomes.values()}) == 3
    deprecated = [e for e in events if e.get("event") == "api_deprecated"]
    assert len(deprecated) == warnings
    assert all(e["level"] == "warning" for e in deprecated)


# -- against a fake v2 service -------------------------------------------------------------------


async def test_v2_per_message_errors_reject_the_lines_at_their_index() -> None:
    """A 201 whose `errors` name indexes 1 and 4 of a six-message request rejects exactly the
    second and fifth lines, each with the service's `code` and `error`; the rest are queued."""

    def reject_some(messages: list[dict[str, Any]]) -> Answer:
        codes = {1: "invalid_phone", 4: "missing_body"}
        errors = [
            {"index": i, "to": messages[i]["to"], "code": code, "error": f"refused: {code}"}
            for i, code in codes.items()
            if i < len(messages)
        ]
        queued = len(messages) - len(errors)
        answer = {"success": True, "queued_count": queued, "error_count": len(errors)}
        return 201, {**answer, "errors": errors}

    lines = [line(to=f"+1415555{n:04d}", body=f"message {n}") for n in range(1, 7)]
    async with fake_v2_service(reject_some) as (base_url, received):
        code, outcomes, log = await run_pipeline(base_url, lines, batch_size=6)

    assert [len(messages) for messages in received] == [6]
    assert code == ExitCode.NOT_ALL_QUEUED
    assert {n: (o.status, o.code, o.error) for n, o in outcomes.items()} == {
        1: (Status.QUEUED, None, None),
        2: (Status.REJECTED, "invalid_phone", "refused: invalid_phone"),
        3: (Status.QUEUED, None, None),
        4: (Status.QUEUED, None, None),
        5: (Status.REJECTED, "missing_body", "refused: missing_body"),
        6: (Status.QUEUED, None, None),
    }
    assert outcomes[5].to_msisdn == "+14155550005"
    assert log.named("queued_count_mismatch") == []


async def test_413_too_many_messages_makes_the_client_send_halves() -> None:
    """A service that answers 413 too_many_messages above four messages: the ten-message batch
    is split in halves until each part is accepted; every line is queued exactly once and the
    split is logged as an error (our own caps should have prevented it)."""

    def at_most_four(messages: list[dict[str, Any]]) -> Answer:
        if len(messages) > 4:
            return 413, {"error": "At most 4 messages per request", "code": "too_many_messages"}
        return queued_all(messages)

    lines = [line(to=f"+1415555{n:04d}", body="hi") for n in range(1, 11)]
    async with fake_v2_service(at_most_four) as (base_url, received):
        code, outcomes, log = await run_pipeline(base_url, lines, batch_size=10)

    assert code == ExitCode.OK
    # Depth first: 10 → 5 → 2 + 3, then the second 5 → 2 + 3.
    assert [len(messages) for messages in received] == [10, 5, 2, 3, 5, 2, 3]
    accepted = [m["to"] for messages in received if len(messages) <= 4 for m in messages]
    assert sorted(accepted) == [f"+1415555{n:04d}" for n in range(1, 11)]
    assert {n: o.status for n, o in outcomes.items()} == dict.fromkeys(range(1, 11), Status.QUEUED)
    splits = log.named("payload_too_large_split")
    assert [entry[2]["messages"] for entry in splits] == [10, 5, 5]
