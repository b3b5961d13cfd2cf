"""Run the `streamsend` CLI exactly as its console script does, timing each HTTP request.

    python -m benchmarks._streamsend_traced --stats PATH send INPUT --base-url ... --outcomes ...

streamsend keeps only a coarse latency histogram, so the harness measures request latency from
the client side itself: before calling `streamsend._cli.main`, it adds one aiohttp `TraceConfig`
(request start → response headers received) to every `ClientSession` the run creates, and at the
end writes {elapsed_seconds, request_latencies_s} to PATH, the same file the baselines write.
Two callbacks per request of 1,000 messages cost nothing measurable per message; everything else
(arguments, settings, exit status) is the CLI's own.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp

from streamsend._cli import main as streamsend_main


def _record_latencies_into(latencies: list[float]) -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()

    async def on_start(session: aiohttp.ClientSession, ctx: SimpleNamespace, params: Any) -> None:
        ctx.started = time.perf_counter()

    async def on_end(session: aiohttp.ClientSession, ctx: SimpleNamespace, params: Any) -> None:
        latencies.append(time.perf_counter() - ctx.started)

    trace.on_request_start.append(on_start)
    trace.on_request_end.append(on_end)
    return trace


def _add_trace_to_every_session(trace: aiohttp.TraceConfig) -> None:
    original_init = aiohttp.ClientSession.__init__

    @functools.wraps(original_init)
    def init_with_trace(self: aiohttp.ClientSession, *args: Any, **kwargs: Any) -> None:
        kwargs["trace_configs"] = [*(kwargs.get("trace_configs") or ()), trace]
        original_init(self, *args, **kwargs)

    aiohttp.ClientSession.__init__ = init_with_trace  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "--stats":
        print(
            "usage: python -m benchmarks._streamsend_traced --stats PATH ARGS...", file=sys.stderr
        )
        return 2
    stats_path = Path(argv[1])
    latencies: list[float] = []
    _add_trace_to_every_session(_record_latencies_into(latencies))
    started = time.perf_counter()
    try:
        return streamsend_main(argv[2:])
    finally:
        elapsed = time.perf_counter() - started
        stats_path.write_text(
            json.dumps({"elapsed_seconds": elapsed, "request_latencies_s": latencies})
        )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
