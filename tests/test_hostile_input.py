"""Hostile input: every bad line gets an `invalid` outcome with a precise code, and the run goes on.

The corpus lives in tests/hostile/: one file per case, holding one physical input line with its
line ending, and expected.toml naming the outcome each case must get. Each case is checked on its
own through the source and the validator, then the whole corpus goes through `streamsend send
--emulator` in a subprocess, with a good line after every case (so a bad line can't take its
neighbour down with it) and a 20 MiB line that must be refused without ever being held in memory.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamsend._models import Message, Outcome, Status
from streamsend._source import split_lines
from streamsend._validate import Validator
from streamsend.testing import V1_LIST
from tests.conftest import clean_env

CORPUS = Path(__file__).parent / "hostile"
CASES: dict[str, str] = tomllib.loads((CORPUS / "expected.toml").read_text())["cases"]
FIRST_LINE_CASE = "bom-first-line"  # a BOM is tolerated only where a file starts
HUGE_LINE_BYTES = 20 * 1024 * 1024
MAX_LINE_BYTES = 64 * 1024  # the default --max-line-bytes


def _case_bytes(name: str) -> bytes:
    data = (CORPUS / f"{name}.line").read_bytes()
    return data if data.endswith(b"\n") else data + b"\n"


def _good_line(n: int, note: str) -> bytes:
    return orjson.dumps(
        {"to_msisdn": f"+1415555{n:04d}", "body": f"good line {n} after {note}", "ref": f"g{n}"}
    ) + (b"\n")


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._file = io.BytesIO(data)

    async def read(self, n: int) -> bytes:
        return self._file.read(n)


async def _lines(data: bytes) -> list[bytes | None]:
    lines: list[bytes | None] = []
    async for block in split_lines("corpus", _BytesReader(data), MAX_LINE_BYTES):
        lines.extend(block.lines)
    return lines


def test_corpus_has_a_file_for_every_case_and_a_case_for_every_file() -> None:
    """The manifest and the files agree, and the corpus holds at least 25 hostile lines."""
    files = {path.stem for path in CORPUS.glob("*.line")}
    assert files == set(CASES)
    assert sum(1 for expected in CASES.values() if expected != "queued") >= 25


@pytest.mark.parametrize("name", sorted(CASES))
async def test_each_case_gets_its_expected_outcome(name: str) -> None:
    """Each corpus line, read as the CLI reads it and validated, gets its expected outcome."""
    expected = CASES[name]
    # Every case but the BOM one sits on line 2, behind a good line, as in a real file.
    data = (
        _case_bytes(name) if name == FIRST_LINE_CASE else _good_line(1, "start") + _case_bytes(name)
    )
    lines = await _lines(data)
    line_no = 1 if name == FIRST_LINE_CASE else 2
    assert len(lines) == line_no
    raw = lines[line_no - 1]
    assert raw is not None
    if expected == "blank":
        assert raw.strip() == b""  # the pipeline skips such a line: no message, no outcome
        return
    result = Validator(api_version="v1", default_sender=V1_LIST).validate("corpus", line_no, raw)
    if expected == "queued":
        assert isinstance(result, Message), result
    else:
        assert isinstance(result, Outcome)
        assert (result.status, result.code) == (Status.INVALID, expected), result.error


# -- the whole corpus through the CLI ----------------------------------------------------------

# Runs the CLI in this interpreter and reports its peak RSS (KiB on Linux) on the last stderr line.
_MEASURED_MAIN = """
import resource, sys
from streamsend._cli import main
code = main(sys.argv[1:])
print("maxrss_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def _run_send(input_path: Path, outcomes: Path) -> tuple[int, str, int]:
    """`streamsend send --emulator`; returns (exit code, stderr, peak RSS in KiB)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _MEASURED_MAIN,
            "send",
            "--emulator",
            str(input_path),
            "--outcomes",
            str(outcomes),
            "--log-format",
            "json",
            "--fsync",
            "off",
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("maxrss_kib "), proc.stderr[-2000:]
    return proc.returncode, proc.stderr, int(last.split()[1])


def _write_corpus(path: Path, *, huge_line: bool) -> dict[int, str]:
    """Write the corpus as one input; return the expected outcome of each line number."""
    expected: dict[int, str] = {}
    with path.open("wb") as out:
        line_no = 0

        def put(data: bytes, outcome: str) -> None:
            nonlocal line_no
            out.write(data)
            line_no += 1
            expected[line_no] = outcome

        put(_case_bytes(FIRST_LINE_CASE), CASES[FIRST_LINE_CASE])
        for name, outcome in sorted(CASES.items()):
            if name != FIRST_LINE_CASE:
                put(_case_bytes(name), outcome)
            put(_good_line(line_no + 1, name), "queued")
        if huge_line:
            # A 20 MiB JSON-looking line: it must be refused unread, not parsed.
            out.write(b'{"to_msisdn":"+14155550199","body":"')
            chunk = b"x" * (1024 * 1024)
            for _ in range(HUGE_LINE_BYTES // len(chunk)):
                out.write(chunk)
            put(b'"}\n', "line_too_long")
            put(_good_line(line_no + 1, "the huge line"), "queued")
    return expected


def _read_outcomes(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def corpus_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The corpus sent twice through the CLI: alone, and with a 20 MiB line (for memory)."""
    runs: dict[str, Any] = {}
    for label, huge in (("plain", False), ("huge", True)):
        directory = tmp_path_factory.mktemp(f"hostile-{label}")
        input_path = directory / "corpus.ndjson"
        expected = _write_corpus(input_path, huge_line=huge)
        outcomes = directory / "outcomes.ndjson"
        code, stderr, maxrss = _run_send(input_path, outcomes)
        runs[label] = {
            "expected": expected,
            "code": code,
            "stderr": stderr,
            "maxrss_kib": maxrss,
            "outcomes": _read_outcomes(outcomes),
        }
    return runs


def test_corpus_run_exits_1_without_a_traceback(corpus_runs: dict[str, Any]) -> None:
    """Bad lines make the run finish with exit 1 (not all queued), and no traceback is printed."""
    for run in corpus_runs.values():
        assert run["code"] == 1, run["stderr"][-3000:]
        assert "Traceback" not in run["stderr"]


def test_corpus_run_gives_each_line_its_expected_outcome(corpus_runs: dict[str, Any]) -> None:
    """Every non-blank line has exactly one outcome: its invalid code, or queued; blank lines none.

    The good line behind each case is queued with its own ref, so no bad line disturbed the
    framing or the numbering of the next one.
    """
    run = corpus_runs["huge"]
    by_line: dict[int, dict[str, Any]] = {}
    for outcome in run["outcomes"]:
        assert outcome["line"] not in by_line, f"two outcomes for line {outcome['line']}"
        by_line[outcome["line"]] = outcome
    expected: dict[int, str] = run["expected"]
    assert set(by_line) == {n for n, e in expected.items() if e != "blank"}
    wrong = {}
    for line_no, outcome in sorted(by_line.items()):
        want = expected[line_no]
        got = outcome["status"] if outcome["status"] != "invalid" else outcome["code"]
        if got != want:
            wrong[line_no] = (want, got, outcome.get("error"))
    assert wrong == {}
    good = [o for o in by_line.values() if isinstance(o.get("ref"), str)]
    assert all(o["ref"] == f"g{o['line']}" and o["status"] == "queued" for o in good)
    assert len(good) == len(CASES) + 1  # one after each case, one after the huge line


def test_a_20_mib_line_is_refused_without_being_held(corpus_runs: dict[str, Any]) -> None:
    """Reading a 20 MiB line costs far less than 20 MiB of memory: it is skipped, not buffered.

    The bound is generous (a third of the line) so allocator noise can't fail it; holding the
    line whole even once would cost at least the full 20 MiB.
    """
    grown_kib = corpus_runs["huge"]["maxrss_kib"] - corpus_runs["plain"]["maxrss_kib"]
    assert grown_kib < HUGE_LINE_BYTES // 1024 // 3


def test_ref_round_trips_exactly() -> None:
    """The caller's `ref` comes back in the outcome as given, whatever JSON number it is."""
    validator = Validator(api_version="v1", default_sender=V1_LIST)
    raw = _case_bytes("ref-beyond-64-bit").rstrip(b"\n")
    message = validator.validate("corpus", 1, raw)
    assert isinstance(message, Message)
    assert message.ref_json == b"18446744073709551616"
