"""Delivery guarantees end to end: the pipeline against the emulator, with each fault injected.

Each run sends 20,000 lines through the real pipeline (source, validation, batcher, sender,
outcomes file, journal) over loopback HTTP to the in-process emulator, whose ledger records every
message it accepted. Then, whatever the faults:

- every line has exactly one outcome;
- each `queued` line is in the ledger exactly once; `rejected`, `invalid` and `failed` lines are
  not in it at all; an `unknown` line is in it at most once (the service may or may not have
  taken it), and nothing in the ledger is foreign to the input;
- with --resend-unknown (at-least-once), ambiguous failures are resent: a line may then be in the
  ledger more than once, but never more often than its request was attempted.

Each fault kind also leaves its own fingerprint, checked precisely: 503 and 429 are retried and
never make a line `unknown`; 500, 502 and 504 prove nothing either way, so their lines are
`unknown` and not resent (whether the ledger has them or not: a gateway's 504 after the service
queued, a 500 after half the batch was queued); a connection dropped before queueing makes lines
`unknown` that the ledger doesn't have; one dropped after queueing, a hang or a cut-off body
makes lines `unknown` that the ledger has exactly once.

Every line's body is unique (`m<line>`), which is how a ledger record is traced to its line. Every
97th line has a number the client is made to let through (a "+0…" number) and the service
refuses in-band, so `rejected` outcomes and their index mapping are exercised too.
"""

from __future__ import annotations

import asyncio
import functools
import io
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from aiohttp import web
from structlog.typing import EventDict

import streamsend._dispatch
import streamsend._pipeline
import streamsend._validate
from streamsend._batcher import Batcher
from streamsend._config import Settings
from streamsend._journal import FileJournal
from streamsend._models import Status
from streamsend._outcomes import FileSink, MemorySink
from streamsend._pipeline import (
    Pipeline,
    RunResult,
)
from streamsend._protocol import WireProtocol
from streamsend._source import read_inputs
from streamsend._types import ExitCode, LineBlock
from streamsend.emulator import FaultConfig, RunningEmulator
from streamsend.testing import API_KEY, V1_LIST, EmulatorFactory, read_ledger
from tests.conftest import serve_locally

LINES = 20_000
INVALID_EVERY = 1000  # line 500, 1500, ...: not JSON, refused by the client
REJECTED_EVERY = 97  # a "+0" number: let through by the client, refused by the service


class CapturedLog:
    """Keeps every event the pipeline logs, with its wall-clock time (a structlog processor)."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str, dict[str, Any]]] = []

    def __call__(self, logger: object, method_name: str, event_dict: EventDict) -> EventDict:
        event = str(event_dict.pop("event"))
        self.events.append((time.time(), method_name, event, dict(event_dict)))
        raise structlog.DropEvent

    def logger(self) -> Any:
        """A real structlog logger (bind, levels and all) whose events end up here."""
        return structlog.wrap_logger(
            structlog.PrintLogger(io.StringIO()),
            processors=[self],
            wrapper_class=structlog.make_filtering_bound_logger(0),
        )

    def named(self, event: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, fields) for t, _, name, fields in self.events if name == event]


def _kind(line: int) -> str:
    if line % INVALID_EVERY == INVALID_EVERY // 2:
        return "invalid"
    if line % REJECTED_EVERY == 0:
        return "rejectable"
    return "good"


def write_input(path: Path, lines: int = LINES, body: Callable[[int], str] | None = None) -> None:
    """The input: mostly good lines with unique bodies, some invalid, some the service rejects."""
    with path.open("wb") as out:
        for n in range(1, lines + 1):
            kind = _kind(n)
            if kind == "invalid":
                out.write(b"not json at all\n")
                continue
            to = f"+0{n:09d}" if kind == "rejectable" else f"+1415{n:07d}"
            text = body(n) if body is not None else f"m{n}"
            out.write(orjson.dumps({"to_msisdn": to, "body": text, "ref": n}) + b"\n")


@pytest.fixture(autouse=True)
def let_plus_zero_numbers_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the client accept "+0…" numbers, which the service refuses in-band (`rejected`)."""
    original = streamsend._validate.normalise_phone

    def permissive(raw: str) -> str | None:
        return raw if raw.startswith("+0") else original(raw)

    monkeypatch.setattr(streamsend._validate, "normalise_phone", permissive)


