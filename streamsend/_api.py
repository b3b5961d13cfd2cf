"""The library API: the same run as `streamsend send`, fed from Python.

    settings = Settings(base_url="https://app.tracklysms.com/api", sender="pn_abc123def456")
    async with Client(settings, api_key=key) as client:
        await client.send({"to_msisdn": "+14155551234", "body": "Hi!", "ref": "c-1"})
        ...
    for outcome in client.results:   # or `async for outcome in client.outcomes()` meanwhile
        ...

Messages are numbered from 1 in the order given (`Outcome.line`), and each gets exactly one
Outcome, as lines of a file do. `send()` waits when the pipeline is behind (backpressure), so a
producer can't outrun the service by buffering without bound. The run is assembled by
`open_run()`, as the command line's is: with `outcomes` set to a file in the settings, a journal
is kept beside it as well.

`Settings.base_url` defaults to the production API; point it at `streamsend emulator` (or use
`streamsend.testing.run_emulator`) to rehearse. The key is checked as the command line checks it:
a placeholder such as "trk_..." raises ConfigError at once. The client behaves as a library:
it configures no logging and writes nothing to stdout or stderr; its events are records of the
standard logger "streamsend" (or the `logger` given), silent unless the caller enables them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from types import TracebackType

import orjson

from streamsend._config import Settings, check_api_key
from streamsend._logs import library_logger
from streamsend._models import Outcome
from streamsend._outcomes import MemorySink
from streamsend._pipeline import Pipeline, RunResult
from streamsend._run import open_run
from streamsend._stats import RunStats
from streamsend._types import LineBlock

_SOURCE = "<api>"


class Client:
    """Send messages from Python through the full pipeline (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        api_key: str,
        source_name: str = _SOURCE,
        max_pending: int = 64,
        logger: logging.Logger | None = None,
    ) -> None:
        self.settings = settings
        self.stats = RunStats()
        self._api_key = check_api_key(api_key, "Client(api_key=...)")
        self._log = library_logger(logger)
        self._blocks: asyncio.Queue[LineBlock | None] = asyncio.Queue(maxsize=max_pending)
        self._sink = MemorySink()
        self._source_name = source_name
        self._next_line = 1
        self._stack = contextlib.AsyncExitStack()
        self._pipeline: Pipeline | None = None
        self._task: asyncio.Task[RunResult] | None = None
        self.result: RunResult | None = None
        self.results: list[Outcome] = []  # every outcome, once the client is closed

    async def __aenter__(self) -> Client:
        run = await self._stack.enter_async_context(
            open_run(
                self.settings,
                api_key=self._api_key,
                source=self._read_blocks(),
                sink=self._sink,
                stats=self.stats,
                log=self._log,
            )
        )
        self._pipeline = run.pipeline
        self._task = asyncio.create_task(run.pipeline.run(), name="streamsend-pipeline")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and self._pipeline is not None:
            self._pipeline.request_stop()
            self._pipeline.request_stop()  # leaving on an error: stop at once
        await self.aclose()

    async def send(self, message: Mapping[str, object]) -> int:
        """Queue one message (a dict like an input line); returns its line number."""
        return await self.send_many([message])

    async def send_many(self, messages: Iterable[Mapping[str, object]]) -> int:
        """Queue several messages at once (cheaper than one by one); returns the last number."""
        encoded = [orjson.dumps(m) for m in messages]
        if not encoded:
            return self._next_line - 1
        self._ensure_running()
        lines: list[bytes | None] = list(encoded)
        block = LineBlock(self._source_name, self._next_line, lines, sum(map(len, encoded)))
        self._next_line += len(lines)
        await self._blocks.put(block)
        return self._next_line - 1

    async def outcomes(self) -> AsyncIterator[Outcome]:
        """Outcomes as they arrive, each handed out once, until the client is closed."""
        async for outcome in self._sink.stream():
            self.results.append(outcome)
            yield outcome

    async def aclose(self) -> RunResult:
        """End of input: wait until every message has its outcome."""
        if self._task is None:
            raise RuntimeError("use `async with Client(...)`")
        if self.result is None:
            if not self._task.done():
                # The pipeline may stop on its own (a fatal answer) while we wait for room.
                end = asyncio.ensure_future(self._blocks.put(None))
                await asyncio.wait([end, self._task], return_when=asyncio.FIRST_COMPLETED)
                end.cancel()
            try:
                self.result = await self._task
            finally:
                self._sink.close()  # ends outcomes()
                await self._stack.aclose()  # closes the journal, if the settings keep one
            self.results.extend(self._sink.outcomes)
            self._sink.outcomes.clear()
        return self.result

    def _ensure_running(self) -> None:
        if self._task is None:
            raise RuntimeError("use `async with Client(...)` before sending")
        if self._task.done():
            raise RuntimeError("the pipeline has stopped (see .result); no more messages")

    async def _read_blocks(self) -> AsyncIterator[LineBlock]:
        while (block := await self._blocks.get()) is not None:
            yield block
