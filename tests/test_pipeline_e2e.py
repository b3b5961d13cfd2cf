"""End to end over real loopback HTTP: the pipeline in-process against the emulator fixture, and
`streamsend send` in a subprocess against `streamsend emulator` in another.

What is checked: every line ends with the right status and the service's ledger holds each valid
message exactly once; the 1,000-message and 5,000,000-byte caps hold with emoji-heavy bodies; the
service's per-message and request-level answers map to `rejected` and `failed`; a wrong key stops
the run (exit 3) with later lines left without an outcome; a slow stdin stream reaches the service
while stdin stays open, and the process exits promptly at EOF.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from streamsend._config import Settings
from streamsend._models import Outcome, Status
from streamsend._outcomes import MemorySink
from streamsend._pipeline import Pipeline, RunResult
from streamsend._run import open_run
from streamsend._source import read_inputs
from streamsend.testing import read_ledger
from tests.conftest import (
    API_KEY,
    V1_LIST,
    EmulatorFactory,
    EmulatorProcess,
    clean_env,
    emulator_subprocess,
    serve_locally,
)

WRONG_KEY = "trk_" + "Wr0ngKeyWr0ngKeyWr0ngKeyWr0ngKey"
EMOJI_BODY = "😀" * 1600  # 6,400 bytes of UTF-8: 1,000 of these don't fit in 5,000,000 bytes

STREAMSEND = (sys.executable, "-m", "streamsend")

#: A generous bound for things that should take well under a second; only a hang exceeds it.
PATIENCE_S = 30.0


# -- helpers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One input line and what should become of it."""

    raw: bytes
    status: str | None  # None: a blank line, no outcome
    code: str | None = None
    to: str | None = None  # the normalised recipient the service should hold
    body: str | None = None


def valid(to: str, body: str, normalised: str | None = None, **extra: object) -> Line:
    raw = orjson.dumps({"to_msisdn": to, "body": body, **extra})
    return Line(raw, "queued", to=normalised or to, body=body)


def invalid(raw: bytes, code: str) -> Line:
    return Line(raw, "invalid", code)


def mixed_campaign() -> list[Line]:
    """Valid lines of every shape, invalid lines of many kinds, blank lines, in one stream."""
    lines = [
        valid("+14155550001", "Hello Ann"),
        Line(b"", None),
        valid("1 (415) 555-0002", "formatted number", normalised="+14155550002"),
        invalid(b'{"to_msisdn": "+14155550003", "body": ', "invalid_json"),
        valid("+14155550004", "with a ref", ref="r-4"),
        invalid(b'{"to_msisdn": "4155550005", "body": "ten digits"}', "invalid_phone"),
        invalid(orjson.dumps({"to_msisdn": "+14155550006", "body": "x" * 1601}), "body_too_long"),
        valid("+14155550007", "emoji 😀 and accents é"),
        Line(b"   \t", None),
        invalid(b"[1, 2, 3]", "not_an_object"),
        invalid(
            b'{"to_msisdn": "+14155550009", "body": "x" ' + b" " * 2000 + b"}", "line_too_long"
        ),
        valid("+14155550010", 'quotes " and \\ and\nnewline'),
        invalid(b'{"to_msisdn": "+14155550011"}', "missing_body"),
        # The same message again: --dedupe (on by default) sends it once.
        Line(orjson.dumps({"to_msisdn": "+14155550001", "body": "Hello Ann"}), "duplicate"),
        valid("+14155550012", "{braces} [brackets] ~tilde~ `backtick`"),
        invalid(b'{"to_msisdn": "+14155550013", "body": "a\xff"}', "invalid_utf8"),
    ]
    lines += [valid(f"+1415556{n:04d}", f"bulk message {n}") for n in range(250)]
    return lines


