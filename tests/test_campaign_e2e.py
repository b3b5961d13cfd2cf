"""Campaigns end to end: `streamsend send` (a subprocess) against the emulator on loopback, with
the input as people have it: a gzip'd CSV export with quoted fields and embedded newlines, a
template, CSV sent by mistake as NDJSON, an opt-out list, duplicate rows, lines that must not
be sent late, a run killed and resumed, and a job enqueued for workers in Redis. The
emulator's ledger is what the service accepted."""

from __future__ import annotations

import csv
import gzip
import io
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from streamsend._campaign import Campaign
from streamsend._collect import collect
from streamsend._config import load_settings
from streamsend._enqueue import enqueue
from streamsend._redis_job import RedisJob
from streamsend._source import read_inputs
from streamsend._stats import RunStats
from streamsend._types import ExitCode
from streamsend._worker import Worker
from streamsend.emulator import FaultConfig
from streamsend.testing import API_KEY, V1_LIST, V2_LIST, EmulatorFactory, read_ledger
from tests.conftest import (
    RecordingLog,
    clean_env,
    emulator_subprocess,
    ledger_lines,
    ndjson_records,
    outcome_history,
    run_streamsend,
)

RUN_TIMEOUT = 120.0

ROWS: list[dict[str, str]] = [
    {"phone": "+14155550001", "first_name": "Ann", "code": "111", "ref": "a", "city": "Oslo"},
    # A quoted name with a comma, doubled quotes and an embedded newline; braces stay literal.
    {
        "phone": "1 (415) 555-0002",
        "first_name": 'Bo, "B"\nJr {x}',
        "code": "222",
        "ref": "b",
        "city": "Rome",
    },
    {"phone": "+14155550003", "first_name": "", "code": "333", "ref": "c", "city": "Lima"},
    {"phone": "+14155550004", "first_name": "Di", "code": "444", "ref": "d", "city": "Kyiv"},
]
TEMPLATE = "Hi {first_name}, your code is {code} {{not a field}}"


def _csv_gz(path: Path, rows: list[dict[str, str]]) -> Path:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_bytes(gzip.compress(out.getvalue().encode()))
    return path


def _rendered(row: dict[str, str]) -> str:
    return f"Hi {row['first_name']}, your code is {row['code']} {{not a field}}"


async def _send(
    args: list[str], base_url: str, outcomes: Path, *, v2: bool = False
) -> tuple[int, str, list[dict[str, Any]]]:
    code, _, stderr = await run_streamsend(
        [
            "send",
            *args,
            *("--base-url", base_url, "--from", V2_LIST if v2 else V1_LIST),
            *("--api-version", "v2" if v2 else "v1"),
            *("--outcomes", str(outcomes), "--log-level", "warning"),
        ],
        env=clean_env(TRACKLY_API_KEY=API_KEY),
        timeout_s=RUN_TIMEOUT,
    )
    return code, stderr.decode(), ndjson_records(outcomes, skip_torn=False)


async def test_gzipped_csv_with_a_template(tmp_path: Path, emulator: EmulatorFactory) -> None:
    """A .csv.gz export with quoted fields and an embedded newline, and a template: the ledger
    holds exactly the rendered bodies (values as they are, braces escaped), each record has one
    outcome at its first physical line, and the record with an empty field is `invalid`
    `missing_field` naming it, never sent."""
    emu = await emulator()
    campaign = _csv_gz(tmp_path / "export.csv.gz", ROWS)
    outcomes = tmp_path / "outcomes.ndjson"
    code, stderr, records = await _send(
        [str(campaign), "--template", TEMPLATE, "--to-column", "phone"], emu.base_url, outcomes
    )
    assert code == 1, stderr  # one record is invalid
    by_line = {r["line"]: r for r in records}
    # Header is line 1; the second record spans lines 3-4, so the third starts at line 5.
    assert sorted(by_line) == [2, 3, 5, 6]
    assert [by_line[n]["status"] for n in (2, 3, 5, 6)] == ["queued", "queued", "invalid", "queued"]
    assert by_line[5]["code"] == "missing_field"
    assert "first_name" in by_line[5]["error"]
    assert [by_line[n]["ref"] for n in (2, 3, 6)] == ["a", "b", "d"]
    ledger = {r["to"]: r["body"] for r in read_ledger(emu.ledger_path)}
    assert ledger == {
        "+14155550001": _rendered(ROWS[0]),
        "+14155550002": _rendered(ROWS[1]),
        "+14155550004": _rendered(ROWS[3]),
    }


