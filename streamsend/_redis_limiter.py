"""One rate per sending number across every worker: GCRA in one Lua script, on Redis's clock.

The service drains each sending list at its send rate and drops what waits over 30 minutes, so
two workers that each pace a number on their own send it twice as fast as it drains. This
limiter keeps the pacing in Redis, shared by all of them (the `RateLimiter` seam):

- generic cell rate algorithm (brandur/redis-cell; rwz/redis-gcra): one key per sending number
  holds the theoretical arrival time (TAT); n messages cost n × T (T = 1/rate) and may leave at
  TAT + n·T − burst·T. `now` is Redis's `TIME`, read inside the script, so every worker on every
  machine uses one clock;
- a taker told to wait sleeps, then asks again, so nothing is admitted before its time even
  when a sleeper or the network is late; each late ask would lose its lateness from the rate
  (the TAT restarts from now), which cost 6% of a 30,000/s rate shared by 3 workers (measured),
  so the TAT may lag `LATENESS_SLACK_S` behind now, banking that much lateness, as the local
  limiter's slack does;
- the burst is one batch (`batch_cap`), or a full batch would never pass (rwz/redis-gcra#6);
  with the slack, over any window of t seconds a number is admitted at most
  rate × t + one batch + `LATENESS_SLACK_S` of the rate;
- Redis unreachable: nothing is admitted (fail closed); `acquire` waits and retries until Redis
  answers again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis.asyncio as aioredis

from streamsend._pacing import LATENESS_SLACK_S, batch_cap_for_rate
from streamsend._redis_job import until_reachable
from streamsend._types import Logger

# Microseconds throughout: Lua numbers are doubles, exact to 2^53 µs (285 years).
# ARGV: T (µs per message), burst (messages), n, slack (µs). Returns 0 (admitted) or µs to wait.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local emission = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = now - tonumber(ARGV[4])
if tat < floor then tat = floor end
local new_tat = tat + tonumber(ARGV[3]) * emission
local allow_at = new_tat - tonumber(ARGV[2]) * emission
if allow_at > now then return math.ceil(allow_at - now) end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat),
           'PX', math.ceil((new_tat - now) / 1000) + 1000)
return 0
"""

#: Where the rate keys live: the rate of a sending number is the service's, whatever the job.
DEFAULT_PREFIX = "streamsend:rate:"


class RedisRateLimiter:
    """The `RateLimiter` seam shared by every process that uses the same Redis and prefix."""

    def __init__(
        self,
        client: aioredis.Redis,
        rate_for: Callable[[str], float | None],
        *,
        batch_size: int,
        prefix: str = DEFAULT_PREFIX,
        log: Logger = None,
    ) -> None:
        self._rate_for = rate_for
        self._batch_size = batch_size
        self._prefix = prefix
        self._log = log
        self._script = client.register_script(_GCRA)

    def batch_cap(self, sender: str) -> int:
        return batch_cap_for_rate(self._rate_for(sender), self._batch_size)

    async def acquire(self, sender: str, messages: int) -> None:
        rate = self._rate_for(sender)
        if not rate:
            return
        cap = self.batch_cap(sender)
        # More than the burst would never pass: take what one admission can give (as the local
        # limiter does).
        cost = min(messages, cap)
        args = (1_000_000 / rate, cap, cost, LATENESS_SLACK_S * 1_000_000)
        key = self._prefix + sender
        while True:
            wait_us = int(
                await until_reachable(
                    lambda: self._script(keys=[key], args=args), self._log, "rate limiter"
                )
            )
            if wait_us <= 0:
                return
            await asyncio.sleep(wait_us / 1_000_000)
