"""Crash safety: `streamsend send` killed with SIGKILL at any moment, then `--resume`d to the end.

The sender and the emulator are separate processes; the emulator keeps one ledger of every
message it accepted across all the sender's runs, and adds latency so that requests are in flight
when the kill lands. Over the union of the runs:

- every line ends with exactly one final outcome (queued, rejected, invalid) or `unknown`; the
  only outcome a later run may follow is `failed` (resent on resume), never a final one;
- the ledger holds no message twice, and each `queued` line exactly once: a request that may
  have been accepted when the sender died is reported `unknown` (`in_flight_at_crash`) on
  resume, not sent again.

Every line's body is unique (`m<line>`), which is how a ledger record is traced to its line.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import orjson
import pytest

from streamsend._journal import Decision, FileJournal, ResumeState
from streamsend._models import Message
from streamsend._outcomes import FileSink
from streamsend._validate import Validator
from streamsend.testing import API_KEY, V1_LIST
from tests.conftest import (
    clean_env,
    emulator_subprocess,
    ledger_lines,
    outcome_history,
    write_numbered_input,
)

LINES = 12_000
INVALID_EVERY = 1000
FINAL = {"queued", "rejected", "invalid"}


class Sending:
    """`streamsend send` runs of one campaign: same input, same --outcomes, resumed in turn."""

    def __init__(
        self,
        tmp_path: Path,
        base_url: str,
        *,
        stdin: bool = False,
        extra_env: dict[str, str] | None = None,
        flags: tuple[str, ...] = (),
    ) -> None:
        self.input = tmp_path / "input.ndjson"
        self.outcomes = tmp_path / "outcomes.ndjson"
        self.tmp_path = tmp_path
        self.stdin = stdin
        self.runs = 0
        self.flags = flags
        self.env = clean_env(
            TRACKLY_API_KEY=API_KEY,
            STREAMSEND_BASE_URL=base_url,
            STREAMSEND_FROM=V1_LIST,
            STREAMSEND_BATCH_SIZE="100",
            STREAMSEND_CONCURRENCY="4",
            STREAMSEND_LINGER_MS="20",
            STREAMSEND_BACKOFF_BASE="0.01",
            STREAMSEND_BACKOFF_CAP="0.05",
            STREAMSEND_LOG_FORMAT="json",
            STREAMSEND_RATE="unlimited",  # these tests are about crashes, not pacing
            **(extra_env or {}),
        )

    def start(self, *, resume: bool) -> tuple[subprocess.Popen[bytes], threading.Thread | None]:
        self.runs += 1
        args = [
            sys.executable,
            "-m",
            "streamsend",
            "send",
            "-" if self.stdin else str(self.input),
            "--outcomes",
            str(self.outcomes),
            *self.flags,
            *(["--resume"] if resume else []),
        ]
        stderr = (self.tmp_path / f"send-{self.runs}.log").open("wb")
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if self.stdin else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=self.env,
        )
        stderr.close()
        feeder = None
        if self.stdin:
            # The same stream replayed on every run, as a pipe (not a seekable file).
            assert proc.stdin is not None
            feeder = threading.Thread(target=_feed, args=(self.input, proc.stdin), daemon=True)
            feeder.start()
        return proc, feeder

    def run_killed(self, *, resume: bool, when: Callable[[], bool]) -> None:
        """Start a run and SIGKILL it as soon as `when()` holds (or when it ends by itself)."""
        proc, feeder = self.start(resume=resume)
        deadline = time.monotonic() + 60
        while proc.poll() is None and not when():
            assert time.monotonic() < deadline, "the moment to kill never came"
            time.sleep(0.005)
        proc.kill()
        proc.wait()
        if feeder is not None:
            feeder.join(10)

    def run_to_the_end(self, *, max_runs: int = 8) -> list[int]:
        """Resume until a run ends by itself with no line's last outcome `failed`."""
        codes = []
        for _ in range(max_runs):
            proc, feeder = self.start(resume=True)
            codes.append(proc.wait(timeout=120))
            if feeder is not None:
                feeder.join(10)
            assert codes[-1] in (0, 1), self.stderr_of(self.runs)
            history = outcome_history(self.outcomes, skip_torn=True)
            if not any(h[-1]["status"] == "failed" for h in history.values()):
                return codes
        pytest.fail(f"still lines failed after {max_runs} resumed runs")

    def stderr_of(self, run: int) -> str:
        return (self.tmp_path / f"send-{run}.log").read_text(errors="replace")[-3000:]