async def test_v2_puts_other_columns_in_custom_fields(
    tmp_path: Path, emulator: EmulatorFactory
) -> None:
    """With v2, the columns that aren't the recipient, body or ref reach the service as
    contact_data.custom_fields."""
    emu = await emulator()
    rows = [{"to": "+14155550001", "body": "hello", "city": "Oslo", "tier": "gold"}]
    campaign = _csv_gz(tmp_path / "export.csv.gz", rows)
    code, stderr, records = await _send(
        [str(campaign)], emu.base_url, tmp_path / "outcomes.ndjson", v2=True
    )
    assert code == 0, stderr
    assert [r["status"] for r in records] == ["queued"]
    (accepted,) = read_ledger(emu.ledger_path)
    assert accepted["body"] == "hello"
    assert accepted["contact_data"] == {"custom_fields": {"city": "Oslo", "tier": "gold"}}


async def test_csv_sent_as_ndjson_is_refused_before_sending(
    tmp_path: Path, emulator: EmulatorFactory
) -> None:
    """A CSV file named .ndjson is refused with exit 2 and a hint naming CSV and --format csv,
    after nothing was sent (the ledger is empty and no outcome is written)."""
    emu = await emulator()
    ndjson = tmp_path / "ok.ndjson"
    ndjson.write_bytes(orjson.dumps({"to": "+14155550001", "body": "x"}) + b"\n")
    mislabelled = tmp_path / "export.ndjson"
    mislabelled.write_bytes(b"phone,body\n+14155550002,y\n")
    outcomes = tmp_path / "outcomes.ndjson"
    code, stderr, _ = await run_streamsend_refusal(
        [str(ndjson), str(mislabelled)], emu.base_url, outcomes
    )
    assert code == 2
    assert "looks like CSV" in stderr
    assert "--format csv" in stderr
    assert "Traceback" not in stderr
    assert read_ledger(emu.ledger_path) == []
    assert not outcomes.exists() or outcomes.read_bytes() == b""


async def run_streamsend_refusal(
    inputs: list[str], base_url: str, outcomes: Path
) -> tuple[int, str, bytes]:
    code, stdout, stderr = await run_streamsend(
        ["send", *inputs, "--base-url", base_url, "--from", V1_LIST, "--outcomes", str(outcomes)],
        env=clean_env(TRACKLY_API_KEY=API_KEY),
        timeout_s=RUN_TIMEOUT,
    )
    return code, stderr.decode(), stdout


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


