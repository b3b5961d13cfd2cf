"""The offline campaign check: per-line records, the summary, and the `check` command's exits."""

from __future__ import annotations

import io
import sys
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from streamsend._check import CheckSummary, check_inputs, check_main
from streamsend._types import ApiVersion

E164 = "+14155551234"


def _write(path: Path, *lines: str) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def _records(data: bytes) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in data.splitlines()]


async def _check(
    inputs: list[str],
    *,
    api_version: ApiVersion = "v1",
    default_sender: str | None = "pn_abc123",
    max_line_bytes: int = 65536,
) -> tuple[list[dict[str, object]], CheckSummary]:
    out = io.BytesIO()
    summary = await check_inputs(
        inputs,
        api_version=api_version,
        default_sender=default_sender,
        max_line_bytes=max_line_bytes,
        out=out,
    )
    return _records(out.getvalue()), summary


# --- check_inputs --------------------------------------------------------------------------------


async def test_one_record_per_non_blank_line(tmp_path: Path) -> None:
    """Valid and invalid lines each get one record in order; blank and whitespace-only lines
    get none but keep the line numbers right."""
    path = _write(
        tmp_path / "c.ndjson",
        f'{{"to_msisdn": "{E164}", "body": "Hello", "ref": 7}}',
        "",
        "  \t ",
        '{"to_msisdn": "1 (415) 555-9876", "body": "Grüße aus München"}',
        '{"to_msisdn": "555", "body": "x", "ref": "r-5"}',
        "not json",
        '{"to_msisdn": "+447700900123", "body": "On our way 🚌"}',
    )
    records, summary = await _check([path])

    assert records == [
        {
            "line": 1,
            "source": path,
            "status": "valid",
            "to_msisdn": E164,
            "segments": 1,
            "encoding": "gsm7",
            "ref": 7,
        },
        {
            "line": 4,
            "source": path,
            "status": "valid",
            "to_msisdn": "+14155559876",  # normalised as the service would
            "segments": 1,
            "encoding": "gsm7",  # ü and ß are in the GSM-7 table
        },
        {
            "line": 5,
            "source": path,
            "status": "invalid",
            "code": "invalid_phone",
            "error": "not a phone number the service accepts: '555'",
            "ref": "r-5",
        },
        {
            "line": 6,
            "source": path,
            "status": "invalid",
            "code": "invalid_json",
            "error": records[3]["error"],
        },
        {
            "line": 7,
            "source": path,
            "status": "valid",
            "to_msisdn": "+447700900123",
            "segments": 1,
            "encoding": "ucs2",
        },
    ]
    assert str(records[3]["error"]).startswith("the line is not valid JSON")
    assert summary.lines == 5
    assert summary.valid == 3
    assert summary.invalid_by_code == {"invalid_phone": 1, "invalid_json": 1}
    assert summary.invalid == 2
    assert (summary.gsm7, summary.ucs2) == (2, 1)


async def test_segments_add_up_over_the_valid_messages(tmp_path: Path) -> None:
    """Total segments are the sum over valid lines; invalid lines cost nothing."""
    path = _write(
        tmp_path / "c.ndjson",
        f'{{"to_msisdn": "{E164}", "body": "{"a" * 161}"}}',  # 2 segments
        f'{{"to_msisdn": "+14155550002", "body": "{"€" * 81}"}}',  # 162 units: 2
        f'{{"to_msisdn": "+14155550003", "body": "{"á" * 71}"}}',  # UCS-2, 71 units: 2
        f'{{"to_msisdn": "+14155550004", "body": "{"😀" * 35}"}}',  # UCS-2, 70 units: 1
        f'{{"to_msisdn": "nope", "body": "{"a" * 1000}"}}',  # invalid: not counted
    )
    records, summary = await _check([path])
    assert [r.get("segments") for r in records] == [2, 2, 2, 1, None]
    assert summary.segments == 7
    assert (summary.gsm7, summary.ucs2) == (2, 2)


async def test_too_long_lines_are_invalid(tmp_path: Path) -> None:
    """A line over --max-line-bytes is `line_too_long`, and the lines around it still check."""
    path = _write(
        tmp_path / "c.ndjson",
        f'{{"to_msisdn": "{E164}", "body": "short"}}',
        f'{{"to_msisdn": "{E164}", "body": "{"x" * 200}"}}',
        f'{{"to_msisdn": "{E164}", "body": "short"}}',
    )
    records, summary = await _check([path], max_line_bytes=100)
    assert [r["status"] for r in records] == ["valid", "invalid", "valid"]
    assert records[1]["code"] == "line_too_long"
    assert "100 bytes" in str(records[1]["error"])
    assert summary.invalid_by_code == {"line_too_long": 1}


