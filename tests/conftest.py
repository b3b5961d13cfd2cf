"""Shared fixtures: an in-process Trackly emulator on loopback, and an HTTP client session;
and the helpers that several test modules use (import them: `from tests.conftest import ...`).

`emulator` yields a factory, so each test states the configuration it depends on:

    async def test_something(emulator: EmulatorFactory) -> None:
        emu = await emulator(faults=FaultConfig(error_5xx=1.0))

Every emulator a test starts is stopped when the test ends. The defaults are the names in
`streamsend.emulator._testing` (re-exported here) and a ledger in the test's tmp_path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from streamsend.emulator import EmulatorConfig, RunningEmulator, run_emulator
from streamsend.emulator._testing import API_KEY, V1_LIST, V2_LIST, EmulatorFactory

__all__ = ["API_KEY", "V1_LIST", "V2_LIST", "EmulatorFactory", "RecordingLog", "clean_env"]


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
    """The environment without any key or STREAMSEND_* setting of the developer's own, plus
    `extra`: what a `streamsend` subprocess of a test runs with."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name != "TRACKLY_API_KEY" and not name.startswith("STREAMSEND_")
    }
    return {**env, **extra}
