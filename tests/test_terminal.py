"""What `streamsend send` shows an operator: on a terminal (a real pty), one short start line,
a live progress line that log lines never glue onto, one human summary; and for a run cut short,
how many lines have no outcome and the exact command that resumes it.
"""

from __future__ import annotations

import os
import pty
import re
import select
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson

from streamsend._run import resume_command
from streamsend.testing import API_KEY, V1_LIST
from tests.conftest import clean_env, emulator_subprocess, outcome_history, write_numbered_input

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CLEAR = "\r\x1b[K"


def run_on_a_terminal(args: list[str], cwd: Path, timeout_s: float = 60) -> tuple[int, str]:
    """`python -m streamsend ARGS` with stderr (and stdout) on a pseudo-terminal: exit code and
    everything it wrote there, colours removed."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamsend", *args],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        cwd=cwd,
        env=clean_env(COLUMNS="300"),
    )
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while (left := deadline - time.monotonic()) > 0:
            # select first: a run that hangs must fail this test, not block it forever.
            if not select.select([leader], [], [], left)[0]:
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
        if process.poll() is None and time.monotonic() >= deadline:
            process.kill()
    code = process.wait(timeout=10)
    return code, _ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))


def test_terminal_shows_one_start_line_progress_and_one_summary(tmp_path: Path) -> None:
    """On a terminal: the start event is one line with target, sender, rate and input; the
    progress line is drawn; the summary appears once, in words, not also as a log event."""
    write_numbered_input(tmp_path / "campaign.ndjson", 1_500)
    code, text = run_on_a_terminal(
        ["send", "--emulator", "campaign.ndjson", "--rate", "2000/s", "--outcomes", "out.ndjson"],
        cwd=tmp_path,
    )
    assert code == 0, text
    start = [line for line in text.splitlines() if " start " in line]
    assert len(start) == 1, text
    for expected in ("target=", "sender=", "rate=2000/s", "input=campaign.ndjson"):
        assert expected in start[0]
    assert "config=" not in start[0]
    assert " done | " in text  # the live progress line
    assert text.count("1,500 lines in ") == 1
    assert " summary " not in text
    assert "elapsed_seconds" not in text


def test_json_logs_on_a_terminal_never_glue_onto_the_progress_line(tmp_path: Path) -> None:
    """--log-format json on a terminal: every JSON line starts on a cleared line, so the text
    after the last erase of each line is exactly one JSON object."""
    write_numbered_input(tmp_path / "campaign.ndjson", 1_500)
    code, text = run_on_a_terminal(
        [
            *("send", "--emulator", "campaign.ndjson", "--rate", "2000/s"),
            *("--outcomes", "out.ndjson", "--log-format", "json"),
        ],
        cwd=tmp_path,
    )
    assert code == 0, text
    assert " done | " in text
    json_lines = [line for line in text.split("\n") if '"event"' in line]
    assert json_lines
    for line in json_lines:
        assert _CLEAR + "{" in line, line
        record = orjson.loads(line.rsplit(_CLEAR, 1)[1].strip())
        assert "event" in record
    events = [orjson.loads(line.rsplit(_CLEAR, 1)[1].strip())["event"] for line in json_lines]
    assert events.count("summary") == 1


def test_resume_command_keeps_the_run_and_drops_overwrite() -> None:
    """The resume command is the run's own arguments, quoted, with --resume and without
    --overwrite (which would send everything again)."""
    assert resume_command(["my campaign.ndjson", "--outcomes", "o.ndjson", "--overwrite"]) == (
        "streamsend send 'my campaign.ndjson' --outcomes o.ndjson --resume"
    )
    assert resume_command(["a", "--resume"]) == "streamsend send a --resume"


def test_interrupted_run_says_what_is_left_and_its_resume_command_works(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) on a paced run: the summary counts the lines read without an outcome
    and gives the exact resume command; running that command finishes the campaign with one
    outcome per line."""
    lines = 3_000
    write_numbered_input(tmp_path / "campaign.ndjson", lines)
    env = clean_env(TRACKLY_API_KEY=API_KEY)
    with emulator_subprocess(tmp_path) as emu:
        args = [
            *("campaign.ndjson", "--base-url", emu.base_url, "--from", V1_LIST),
            *("--outcomes", "out.ndjson", "--rate", "1000/s", "--drain-timeout", "0.3"),
            *("--log-format", "json", "--batch-size", "100", "--linger-ms", "5"),
        ]
        with (tmp_path / "send.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "streamsend", "send", *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=tmp_path,
                env=env,
            )
        out = tmp_path / "out.ndjson"
        deadline = time.monotonic() + 30
        while not (out.exists() and out.stat().st_size):
            assert process.poll() is None, (tmp_path / "send.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130, (tmp_path / "send.log").read_text()[-2000:]
        summary = [
            record
            for raw in (tmp_path / "send.log").read_bytes().splitlines()
            if (record := orjson.loads(raw)).get("event") == "summary"
        ]
        assert len(summary) == 1
        first = outcome_history(out, skip_torn=False)
        assert 0 < len(first) < lines
        assert summary[0]["lines_without_outcome"] == summary[0]["lines_read"] - len(first)
        command = summary[0]["resume_command"]
        assert command == shlex.join(["streamsend", "send", *args, "--resume"])

        resumed = subprocess.run(
            # The command exactly as printed, `streamsend` being this venv's script.
            [str(Path(sys.executable).with_name("streamsend")), *shlex.split(command)[1:]],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            cwd=tmp_path,
            env=env,
            timeout=60,
            check=False,
        )
        assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    history = outcome_history(out, skip_torn=False)
    assert set(history) == set(range(1, lines + 1))
    assert Counter(len(h) for h in history.values()) == Counter({1: lines})


def test_demo_says_the_deprecation_in_words(tmp_path: Path) -> None:
    """`streamsend demo` tells the v1 deprecation as one friendly note in its own output, not
    as a raw `api_deprecated` log event in the middle of it."""
    done = subprocess.run(
        [sys.executable, "-m", "streamsend", "demo", "--messages", "200"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        cwd=tmp_path,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    output = done.stdout.decode() + done.stderr.decode()
    assert "note: the v1 API is deprecated; move with --api-version v2" in done.stdout.decode()
    assert "api_deprecated" not in output