def write_lines(path: Path, lines: Sequence[Line], *, crlf_every: int = 3) -> None:
    """Write the lines as NDJSON, every `crlf_every`-th with a CRLF ending."""
    with path.open("wb") as file:
        for number, line in enumerate(lines, start=1):
            file.write(line.raw + (b"\r\n" if number % crlf_every == 0 else b"\n"))


def read_outcomes(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def check_outcomes(outcomes: Sequence[dict[str, Any]], lines: Sequence[Line], source: str) -> None:
    """Exactly one outcome per non-blank line, each with the expected status and code."""
    by_line: dict[int, dict[str, Any]] = {}
    for outcome in outcomes:
        assert outcome["source"] == source
        assert outcome["line"] not in by_line, f"two outcomes for line {outcome['line']}"
        by_line[outcome["line"]] = outcome
    expected_lines = {n for n, line in enumerate(lines, start=1) if line.status is not None}
    assert set(by_line) == expected_lines
    for number, line in enumerate(lines, start=1):
        if line.status is None:
            continue
        outcome = by_line[number]
        assert outcome["status"] == line.status, (number, outcome)
        if line.code is not None:
            assert outcome["code"] == line.code, (number, outcome)
        if line.status == "queued":
            assert outcome["to_msisdn"] == line.to
            assert outcome["attempts"] == 1
            assert isinstance(outcome["request"], int)


def check_ledger(ledger: Sequence[dict[str, Any]], lines: Sequence[Line]) -> None:
    """The service holds each queued line's message exactly as often as the input has it."""
    held = Counter((record["to"], record["body"]) for record in ledger)
    wanted = Counter((line.to, line.body) for line in lines if line.status == "queued")
    assert held == wanted


def settings_for(base_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "base_url": base_url,
        "sender": V1_LIST,
        "batch_size": 100,
        "linger_ms": 10.0,
        "max_line_bytes": 1800,  # over a 1,601-character body line, under the long line
        "rate": None,  # unpaced: these tests are about delivery, not pacing
        "timeout": 10.0,
        "backoff_base": 0.01,
        "backoff_cap": 0.05,
        "outcomes": str(tmp_path / "outcomes.ndjson"),
        "fsync": "off",
    }
    return Settings(**(values | overrides))


async def run_in_process(
    settings: Settings, inputs: Sequence[str], api_key: str = API_KEY
) -> RunResult:
    """One Pipeline run writing outcomes and journal to files, wired by `open_run` as the CLI's
    and the library's runs are."""
    assert settings.journal_path is not None
    source = read_inputs(inputs, max_line_bytes=settings.max_line_bytes)
    async with open_run(settings, api_key=api_key, source=source) as run:
        return await run.pipeline.run()


# -- in-process, against the emulator fixture ---------------------------------------------------


async def test_mixed_input_in_process(emulator: EmulatorFactory, tmp_path: Path) -> None:
    """Mixed valid and invalid lines: the right status on every line, each valid message in the
    service's ledger exactly once, and exit 1 because not every line was queued."""
    emu = await emulator()
    lines = mixed_campaign()
    source = tmp_path / "campaign.ndjson"
    write_lines(source, lines)
    settings = settings_for(emu.base_url, tmp_path)

    result = await run_in_process(settings, [str(source)])

    assert (result.exit_code, result.aborted) == (1, False)
    outcomes = read_outcomes(tmp_path / "outcomes.ndjson")
    check_outcomes(outcomes, lines, str(source))
    assert emu.ledger_path is not None
    check_ledger(read_ledger(emu.ledger_path), lines)
    by_line = {o["line"]: o for o in outcomes}
    assert by_line[5]["ref"] == "r-4"
    stats = emu.stats()
    assert stats["messages_rejected"] == 0
    assert stats["requests_by_status"] == {"201": stats["requests_total"]}


async def test_all_valid_exits_0(emulator: EmulatorFactory, tmp_path: Path) -> None:
    """When every line is queued the run exits 0; outcomes come in request order, each request
    numbered once."""
    emu = await emulator()
    lines = [valid(f"+1212555{n:04d}", f"hi {n}", ref=n) for n in range(1, 451)]
    source = tmp_path / "ok.ndjson"
    write_lines(source, lines)

    result = await run_in_process(settings_for(emu.base_url, tmp_path), [str(source)])

    assert result.exit_code == 0
    outcomes = read_outcomes(tmp_path / "outcomes.ndjson")
    check_outcomes(outcomes, lines, str(source))
    assert [o["ref"] for o in sorted(outcomes, key=lambda o: o["line"])] == list(range(1, 451))
    assert emu.ledger_path is not None
    check_ledger(read_ledger(emu.ledger_path), lines)
    per_request = Counter(o["request"] for o in outcomes)
    assert sorted(per_request) == list(range(1, len(per_request) + 1))
    assert max(per_request.values()) <= 100  # --batch-size 100


async def test_caps_hold_with_emoji_heavy_bodies(emulator: EmulatorFactory, tmp_path: Path) -> None:
    """2,400 messages of 1,600 emoji and 2,100 short ones: no request carries more than 1,000
    messages or reaches 5,000,000 bytes, by the service's own count, and every one is queued."""
    emu = await emulator()
    heavy = [valid(f"+1646555{n:04d}", f"{n} {EMOJI_BODY}"[:1600]) for n in range(2400)]
    light = [valid(f"+1917555{n:04d}", f"short {n}") for n in range(2100)]
    source = tmp_path / "heavy.ndjson"
    write_lines(source, heavy + light)
    settings = settings_for(
        emu.base_url, tmp_path, batch_size=1000, linger_ms=250.0, max_line_bytes=64 * 1024
    )

    result = await run_in_process(settings, [str(source)])

    assert result.exit_code == 0
    stats = emu.stats()
    assert stats["largest_request_messages"] == 1000  # the short ones fill whole batches
    assert 4_900_000 < int(stats["largest_request_bytes"]) < 5_000_000  # heavy ones, by bytes
    assert stats["requests_by_status"] == {"201": stats["requests_total"]}
    assert stats["messages_queued"] == 4500
    assert emu.ledger_path is not None
    check_ledger(read_ledger(emu.ledger_path), heavy + light)


async def test_wrong_key_aborts_and_leaves_later_lines_without_outcome(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """A 401 fails every line of the request that got it (with the service's code), stops the
    run with exit 3, and leaves the lines never sent without an outcome, for --resume."""
    emu = await emulator()
    lines = [valid(f"+1312555{n:04d}", f"m {n}") for n in range(300)]
    source = tmp_path / "in.ndjson"
    write_lines(source, lines)
    settings = settings_for(emu.base_url, tmp_path, batch_size=10, concurrency=1)

    result = await run_in_process(settings, [str(source)], api_key=WRONG_KEY)

    assert (result.exit_code, result.aborted) == (3, True)
    outcomes = read_outcomes(tmp_path / "outcomes.ndjson")
    assert [o["line"] for o in outcomes] == list(range(1, 11))  # the one request sent
    assert {(o["status"], o["code"], o["request"]) for o in outcomes} == {
        ("failed", "invalid_api_key", 1)
    }
    assert emu.stats()["requests_total"] == 1
    assert emu.ledger_path is not None
    assert read_ledger(emu.ledger_path) == []


async def test_outcomes_stream_to_a_memory_sink(emulator: EmulatorFactory) -> None:
    """The pipeline runs from Python with in-memory lines and an in-memory sink: one Outcome
    per line, `invalid` lines included, without touching the file system."""
    from streamsend.testing import lines_from

    emu = await emulator()
    raw = [
        b'{"to_msisdn": "+14155550100", "body": "a", "ref": 1}',
        b'{"to_msisdn": "555", "body": "b", "ref": 2}',
        b'{"to_msisdn": "+14155550101", "body": "c", "ref": 3}',
    ]
    sink = MemorySink()
    settings = Settings(base_url=emu.base_url, sender=V1_LIST, linger_ms=5.0, rate=None)
    pipeline = Pipeline(settings, api_key=API_KEY, source=lines_from(raw, "mem"), sink=sink)

    result = await pipeline.run()

    outcomes: list[Outcome] = sorted(sink.outcomes, key=lambda o: o.line)
    assert result.exit_code == 1
    assert [(o.line, o.status, o.ref) for o in outcomes] == [
        (1, Status.QUEUED, 1),
        (2, Status.INVALID, 2),
        (3, Status.QUEUED, 3),
    ]


# -- in-process, against a scripted service (answers the emulator never gives) --------------------


@pytest.fixture
async def scripted_service() -> AsyncIterator[str]:
    """A v1 bulk endpoint that refuses in-band the messages whose body starts with `reject`
    (with v1's text-only errors), and answers 400 to requests whose first body is `bad request`.
    """

    async def bulk(request: web.Request) -> web.Response:
        payload = await request.json()
        messages = payload["messages"]
        if messages[0]["body"] == "bad request":
            return web.json_response(
                {"error": "messages must be a non-empty array", "code": "missing_messages"},
                status=400,
            )
        errors = [
            {
                "index": index,
                "to_msisdn": message["to_msisdn"],
                "error": message["body"].removeprefix("reject: "),
            }
            for index, message in enumerate(messages)
            if message["body"].startswith("reject: ")
        ]
        answer = {
            "queued_count": len(messages) - len(errors),
            "error_count": len(errors),
            "errors": errors,
            "deprecated": True,
        }
        return web.json_response(answer, status=201)

    app = web.Application()
    app.router.add_post("/api/v1/messages/bulk", bulk)
    async with serve_locally(app) as base_url:
        yield base_url


async def test_in_band_errors_map_to_the_right_lines(scripted_service: str, tmp_path: Path) -> None:
    """A 201 with `errors` rejects exactly the indexed messages, with the service's text and a
    code derived from it; the rest of the request is queued."""
    bodies = ["ok 1", "reject: Invalid phone number format", "ok 3", "reject: Something new", "ok"]
    lines = [
        dataclasses.replace(
            valid(f"+1415558{n:04d}", body),
            status="rejected" if body.startswith("reject") else "queued",
        )
        for n, body in enumerate(bodies)
    ]
    source = tmp_path / "in.ndjson"
    write_lines(source, lines)
    settings = settings_for(scripted_service, tmp_path, batch_size=1000)

    result = await run_in_process(settings, [str(source)])

    assert result.exit_code == 1
    outcomes = {o["line"]: o for o in read_outcomes(tmp_path / "outcomes.ndjson")}
    assert [outcomes[n]["status"] for n in range(1, 6)] == [
        "queued",
        "rejected",
        "queued",
        "rejected",
        "queued",
    ]
    assert (outcomes[2]["code"], outcomes[2]["error"]) == (
        "invalid_phone",
        "Invalid phone number format",
    )
    assert (outcomes[4]["code"], outcomes[4]["error"]) == ("rejected", "Something new")
    assert outcomes[2]["to_msisdn"] == "+14155580001"
    assert len({o["request"] for o in outcomes.values()}) == 1


async def test_request_level_error_fails_the_request_and_the_run_goes_on(
    scripted_service: str, tmp_path: Path
) -> None:
    """A 400 fails every message of its request with the service's code, without retrying, and
    later requests are still sent."""
    lines = [valid("+14155559000", "bad request")] + [
        valid(f"+1415559{n:04d}", f"fine {n}") for n in range(1, 10)
    ]
    source = tmp_path / "in.ndjson"
    write_lines(source, lines)
    settings = settings_for(scripted_service, tmp_path, batch_size=5)

    result = await run_in_process(settings, [str(source)])

    assert (result.exit_code, result.aborted) == (1, False)
    outcomes = {o["line"]: o for o in read_outcomes(tmp_path / "outcomes.ndjson")}
    assert sorted(outcomes) == list(range(1, 11))
    for n in range(1, 6):
        assert (outcomes[n]["status"], outcomes[n]["code"], outcomes[n]["attempts"]) == (
            "failed",
            "missing_messages",
            1,
        )
        assert outcomes[n]["error"] == "messages must be a non-empty array"
    assert all(outcomes[n]["status"] == "queued" for n in range(6, 11))


# -- the CLI in a subprocess, against `streamsend emulator` in another --------------------------


@pytest.fixture
def emulator_process(tmp_path: Path) -> Iterator[EmulatorProcess]:
    """`streamsend emulator` on a free port, with a ledger; stopped with SIGTERM (exit 0)."""
    with emulator_subprocess(tmp_path, start_within_s=PATIENCE_S) as emu:
        yield emu
        emu.process.terminate()
        assert emu.process.wait(timeout=PATIENCE_S) == 0


def streamsend_send(
    emu: EmulatorProcess, tmp_path: Path, *args: str, key: str = API_KEY
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            *STREAMSEND,
            "send",
            *("--base-url", emu.base_url, "--from", V1_LIST),
            *("--outcomes", str(tmp_path / "out.ndjson"), "--linger-ms", "20"),
            *("--rate", "unlimited"),  # these tests are about exit codes, not pacing
            *args,
        ],
        capture_output=True,
        env=clean_env(TRACKLY_API_KEY=key),
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )


def test_cli_mixed_input_exits_1(emulator_process: EmulatorProcess, tmp_path: Path) -> None:
    """The CLI over real HTTP: every line's status right, the ledger holding each valid message
    once, exit 1."""
    lines = mixed_campaign()
    source = tmp_path / "campaign.ndjson"
    write_lines(source, lines, crlf_every=2)

    result = streamsend_send(
        emulator_process, tmp_path, "campaign.ndjson", "--max-line-bytes", "1800"
    )

    assert result.returncode == 1, result.stderr.decode()
    assert b"Traceback" not in result.stderr
    check_outcomes(read_outcomes(tmp_path / "out.ndjson"), lines, "campaign.ndjson")
    check_ledger(emulator_process.ledger_records(), lines)


def test_cli_all_queued_exits_0(emulator_process: EmulatorProcess, tmp_path: Path) -> None:
    """The CLI exits 0 when every line is queued, and the service's caps held."""
    lines = [valid(f"+1415550{n:04d}", f"{n} {EMOJI_BODY}"[:1600]) for n in range(900)]
    source = tmp_path / "ok.ndjson"
    write_lines(source, lines)

    result = streamsend_send(emulator_process, tmp_path, "ok.ndjson", "--batch-size", "1000")

    assert result.returncode == 0, result.stderr.decode()
    check_outcomes(read_outcomes(tmp_path / "out.ndjson"), lines, "ok.ndjson")
    check_ledger(emulator_process.ledger_records(), lines)
    stats = emulator_process.stats()
    assert int(stats["largest_request_bytes"]) < 5_000_000
    assert int(stats["largest_request_messages"]) < 900  # split by bytes, not by count


def test_cli_wrong_key_exits_3_and_resume_finishes(
    emulator_process: EmulatorProcess, tmp_path: Path
) -> None:
    """A key the service refuses: exit 3, the first request's lines `failed`, the rest without
    an outcome, nothing in the ledger. `--resume` with the right key then sends every line
    exactly once (the failed ones again, the unsent ones for the first time) and exits 0."""
    lines = [valid(f"+1415551{n:04d}", f"m {n}") for n in range(50)]
    write_lines(tmp_path / "in.ndjson", lines)
    args = ["in.ndjson", "--batch-size", "5", "--concurrency", "1"]

    result = streamsend_send(emulator_process, tmp_path, *args, key=WRONG_KEY)

    assert result.returncode == 3, result.stderr.decode()
    assert b"Traceback" not in result.stderr
    assert WRONG_KEY.encode() not in result.stderr + result.stdout
    outcomes = read_outcomes(tmp_path / "out.ndjson")
    assert [o["line"] for o in outcomes] == [1, 2, 3, 4, 5]
    assert {(o["status"], o["code"]) for o in outcomes} == {("failed", "invalid_api_key")}
    assert emulator_process.ledger_records() == []

    resumed = streamsend_send(emulator_process, tmp_path, *args, "--resume")

    assert resumed.returncode == 0, resumed.stderr.decode()
    check_ledger(emulator_process.ledger_records(), lines)
    final: dict[int, str] = {}
    for outcome in read_outcomes(tmp_path / "out.ndjson"):
        final[outcome["line"]] = outcome["status"]  # the last outcome of a line is its answer
    assert final == dict.fromkeys(range(1, 51), "queued")


def test_cli_emulator_flag(tmp_path: Path) -> None:
    """`send --emulator` rehearses a run against an in-process emulator: exit 0 when all are
    queued, outcomes on stdout by default."""
    lines = [valid(f"+1415552{n:04d}", f"rehearsal {n}") for n in range(30)]
    write_lines(tmp_path / "in.ndjson", lines)
    result = subprocess.run(
        [*STREAMSEND, "send", "--emulator", "in.ndjson"],
        capture_output=True,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    outcomes = [orjson.loads(line) for line in result.stdout.splitlines()]
    check_outcomes(outcomes, lines, "in.ndjson")


def test_slow_stdin_reaches_the_service_while_stdin_is_open(
    emulator_process: EmulatorProcess, tmp_path: Path
) -> None:
    """Lines written one at a time to stdin, which stays open, each reach the service's ledger
    (and their outcome the outcomes file) before the next is written; closing stdin ends the
    run promptly with exit 0."""
    process = subprocess.Popen(
        [
            *STREAMSEND,
            "send",
            *("--base-url", emulator_process.base_url, "--from", V1_LIST),
            *("--outcomes", "out.ndjson", "--linger-ms", "50"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=clean_env(TRACKLY_API_KEY=API_KEY),
        cwd=tmp_path,
    )
    assert process.stdin is not None
    try:
        for n in range(1, 4):
            line = orjson.dumps({"to_msisdn": f"+1415553{n:04d}", "body": f"trickle {n}"})
            if n == 2:  # a line that arrives in two writes is still one line
                process.stdin.write(line[:10])
                process.stdin.flush()
                time.sleep(0.1)
                line = line[10:]
            process.stdin.write(line + b"\n")
            process.stdin.flush()
            deadline = time.monotonic() + PATIENCE_S
            while len(emulator_process.ledger_records()) < n:
                assert process.poll() is None, "send exited while stdin was open"
                assert time.monotonic() < deadline, f"line {n} never reached the service"
                time.sleep(0.02)
            assert emulator_process.ledger_records()[-1]["body"] == f"trickle {n}"
            # Outcomes are flushed once per request, not held until the end of input.
            outcomes_file = tmp_path / "out.ndjson"
            while not outcomes_file.exists() or len(read_outcomes(outcomes_file)) < n:
                assert time.monotonic() < deadline, f"line {n}'s outcome was not flushed"
                time.sleep(0.02)
        assert process.poll() is None  # still running: stdin is open

        process.stdin.close()
        assert process.wait(timeout=PATIENCE_S) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        stderr = process.stderr.read()
        process.stderr.close()
    assert b"Traceback" not in stderr
    outcomes = read_outcomes(tmp_path / "out.ndjson")
    assert [(o["line"], o["source"], o["status"]) for o in outcomes] == [
        (1, "-", "queued"),
        (2, "-", "queued"),
        (3, "-", "queued"),
    ]
