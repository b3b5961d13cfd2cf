"""Campaigns end to end: `streamsend send` (a subprocess) against the emulator on loopback, with
the input as people have it: a gzip'd CSV export with quoted fields and embedded newlines, a
template, CSV sent by mistake as NDJSON. The emulator's ledger is what the service accepted."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path
from typing import Any

import orjson

from streamsend.testing import API_KEY, V1_LIST, V2_LIST, EmulatorFactory, read_ledger
from tests.conftest import clean_env, ndjson_records, run_streamsend

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