def _feed(path: Path, pipe: IO[bytes]) -> None:
    try:
        with path.open("rb") as source:
            while chunk := source.read(1 << 16):
                pipe.write(chunk)
        pipe.close()
    except (BrokenPipeError, ValueError, OSError):
        pass  # the sender was killed mid-stream


def elapsed(seconds: float) -> Callable[[], bool]:
    started = time.monotonic()
    return lambda: time.monotonic() - started >= seconds


def ledger_grew(ledger: Path, by: int) -> Callable[[], bool]:
    """True once `by` more messages were accepted: a request is then being answered (with the
    emulator's latency still to go), so the kill lands on an accepted, unanswered request."""
    start = len(ledger_lines(ledger, skip_torn=True))
    return lambda: ledger.exists() and ledger.read_bytes().count(b"\n") >= start + by


def check_union_of_runs(sending: Sending, ledger: Path, lines: int = LINES) -> dict[str, Any]:
    """The guarantees over all runs (see the module docstring); returns a few counts."""
    history = outcome_history(sending.outcomes, skip_torn=True)
    in_ledger = Counter(ledger_lines(ledger, skip_torn=True))
    assert set(history) == set(range(1, lines + 1)), "some line has no outcome"
    assert set(in_ledger) <= set(history)
    problems = []
    resent_after_failed = 0
    for line, outcomes in history.items():
        *earlier, last = outcomes
        statuses = [o["status"] for o in outcomes]
        times = in_ledger[line]
        ok = all(o["status"] == "failed" for o in earlier)
        if last["status"] == "queued":
            ok = ok and times == 1
        elif last["status"] in ("invalid", "rejected"):
            ok = ok and times == 0
        elif last["status"] == "unknown":
            ok = ok and times <= 1
        else:
            ok = False
        if not ok:
            problems.append((line, statuses, times))
        if earlier and last["status"] in FINAL:
            resent_after_failed += 1
    assert problems == [], f"{len(problems)} lines break the guarantees, e.g. {problems[:5]}"
    assert max(in_ledger.values(), default=0) <= 1, "a message was accepted twice"
    last_statuses = Counter(h[-1]["status"] for h in history.values())
    crash_unknown = [
        line
        for line, outcomes in history.items()
        if outcomes[-1].get("code") == "in_flight_at_crash"
    ]
    return {
        "last": last_statuses,
        "crash_unknown": crash_unknown,
        "crash_unknown_in_ledger": sum(1 for line in crash_unknown if in_ledger[line]),
        "resent_after_failed": resent_after_failed,
    }


# -- kill -9 at several moments ----------------------------------------------------------------


def test_sigkill_at_several_moments_then_resume(tmp_path: Path) -> None:
    """Killed during start-up, right after the service accepted a request, after 1 s and after
    2 s, then resumed to the end: no line lost, no message accepted twice, and the requests the
    kills caught in flight are `unknown` on resume, not resent."""
    with emulator_subprocess(tmp_path, "--latency-ms", "100") as emu:
        sending = Sending(tmp_path, emu.base_url)
        write_numbered_input(sending.input, LINES, invalid_every=INVALID_EVERY)
        sending.run_killed(resume=False, when=elapsed(0.2))
        sending.run_killed(resume=True, when=ledger_grew(emu.ledger, 1))
        sending.run_killed(resume=True, when=elapsed(1.0))
        sending.run_killed(resume=True, when=elapsed(2.0))
        codes = sending.run_to_the_end()
    counts = check_union_of_runs(sending, emu.ledger)
    assert codes[-1] == 1  # the invalid lines
    # The kill right after an acceptance caught that request unanswered: its lines are in the
    # ledger once and reported unknown, which is the point of the journal.
    assert counts["crash_unknown_in_ledger"] > 0, counts


def test_sigkill_with_faults_then_resume_resends_failed_lines(tmp_path: Path) -> None:
    """With 5xx, 429s (one retry only), dropped connections, cut-off bodies and hangs, killed
    twice and resumed to the end: the same guarantees, and lines that ended `failed` (two 429s
    in a row; a 5xx is an outage, waited out or `unknown`) were sent again."""
    faults = (
        "--latency-ms",
        "50",
        "--seed",
        "11",
        "--error-5xx",
        "0.3",
        "--rate-429",
        "0.25",
        "--retry-after",
        "0",
        "--drop-after",
        "0.03",
        "--truncated-body",
        "0.03",
        "--hang",
        "0.02",
    )
    with emulator_subprocess(tmp_path, *faults) as emu:
        sending = Sending(
            tmp_path,
            emu.base_url,
            extra_env={"STREAMSEND_RETRIES": "1", "STREAMSEND_TIMEOUT": "1"},
        )
        write_numbered_input(sending.input, LINES, invalid_every=INVALID_EVERY)
        sending.run_killed(resume=False, when=ledger_grew(emu.ledger, 1))
        sending.run_killed(resume=True, when=elapsed(1.5))
        sending.run_to_the_end()
    counts = check_union_of_runs(sending, emu.ledger)
    assert counts["resent_after_failed"] > 0, counts