@dataclass
class Run:
    """One pipeline run: what it returned, wrote and logged, and what the emulator accepted."""

    result: RunResult
    outcomes: list[dict[str, Any]]
    ledger: list[dict[str, Any]]
    log: CapturedLog
    stats: Any  # the emulator's stats snapshot
    lines: int
    by_line: dict[int, dict[str, Any]] = field(default_factory=dict)
    in_ledger: Counter[int] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        for outcome in self.outcomes:
            self.by_line[outcome["line"]] = outcome
        for record in self.ledger:
            self.in_ledger[int(record["body"].split(" ", 1)[0].removeprefix("m"))] += 1

    def with_status(self, status: str) -> Iterator[dict[str, Any]]:
        return (o for o in self.outcomes if o["status"] == status)

    def statuses(self) -> Counter[str]:
        return Counter(o["status"] for o in self.outcomes)


def settings_for(emu: RunningEmulator, tmp_path: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "base_url": emu.base_url,
        "sender": V1_LIST,
        "batch_size": 100,
        "linger_ms": 20.0,
        "concurrency": 8,
        "timeout": 5.0,
        "retries": 5,
        "backoff_base": 0.005,
        "backoff_cap": 0.02,
        "drain_timeout": 5.0,
        "rate": None,  # unpaced: these tests are about delivery, not pacing
        "outcomes": str(tmp_path / "outcomes.ndjson"),
        "fsync": "off",
    }
    return Settings(**(base | overrides))


async def run_pipeline(
    emu: RunningEmulator,
    tmp_path: Path,
    *,
    lines: int = LINES,
    body: Callable[[int], str] | None = None,
    api_key: str = API_KEY,
    **overrides: Any,
) -> Run:
    input_path = tmp_path / "input.ndjson"
    write_input(input_path, lines, body)
    settings = settings_for(emu, tmp_path, **overrides)
    assert settings.journal_path is not None
    log = CapturedLog()
    sink = FileSink.open_path(settings.outcomes, fsync=False)
    journal = FileJournal(settings.journal_path, fsync=False)
    try:
        pipeline = Pipeline(
            settings,
            api_key=api_key,
            source=read_inputs([str(input_path)]),
            sink=sink,
            journal=journal,
            log=log.logger(),
        )
        result = await pipeline.run()
    finally:
        sink.close()
        journal.close()
    return Run(
        result,
        read_outcomes(settings.outcomes),
        read_ledger(emu.ledger_path),
        log,
        emu.stats(),
        lines,
    )


def read_outcomes(path: str) -> list[dict[str, Any]]:
    with open(path, "rb") as file:
        return [orjson.loads(line) for line in file]


def check_delivery(run: Run, *, resend_unknown: bool = False) -> None:
    """The guarantees every run must keep, whatever the faults (see the module docstring)."""
    counts = Counter(o["line"] for o in run.outcomes)
    assert [line for line, n in counts.items() if n > 1] == [], "a line has two outcomes"
    assert set(counts) == set(range(1, run.lines + 1)), "a line has no outcome"
    assert set(run.in_ledger) <= set(counts), "the ledger holds a message not in the input"
    problems: list[tuple[int, str, int]] = []
    for line, outcome in run.by_line.items():
        status, times = outcome["status"], run.in_ledger[line]
        kind = _kind(line)
        if kind == "invalid":
            ok = status == "invalid" and outcome["code"] == "invalid_json" and times == 0
        elif status == "queued":
            ok = kind == "good" and (
                times == 1 or (resend_unknown and 1 <= times <= outcome["attempts"])
            )
        elif status == "rejected":
            ok = kind == "rejectable" and outcome["code"] == "invalid_phone" and times == 0
        elif status == "failed":
            ok = times == 0
        elif status == "unknown":
            ok = times <= (outcome["attempts"] if resend_unknown else 1)
        else:
            ok = False
        if not ok:
            problems.append((line, status, times))
    assert problems == [], f"{len(problems)} lines break the guarantees, e.g. {problems[:5]}"
    # The outcomes say what was sent to whom: each queued line's recipient is its own.
    for outcome in run.with_status("queued"):
        assert outcome["to_msisdn"] == f"+1415{outcome['line']:07d}"
        assert outcome["ref"] == outcome["line"]