async def test_duplicate_recipients_are_counted_after_normalising(tmp_path: Path) -> None:
    """The same number written three ways is one recipient with two extra messages."""
    path = _write(
        tmp_path / "c.ndjson",
        f'{{"to_msisdn": "{E164}", "body": "one"}}',
        '{"to_msisdn": "14155551234", "body": "two"}',
        '{"to_msisdn": "+1 (415) 555-1234", "body": "three"}',
        '{"to_msisdn": "+447700900123", "body": "once"}',
        '{"to_msisdn": "+447700900999", "body": "a"}',
        '{"to_msisdn": "+447700900999", "body": "b"}',
    )
    _, summary = await _check([path])
    assert summary.duplicate_recipients == 2
    assert summary.duplicate_messages == 3
    assert summary.duplicate_examples == (E164, "+447700900999")  # most extra messages first


async def test_several_inputs_number_their_own_lines(tmp_path: Path) -> None:
    """Each input's records name it and number lines from 1; duplicates span inputs."""
    first = _write(tmp_path / "a.ndjson", f'{{"to_msisdn": "{E164}", "body": "a"}}')
    second = _write(tmp_path / "b.ndjson", "", f'{{"to_msisdn": "{E164}", "body": "b"}}')
    records, summary = await _check([first, second])
    assert [(r["source"], r["line"]) for r in records] == [(first, 1), (second, 2)]
    assert summary.duplicate_recipients == 1


async def test_v1_without_sender_checks_everything_else(tmp_path: Path) -> None:
    """v1 without --from: lines are valid unless something else is wrong; the placeholder
    sender appears nowhere in the records, and the summary says the sender wasn't checked."""
    path = _write(tmp_path / "c.ndjson", f'{{"to_msisdn": "{E164}", "body": "hi"}}')
    records, summary = await _check([path], default_sender=None)
    assert records[0]["status"] == "valid"
    assert b"pn_check" not in orjson.dumps(records)
    assert not summary.sender_checked


async def test_v2_without_sender_reports_missing_and_malformed_list_numbers(
    tmp_path: Path,
) -> None:
    """v2 without --from: each line needs its own list_number, and a bad one is reported."""
    path = _write(
        tmp_path / "c.ndjson",
        f'{{"to": "{E164}", "body": "no sender"}}',
        f'{{"to": "{E164}", "body": "bad sender", "list_number": "pn_abc"}}',
        f'{{"to": "{E164}", "body": "good", "list_number": "+18005551000"}}',
    )
    records, summary = await _check([path], api_version="v2", default_sender=None)
    assert [r.get("code") for r in records] == ["missing_from", "invalid_list_number", None]
    assert summary.valid == 1
    assert summary.sender_checked


def test_estimated_cost_is_exact_decimal() -> None:
    """Cost is segments × price in Decimal: no float rounding on money."""
    summary = CheckSummary(
        valid=3,
        invalid_by_code={},
        segments=3,
        gsm7=3,
        ucs2=0,
        duplicate_recipients=0,
        duplicate_messages=0,
    )
    assert summary.estimated_cost(Decimal("0.1")) == Decimal("0.3")
    assert summary.estimated_cost("0.0075") == Decimal("0.0225")
    assert summary.to_dict(Decimal("0.0075"))["estimated_cost"] == "0.0225"


# --- check_main ----------------------------------------------------------------------------------


@pytest.fixture
def campaign(tmp_path: Path) -> str:
    return _write(
        tmp_path / "campaign.ndjson",
        f'{{"to_msisdn": "{E164}", "body": "{"a" * 161}"}}',
        '{"to_msisdn": "+447700900123", "body": "Hi"}',
    )