def test_stdin_replayed_on_resume(tmp_path: Path) -> None:
    """Reading stdin (a pipe), killed mid-stream, then resumed with the same stream replayed."""
    with emulator_subprocess(tmp_path, "--latency-ms", "100") as emu:
        sending = Sending(tmp_path, emu.base_url, stdin=True)
        write_numbered_input(sending.input, 6000, invalid_every=INVALID_EVERY)
        sending.run_killed(resume=False, when=ledger_grew(emu.ledger, 1))
        sending.run_killed(resume=True, when=elapsed(1.0))
        sending.run_to_the_end()
    counts = check_union_of_runs(sending, emu.ledger, 6000)
    history = outcome_history(sending.outcomes, skip_torn=True)
    assert {o["source"] for h in history.values() for o in h} == {"-"}
    assert counts["crash_unknown_in_ledger"] > 0, counts


# -- the journal and outcome files after a crash -----------------------------------------------


def _messages(source: str, lines: range) -> list[Message]:
    validator = Validator(api_version="v1", default_sender=V1_LIST)
    messages = []
    for n in lines:
        message = validator.validate(
            source, n, orjson.dumps({"to_msisdn": f"+1415{n:07d}", "body": f"m{n}"})
        )
        assert isinstance(message, Message)
        messages.append(message)
    return messages


def _outcome(line: int, status: str, request: int | None) -> bytes:
    record: dict[str, Any] = {"line": line, "source": "in.ndjson", "status": status}
    if request is not None:
        record["request"] = request
    return orjson.dumps(record) + b"\n"


def test_resume_decisions(tmp_path: Path) -> None:
    """What resume makes of each combination of last outcome and journal record."""
    outcomes = tmp_path / "out.ndjson"
    journal_path = tmp_path / "out.ndjson.journal"
    outcomes.write_bytes(
        _outcome(1, "queued", 1)
        + _outcome(2, "rejected", 1)
        + _outcome(3, "invalid", None)
        + _outcome(4, "failed", 2)
        + _outcome(5, "unknown", 2)
        + _outcome(6, "failed", 3)  # then sent again in request 7, in flight at the crash
        + _outcome(8, "failed", 4)  # then put in request 8, which was never sent
    )
    journal = FileJournal(str(journal_path), fsync=False)
    for request, lines in ((1, range(1, 3)), (2, range(4, 6)), (3, range(6, 7)), (4, range(8, 9))):
        journal.record_start(request, _messages("in.ndjson", lines))
        journal.record_done(request)
    journal.record_start(7, _messages("in.ndjson", range(6, 7)))
    journal.record_start(8, _messages("in.ndjson", range(8, 9)))
    journal.record_unsent(8)
    journal.record_start(9, _messages("in.ndjson", range(10, 12)))  # in flight, no outcome
    journal.close()
    resume = ResumeState.load(str(outcomes), str(journal_path), resend_unknown=False)
    decisions = {n: resume.decide("in.ndjson", n) for n in range(1, 14)}
    assert decisions == {
        1: Decision.SKIP,
        2: Decision.SKIP,
        3: Decision.SKIP,
        4: Decision.SEND,
        5: Decision.WAS_UNKNOWN,
        6: Decision.MARK_UNKNOWN,
        7: Decision.SEND,  # never seen
        8: Decision.SEND,  # its request was journaled unsent
        9: Decision.SEND,
        10: Decision.MARK_UNKNOWN,
        11: Decision.MARK_UNKNOWN,
        12: Decision.SEND,
        13: Decision.SEND,
    }
    assert resume.decide("other.ndjson", 1) is Decision.SEND
    assert resume.next_request == 10  # request numbers go on after the highest seen
    at_least_once = ResumeState.load(str(outcomes), str(journal_path), resend_unknown=True)
    assert at_least_once.decide("in.ndjson", 5) is Decision.SEND
    assert at_least_once.decide("in.ndjson", 10) is Decision.SEND