def exit_code_for(run: Run) -> int:
    return 0 if set(run.statuses()) == {"queued"} else ExitCode.NOT_ALL_QUEUED


# -- no faults, then one fault kind at a time --------------------------------------------------


async def test_without_faults_every_line_is_delivered_once(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """The baseline: 20,000 lines, each queued exactly once, rejected or invalid; exit 1."""
    emu = await emulator()
    run = await run_pipeline(emu, tmp_path)
    check_delivery(run)
    rejectable = sum(1 for n in range(1, LINES + 1) if _kind(n) == "rejectable")
    invalid = sum(1 for n in range(1, LINES + 1) if _kind(n) == "invalid")
    assert run.statuses() == {
        "queued": LINES - rejectable - invalid,
        "rejected": rejectable,
        "invalid": invalid,
    }
    assert run.result.exit_code == ExitCode.NOT_ALL_QUEUED


async def test_503_is_retried_and_500_502_504_are_unknown(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """A 503 proves nothing was queued: retried, and those lines end queued once. A 500, 502 or
    504 proves nothing either way: its lines are `unknown` after one attempt, never resent
    (this emulator fault queued nothing, so the ledger doesn't have them)."""
    emu = await emulator(faults=FaultConfig(seed=1, error_5xx=0.3))
    run = await run_pipeline(emu, tmp_path, lines=4000)
    check_delivery(run)
    assert run.stats["faults"]["error_5xx"] > 10
    unknown = list(run.with_status("unknown"))
    assert unknown
    assert {o["code"] for o in unknown} == {"internal_error", "bad_gateway", "gateway_timeout"}
    # Never resent after the 500/502/504 (nothing in the ledger). Earlier attempts of the same
    # request may have met a 503 (proved not queued, so retried): which request draws which
    # fault depends on the order requests reach the emulator, so `attempts` can be above 1.
    assert all(o["attempts"] >= 1 and run.in_ledger[o["line"]] == 0 for o in unknown)
    assert any(o["attempts"] > 1 for o in run.with_status("queued"))  # retried after 503s
    # Each 5xx opened the sending number's breaker (or found it open): each outage warned once.
    assert 1 <= len(run.log.named("service_unavailable")) <= run.stats["faults"]["error_5xx"]


async def test_503_outlasting_the_retries_is_waited_out_not_failed(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """An unavailable service (503) is an outage, bounded by --give-up-after, not --retries:
    requests wait with their sending number and try again, so no line is `failed` for it
    (test_delivery_truth's outage tests count the attempts exactly)."""
    emu = await emulator(faults=FaultConfig(seed=2, error_5xx=0.6))
    run = await run_pipeline(emu, tmp_path, lines=4000, retries=1)
    check_delivery(run)
    assert run.stats["requests_by_status"]["503"] > 3
    assert "failed" not in run.statuses()
    assert run.result.exit_code == ExitCode.NOT_ALL_QUEUED  # the 500/502/504 lines: unknown


async def test_429_without_pause_is_retried(emulator: EmulatorFactory, tmp_path: Path) -> None:
    """429 (Retry-After: 0) is retried like 5xx: no line `unknown`, each queued line once."""
    emu = await emulator(faults=FaultConfig(seed=3, rate_429=0.3, retry_after_s=0))
    run = await run_pipeline(emu, tmp_path)
    check_delivery(run)
    assert run.stats["faults"]["rate_429"] > 10
    assert "unknown" not in run.statuses()
    assert len(run.log.named("rate_limited")) == run.stats["faults"]["rate_429"]


async def test_drop_before_queueing_is_unknown_and_not_in_the_ledger(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """A connection closed after the request left is ambiguous to the client (`unknown`, not
    resent); the emulator dropped it before queueing, so none of those lines is in the ledger."""
    emu = await emulator(faults=FaultConfig(seed=4, drop_before=0.1))
    run = await run_pipeline(emu, tmp_path)
    check_delivery(run)
    unknown = list(run.with_status("unknown"))
    assert unknown
    assert {o["code"] for o in unknown} == {"disconnected"}
    assert all(run.in_ledger[o["line"]] == 0 for o in unknown)
    assert all(o["attempts"] == 1 for o in unknown)


@pytest.mark.parametrize(
    ("faults", "code", "overrides"),
    [
        pytest.param(FaultConfig(seed=5, drop_after=0.1), "disconnected", {}, id="drop-after"),
        pytest.param(
            FaultConfig(seed=5, truncated_body=0.1), "truncated_response", {}, id="truncated-body"
        ),
        pytest.param(FaultConfig(seed=5, hang=0.1), "timeout", {"timeout": 0.5}, id="hang"),
    ],
)
async def test_answers_lost_after_queueing_are_unknown_and_in_the_ledger_once(
    emulator: EmulatorFactory,
    tmp_path: Path,
    faults: FaultConfig,
    code: str,
    overrides: dict[str, Any],
) -> None:
    """The service queued the messages and the answer was lost: `unknown`, never resent, and
    each such line the service could accept is in the ledger exactly once."""
    emu = await emulator(faults=faults)
    run = await run_pipeline(emu, tmp_path, **overrides)
    check_delivery(run)
    unknown = list(run.with_status("unknown"))
    assert unknown
    assert {o["code"] for o in unknown} == {code}
    assert all(o["attempts"] == 1 for o in unknown)
    assert all(run.in_ledger[o["line"]] == (_kind(o["line"]) == "good") for o in unknown)


@pytest.mark.parametrize("resend_unknown", [False, True], ids=["default", "resend-unknown"])
async def test_a_gateway_error_after_queueing_is_unknown_and_in_the_ledger_once(
    emulator: EmulatorFactory, tmp_path: Path, resend_unknown: bool
) -> None:
    """A gateway answers 502/504 after the service queued the request: the lines are `unknown`
    after one attempt and each is in the ledger exactly once; retrying would have sent them
    twice. With --resend-unknown they are resent (and may be in the ledger twice): the user's
    choice of at-least-once."""
    emu = await emulator(faults=FaultConfig(seed=11, gateway_after=0.2))
    run = await run_pipeline(emu, tmp_path, lines=3000, resend_unknown=resend_unknown)
    check_delivery(run, resend_unknown=resend_unknown)
    assert run.stats["faults"]["gateway_after"] > 3
    if resend_unknown:
        assert any(n > 1 for n in run.in_ledger.values())
        return
    unknown = list(run.with_status("unknown"))
    assert unknown
    assert {o["code"] for o in unknown} == {"bad_gateway", "gateway_timeout"}
    assert all(o["attempts"] == 1 for o in unknown)
    assert all(run.in_ledger[o["line"]] == (_kind(o["line"]) == "good") for o in unknown)
    assert max(run.in_ledger.values()) == 1


async def test_a_500_after_part_of_a_batch_is_unknown_and_never_resent(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """A 500 after the service queued the first half of a batch: every line of it is `unknown`
    (the client can't tell which half), the first half is in the ledger once, the second not
    at all, and nothing is sent twice."""
    emu = await emulator(faults=FaultConfig(seed=12, partial_500=0.2))
    run = await run_pipeline(emu, tmp_path, lines=3000)
    check_delivery(run)
    assert run.stats["faults"]["partial_500"] > 3
    unknown = list(run.with_status("unknown"))
    assert {o["code"] for o in unknown} == {"internal_error"}
    assert all(o["attempts"] == 1 for o in unknown)
    by_request: dict[int, list[int]] = {}
    for outcome in unknown:
        by_request.setdefault(outcome["request"], []).append(outcome["line"])
    for lines in by_request.values():
        if len(lines) < 2:
            continue  # a one-message request is queued whole before its 500
        half = len(lines) // 2
        in_ledger = [run.in_ledger[line] for line in sorted(lines)]
        assert set(in_ledger[half:]) == {0}  # the second half was never queued
        assert sum(in_ledger[:half]) > 0  # the first half was
    assert max(run.in_ledger.values()) == 1


async def test_all_faults_together(emulator: EmulatorFactory, tmp_path: Path) -> None:
    """Every fault kind at once: the guarantees still hold, and each kind actually happened."""
    faults = FaultConfig(
        seed=6,
        error_5xx=0.08,
        rate_429=0.06,
        retry_after_s=0,
        drop_before=0.05,
        drop_after=0.05,
        hang=0.03,
        truncated_body=0.05,
        gateway_after=0.03,
        partial_500=0.03,
    )
    emu = await emulator(faults=faults)
    run = await run_pipeline(emu, tmp_path, timeout=0.5)
    check_delivery(run)
    kinds = (
        "error_5xx",
        "rate_429",
        "drop_before",
        "drop_after",
        "hang",
        "truncated_body",
        "gateway_after",
        "partial_500",
    )
    assert all(run.stats["faults"][kind] > 0 for kind in kinds), run.stats["faults"]
    assert run.result.exit_code == ExitCode.NOT_ALL_QUEUED


# -- at-least-once -----------------------------------------------------------------------------


async def test_resend_unknown_retries_ambiguous_failures(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """With --resend-unknown, answers lost after queueing are resent: lines reach the ledger at
    least once, some twice (the price of at-least-once), never more often than attempted."""
    faults = FaultConfig(seed=7, drop_after=0.1, truncated_body=0.1, hang=0.05)
    emu = await emulator(faults=faults)
    run = await run_pipeline(emu, tmp_path, resend_unknown=True, timeout=0.5)
    check_delivery(run, resend_unknown=True)
    twice = [line for line, n in run.in_ledger.items() if n > 1]
    assert twice, "no ambiguous request was resent"
    assert all(run.by_line[line]["attempts"] > 1 for line in twice)
    # A request is given up on only after all its attempts were ambiguous, which is rare here.
    assert run.statuses()["unknown"] < LINES // 50


# -- Retry-After pauses the whole lane ---------------------------------------------------------


async def test_retry_after_pauses_every_request_of_the_sender(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """After a 429 with Retry-After: 1, the sending number sends nothing for a second.

    Two workers share the lane. Once the client has read a 429, at most one request (the other
    worker's, already in flight) may reach the service within the next second; a pause of only
    the refused request would let the other worker go on sending every few milliseconds.
    """
    emu = await emulator(faults=FaultConfig(seed=8, rate_429=0.15, retry_after_s=1))
    run = await run_pipeline(emu, tmp_path, batch_size=1000, concurrency=2)
    check_delivery(run)
    limited = run.log.named("rate_limited")
    assert limited
    assert all(fields["retry_after"] == 1.0 for _, fields in limited)
    arrivals = sorted({(r["t"], r["request"]) for r in run.ledger})
    for noticed, _ in limited:
        # A little slack under the second: the client stamps the log after reading the answer.
        during_pause = [t for t, _ in arrivals if noticed < t < noticed + 0.95]
        assert len(during_pause) <= 1, (noticed, during_pause)


# -- request-level refusals --------------------------------------------------------------------


async def test_413_splits_the_batch_and_says_so(
    emulator: EmulatorFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 413 means our byte cap is wrong: the batch is halved until it fits, and logged loudly.

    The batcher's cap is raised above the service's 5,000,000 bytes so that batches of long
    four-byte-character bodies (6.4 MB per 1,000) are refused.
    """

    class Oversized(Batcher):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs, max_body_bytes=50_000_000)

    monkeypatch.setattr(streamsend._pipeline, "Batcher", Oversized)
    emu = await emulator()
    lines = 3000

    def long_body(n: int) -> str:
        return f"m{n} " + "\U0001f600" * (1600 - len(f"m{n} "))

    # A linger of a minute: batches close at 1,000 messages (or the end of input), never early.
    run = await run_pipeline(
        emu, tmp_path, lines=lines, body=long_body, batch_size=1000, linger_ms=60_000
    )
    check_delivery(run)
    splits = run.log.named("payload_too_large_split")
    assert splits
    assert all(fields["bytes"] > 5_000_000 for _, fields in splits)
    assert run.stats["requests_by_status"].get("413", 0) == len(splits)
    assert "failed" not in run.statuses()


async def test_401_aborts_and_leaves_unsent_lines_without_outcome(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """A wrong key is fatal: exit 3, the lines of the refused requests `failed`, and the lines
    never sent have no outcome at all (so --resume sends them); nothing reached the ledger."""
    emu = await emulator()
    wrong_key = "trk_" + "W" * 32
    run = await run_pipeline(emu, tmp_path, api_key=wrong_key)
    assert run.result.exit_code == ExitCode.ABORTED
    assert run.result.aborted
    assert run.ledger == []
    sent = [o for o in run.outcomes if o["status"] != "invalid"]
    assert sent
    assert {(o["status"], o["code"]) for o in sent} == {("failed", "invalid_api_key")}
    # At most one request per worker was refused before the run stopped.
    assert len({o["request"] for o in sent}) <= 8
    assert len(run.outcomes) < LINES // 2
    assert len(run.log.named("fatal_service_answer")) == 1


# -- a server that answers 413 whatever the size -----------------------------------------------


async def test_413_on_a_single_message_fails_it(tmp_path: Path) -> None:
    """A 413 for one message can't be split further: that line is `failed`, the others go on."""
    seen: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        payload = await request.json()
        messages = payload["messages"]
        seen.append(len(messages))
        if any("big" in m["body"] for m in messages):
            return web.json_response(
                {"error": "Request body exceeds 5000000 bytes", "code": "payload_too_large"},
                status=413,
            )
        return web.json_response({"queued_count": len(messages), "errors": []}, status=201)

    app = web.Application()
    app.router.add_post("/api/v1/messages/bulk", handle)
    async with serve_locally(app) as base_url:
        input_path = tmp_path / "input.ndjson"
        with input_path.open("wb") as out:
            for n in range(1, 9):
                text = "big" if n == 5 else f"m{n}"
                out.write(orjson.dumps({"to_msisdn": f"+1415{n:07d}", "body": text}) + b"\n")
        settings = replace(
            Settings(rate=None),
            base_url=base_url,
            sender=V1_LIST,
            batch_size=8,
            retries=0,
            outcomes=str(tmp_path / "outcomes.ndjson"),
            fsync="off",
        )
        log = CapturedLog()
        sink = FileSink.open_path(settings.outcomes, fsync=False)
        try:
            pipeline = Pipeline(
                settings,
                api_key=API_KEY,
                source=read_inputs([str(input_path)]),
                sink=sink,
                log=log.logger(),
            )
            result = await pipeline.run()
        finally:
            sink.close()
    outcomes = {o["line"]: (o["status"], o.get("code")) for o in read_outcomes(settings.outcomes)}
    assert outcomes == {
        n: ("failed", "payload_too_large") if n == 5 else ("queued", None) for n in range(1, 9)
    }
    assert seen == [8, 4, 4, 2, 1, 1, 2]  # halves, depth first, until line 5 is alone
    assert len(log.named("payload_too_large_split")) == 3
    assert result.exit_code == ExitCode.NOT_ALL_QUEUED


# -- a bug inside the sender -------------------------------------------------------------------


async def test_an_internal_error_in_the_dispatcher_stops_the_run_and_is_raised(
    emulator: EmulatorFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception that is no service answer (a bug) must not be swallowed: the run stops
    reading, the requests already answered keep their outcomes, and run() raises the error.
    The lines of the request it broke get no outcome, so --resume reports them `unknown`."""
    original = WireProtocol.classify

    def broken_on_request_3(
        protocol: WireProtocol, status: int, body: bytes, retry_after: str | None, *, request: int
    ) -> Any:
        if request == 3:
            raise RuntimeError("a bug in the dispatcher")
        return original(protocol, status, body, retry_after, request=request)

    monkeypatch.setattr(WireProtocol, "classify", broken_on_request_3)
    emu = await emulator()
    with pytest.raises(RuntimeError, match="a bug in the dispatcher"):
        await run_pipeline(emu, tmp_path, concurrency=1)
    outcomes = read_outcomes(str(tmp_path / "outcomes.ndjson"))
    assert {o["status"] for o in outcomes} <= {"queued", "rejected", "invalid"}
    requests = {o["request"] for o in outcomes if "request" in o}
    assert 3 not in requests
    assert {1, 2} <= requests
    # It stopped: it didn't go on to send the rest of the input after the error.
    assert len(read_ledger(emu.ledger_path)) < LINES // 2


# -- backpressure: a batch waiting for room is never dropped -----------------------------------


@pytest.mark.parametrize("how", ["input-ends", "stop-requested"])
async def test_a_batch_waiting_for_room_is_sent_when_reading_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A batch closed by the linger (or by the reader) while the sender has no room waits in
    submit(). When reading ends then, at the end of the input or on a stop, that batch must
    still be sent: it is "already batched", and its lines would otherwise end with no outcome.

    A service that answers only when the test says so keeps the sender full (a room of 200
    messages, one request in flight), so the moment is reached deterministically.
    """
    monkeypatch.setattr(
        streamsend._pipeline,
        "DispatchSettings",
        functools.partial(streamsend._dispatch.DispatchSettings, max_waiting_messages=200),
    )
    release = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        payload = await request.json()
        await release.wait()
        return web.json_response(
            {"queued_count": len(payload["messages"]), "errors": []}, status=201
        )

    app = web.Application()
    app.router.add_post("/api/v1/messages/bulk", handle)

    def block(first: int, count: int) -> LineBlock:
        lines: list[bytes | None] = [
            orjson.dumps({"to_msisdn": f"+1415{n:07d}", "body": f"m{n}"})
            for n in range(first, first + count)
        ]
        return LineBlock("in", first, lines, 0)

    pipeline: Pipeline | None = None
    reading_over = asyncio.Event()

    async def source() -> AsyncIterator[LineBlock]:
        assert pipeline is not None
        buffered = pipeline.stats.queue_depth_probes["messages_buffered"]
        try:
            yield block(1, 300)  # one request in flight, two batches waiting: the room is full
            yield block(301, 50)  # half a batch, left to the linger
            # Until the linger has closed it (and waits for room with it). A probe has no event.
            while buffered():  # noqa: ASYNC110
                await asyncio.sleep(0.002)
            if how == "stop-requested":
                pipeline.request_stop()
                await asyncio.sleep(3600)  # reading is stopped by the pipeline, not the input
        finally:
            reading_over.set()

    async with serve_locally(app) as base_url:
        settings = replace(
            Settings(rate=None),
            base_url=base_url,
            sender=V1_LIST,
            batch_size=100,
            concurrency=1,
            linger_ms=10,
            fsync="off",
        )
        sink = MemorySink()
        pipeline = Pipeline(settings, api_key=API_KEY, source=source(), sink=sink)
        try:
            run = asyncio.create_task(pipeline.run())
            await reading_over.wait()
            await asyncio.sleep(0.05)  # the pipeline winds reading down; then the service answers
            release.set()
            result = await run
        finally:
            release.set()
    lines = sorted(o.line for o in sink.outcomes)
    assert lines == list(range(1, 351))
    assert {o.status for o in sink.outcomes} == {Status.QUEUED}
    assert result.exit_code == (ExitCode.INTERRUPTED if how == "stop-requested" else 0)
