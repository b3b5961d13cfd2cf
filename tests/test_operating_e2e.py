"""End to end, as an operator runs it: `streamsend send` in a subprocess against the emulator.

What these prove:
- The API key never appears in anything the run writes (stderr logs at debug level, stdout, the
  outcomes file, the journal): in a normal run, a run with failing requests, and a run with a
  wrong key.
- The Prometheus endpoint, scraped while a run is under way, agrees with the outcomes written.

The runs are real processes talking HTTP on loopback; the in-process emulator (tests/conftest.py)
serves them when a test needs a key it knows, `--emulator` when it doesn't.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections import Counter
from pathlib import Path

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from streamsend.emulator import FaultConfig
from streamsend.testing import API_KEY, V1_LIST, EmulatorFactory
from tests.conftest import clean_env, run_streamsend

KEY_SHAPE = re.compile(rb"trk_[A-Za-z0-9]{8,}")
WRONG_KEY = "trk_" + "Wr0ngKeyWr0ngKeyWr0ngKeyWr0ngKey"

# Generous guards for a loaded CI machine; the runs themselves take well under a second each.
RUN_TIMEOUT = 120.0


def _campaign(path: Path, valid: int = 30, invalid: int = 4) -> Path:
    lines = [
        orjson.dumps({"to_msisdn": f"+1415555{i:04d}", "body": f"Hello {i}", "ref": i})
        for i in range(valid)
    ]
    lines += [orjson.dumps({"to_msisdn": "555", "body": "bad number"}) for _ in range(invalid)]
    lines.insert(3, b"")
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _events(stderr: bytes) -> list[dict[str, object]]:
    """Every stderr line is a JSON log event (--log-format json); fail on any that isn't."""
    return [orjson.loads(line) for line in stderr.splitlines() if line.strip()]


