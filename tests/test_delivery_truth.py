"""Delivery truth in the real world: what stands between a client and a real service.

Each test puts one real-world obstacle between streamsend and the emulator, scaled down so that
it takes about a second (a send rate of 1,200/min and a stale window of 1 s stand for the
service's 17,000/min and 30 minutes), and checks the core promise still holds: one true outcome
per line, nothing lost silently, nothing sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from streamsend._config import Settings
from streamsend._exceptions import InputError
from streamsend._fingerprint import InputFingerprints
from streamsend._journal import FileJournal, ResumeState
from streamsend._outcomes import MemorySink
from streamsend._pacing import parse_rate
from streamsend._pipeline import Pipeline
from streamsend._source import read_inputs
from streamsend._types import ExitCode, LineBlock
from streamsend.testing import API_KEY, V1_LIST, EmulatorFactory
from tests.conftest import (
    RecordingLog,
    clean_env,
    ledger_lines,
    ndjson_records,
    run_streamsend,
    serve_locally,
    write_numbered_input,
)

RUN_TIMEOUT = 60.0
#: The scaled-down service: each list sends 1,200 messages a minute (20/s) and drops what would
#: wait in its queue over a second.
SEND_RATE = "1200/min"
STALE_AFTER_S = 1.0


def _events(stderr: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stderr.splitlines() if line.startswith(b"{")]


async def test_pacing_at_the_lists_rate_loses_nothing(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Paced at the list's send rate, no message waits in the service's queue long enough to
    be dropped: every `queued` outcome is true."""
    emu = await emulator(send_rate_per_min=parse_rate(SEND_RATE) * 60, stale_after_s=STALE_AFTER_S)
    write_numbered_input(tmp_path / "in.ndjson", 24)
    settings = Settings(
        base_url=emu.base_url, sender=V1_LIST, rate=parse_rate(SEND_RATE), linger_ms=5.0
    )
    sink = MemorySink()
    pipeline = Pipeline(
        settings, api_key=API_KEY, source=read_inputs([str(tmp_path / "in.ndjson")]), sink=sink
    )
    result = await pipeline.run()
    assert result.exit_code == ExitCode.OK
    assert len(sink.outcomes) == 24
    stats = emu.stats()
    assert (stats["messages_queued"], stats["dropped_stale"]) == (24, 0)


async def test_unlimited_is_explicit_and_warns(emulator: EmulatorFactory, tmp_path: Path) -> None:
    """`--rate unlimited` is the opt-out: the run warns at the start how many messages the
    service's stale window holds, and (against the scaled-down service) messages sent faster
    than the list drains go stale although their outcomes say `queued`: what the default
    pacing prevents."""
    emu = await emulator(send_rate_per_min=parse_rate(SEND_RATE) * 60, stale_after_s=STALE_AFTER_S)
    write_numbered_input(tmp_path / "in.ndjson", 60)
    code, _, stderr = await run_streamsend(
        [
            *("send", "in.ndjson", "--base-url", emu.base_url, "--from", V1_LIST),
            *("--rate", "unlimited", "--outcomes", "out.ndjson", "--log-format", "json"),
        ],
        env=clean_env(TRACKLY_API_KEY=API_KEY),
        cwd=tmp_path,
        timeout_s=RUN_TIMEOUT,
    )
    assert code == ExitCode.OK, stderr
    warnings = [e for e in _events(stderr) if e["event"] == "unpaced"]
    assert len(warnings) == 1
    assert warnings[0]["level"] == "warning"
    assert "510,000 messages" in warnings[0]["hint"]
    assert emu.stats()["dropped_stale"] > 0