async def test_a_whole_campaign(tmp_path: Path, emulator: EmulatorFactory) -> None:
    """A gzip'd CSV with quoted fields and an embedded newline, a template, an opt-out list in
    three formats, duplicate rows and lines past their send_before: the ledger holds exactly
    the rendered messages that should go, once each, and never a suppressed, duplicate or
    expired line; every line has one outcome with the right status; an expired line makes the
    exit code 1."""
    emu = await emulator()
    rows = [
        {"phone": "+14155550001", "name": "Ann", "send_before": ""},  # 2: queued
        {"phone": "+14155550002", "name": 'Bo "B"\nJr', "send_before": ""},  # 3-4: queued
        {"phone": "+14155550001", "name": "Ann", "send_before": ""},  # 5: duplicate of 2
        {"phone": "1 415 555 0003", "name": "Cy", "send_before": ""},  # 6: suppressed (txt)
        {"phone": "+14155550004", "name": "Di", "send_before": ""},  # 7: suppressed (csv.gz)
        {"phone": "+14155550005", "name": "Ed", "send_before": ""},  # 8: suppressed (ndjson)
        {"phone": "+14155550006", "name": "Fa", "send_before": "2001-01-01T00:00:00Z"},  # 9
        {"phone": "+14155550007", "name": "Ga", "send_before": "2999-01-01T00:00:00+02:00"},
        {"phone": "+14155550001", "name": "Ann!", "send_before": ""},  # 11: other body: goes
    ]
    campaign = _csv_gz(tmp_path / "export.csv.gz", rows)
    optout = [
        _write(tmp_path / "stop.txt", b"# STOP replies\n+14155550003\n"),
        _write(tmp_path / "crm.csv.gz", gzip.compress(b"id,mobile\n7,+1 (415) 555-0004\n")),
        _write(tmp_path / "unsub.ndjson", b'{"phone":"14155550005"}\n'),
    ]
    outcomes = tmp_path / "outcomes.ndjson"
    suppress = [flag for path in optout for flag in ("--suppress", path)]
    code, stderr, records = await _send(
        [str(campaign), "--template", "Hi {name}, see you", *suppress], emu.base_url, outcomes
    )
    assert code == 1, stderr
    by_line = {r["line"]: r for r in records}
    assert len(records) == len(by_line) == 9  # one outcome per record
    status = {n: r["status"] for n, r in by_line.items()}
    assert status == {
        2: "queued",
        3: "queued",
        5: "duplicate",
        6: "suppressed",
        7: "suppressed",
        8: "suppressed",
        9: "expired",
        10: "queued",
        11: "queued",
    }
    assert by_line[5]["duplicate_of"] == 2
    ledger = sorted((r["to"], r["body"]) for r in read_ledger(emu.ledger_path))
    assert ledger == [
        ("+14155550001", "Hi Ann!, see you"),
        ("+14155550001", "Hi Ann, see you"),
        ("+14155550002", 'Hi Bo "B"\nJr, see you'),
        ("+14155550007", "Hi Ga, see you"),
    ]


async def test_expired_waiting_for_a_slow_service(
    tmp_path: Path, emulator: EmulatorFactory
) -> None:
    """One request at a time to a service taking 0.6 s a request, --expire-after 1s: the first
    lines go, the lines still waiting after a second are `expired` just before their attempt,
    and the ledger holds exactly the queued ones."""
    emu = await emulator(faults=FaultConfig(latency_ms=600))
    lines = [orjson.dumps({"to": f"+1415555{n:04d}", "body": f"m{n}"}) for n in range(1, 9)]
    campaign = tmp_path / "c.ndjson"
    campaign.write_bytes(b"\n".join(lines) + b"\n")
    code, stderr, records = await _send(
        [str(campaign), "--expire-after", "1s", "--batch-size", "1", "--concurrency", "1"],
        emu.base_url,
        tmp_path / "outcomes.ndjson",
    )
    assert code == 1, stderr
    status = {r["line"]: r["status"] for r in records}
    assert sorted(status) == list(range(1, 9))
    assert status[1] == "queued"
    assert status[8] == "expired"  # it would have left after 4 s at the earliest
    assert set(status.values()) == {"queued", "expired"}
    queued = sorted(f"m{n}" for n, s in status.items() if s == "queued")
    assert sorted(r["body"] for r in read_ledger(emu.ledger_path)) == queued


async def test_expired_before_a_retry(tmp_path: Path, emulator: EmulatorFactory) -> None:
    """A service answering 429 with Retry-After 1.5 s: after the pause, a line with
    --expire-after 1s is `expired` (after its one attempt), never sent."""
    emu = await emulator(faults=FaultConfig(rate_429=1.0, retry_after_s=1.5))
    campaign = tmp_path / "c.ndjson"
    campaign.write_bytes(orjson.dumps({"to": "+14155550001", "body": "code 123"}) + b"\n")
    code, stderr, records = await _send(
        [str(campaign), "--expire-after", "1s"], emu.base_url, tmp_path / "outcomes.ndjson"
    )
    assert code == 1, stderr
    assert [(r["status"], r["attempts"]) for r in records] == [("expired", 1)]
    assert read_ledger(emu.ledger_path) == []


