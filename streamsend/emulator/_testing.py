"""Fixed names and small helpers for tests, the demo and benchmarks that use the emulator.

The key has the real format (`trk_` and 32 letters or digits) so that a client checking the
format accepts it; it is a test value, worthless anywhere else.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import aiohttp
import orjson

from streamsend.emulator._app import RunningEmulator

#: An API key in Trackly's format, accepted by emulators configured with it.
API_KEY = "trk_" + "Te5tKey0nlyForTheEmulat0r0000000"
#: A v1 sending-list id (from_phone_number_id), as in the API documentation's examples.
V1_LIST = "pn_abc123def456"
#: A v2 list number (E.164), as in the API documentation's examples.
V2_LIST = "+18005551000"


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
