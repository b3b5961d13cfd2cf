"""Shared fixtures: an in-process Trackly emulator on loopback, and an HTTP client session;
and the helpers that several test modules use (import them: `from tests.conftest import ...`).

`emulator` yields a factory, so each test states the configuration it depends on:

    async def test_something(emulator: EmulatorFactory) -> None:
        emu = await emulator(faults=FaultConfig(error_5xx=1.0))

Every emulator a test starts is stopped when the test ends. The defaults are the names in
`streamsend.testing` (re-exported here) and a ledger in the test's tmp_path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from streamsend.emulator import EmulatorConfig, RunningEmulator, run_emulator
from streamsend.testing import API_KEY, V1_LIST, V2_LIST, EmulatorFactory, read_ledger

# The Redis fixtures (the shared server, private killable ones, a job per test).
pytest_plugins = ["tests.redis_fixtures"]

__all__ = [
    "API_KEY",
    "V1_LIST",
    "V2_LIST",
    "EmulatorFactory",
    "EmulatorProcess",
    "RecordingLog",
    "clean_env",
    "emulator_subprocess",
    "ledger_lines",
    "ndjson_records",
    "outcome_history",
    "run_streamsend",
    "serve_locally",
    "write_numbered_input",
]


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[EmulatorFactory]:
    """A factory of running emulators (key, one v1 list, one v2 list, a ledger in tmp_path)."""
    async with contextlib.AsyncExitStack() as running:

        async def make(**overrides: Any) -> RunningEmulator:
            settings: dict[str, Any] = {
                "api_keys": (API_KEY,),
                "v1_lists": (V1_LIST,),
                "v2_lists": (V2_LIST,),
                "ledger_path": tmp_path / "ledger.ndjson",
                **overrides,
            }
            return await running.enter_async_context(run_emulator(EmulatorConfig(**settings)))

        yield make


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """An aiohttp client session, closed after the test."""
    async with aiohttp.ClientSession() as client:
        yield client


class RecordingLog:
    """Stands in for the structlog logger: keeps (level, event, fields) for the assertions."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, object]]] = []

    def bind(self, **fields: object) -> RecordingLog:
        return self

    def debug(self, event: str, **fields: object) -> None:
        self.events.append(("debug", event, fields))

    def info(self, event: str, **fields: object) -> None:
        self.events.append(("info", event, fields))

    def warning(self, event: str, **fields: object) -> None:
        self.events.append(("warning", event, fields))

    def error(self, event: str, **fields: object) -> None:
        self.events.append(("error", event, fields))

    def named(self, event: str) -> list[tuple[str, str, dict[str, object]]]:
        """The recorded entries of this event, in order."""
        return [entry for entry in self.events if entry[1] == event]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any key, STREAMSEND_* setting or proxy of the developer's own,
    plus `extra`: what a `streamsend` subprocess of a test runs with."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name != "TRACKLY_API_KEY"
        and not name.startswith("STREAMSEND_")
        and not name.lower().endswith("_proxy")
    }
    return {**env, **extra}


@contextlib.asynccontextmanager
async def serve_locally(app: web.Application) -> AsyncIterator[str]:
    """`app` (a fake service) served on a free loopback port until the block ends; yields its
    base URL, `http://127.0.0.1:<port>/api`."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}/api"
    finally:
        await runner.cleanup()


# -- `streamsend emulator` in its own process, and the files a subprocess run leaves -----------


@dataclass
class EmulatorProcess:
    """A running `streamsend emulator` subprocess: its base URL, its ledger, the process."""

    base_url: str
    ledger: Path
    process: subprocess.Popen[bytes]

    def ledger_records(self) -> list[dict[str, Any]]:
        return read_ledger(self.ledger)

    def stats(self) -> dict[str, Any]:
        url = self.base_url.removesuffix("/api") + "/_emulator/stats"
        with urllib.request.urlopen(url, timeout=30) as response:
            stats: dict[str, Any] = orjson.loads(response.read())
        return stats


@contextlib.contextmanager
def emulator_subprocess(
    tmp_path: Path, *flags: str, start_within_s: float = 20.0
) -> Iterator[EmulatorProcess]:
    """`streamsend emulator` in its own process on a free port, with the test key, the v1 list,
    a ledger in tmp_path and `flags`; stopped with SIGTERM when the block ends (killed if it
    takes over 10 s). A caller that checks how it exits stops it itself first."""
    ledger = tmp_path / "ledger.ndjson"
    log = tmp_path / "emulator.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "streamsend", "emulator", "--port", "0"),
                *("--api-key", API_KEY, "--list", V1_LIST, "--ledger", str(ledger)),
                *flags,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=clean_env(),
        )
    try:
        deadline = time.monotonic() + start_within_s
        while (match := re.search(rb"listening on (\S+)", log.read_bytes())) is None:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the emulator didn't start"
            time.sleep(0.02)
        yield EmulatorProcess(match[1].decode(), ledger, process)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def write_numbered_input(path: Path, lines: int, *, invalid_every: int | None = None) -> None:
    """`lines` v1 input lines, line n to `+1415<n>` with the body `m<n>` (which is how a ledger
    record is traced to its line); with `invalid_every`, every line n with
    n % invalid_every == invalid_every // 2 is `{not json` instead."""
    with path.open("wb") as out:
        for n in range(1, lines + 1):
            if invalid_every is not None and n % invalid_every == invalid_every // 2:
                out.write(b"{not json\n")
            else:
                out.write(orjson.dumps({"to_msisdn": f"+1415{n:07d}", "body": f"m{n}"}) + b"\n")


def ndjson_records(path: Path, *, skip_torn: bool) -> list[dict[str, Any]]:
    """The records of an NDJSON file that another process writes (a ledger, an outcomes file).

    skip_torn=True is for a file read while its writer runs, or after it was killed with
    SIGKILL: the file may not exist yet (no records), and a line cut off mid-write is no record.
    skip_torn=False is for a file whose writer stopped gracefully: the file must exist and every
    line must be whole JSON, or the test fails.
    """
    if skip_torn and not path.exists():
        return []
    records = []
    for raw in path.read_bytes().splitlines():
        try:
            records.append(orjson.loads(raw))
        except orjson.JSONDecodeError:
            if not skip_torn:
                raise
    return records


def ledger_lines(path: Path, *, skip_torn: bool) -> list[int]:
    """The input line of every message in the ledger, in order (from its body, `m<line>`)."""
    return [
        int(record["body"].removeprefix("m"))
        for record in ndjson_records(path, skip_torn=skip_torn)
    ]


def outcome_history(path: Path, *, skip_torn: bool) -> dict[int, list[dict[str, Any]]]:
    """Every outcome of every line in an outcomes file, in the order written."""
    history: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in ndjson_records(path, skip_torn=skip_torn):
        history[record["line"]].append(record)
    return history


async def run_streamsend(
    args: Sequence[str], *, env: Mapping[str, str], timeout_s: float, cwd: Path | None = None
) -> tuple[int, bytes, bytes]:
    """`python -m streamsend <args>` as an asyncio subprocess (so that an emulator in the test's
    event loop keeps serving), stdin empty: its exit code, stdout and stderr, within timeout_s."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "streamsend", *args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
        cwd=cwd,
    )
    async with asyncio.timeout(timeout_s):
        stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout, stderr
