"""The library behaves like a library: the README's example runs as written, nothing is printed,
events go to the standard `logging` module, and keys are checked as the command line checks them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from pathlib import Path

import pytest

from streamsend import Client, ConfigError, Settings, Status
from streamsend.testing import API_KEY, V1_LIST, EmulatorFactory
from tests.conftest import clean_env

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_library_example() -> str:
    """The ```python block of the README's "Library" section, as written."""
    section = README.read_text(encoding="utf-8").split("\n## Library\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the README's Library section has no python block"
    return match[1]


async def test_readme_library_example_runs_as_written_and_prints_only_its_own_output(
    emulator: EmulatorFactory,
) -> None:
    """The README's example, unchanged, sends through the emulator (STREAMSEND_BASE_URL, as its
    comment says) and prints one line per message; the library adds nothing to stdout or stderr,
    not even the v1 deprecation warning, since the program configured no logging."""
    emu = await emulator()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        readme_library_example(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(TRACKLY_API_KEY=API_KEY, STREAMSEND_BASE_URL=emu.base_url),
    )
    async with asyncio.timeout(60):
        stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().splitlines() == ["1 queued None p-0", "2 queued None p-1"]
    assert stderr == b""
    assert emu.stats()["messages_queued"] == 2


async def test_events_go_to_the_logger_the_caller_passes(
    emulator: EmulatorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """`Client(logger=...)`: the run's events (the v1 deprecation warning among them) are
    records of that standard logger, with the key redacted; stdout stays untouched."""
    emu = await emulator()
    caller_logger = logging.getLogger("myapp.sms")
    settings = Settings(base_url=emu.base_url, sender=V1_LIST, linger_ms=5.0)
    with caplog.at_level(logging.DEBUG, logger="myapp.sms"):
        async with Client(settings, api_key=API_KEY, logger=caller_logger) as client:
            await client.send({"to_msisdn": "+14155550100", "body": "hi"})
    assert [o.status for o in client.results] == [Status.QUEUED]
    records = [r for r in caplog.records if r.name == "myapp.sms"]
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert any(r.getMessage().startswith("api_deprecated") for r in warnings)
    assert any(r.getMessage().startswith("request") for r in records if r.levelno == logging.DEBUG)
    assert all(API_KEY not in r.getMessage() for r in records)


async def test_default_logger_is_streamsend_and_follows_the_callers_level(
    emulator: EmulatorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Without `logger=`, events are records of the "streamsend" logger; below the level the
    caller set, none are emitted."""
    emu = await emulator()
    settings = Settings(base_url=emu.base_url, sender=V1_LIST, linger_ms=5.0)
    with caplog.at_level(logging.ERROR, logger="streamsend"):
        async with Client(settings, api_key=API_KEY) as client:
            await client.send({"to_msisdn": "+14155550100", "body": "hi"})
    assert [r for r in caplog.records if r.name == "streamsend"] == []
    with caplog.at_level(logging.WARNING, logger="streamsend"):
        async with Client(settings, api_key=API_KEY) as client:
            await client.send({"to_msisdn": "+14155550101", "body": "hi"})
    messages = [r.getMessage() for r in caplog.records if r.name == "streamsend"]
    assert any(m.startswith("api_deprecated") for m in messages)


@pytest.mark.parametrize("key", ["trk_...", "", "bogus", "trk_" + "x" * 31])
def test_placeholder_or_malformed_key_is_refused_like_the_cli(key: str) -> None:
    """A key not shaped like a Trackly key raises ConfigError when the Client is made, before
    anything is sent, with the same wording `streamsend send` uses (and without the value)."""
    with pytest.raises(ConfigError, match="not shaped like a Trackly key") as raised:
        Client(Settings(), api_key=key)
    assert key not in str(raised.value) or not key
