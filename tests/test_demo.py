"""`streamsend demo`, run as a user runs it (a subprocess): the sample campaign goes through the
built-in emulator and the printed summary agrees with the outcomes file it leaves behind."""

from __future__ import annotations

import collections
from pathlib import Path

import orjson

from tests.conftest import clean_env, run_streamsend


async def test_demo_sends_the_sample_and_summarises_what_the_outcomes_say(tmp_path: Path) -> None:
    """2,000 good lines are queued and the four deliberately bad lines are invalid, one outcome
    per line; the summary printed is the outcomes file's counts; the demo itself succeeds."""
    keep = tmp_path / "demo"
    code, stdout, stderr = await run_streamsend(
        ["demo", "--messages", "2000", "--keep", str(keep)], env=clean_env(), timeout_s=60
    )
    assert code == 0, stderr.decode()
    records = [orjson.loads(line) for line in (keep / "outcomes.ndjson").read_bytes().splitlines()]
    lines = [(r["source"], r["line"]) for r in records]
    assert len(lines) == len(set(lines)) == 2004
    by_status = collections.Counter(r["status"] for r in records)
    assert by_status == {"queued": 2000, "invalid": 4}
    text = stdout.decode()
    assert "queued        2,000" in text
    assert "invalid           4" in text
    assert "outcomes: 2004 lines" in text
    assert "Traceback" not in stderr.decode()


async def test_demo_refuses_a_bad_flag_in_one_line(tmp_path: Path) -> None:
    """A bad value is one line on stderr naming the flag, exit 2, and nothing is sent."""
    code, stdout, stderr = await run_streamsend(
        ["demo", "--messages", "0"], env=clean_env(), timeout_s=30
    )
    assert code == 2
    assert stdout == b""
    assert stderr.decode().strip().splitlines() == [
        "streamsend demo: error: --messages must be at least 1 (see streamsend demo --help)"
    ]


async def test_demo_with_workers_kills_one_and_the_others_finish(
    tmp_path: Path, redis_url: str
) -> None:
    """`demo --workers 3`: three worker processes on a job in the local Redis, one SIGKILLed
    mid-run; the outcomes kept hold one outcome per line, and the summary names each worker's
    share and the killed one."""
    code, out, err = await run_streamsend(
        ["demo", "--workers", "3", "--messages", "6000", "--keep", str(tmp_path)],
        env=clean_env(STREAMSEND_REDIS=redis_url),
        timeout_s=120,
    )
    assert code == 0, err
    assert b"SIGKILL to worker pid" in out
    assert out.count(b"<- killed at") == 1
    records = [
        orjson.loads(line) for line in (tmp_path / "outcomes.ndjson").read_bytes().splitlines()
    ]
    campaign_lines = (tmp_path / "campaign.ndjson").read_bytes().count(b"\n")
    assert sorted(r["line"] for r in records) == list(range(1, campaign_lines + 1))
