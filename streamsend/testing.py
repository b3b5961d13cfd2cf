"""The public test kit: an in-process emulator, fixed test names, and line sources from memory.

For your own tests of code that uses streamsend, and for streamsend's tests and benchmarks::

    from streamsend.testing import API_KEY, V1_LIST, EmulatorConfig, run_emulator, lines_from

    async with run_emulator(EmulatorConfig(api_keys=(API_KEY,), v1_lists=(V1_LIST,))) as emu:
        ...  # send to emu.base_url; check emu.stats() and read_ledger(emu.ledger_path)

No production module imports this one (a test checks it). The key has the real format (`trk_`
and 32 letters or digits) so that a client checking the format accepts it; it is a test value,
worthless anywhere else.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import aiohttp
import orjson

from streamsend._types import LineBlock
from streamsend.emulator import EmulatorConfig, FaultConfig, RunningEmulator, run_emulator
from streamsend.emulator._config import DEFAULT_V1_LIST, DEFAULT_V2_LIST

#: An API key in Trackly's format, accepted by emulators configured with it.
API_KEY = "trk_" + "Te5tKey0nlyForTheEmulat0r0000000"
#: A v1 sending-list id (from_phone_number_id), as in the API documentation's examples.
V1_LIST = DEFAULT_V1_LIST
#: A v2 list number (E.164), as in the API documentation's examples.
V2_LIST = DEFAULT_V2_LIST

__all__ = [
    "API_KEY",
    "V1_LIST",
    "V2_LIST",
    "EmulatorConfig",
    "EmulatorFactory",
    "FaultConfig",
    "Reply",
    "RunningEmulator",
    "lines_from",
    "post",
    "read_ledger",
    "run_emulator",
]


async def lines_from(lines: Sequence[bytes], source: str = "-") -> AsyncIterator[LineBlock]:
    """A `LineSource` over lines already in memory (without line endings), numbered from 1."""
    yield LineBlock(source, 1, list(lines), sum(len(line) + 1 for line in lines))


class EmulatorFactory(Protocol):
    """Starts an emulator with the test defaults, changed by `overrides` (EmulatorConfig fields)."""

    async def __call__(self, **overrides: Any) -> RunningEmulator: ...


class Reply(NamedTuple):
    """What a client saw of one answer."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body, decoded."""
        return orjson.loads(self.body)


async def post(
    session: aiohttp.ClientSession,
    url: str,
    payload: object = None,
    *,
    data: bytes | None = None,
    key: str | None = API_KEY,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """POST `payload` as JSON (or raw `data`) with the test key; return what came back."""
    sent_headers = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        sent_headers["X-Api-Key"] = key
    body = data if data is not None else orjson.dumps(payload)
    # aiohttp warns (ResourceWarning) about bytes bodies over 1 MiB; a BytesIO is streamed instead
    # and still sent with a Content-Length.
    sent: bytes | io.BytesIO = io.BytesIO(body) if len(body) > 1024 * 1024 else body
    async with session.post(url, data=sent, headers=sent_headers) as response:
        return Reply(response.status, dict(response.headers), await response.read())


def read_ledger(path: Path | None) -> list[dict[str, Any]]:
    """The ledger's records, in order (none when the file doesn't exist yet)."""
    if path is None or not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]