def test_main_exit_0_when_every_line_is_valid(
    campaign: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """All valid: exit 0, records in --output, the human summary on stderr, the JSON summary
    with the estimated cost in --summary-json."""
    output, summary_json = tmp_path / "out.ndjson", tmp_path / "summary.json"
    code = check_main(
        [
            campaign,
            "--from",
            "pn_abc123",
            "--price-per-segment",
            "0.0075",
            "--output",
            str(output),
            "--summary-json",
            str(summary_json),
        ]
    )
    assert code == 0
    assert [r["status"] for r in _records(output.read_bytes())] == ["valid", "valid"]
    summary = orjson.loads(summary_json.read_bytes())
    assert summary["segments"] == 3
    assert summary["estimated_cost"] == "0.0225"
    err = capsys.readouterr().err
    assert "checked 2 lines: 2 valid, 0 invalid" in err
    assert "estimated cost: 3 segments at 0.0075 = 0.0225" in err


def test_main_exit_1_when_some_lines_are_invalid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Some invalid: exit 1, and the summary lists the invalid codes."""
    path = _write(tmp_path / "c.ndjson", f'{{"to_msisdn": "{E164}", "body": ""}}')
    code = check_main([path, "--output", str(tmp_path / "out.ndjson")])
    assert code == 1
    assert "invalid: missing_body 1" in capsys.readouterr().err


def test_main_writes_records_to_stdout_by_default(
    campaign: str, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """Without --output, the records go to stdout and only the summary to stderr."""
    assert check_main([campaign]) == 0
    captured = capsysbinary.readouterr()
    assert [r["line"] for r in _records(captured.out)] == [1, 2]
    assert b"checked 2 lines" in captured.err
    assert b'"status"' not in captured.err


def test_main_reads_stdin_by_default(
    campaign: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No INPUT reads stdin, recorded as source "-"."""
    with open(campaign, "rb") as raw:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(raw))
        output = tmp_path / "out.ndjson"
        assert check_main(["--output", str(output)]) == 0
    assert {r["source"] for r in _records(output.read_bytes())} == {"-"}


def test_main_exit_2_for_a_missing_input(
    campaign: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unreadable input: exit 2 with one clear line, no traceback, and no records written."""
    output = tmp_path / "out.ndjson"
    missing = str(tmp_path / "missing.ndjson")
    code = check_main([campaign, missing, "--output", str(output)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"streamsend check: error: can't open input {missing!r}: no such file"
    ]
    assert not output.exists()


def test_main_exit_2_for_a_directory_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A directory given as input is refused up front."""
    assert check_main([str(tmp_path)]) == 2
    assert "not a readable file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--api-version", "v2", "--from", "pn_abc"], "--from: `list_number` must be E.164"),
        (["--price-per-segment", "cheap"], "not a number"),
        (["--price-per-segment", "-1"], "must be a number of 0 or more"),
        (["--max-line-bytes", "0"], "out of range"),
        (["--api-version", "v3"], "invalid choice"),
    ],
)
def test_main_exit_2_for_bad_usage(
    campaign: str, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad options: exit 2 and a message naming the problem."""
    assert check_main([campaign, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_main_exit_2_for_an_unwritable_output(
    campaign: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An --output that can't be created is a usage error, found before checking."""
    code = check_main([campaign, "--output", str(tmp_path / "no-such-dir" / "out.ndjson")])
    assert code == 2
    assert "can't write --output" in capsys.readouterr().err


def test_main_help_explains_exits_and_the_sender(capsys: pytest.CaptureFixture[str]) -> None:
    """--help exits 0 and explains the exit statuses and what happens without --from."""
    assert check_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: streamsend check")
    assert "Exit status: 0 every line is valid, 1 some lines are invalid, 2" in out
    assert "Without it, v1 lines are" in out


def test_main_says_how_long_the_campaign_takes_at_the_rate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The summary gives the duration at --rate (default 17000/min) for the busiest sending
    number, since each number is paced on its own; `unlimited` says it isn't paced."""
    lines = [f'{{"to_msisdn": "+1415555{n:04d}", "body": "hi"}}' for n in range(3000)]
    lines += ['{"to_msisdn": "+14155550000", "body": "hi", "from_phone_number_id": "pn_b"}']
    path = _write(tmp_path / "c.ndjson", *lines)
    output, summary_json = str(tmp_path / "out.ndjson"), tmp_path / "summary.json"
    assert check_main([path, "--from", "pn_a", "--output", output]) == 0
    assert "duration at 17000/min per sending number: about 11 s (3,000 messages" in (
        capsys.readouterr().err
    )
    args = [path, "--from", "pn_a", "--output", output, "--summary-json", str(summary_json)]
    assert check_main([*args, "--rate", "100/min"]) == 0
    assert "duration at 100/min per sending number: about 30 min" in capsys.readouterr().err
    summary = orjson.loads(summary_json.read_bytes())
    assert (summary["rate"], summary["estimated_seconds"]) == ("100/min", 1800.0)
    assert check_main([*args, "--rate", "unlimited"]) == 0
    assert "rate unlimited: not paced" in capsys.readouterr().err
    assert check_main([*args, "--rate", "10000/s"]) == 0
    assert "per sending number: under a second (3,000 messages" in capsys.readouterr().err


@pytest.mark.parametrize(("rate", "says"), [("600", "600/min or 600/s"), ("fast", "fast")])
def test_main_refuses_a_rate_without_a_unit(
    campaign: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], rate: str, says: str
) -> None:
    """--rate is read as `send` reads it: a bare number or nonsense is exit 2, one line."""
    assert check_main([campaign, "--rate", rate, "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert says in err
    assert err.count("\n") == 1