def _outcomes(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def _assert_no_key_anywhere(key: str | None, *texts: bytes) -> None:
    for text in texts:
        if key is not None:
            assert key.encode() not in text
        # Nothing key-shaped at all: not the real key, not a key the emulator generated.
        assert KEY_SHAPE.search(text) is None, KEY_SHAPE.search(text)


def _written_files(tmp_path: Path) -> list[bytes]:
    return [p.read_bytes() for p in tmp_path.iterdir() if p.is_file()]


async def test_emulator_run_at_debug_level_never_shows_the_key(tmp_path: Path) -> None:
    """`send --emulator --log-level debug --log-format json`: the generated key appears in no
    log line, outcome or journal, and the summary event agrees with the outcomes."""
    campaign = _campaign(tmp_path / "campaign.ndjson")
    outcomes = tmp_path / "outcomes.ndjson"
    code, stdout, stderr = await run_streamsend(
        [
            "send",
            str(campaign),
            "--emulator",
            "--log-level",
            "debug",
            "--log-format",
            "json",
            "--outcomes",
            str(outcomes),
            "--batch-size",
            "7",
        ],
        env=clean_env(),
        cwd=tmp_path,
        timeout_s=RUN_TIMEOUT,
    )

    assert code == 1, stderr  # finished, with invalid lines
    _assert_no_key_anywhere(None, stdout, stderr, *_written_files(tmp_path))
    events = _events(stderr)
    names = [e["event"] for e in events]
    assert names[0] == "start"
    assert "summary" in names
    statuses = Counter(str(o["status"]) for o in _outcomes(outcomes))
    assert statuses == {"queued": 30, "invalid": 4}
    summary = next(e for e in events if e["event"] == "summary")
    by_status = summary["by_status"]
    assert isinstance(by_status, dict)
    assert {k: v for k, v in by_status.items() if v} == statuses


async def test_failing_requests_at_debug_level_never_show_the_key(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """With 5xx, 429, lost answers and cut-off bodies, retries and failures are logged (with
    the errors' text) and the known key appears nowhere."""
    emu = await emulator(
        faults=FaultConfig(
            seed=7,
            error_5xx=0.3,
            rate_429=0.1,
            retry_after_s=0.01,
            drop_after=0.1,
            truncated_body=0.1,
        )
    )
    campaign = _campaign(tmp_path / "campaign.ndjson", valid=60)
    outcomes = tmp_path / "outcomes.ndjson"
    code, stdout, stderr = await run_streamsend(
        [
            "send",
            str(campaign),
            "--base-url",
            emu.base_url,
            "--from",
            V1_LIST,
            "--log-level",
            "debug",
            "--log-format",
            "json",
            "--outcomes",
            str(outcomes),
            "--batch-size",
            "3",
            "--retries",
            "2",
        ],
        env=clean_env(
            TRACKLY_API_KEY=API_KEY, STREAMSEND_BACKOFF_BASE="0.01", STREAMSEND_BACKOFF_CAP="0.02"
        ),
        cwd=tmp_path,
        timeout_s=RUN_TIMEOUT,
    )

    assert code == 1, stderr
    _assert_no_key_anywhere(API_KEY, stdout, stderr, *_written_files(tmp_path))
    events = _events(stderr)
    assert any(e["event"] in ("retrying", "rate_limited") for e in events)
    summary = next(e for e in events if e["event"] == "summary")
    codes = summary["requests_by_code"]
    assert isinstance(codes, dict)
    assert set(codes) - {"201"}, codes  # some requests really did fail
    assert len(_outcomes(outcomes)) == 64


async def test_wrong_key_never_shows_either_key(emulator: EmulatorFactory, tmp_path: Path) -> None:
    """A key the service refuses (401) stops the run with exit 3; neither the key given nor the
    service's key shows up in the logs or files."""
    emu = await emulator()
    campaign = _campaign(tmp_path / "campaign.ndjson")
    outcomes = tmp_path / "outcomes.ndjson"
    code, stdout, stderr = await run_streamsend(
        [
            "send",
            str(campaign),
            "--base-url",
            emu.base_url,
            "--from",
            V1_LIST,
            "--log-level",
            "debug",
            "--log-format",
            "json",
            "--outcomes",
            str(outcomes),
        ],
        env=clean_env(TRACKLY_API_KEY=WRONG_KEY),
        cwd=tmp_path,
        timeout_s=RUN_TIMEOUT,
    )

    assert code == 3, stderr
    _assert_no_key_anywhere(WRONG_KEY, stdout, stderr, *_written_files(tmp_path))
    _assert_no_key_anywhere(API_KEY, stdout, stderr)
    fatal = [e for e in _events(stderr) if e["event"] == "fatal_service_answer"]
    assert fatal
    assert fatal[0]["status"] == 401


# --- metrics during a run -------------------------------------------------------------------------


async def _scrape(session: aiohttp.ClientSession, url: str) -> dict[str, dict[str, float]]:
    """Non-zero samples by metric name, keyed by the label that matters here (status or code),
    summed over the others (e.g. sender)."""
    async with session.get(url + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            label = sample.labels.get("status") or sample.labels.get("code") or ""
            by_label = samples.setdefault(sample.name, {})
            by_label[label] = by_label.get(label, 0.0) + sample.value
    return {name: {k: v for k, v in values.items() if v} for name, values in samples.items()}


async def test_metrics_scraped_during_a_run_agree_with_the_outcomes(tmp_path: Path) -> None:
    """With input still arriving on stdin, /metrics counts exactly what the outcomes file holds:
    messages by status, lines read, segments of the requests' messages; /healthz is up."""
    outcomes = tmp_path / "outcomes.ndjson"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streamsend",
        "send",
        "--emulator",
        "--metrics-port",
        "0",
        "--log-format",
        "json",
        "--outcomes",
        str(outcomes),
        "--batch-size",
        "10",
        "--linger-ms",
        "20",
        "--fsync",
        "off",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
        cwd=tmp_path,
    )
    assert process.stdin is not None
    assert process.stderr is not None
    stderr_lines: list[bytes] = []
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            url = None
            while url is None:
                line = await process.stderr.readline()
                assert line, b"".join(stderr_lines)  # the process ended before serving metrics
                stderr_lines.append(line)
                event = orjson.loads(line)
                if event["event"] == "metrics_listening":
                    url = str(event["url"])

            lines = (
                [
                    orjson.dumps({"to_msisdn": f"+4477009{i:05d}", "body": "é" * (100 + i * 3)})
                    for i in range(25)
                ]
                + [b'{"to_msisdn": "12", "body": "x"}'] * 3
                + [b"", b"   "]
            )
            process.stdin.write(b"\n".join(lines) + b"\n")
            await process.stdin.drain()

            async with aiohttp.ClientSession() as session:
                async with session.get(url + "/healthz") as response:
                    assert response.status == 200
                # Outcomes are written before they are counted; wait until both have all 28.
                while True:
                    samples = await _scrape(session, url)
                    written = _outcomes(outcomes) if outcomes.exists() else []
                    if sum(samples["streamsend_messages_total"].values()) == 28 == len(written):
                        break
                    await asyncio.sleep(0.02)

            # The run is still going (stdin is open): this is a scrape during the run.
            assert process.returncode is None
            by_status = Counter(str(o["status"]) for o in written)
            assert samples["streamsend_messages_total"] == by_status
            assert by_status == {"queued": 25, "invalid": 3}
            assert samples["streamsend_lines_read_total"][""] == 28  # blank lines are not counted
            sent_segments = sum(
                int(str(o["segments"])) for o in written if o["status"] in ("queued", "rejected")
            )
            assert sent_segments > 25  # bodies of 100+ GSM-7 characters: some take two
            assert samples["streamsend_segments_total"][""] == sent_segments
            assert samples["streamsend_requests_total"]["201"] >= 3
            assert samples["streamsend_requests_in_flight"] == {}  # zero: nothing left out
            assert samples["streamsend_send_rate_messages_per_second"][""] > 0

            process.stdin.close()
            rest = await process.stderr.read()
            stderr_lines.append(rest)
            assert await process.wait() == 1  # finished; some lines invalid
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    _assert_no_key_anywhere(None, b"".join(stderr_lines), outcomes.read_bytes())