def test_torn_last_journal_line_is_cut_off(tmp_path: Path) -> None:
    """A journal whose last record a kill cut off is read up to it; the torn record (of a
    request never sent: its start is written before sending) is skipped, and cut off when the
    journal is opened again, so every line of it is a whole record."""
    journal_path = tmp_path / "out.ndjson.journal"
    journal = FileJournal(str(journal_path), fsync=False)
    journal.record_start(1, _messages("in.ndjson", range(1, 4)))
    journal.close()
    with journal_path.open("ab") as file:
        file.write(b'{"start":2,"lines":{"in.ndjson":[[4,')  # torn by a kill
    resume = ResumeState.load(str(tmp_path / "none"), str(journal_path), resend_unknown=False)
    assert resume.skipped_records == 1
    assert [resume.decide("in.ndjson", n) for n in range(1, 7)] == [
        Decision.MARK_UNKNOWN,
        Decision.MARK_UNKNOWN,
        Decision.MARK_UNKNOWN,
        Decision.SEND,
        Decision.SEND,
        Decision.SEND,
    ]
    # The next run cuts the torn record off and appends whole records after the last one.
    journal = FileJournal(str(journal_path), fsync=False)
    journal.record_start(3, _messages("in.ndjson", range(5, 6)))
    journal.close()
    assert all(orjson.loads(line) for line in journal_path.read_bytes().splitlines())
    resume = ResumeState.load(str(tmp_path / "none"), str(journal_path), resend_unknown=False)
    assert resume.skipped_records == 0
    assert resume.decide("in.ndjson", 5) is Decision.MARK_UNKNOWN
    assert resume.next_request == 4


def test_torn_last_outcome_line_is_cut_off(tmp_path: Path) -> None:
    """An outcomes file with a torn last line: the line is no outcome (so it is done again), and
    opening the file to append cuts the torn part off (not ended with a newline: the file must
    stay NDJSON that jq and pandas read)."""
    outcomes = tmp_path / "out.ndjson"
    outcomes.write_bytes(_outcome(1, "queued", 1) + b'{"line":2,"source":"in.ndjson","sta')
    resume = ResumeState.load(str(outcomes), str(tmp_path / "none"), resend_unknown=False)
    assert resume.skipped_records == 1
    assert resume.decide("in.ndjson", 1) is Decision.SKIP
    assert resume.decide("in.ndjson", 2) is Decision.SEND
    sink = FileSink.open_path(str(outcomes), fsync=False)
    sink.close()
    assert outcomes.read_bytes() == _outcome(1, "queued", 1)
    with outcomes.open("ab") as file:
        file.write(_outcome(2, "queued", 2))
    resume = ResumeState.load(str(outcomes), str(tmp_path / "none"), resend_unknown=False)
    assert resume.skipped_records == 0
    assert resume.decide("in.ndjson", 2) is Decision.SKIP


def test_in_flight_lines_are_reported_unknown_once_across_resumes(tmp_path: Path) -> None:
    """Lines a crashed run left in flight get one `unknown` outcome on the first resume; later
    resumes leave them be instead of reporting them again and again."""
    input_path = tmp_path / "in.ndjson"
    write_numbered_input(input_path, 5, invalid_every=INVALID_EVERY)
    outcomes = tmp_path / "out.ndjson"
    journal = FileJournal(str(outcomes) + ".journal", fsync=False)
    journal.record_start(1, _messages(str(input_path), range(1, 4)))  # then: kill -9
    journal.close()
    codes = []
    for _ in range(3):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "streamsend",
                "send",
                "--emulator",
                str(input_path),
                "--outcomes",
                str(outcomes),
                "--resume",
                "--log-format",
                "json",
            ],
            env=clean_env(STREAMSEND_RATE="unlimited"),
            capture_output=True,
            timeout=60,
            check=False,
        )
        codes.append(proc.returncode)
    # Each resume's exit code covers the whole file, whose lines 1-3 stay `unknown`: 1 each
    # time, although later runs have nothing left to do (the outcomes below show it).
    assert codes == [1, 1, 1]
    history = outcome_history(outcomes, skip_torn=True)
    assert {line: [o["status"] for o in h] for line, h in history.items()} == {
        1: ["unknown"],
        2: ["unknown"],
        3: ["unknown"],
        4: ["queued"],
        5: ["queued"],
    }
    # The unknown outcome names the request the line may have gone out with.
    assert {history[line][0]["request"] for line in (1, 2, 3)} == {1}
