"""`streamsend worker`, SIGKILLed by itself at one point of its work: the tests' crash hook.

    python tests/worker_killed_at.py POINT [worker flags...]

POINT is where the process kills itself (SIGKILL: no cleanup, no drain), the first time it
gets there:
- `taken`: right after taking entries (they are pending to it, nothing is started);
- `started`: right after a request's "started" record is written, before its first byte leaves;
- `mid_request`: once a request's headers reached the socket, before the answer;
- `committed`: right after a commit (outcomes written and acked).

The hook wraps streamsend's own functions in this process only, so production code carries no
test switch.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from streamsend import _attempts, _dispatch, _redis_job, _redis_seams
from streamsend._cli import main


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _after(
    method: Callable[..., Awaitable[Any]], when: Callable[[Any], bool]
) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = await method(*args, **kwargs)
        if when(result):
            _die()
        return result

    return wrapped


def install(point: str) -> None:
    if point == "taken":
        job = _redis_job.RedisJob
        job.take = _after(job.take, bool)  # type: ignore[method-assign, assignment]
    elif point == "started":
        job = _redis_job.RedisJob
        job.start = _after(job.start, bool)  # type: ignore[method-assign, assignment]
    elif point == "mid_request":
        original = _attempts.mark_transmitted

        async def transmitted(session: Any, ctx: Any, params: object) -> None:
            await original(session, ctx, params)
            _die()

        # The dispatcher registers the hook under the name it imported.
        _dispatch.mark_transmitted = transmitted  # type: ignore[attr-defined]
    elif point == "committed":
        sink = _redis_seams.RedisSink
        original_flush = sink.flush

        async def flush(self: _redis_seams.RedisSink) -> None:
            had = bool(self._buffer)
            await original_flush(self)
            if had:
                _die()

        sink.flush = flush  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    install(sys.argv[1])
    sys.exit(main(["worker", *sys.argv[2:]]))