async def test_a_bare_number_rate_is_refused_before_sending(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """`--rate 600` (per second? per minute?) is a usage error: exit 2, one line with the fix,
    nothing sent."""
    emu = await emulator()
    write_numbered_input(tmp_path / "in.ndjson", 3)
    code, _, stderr = await run_streamsend(
        ["send", "in.ndjson", "--base-url", emu.base_url, "--from", V1_LIST, "--rate", "600"],
        env=clean_env(TRACKLY_API_KEY=API_KEY),
        cwd=tmp_path,
        timeout_s=RUN_TIMEOUT,
    )
    assert code == ExitCode.USAGE
    assert stderr.count(b"\n") == 1
    assert b"600/min or 600/s" in stderr
    assert emu.stats()["requests_total"] == 0


# -- outages: the breaker and --give-up-after ---------------------------------------------------


def _unreachable_base_url() -> str:
    """A loopback URL nothing listens on: every connection is refused, as in an outage."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/api"


async def test_an_outage_costs_a_probe_per_pause_not_the_input(tmp_path: Path) -> None:
    """A service that answers 503 for its first 0.6 s: the sending number pauses, exponentially
    longer each time, and probes one request at a time, so the outage costs a handful of
    requests (not every batch's retries), warns once, and every line ends queued."""
    answers: list[int] = []
    down_until: list[float] = []

    async def handle(request: web.Request) -> web.Response:
        payload = await request.json()
        now = time.monotonic()
        if not down_until:
            down_until.append(now + 0.6)
        if now < down_until[0]:
            answers.append(503)
            return web.json_response(
                {"error": "unavailable", "code": "service_unavailable"}, status=503
            )
        answers.append(201)
        return web.json_response(
            {"queued_count": len(payload["messages"]), "errors": []}, status=201
        )

    app = web.Application()
    app.router.add_post("/api/v1/messages/bulk", handle)
    write_numbered_input(tmp_path / "in.ndjson", 2000)
    log = RecordingLog()
    async with serve_locally(app) as base_url:
        settings = Settings(
            base_url=base_url,
            sender=V1_LIST,
            rate=None,
            batch_size=50,  # 40 requests
            concurrency=4,
            retries=1,  # an outage is not bounded by --retries
            backoff_base=0.05,
            backoff_cap=0.2,
            linger_ms=5.0,
        )
        sink = MemorySink()
        source = read_inputs([str(tmp_path / "in.ndjson")])
        pipeline = Pipeline(settings, api_key=API_KEY, source=source, sink=sink, log=log)
        result = await pipeline.run()
    assert result.exit_code == ExitCode.OK
    assert len(sink.outcomes) == 2000
    failures = answers.count(503)
    # The four requests in flight when it began, then one probe per pause (0.025 s and up).
    assert 1 <= failures <= 12, answers
    assert answers.count(201) == 40
    assert len(log.named("service_unavailable")) == 1
    assert log.named("service_unavailable")[0][0] == "warning"
    assert len(log.named("service_back")) == 1


async def test_an_outage_longer_than_give_up_after_stops_and_resume_sends_the_rest(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """The service is unreachable for longer than --give-up-after: a warning when the outage
    begins, an error when giving up, exit 3 (not 1, "some lines not queued"), and the lines
    never sent have no outcome. A --resume once the service is back sends each of them once."""
    write_numbered_input(tmp_path / "in.ndjson", 300)
    env = clean_env(
        TRACKLY_API_KEY=API_KEY, STREAMSEND_BACKOFF_BASE="0.05", STREAMSEND_BACKOFF_CAP="0.2"
    )
    common = ["send", "in.ndjson", "--from", V1_LIST, "--outcomes", "out.ndjson"]
    common += ["--rate", "unlimited", "--batch-size", "50", "--log-format", "json"]
    code, _, stderr = await run_streamsend(
        [*common, "--base-url", _unreachable_base_url(), "--give-up-after", "1s"],
        env=env,
        cwd=tmp_path,
        timeout_s=RUN_TIMEOUT,
    )
    assert code == ExitCode.ABORTED, stderr
    events = _events(stderr)
    levels = {e["event"]: e["level"] for e in events}
    assert levels["service_unavailable"] == "warning"
    assert levels["giving_up"] == "error"
    names = [e["event"] for e in events]
    assert names.index("service_unavailable") < names.index("giving_up")
    assert (tmp_path / "out.ndjson").read_bytes() == b""  # nothing was sent: no outcome

    emu = await emulator()
    code, _, stderr = await run_streamsend(
        [*common, "--base-url", emu.base_url, "--resume"],
        env=env,
        cwd=tmp_path,
        timeout_s=RUN_TIMEOUT,
    )
    assert code == ExitCode.OK, stderr
    outcomes = ndjson_records(tmp_path / "out.ndjson", skip_torn=False)
    assert sorted(o["line"] for o in outcomes) == list(range(1, 301))
    assert {o["status"] for o in outcomes} == {"queued"}
    assert emu.ledger_path is not None
    assert sorted(ledger_lines(emu.ledger_path, skip_torn=False)) == list(range(1, 301))


# -- stops that stop ----------------------------------------------------------------------------


def _check_every_line_once(outcomes_path: Path, ledger: Path, lines: int) -> None:
    """Across runs: the outcomes file is whole NDJSON, each line's last outcome is final, a
    queued line is in the ledger exactly once and an unknown one at most once."""
    last: dict[int, dict[str, Any]] = {}
    for record in ndjson_records(outcomes_path, skip_torn=False):
        last[record["line"]] = record
    assert sorted(last) == list(range(1, lines + 1))
    sent = Counter(ledger_lines(ledger, skip_torn=False))
    for line, outcome in last.items():
        assert outcome["status"] in ("queued", "unknown"), outcome
        if outcome["status"] == "queued":
            assert sent[line] == 1, outcome
        else:
            assert sent[line] <= 1, outcome


@pytest.mark.parametrize("signals", [1, 2], ids=["one-signal", "second-signal"])
async def test_a_stop_at_a_paced_rate_is_bounded_and_resumable(
    emulator: EmulatorFactory, tmp_path: Path, signals: int
) -> None:
    """At a slow --rate with the lanes' budget full, a stop must not send the batched backlog
    first (minutes at this rate): one SIGINT stops within --drain-timeout (1 s) of the signal,
    a second one at once; exit 130 either way, and a --resume sends the rest, each line once.

    The wait for the exit is a bound on liveness (the backlog would take minutes), not a
    measurement."""
    lines = 22_000  # past the 20,000 messages the lanes hold: the reader waits in submit()
    emu = await emulator()
    assert emu.ledger_path is not None
    write_numbered_input(tmp_path / "in.ndjson", lines)
    common = ["-m", "streamsend", "send", "in.ndjson", "--base-url", emu.base_url]
    common += ["--from", V1_LIST, "--outcomes", "out.ndjson", "--log-format", "json"]
    env = clean_env(TRACKLY_API_KEY=API_KEY)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *common,
        *("--rate", "600/min", "--drain-timeout", "1s"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    async with asyncio.timeout(RUN_TIMEOUT):
        while emu.stats()["messages_queued"] < 4:  # noqa: ASYNC110 - a counter, no event
            await asyncio.sleep(0.02)
    process.send_signal(signal.SIGINT)
    if signals == 2:
        await asyncio.sleep(0.2)
        process.send_signal(signal.SIGINT)
    async with asyncio.timeout(20):
        _, stderr = await process.communicate()
    assert process.returncode == ExitCode.INTERRUPTED, stderr
    names = [e["event"] for e in _events(stderr)]
    assert "stopping" in names
    assert ("stopping_now" in names) == (signals == 2)
    sent_before_resume = emu.stats()["messages_queued"]
    assert sent_before_resume < 1000  # the backlog was not sent: the stop stopped

    code, _, stderr = await run_streamsend(
        [*common[2:], "--rate", "unlimited", "--resume"],
        env=env,
        cwd=tmp_path,
        timeout_s=RUN_TIMEOUT,
    )
    assert code in (ExitCode.OK, ExitCode.NOT_ALL_QUEUED), stderr  # 1: a cut request's unknown
    _check_every_line_once(tmp_path / "out.ndjson", emu.ledger_path, lines)


# -- a full disk --------------------------------------------------------------------------------


@contextlib.contextmanager
def _small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` (CI runs as root), unmounted afterwards."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert mounted.returncode == 0, (
        f"this test mounts a small tmpfs to fill a real filesystem and needs root (CI runs as "
        f"root): mount said {mounted.stderr.strip()!r}"
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def test_a_full_disk_then_resume_leaves_valid_ndjson(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """The outcomes file and journal on a real 64 KiB tmpfs that fills mid-run: the run stops
    with exit 70 and one line saying why; once there is room again, --resume cuts off whatever
    torn line the full disk left, and the finished file is whole NDJSON with one final outcome
    per line, each queued line accepted once."""
    lines = 2000
    emu = await emulator()
    assert emu.ledger_path is not None
    write_numbered_input(tmp_path / "in.ndjson", lines)
    with _small_tmpfs(tmp_path / "disk", "64k") as disk:
        outcomes = disk / "out.ndjson"
        args = ["send", str(tmp_path / "in.ndjson"), "--base-url", emu.base_url]
        args += ["--from", V1_LIST, "--outcomes", str(outcomes), "--rate", "unlimited"]
        args += ["--batch-size", "100"]
        env = clean_env(TRACKLY_API_KEY=API_KEY)
        code, _, stderr = await run_streamsend(args, env=env, cwd=tmp_path, timeout_s=RUN_TIMEOUT)
        assert code == ExitCode.INTERNAL, stderr
        assert b"No space left on device" in stderr
        assert b"Traceback" not in stderr
        print("filled a real tmpfs; torn last line:", not outcomes.read_bytes().endswith(b"\n"))
        remount = ["mount", "-o", "remount,size=8m", str(disk)]
        await asyncio.to_thread(subprocess.run, remount, check=True)
        code, _, stderr = await run_streamsend(
            [*args, "--resume"], env=env, cwd=tmp_path, timeout_s=RUN_TIMEOUT
        )
        assert code in (ExitCode.OK, ExitCode.NOT_ALL_QUEUED), stderr
        _check_every_line_once(outcomes, emu.ledger_path, lines)


# -- resumes that check -------------------------------------------------------------------------


async def _send_with_stdin(
    args: list[str], stdin: bytes, *, env: dict[str, str], cwd: Path
) -> tuple[int, bytes]:
    """`streamsend <args>` with `stdin` as its input: exit code and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streamsend",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    async with asyncio.timeout(RUN_TIMEOUT):
        _, stderr = await process.communicate(stdin)
    assert process.returncode is not None
    return process.returncode, stderr


def _numbered(lines: int, body: str = "m") -> bytes:
    return b"".join(
        orjson.dumps({"to_msisdn": f"+1415{n:07d}", "body": f"{body}{n}"}) + b"\n"
        for n in range(1, lines + 1)
    )


@pytest.mark.parametrize("via", ["file", "stdin"])
async def test_resume_refuses_an_input_that_changed(
    emulator: EmulatorFactory, tmp_path: Path, via: str
) -> None:
    """A run that read the input and gave up (the service was unreachable) journaled its
    fingerprint. A --resume against a regenerated input, or a restarted stdin producer with other
    lines, is refused with exit 2 and a clear message, before anything is sent; the same input
    resumes and sends every line once."""
    original, changed = _numbered(300), _numbered(300, body="other ")
    env = clean_env(
        TRACKLY_API_KEY=API_KEY, STREAMSEND_BACKOFF_BASE="0.05", STREAMSEND_BACKOFF_CAP="0.1"
    )
    source = "-" if via == "stdin" else "in.ndjson"
    common = ["send", source, "--from", V1_LIST, "--outcomes", "out.ndjson"]
    common += ["--rate", "unlimited", "--batch-size", "50"]

    async def send(content: bytes, *flags: str) -> tuple[int, bytes]:
        if via == "file":
            (tmp_path / "in.ndjson").write_bytes(content)
        return await _send_with_stdin([*common, *flags], content, env=env, cwd=tmp_path)

    code, stderr = await send(
        original, "--base-url", _unreachable_base_url(), "--give-up-after", "0.3s"
    )
    assert code == ExitCode.ABORTED, stderr
    emu = await emulator()
    assert emu.ledger_path is not None
    code, stderr = await send(changed, "--base-url", emu.base_url, "--resume")
    assert code == ExitCode.USAGE, stderr
    assert b"is not the input the earlier run read" in stderr
    assert b"--overwrite" in stderr
    assert emu.stats()["requests_total"] == 0  # refused before anything was sent
    code, stderr = await send(
        original[: len(original) // 2], "--base-url", emu.base_url, "--resume"
    )
    assert code == ExitCode.USAGE, stderr
    assert b"ended before line 300" in stderr
    assert emu.stats()["requests_total"] == 0
    code, stderr = await send(original, "--base-url", emu.base_url, "--resume")
    assert code == ExitCode.OK, stderr
    _check_every_line_once(tmp_path / "out.ndjson", emu.ledger_path, 300)


@pytest.mark.parametrize("algorithm", ["sha256", "blake2b"])
def test_a_journal_names_its_fingerprints_digest_and_a_resume_uses_it(
    tmp_path: Path, algorithm: str
) -> None:
    """Journals name the digest of each input's fingerprint: SHA-256 now, blake2b in journals
    written before 2026-12-02. A resume reads either and hashes the input the same way: the
    same lines pass, other lines are refused."""
    lines: list[bytes | None] = [b'{"to_msisdn":"+14155550100","body":"m%d"}' % n for n in range(9)]
    content = b"".join(line + b"\n" for line in lines if line is not None)
    if algorithm == "sha256":  # what this version writes
        journal = FileJournal(str(tmp_path / "j"), fsync=False)
        InputFingerprints(record=journal.record_input).observe(LineBlock("in", 1, lines, 99))
        journal.close()
    else:  # what an earlier version wrote
        digest = hashlib.blake2b(content, digest_size=16).hexdigest()
        record = {"input": "in", "lines": 9, "bytes": 99, "blake2b": digest}
        (tmp_path / "j").write_bytes(orjson.dumps(record) + b"\n")
    assert algorithm.encode() in (tmp_path / "j").read_bytes()
    expected = ResumeState.load(None, str(tmp_path / "j"), resend_unknown=False).inputs
    assert expected["in"].algorithm == algorithm
    InputFingerprints(record=None, expected=expected).observe(LineBlock("in", 1, lines, 99))
    other = [*lines[:8], b"changed"]
    with pytest.raises(InputError, match="is not the input the earlier run read"):
        InputFingerprints(record=None, expected=expected).observe(LineBlock("in", 1, other, 99))


async def test_a_resumes_exit_code_covers_the_whole_file(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Lines an earlier run settled count in a resume's exit code: a file whose lines all ended
    `invalid` (no sending number) resumes with --from, sends nothing (they are final) and exits
    1, not 0 ("every line was queued")."""
    emu = await emulator()
    write_numbered_input(tmp_path / "in.ndjson", 20)
    args = ["send", "in.ndjson", "--base-url", emu.base_url, "--outcomes", "out.ndjson"]
    args += ["--rate", "unlimited"]
    env = clean_env(TRACKLY_API_KEY=API_KEY)
    code, _, stderr = await run_streamsend(args, env=env, cwd=tmp_path, timeout_s=RUN_TIMEOUT)
    assert code == ExitCode.NOT_ALL_QUEUED, stderr
    outcomes = ndjson_records(tmp_path / "out.ndjson", skip_torn=False)
    assert {o["status"] for o in outcomes} == {"invalid"}
    code, _, stderr = await run_streamsend(
        [*args, "--from", V1_LIST, "--resume"], env=env, cwd=tmp_path, timeout_s=RUN_TIMEOUT
    )
    assert code == ExitCode.NOT_ALL_QUEUED, stderr
    assert emu.stats()["requests_total"] == 0


# -- outcomes on stdout -------------------------------------------------------------------------


async def test_a_broken_pipe_on_stdout_says_what_was_sent_and_advises_no_resume(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Outcomes on stdout and their reader goes away (`| head -1`): one line says how many
    messages the service accepted and that there is no journal to resume from (no --resume
    advice, which would be refused); no traceback."""
    emu = await emulator()
    write_numbered_input(tmp_path / "in.ndjson", 20_000)
    read_end, write_end = os.pipe()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "streamsend", "send", "in.ndjson", "--base-url", emu.base_url),
        *("--from", V1_LIST, "--rate", "unlimited", "--batch-size", "100"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=write_end,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(TRACKLY_API_KEY=API_KEY),
        cwd=tmp_path,
    )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        first = await asyncio.to_thread(reader.readline)  # the reader takes one line and leaves
    assert orjson.loads(first)["status"] == "queued"
    async with asyncio.timeout(RUN_TIMEOUT):
        _, stderr = await process.communicate()
    assert process.returncode == ExitCode.INTERNAL, stderr
    assert b"Traceback" not in stderr
    said = [line for line in stderr.splitlines() if line.startswith(b"streamsend: error:")]
    assert len(said) == 1
    assert b"broken pipe" in said[0]
    assert b"accepted at least" in said[0]
    assert b"--resume" not in said[0]