def test_dedupe_holds_across_resume_after_sigkill(tmp_path: Path) -> None:
    """Lines 1-600 are distinct, lines 601-1200 repeat them. A run is SIGKILLed part way
    through the first half, then resumed: every copy ends `duplicate` of its first line, no
    message reaches the service twice, and every line has exactly one final outcome."""
    source = tmp_path / "in.ndjson"
    source.write_bytes(
        b"".join(
            orjson.dumps({"to": f"+1415555{n % 600:04d}", "body": f"m{(n - 1) % 600 + 1}"}) + b"\n"
            for n in range(1, 1201)
        )
    )
    outcomes = tmp_path / "outcomes.ndjson"
    with emulator_subprocess(tmp_path, "--latency-ms", "30") as emu:
        env = clean_env(TRACKLY_API_KEY=API_KEY)
        args = [
            *(sys.executable, "-m", "streamsend", "send", str(source)),
            *("--base-url", emu.base_url, "--from", V1_LIST, "--outcomes", str(outcomes)),
            *("--batch-size", "20", "--concurrency", "2", "--linger-ms", "5"),
            *("--log-level", "warning"),
        ]
        first = subprocess.Popen(
            args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while first.poll() is None and len(ledger_lines(emu.ledger, skip_torn=True)) < 200:
            assert time.monotonic() < deadline, "the moment to kill never came"
            time.sleep(0.005)
        first.kill()
        first.wait()
        killed_at = len(ledger_lines(emu.ledger, skip_torn=True))
        assert killed_at < 600, "the first run got through every first copy before the kill"
        resumed = subprocess.run(
            [*args, "--resume"], check=False, env=env, capture_output=True, timeout=120
        )
        assert resumed.returncode in (0, 1), resumed.stderr.decode()[-2000:]
        ledger = ledger_lines(emu.ledger, skip_torn=False)
    assert len(ledger) == len(set(ledger)), "a message reached the service twice"
    history = outcome_history(outcomes, skip_torn=True)
    assert sorted(history) == list(range(1, 1201))
    for line, seen in history.items():
        final = [o for o in seen if o["status"] != "failed"]
        assert len(final) == 1, (line, seen)
        if line > 600:
            assert final[0]["status"] == "duplicate", (line, seen)
            assert final[0]["duplicate_of"] == line - 600
        else:
            assert final[0]["status"] in ("queued", "unknown"), (line, seen)


async def test_enqueue_applies_the_campaign_stage(
    job: RedisJob, tmp_path: Path, emulator: EmulatorFactory
) -> None:
    """`enqueue` renders the template, and suppressed and duplicate lines get their outcomes in
    the job at once: a worker sends only the rest, and the service holds only those."""
    sender = f"pn_{uuid.uuid4().hex[:10]}"
    emu = await emulator(v1_lists=(sender,))
    rows = [
        {"phone": "+14155550001", "name": "Ann"},
        {"phone": "+14155550002", "name": "Bo"},  # suppressed
        {"phone": "+14155550001", "name": "Ann"},  # duplicate of line 2
        {"phone": "+14155550003", "name": "Cy"},
    ]
    campaign = _csv_gz(tmp_path / "export.csv.gz", rows)
    optout = _write(tmp_path / "stop.txt", b"+14155550002\n")
    settings = load_settings(
        env={},
        cli={
            "sender": sender,
            "base_url": emu.base_url,
            "template": "Hi {name}",
            "suppress": [optout],
        },
    )
    loaded = Campaign.load(settings)
    source = read_inputs([str(campaign)], columns=loaded.columns)
    result = await enqueue(settings, job, source, campaign=loaded)
    assert (result.added, result.invalid) == (2, 2)
    worker = Worker(settings, job, api_key=API_KEY, log=RecordingLog(), stats=RunStats())
    assert await worker.run() == ExitCode.OK
    out = io.BytesIO()
    await collect(job, out, follow=False)
    status = {r["line"]: r["status"] for r in map(orjson.loads, out.getvalue().splitlines())}
    assert status == {2: "queued", 3: "suppressed", 4: "duplicate", 5: "queued"}
    ledger = sorted((r["to"], r["body"]) for r in read_ledger(emu.ledger_path))
    assert ledger == [("+14155550001", "Hi Ann"), ("+14155550003", "Hi Cy")]
