"""A job in Redis: its key layout, and every step that touches it as one atomic Lua script.

A job is one campaign that many workers share. Its keys carry the job's name as a hash tag
(`streamsend:job:{NAME}:...`), so that every script's keys live in one slot (Redis Cluster):

    meta        hash: api_version; source:<name> -> n, name:<n> -> name, hw:<n> (the highest line
                of input n enqueued); lines, enqueued, done, status:<s> counters; input_complete;
                next_worker; max_request
    senders     set: the sending numbers with a stream
    s:<sender>  stream of one sending number's messages, consumer group "workers"; an entry's ID
                is <n>-<line> (input n, line): derived from the input, so enqueueing the same
                input again adds nothing, and the ID alone says which line it is
    started     hash: entry ID -> "<worker> <request>": the request that carries the entry may
                have left (written before its first byte does)
    outcomes    stream of outcome NDJSON, one entry per commit (what `collect` writes out)
    workers     hash: worker name -> its last heartbeat (JSON); done -> lines committed by it

What it promises, with the scripts below:
- `take`, `start`, `commit` and `renew` act only on entries pending to the calling worker
  (fencing): a worker whose lease ran out and whose entries another worker claimed can neither
  start nor commit them;
- `start` writes the "request started" record and renews the lease in one step; `commit` writes
  the outcomes, acks the entries and deletes their records in one step, so a line never has an
  outcome and still be pending, nor be acked without its outcome.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import orjson
import redis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamsend._exceptions import ConfigError
from streamsend._expiry import Expiry
from streamsend._journal import ResumeState
from streamsend._models import Encoding, Message, Outcome
from streamsend._types import Logger

GROUP = "workers"
#: What the Redis tests and the error messages tell a user who has no Redis running.
START_REDIS_HINT = "start one with: redis-server --port 6379 --save '' --daemonize yes"
#: Errors that mean "Redis can't be reached right now": retried (fail closed), never a crash.
UNREACHABLE: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)

_T = TypeVar("_T")


def connect(url: str) -> aioredis.Redis:
    """A client for `url` (redis://, rediss:// or unix://). Replies stay bytes: entries are
    bytes end to end, and decoding every reply would cost CPU for nothing."""
    try:
        # A socket timeout well above the longest command (no blocking command is used), so a
        # dead server is noticed instead of awaited for ever; see scale-out.md on BLOCK.
        return aioredis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    except ValueError as exc:
        raise ConfigError(f"--redis: {exc}") from None


async def ping(client: aioredis.Redis, url: str) -> None:
    """Fail at once, with the fix, when Redis can't be reached at the start of a command."""
    try:
        await client.ping()
    except UNREACHABLE as exc:
        raise ConfigError(f"can't reach Redis at {url} ({exc}); {START_REDIS_HINT}") from None


async def until_reachable(
    call: Callable[[], Awaitable[_T]], log: Logger, what: str, *, max_delay: float = 1.0
) -> _T:
    """`call()`, retried while Redis is unreachable: nothing goes on without it (fail closed).

    Every script is safe to run twice (a reply lost with the connection leaves the work done,
    and the second run finds it so), which is what makes the retry right.
    """
    delay = 0.05
    warned = False
    while True:
        try:
            return await call()
        except UNREACHABLE as exc:
            if not warned and log is not None:
                log.warning("redis_unreachable", during=what, error=str(exc), retrying=True)
                warned = True
            await asyncio.sleep(delay)
            delay = min(max_delay, delay * 2)


# -- entries ------------------------------------------------------------------------------------

_ENCODINGS = {b"g": Encoding.GSM7, b"u": Encoding.UCS2}
# Message(...) with its keyword handling costs a third more per entry than building the tuple.
_new_message = partial(tuple.__new__, Message)
_ENCODING_CODE = {Encoding.GSM7: b"g", Encoding.UCS2: b"u"}


def pack_message(message: Message, enqueued_ms: int, moment: float | None = None) -> bytes:
    """A message as one stream field. Tabs separate: JSON (the wire form and the ref) escapes
    control characters, and a validated number is `+` and digits, so no part holds a tab.

    `moment` is the line's `send_before` (Unix time; empty when it has none): the worker that
    takes the entry checks it before every attempt, as `send` does, so a line is never sent
    after its moment however long it waited in the job.
    """
    return b"%d\t%b\t%d\t%b\t%b\t%b\t%b" % (
        enqueued_ms,
        message.to.encode(),
        message.segments,
        _ENCODING_CODE[message.encoding],
        b"" if moment is None else b"%d" % round(moment * 1000),
        message.ref_json,
        message.wire,
    )


def entry_id(source_no: int, line: int) -> bytes:
    return b"%d-%d" % (source_no, line)


def enqueued_ms(packed: bytes) -> int:
    return int(packed[: packed.index(b"\t")])


# -- scripts ------------------------------------------------------------------------------------

# Number an input by its name (what identifies it: the same name again is the same input).
_SOURCE_NUMBER = """
local no = redis.call('HGET', KEYS[1], 'source:' .. ARGV[1])
if no then return tonumber(no) end
no = redis.call('HINCRBY', KEYS[1], 'sources', 1)
redis.call('HSET', KEYS[1], 'source:' .. ARGV[1], no, 'name:' .. no, ARGV[1])
return no
"""

# One block of one input: entries for the lines above the input's high-water mark, the invalid
# lines' outcomes, the counters. KEYS: meta, senders, outcomes, stream per sender...
# ARGV: source_no, last_line, now_ms, n_invalid, (line, outcome) * n_invalid,
#       then per stream: n, (line, packed) * n
_ENQUEUE = """
local meta, senders, outcomes = KEYS[1], KEYS[2], KEYS[3]
local no = ARGV[1]
local hw = tonumber(redis.call('HGET', meta, 'hw:' .. no) or '0')
local i = 5
local invalid = {}
for _ = 1, tonumber(ARGV[4]) do
  if tonumber(ARGV[i]) > hw then invalid[#invalid + 1] = ARGV[i + 1] end
  i = i + 2
end
local added, refused = 0, 0
for k = 4, #KEYS do
  local stream = KEYS[k]
  if redis.call('SADD', senders, stream) == 1 then
    redis.pcall('XGROUP', 'CREATE', stream, 'workers', '0', 'MKSTREAM')
  end
  local n = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, n do
    if tonumber(ARGV[i]) > hw then
      local ok = redis.pcall('XADD', stream, no .. '-' .. ARGV[i], 'm', ARGV[i + 1])
      if type(ok) == 'table' and ok.err then refused = refused + 1 else added = added + 1 end
    end
    i = i + 2
  end
end
if #invalid > 0 then
  redis.call('XADD', outcomes, '*', 'o', table.concat(invalid))
  redis.call('HINCRBY', meta, 'done', #invalid)
  redis.call('HINCRBY', meta, 'status:invalid', #invalid)
end
redis.call('HINCRBY', meta, 'lines', added + #invalid)
redis.call('HINCRBY', meta, 'enqueued', added)
if tonumber(ARGV[2]) > hw then redis.call('HSET', meta, 'hw:' .. no, ARGV[2]) end
return {added, #invalid, refused}
"""

# Shared by the fenced scripts. Entry IDs travel as one space-separated argument: a thousand
# arguments cost the client more to pack and send than the whole rest of a commit.
# `owned` says which of `ids` are pending to `me`: one XPENDING over their range, filtered to this
# consumer, answers for all at once (a call per ID cost ~5 µs of Redis CPU per message); the
# range can hold more of our entries than these, so when the reply is cut at its limit, an ID
# missing from it is asked for alone.
_OWNED = """
local function split_ids(text)
  local ids = {}
  for id in string.gmatch(text, '%S+') do ids[#ids + 1] = id end
  return ids
end
local function id_parts(id)
  local a, b = string.match(id, '(%d+)-(%d+)')
  return tonumber(a), tonumber(b)
end
local function owned(stream, me, ids)
  local mine, lost = {}, {}
  if #ids == 0 then return mine, lost end
  local lo, hi = ids[1], ids[1]
  local lo_a, lo_b = id_parts(lo)
  local hi_a, hi_b = lo_a, lo_b
  for i = 2, #ids do
    local a, b = id_parts(ids[i])
    if a < lo_a or (a == lo_a and b < lo_b) then lo, lo_a, lo_b = ids[i], a, b end
    if a > hi_a or (a == hi_a and b > hi_b) then hi, hi_a, hi_b = ids[i], a, b end
  end
  local limit = 2 * #ids + 64
  local p = redis.call('XPENDING', stream, 'workers', lo, hi, limit, me)
  local pending = {}
  for _, e in ipairs(p) do pending[e[1]] = true end
  for _, id in ipairs(ids) do
    if pending[id] then
      mine[#mine + 1] = id
    elseif #p < limit then
      lost[#lost + 1] = id
    elseif redis.call('XPENDING', stream, 'workers', id, id, 1, me)[1] then
      mine[#mine + 1] = id
    else
      lost[#lost + 1] = id
    end
  end
  return mine, lost
end
-- Redis commands take at most ~8000 arguments from unpack(): act on IDs a thousand at a time.
local function each_thousand(ids, act)
  for i = 1, #ids, 1000 do act(unpack(ids, i, math.min(i + 999, #ids))) end
end
"""

# Before a request's first byte: all its entries must still be this worker's; then renew their
# lease and record "started". KEYS: stream, started, meta. ARGV: me, request, ids
_START = (
    _OWNED
    + """
local mine, lost = owned(KEYS[1], ARGV[1], split_ids(ARGV[3]))
if #lost > 0 then return 0 end
each_thousand(mine, function(...)
  redis.call('XCLAIM', KEYS[1], 'workers', ARGV[1], 0, ..., 'JUSTID')
end)
local record = ARGV[1] .. ' ' .. ARGV[2]
local fields = {}
for _, id in ipairs(mine) do fields[#fields + 1] = id; fields[#fields + 1] = record end
for i = 1, #fields, 1000 do
  redis.call('HSET', KEYS[2], unpack(fields, i, math.min(i + 999, #fields)))
end
local top = tonumber(redis.call('HGET', KEYS[3], 'max_request') or '0')
if tonumber(ARGV[2]) > top then redis.call('HSET', KEYS[3], 'max_request', ARGV[2]) end
return 1
"""
)

# A request's outcomes: all its entries must still be this worker's; then write the outcomes,
# ack, drop the "started" records and count, in one step. KEYS: stream, started, meta,
# outcomes, workers. ARGV: me, outcome bytes, ids, (status, count)...
# With no IDs, outcomes of lines that have no entry to ack (KEYS[1] is then any key).
_COMMIT = (
    _OWNED
    + """
local me = ARGV[1]
local ids = split_ids(ARGV[3])
if #ids > 0 then
  local mine, lost = owned(KEYS[1], me, ids)
  if #lost > 0 then return 0 end
  each_thousand(mine, function(...) redis.call('XACK', KEYS[1], 'workers', ...) end)
  each_thousand(mine, function(...) redis.call('HDEL', KEYS[2], ...) end)
end
redis.call('XADD', KEYS[4], '*', 'o', ARGV[2])
local total = 0
for i = 4, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[3], 'status:' .. ARGV[i], ARGV[i + 1])
  total = total + tonumber(ARGV[i + 1])
end
redis.call('HINCRBY', KEYS[3], 'done', total)
if me ~= '' then redis.call('HINCRBY', KEYS[5], 'done:' .. me, total) end
return 1
"""
)

# Renew the lease of the entries still this worker's; the others are returned (lost).
# KEYS: stream. ARGV: me, ids
_RENEW = (
    _OWNED
    + """
local mine, lost = owned(KEYS[1], ARGV[1], split_ids(ARGV[2]))
each_thousand(mine, function(...)
  redis.call('XCLAIM', KEYS[1], 'workers', ARGV[1], 0, ..., 'JUSTID')
end)
return lost
"""
)

# Give entries back at once (a worker stopping gracefully): idle as if their lease ran out.
# KEYS: stream. ARGV: me, idle_ms, ids
_RELEASE = (
    _OWNED
    + """
local mine = owned(KEYS[1], ARGV[1], split_ids(ARGV[3]))
each_thousand(mine, function(...)
  redis.call('XCLAIM', KEYS[1], 'workers', ARGV[1], 0, ..., 'IDLE', ARGV[2], 'JUSTID')
end)
return #mine
"""
)

# A request that certainly never left: drop its "started" records, but only those that are
# still this request's (another worker that took the entries over may have written its own).
# KEYS: started. ARGV: record ("<worker> <request>"), ids
_FORGET_START = (
    _OWNED
    + """
local n = 0
for _, id in ipairs(split_ids(ARGV[2])) do
  if redis.call('HGET', KEYS[1], id) == ARGV[1] then
    redis.call('HDEL', KEYS[1], id)
    n = n + 1
  end
end
return n
"""
)


def _raw_reply(response: Any, **options: Any) -> Any:
    return response


@dataclass(frozen=True, slots=True)
class Reclaimed:
    """What one XAUTOCLAIM pass took over from workers that stopped renewing."""

    entries: list[tuple[bytes, bytes]]  # (id, packed) now pending to us
    started: dict[bytes, bytes]  # id -> "<worker> <request>" for those that may have left
    deleted: list[bytes]  # IDs deleted while pending: no message left to send
    deliveries: dict[bytes, int]  # id -> how many workers have taken it, this one included


@dataclass(frozen=True, slots=True)
class JobCounts:
    lines: int  # lines that get an outcome (valid and invalid)
    done: int  # lines that have one
    input_complete: bool
    by_status: dict[str, int]

    @property
    def pending(self) -> int:
        return self.lines - self.done

    @property
    def complete(self) -> bool:
        return self.input_complete and self.done >= self.lines


class RedisJob:
    """One job's keys and scripts. Cheap to create; every method is one or a few round trips."""

    def __init__(self, client: aioredis.Redis, name: str) -> None:
        if not name or any(c in name for c in "{}\n\t "):
            raise ConfigError(f"job name {name!r}: use letters, digits, '-', '_' or '.'")
        # Any: redis-py types replies as unions of bytes and str (and awaitables or not); this
        # client never decodes, so every reply here is bytes.
        self.client: Any = client
        self.name = name
        base = f"streamsend:job:{{{name}}}:"
        self.base = base
        self.meta = base + "meta"
        self.senders = base + "senders"
        self.started = base + "started"
        self.outcomes = base + "outcomes"
        self.workers = base + "workers"
        self._source_names: dict[int, str] = {}
        self._source_numbers: dict[str, int] = {}
        # `take` flattens XREADGROUP's raw reply itself: redis-py's parsing builds a dict per
        # entry, a third of the worker's reading cost. Nothing else here reads it parsed.
        client.set_response_callback("XREADGROUP", _raw_reply)
        register = client.register_script
        self._source_number = register(_SOURCE_NUMBER)
        self._enqueue = register(_ENQUEUE)
        self._start = register(_START)
        self._commit = register(_COMMIT)
        self._renew = register(_RENEW)
        self._release = register(_RELEASE)
        self._forget_start = register(_FORGET_START)

    def stream(self, sender: str) -> str:
        return self.base + "s:" + sender

    def sender_of(self, stream: str) -> str:
        return stream[len(self.base) + 2 :]

    # -- inputs ---------------------------------------------------------------------------------

    async def source_number(self, source: str) -> int:
        number = self._source_numbers.get(source)
        if number is None:
            number = int(await self._source_number(keys=[self.meta], args=[source]))
            self._source_numbers[source] = number
            self._source_names[number] = source
        return number

    async def source_name(self, number: int) -> str:
        name = self._source_names.get(number)
        if name is None:
            raw = await self.client.hget(self.meta, f"name:{number}")
            if raw is None:
                raise ConfigError(f"job {self.name}: entry of unknown input {number}")
            name = raw.decode()
            self._source_names[number] = name
            self._source_numbers[name] = number
        return name

    def number_of(self, source: str) -> int:
        """The number of an input already numbered (every committed line's input is)."""
        return self._source_numbers[source]

    async def enqueue_block(
        self,
        source_no: int,
        last_line: int,
        by_sender: dict[str, list[Any]],
        invalid: Sequence[tuple[int, bytes]],
    ) -> tuple[int, int, int]:
        """Add one block: (added entries, invalid outcomes written, lines refused as out of
        order). `by_sender[s]` is a flat [line, packed, line, packed...] list."""
        keys = [self.meta, self.senders, self.outcomes, *map(self.stream, by_sender)]
        args: list[Any] = [source_no, last_line, 0, len(invalid)]
        for line, outcome in invalid:
            args += (line, outcome)
        for flat in by_sender.values():
            args.append(len(flat) // 2)
            args.extend(flat)
        added, invalid_added, refused = await self._enqueue(keys=keys, args=args)
        return int(added), int(invalid_added), int(refused)

    async def create(self, api_version: str) -> None:
        """Make sure the job exists and says which API version its entries are encoded for."""
        current = await self.client.hget(self.meta, "api_version")
        if current is not None and current.decode() != api_version:
            raise ConfigError(
                f"job {self.name} holds API {current.decode()} messages; enqueue with "
                f"--api-version {current.decode()} or use another job"
            )
        await self.client.hsetnx(self.meta, "api_version", api_version)
        await self.client.hsetnx(self.meta, "created_ms", int(time.time() * 1000))

    async def api_version(self) -> str:
        """The job's API version; a clear error when there is no such job."""
        raw = await self.client.hget(self.meta, "api_version")
        if raw is None:
            raise ConfigError(f"no job named {self.name!r} in this Redis (enqueue it first)")
        return str(raw.decode())

    async def mark_input_complete(self) -> None:
        await self.client.hset(self.meta, "input_complete", 1)

    async def counts(self) -> JobCounts:
        meta = {k.decode(): v.decode() for k, v in (await self.client.hgetall(self.meta)).items()}
        return JobCounts(
            lines=int(meta.get("lines", 0)),
            done=int(meta.get("done", 0)),
            input_complete=meta.get("input_complete") == "1",
            by_status={
                k.removeprefix("status:"): int(v)
                for k, v in meta.items()
                if k.startswith("status:") and int(v)
            },
        )

    async def sender_streams(self) -> list[str]:
        return sorted(m.decode() for m in await self.client.smembers(self.senders))

    # -- workers --------------------------------------------------------------------------------

    async def new_worker_number(self) -> int:
        return int(await self.client.hincrby(self.meta, "next_worker", 1))

    async def take(self, stream: str, worker: str, count: int) -> list[bytes]:
        """Up to `count` new entries, now pending to `worker`: [id, packed, id, packed...]."""
        # The raw reply, not redis-py's parsed one (a dict per entry), or None when there is
        # nothing new.
        reply = await self.client.execute_command(
            "XREADGROUP", "GROUP", GROUP, worker, "COUNT", count, "STREAMS", stream, ">"
        )
        if not reply:
            return []
        # RESP3 (redis-py 8's default) answers with a map {stream: entries}, RESP2 with pairs.
        entries = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
        return [part for entry_id_, fields in entries for part in (entry_id_, fields[1])]

    async def start(self, stream: str, worker: str, request: int, ids: Sequence[bytes]) -> bool:
        """Record that `request` may leave, if every entry is still `worker`'s (else False)."""
        done = await self._start(
            keys=[stream, self.started, self.meta], args=[worker, request, b" ".join(ids)]
        )
        return bool(done)

    async def forget_start(
        self, stream: str, worker: str, request: int, ids: Sequence[bytes]
    ) -> None:
        """The request never left: its lines are as good as never started (sent again)."""
        await self._forget_start(keys=[self.started], args=[f"{worker} {request}", b" ".join(ids)])

    async def commit(
        self,
        pipe: aioredis.client.Pipeline,
        *,
        stream: str,
        worker: str,
        outcomes: bytes,
        counts: dict[str, int],
        ids: Sequence[bytes],
    ) -> None:
        """Queue one commit on `pipe`; its reply is 1, or 0 when an entry was lost (fenced)."""
        args: list[Any] = [worker, outcomes, b" ".join(ids)]
        for status, count in counts.items():
            args += (status, count)
        await self._commit(
            keys=[stream, self.started, self.meta, self.outcomes, self.workers],
            args=args,
            client=pipe,
        )

    async def renew(self, stream: str, worker: str, ids: Sequence[bytes]) -> list[bytes]:
        """Renew the lease of `ids`; returns those no longer `worker`'s."""
        lost: list[bytes] = await self._renew(keys=[stream], args=[worker, b" ".join(ids)])
        return lost

    async def release(self, stream: str, worker: str, ids: Sequence[bytes], idle_ms: int) -> None:
        await self._release(keys=[stream], args=[worker, idle_ms, b" ".join(ids)])

    async def reclaim(self, stream: str, worker: str, min_idle_ms: int) -> Reclaimed:
        """Take over every entry idle for `min_idle_ms` (its worker stopped renewing)."""
        # Our own entries whose renewal came late (a busy worker) come back to us too, and
        # XAUTOCLAIM counts that as a delivery: note their counts first and put them back
        # after, so `times_delivered` counts takeovers, not our own lapses (else a slow but
        # living worker's lines reach MAX_DELIVERIES and end `failed`, never sent).
        own_lapsed = {
            p["message_id"]: int(p["times_delivered"])
            for p in await self.client.xpending_range(
                stream,
                GROUP,
                min="-",
                max="+",
                count=1_000_000,
                consumername=worker,
                idle=min_idle_ms,
            )
        }
        entries: list[tuple[bytes, bytes]] = []
        deleted: list[bytes] = []
        cursor: bytes | str = "0-0"
        while True:
            reply = await self.client.execute_command(
                "XAUTOCLAIM", stream, GROUP, worker, min_idle_ms, cursor, "COUNT", 1000
            )
            cursor = reply[0]
            for entry_id_, fields in reply[1]:
                if fields:
                    entries.append((entry_id_, fields[b"m"]))
            if len(reply) > 2 and reply[2]:
                deleted.extend(reply[2])
            if cursor in (b"0-0", "0-0"):
                break
        await self._restore_deliveries(stream, worker, own_lapsed, entries)
        started: dict[bytes, bytes] = {}
        deliveries: dict[bytes, int] = {}
        if entries:
            ids = [e[0] for e in entries]
            records: list[bytes | None] = await self.client.hmget(self.started, ids)
            started = {i: r for i, r in zip(ids, records, strict=True) if r is not None}
            pending = await self.client.xpending_range(
                stream, GROUP, min=ids[0], max=ids[-1], count=len(ids) + 1000, consumername=worker
            )
            deliveries = {p["message_id"]: int(p["times_delivered"]) for p in pending}
        return Reclaimed(entries, started, deleted, deliveries)

    async def _restore_deliveries(
        self,
        stream: str,
        worker: str,
        counts: dict[bytes, int],
        entries: Sequence[tuple[bytes, bytes]],
    ) -> None:
        """Set the delivery count of entries we claimed back from ourselves to what it was."""
        by_count: dict[int, list[bytes]] = {}
        for id_, _ in entries:
            count = counts.get(id_)
            if count is not None:
                by_count.setdefault(count, []).append(id_)
        for count, ids in by_count.items():
            for start in range(0, len(ids), 1000):
                # Min idle 0: they are ours already; JUSTID: no delivery is counted.
                await self.client.xclaim(
                    stream,
                    GROUP,
                    worker,
                    0,
                    ids[start : start + 1000],
                    retrycount=count,
                    justid=True,
                )

    async def heartbeat(self, worker: str, beat: bytes) -> None:
        await self.client.hset(self.workers, worker, beat)

    async def purge(self) -> int:
        """Delete every key of the job; returns how many there were."""
        keys = [self.meta, self.senders, self.started, self.outcomes, self.workers]
        keys += await self.sender_streams()
        return int(await self.client.delete(*keys))

    async def unpack_entries(
        self, sender: str, flat: Sequence[bytes], expiry: Expiry | None = None
    ) -> list[Message]:
        """Messages from [id, packed, ...] (as `take` returns them); the moments of those that
        have one go to `expiry`."""
        messages: list[Message] = []
        append = messages.append
        names: dict[bytes, str] = {}
        encodings = _ENCODINGS
        for i in range(0, len(flat), 2):
            number, line = flat[i].split(b"-")
            source = names.get(number)
            if source is None:
                source = names[number] = await self.source_name(int(number))
            _, to, segments, encoding, moment, ref, wire = flat[i + 1].split(b"\t", 6)
            message = _new_message(
                (
                    source,
                    int(line),
                    to.decode(),
                    sender,
                    wire,
                    ref,
                    int(segments),
                    encodings[encoding],
                )
            )
            append(message)
            if moment and expiry is not None:
                expiry.remember(message, int(moment) / 1000)
        return messages

    async def ids_for(self, lines: Sequence[Message | Outcome]) -> list[bytes]:
        """Entry IDs of lines, numbering their inputs first if this process hasn't yet."""
        for source in {line.source for line in lines} - self._source_numbers.keys():
            await self.source_number(source)
        numbers = self._source_numbers
        return [b"%d-%d" % (numbers[m.source], m.line) for m in lines]

    def ids_of(self, messages: Sequence[Message]) -> list[bytes]:
        numbers = self._source_numbers
        return [b"%d-%d" % (numbers[m.source], m.line) for m in messages]

    # -- read back without an event loop (the Journal seam's `resume_state` and `close`) --------

    def sync_client(self) -> redis.Redis:
        """A blocking client to the same server (for the few callers that can't await)."""
        pool = self.client.connection_pool
        kwargs = pool.connection_kwargs
        common: dict[str, Any] = {
            "db": kwargs.get("db", 0),
            "username": kwargs.get("username"),
            "password": kwargs.get("password"),
            "socket_timeout": 10,
        }
        if "path" in kwargs:
            return redis.Redis(unix_socket_path=kwargs["path"], **common)
        ssl = "SSL" in pool.connection_class.__name__
        return redis.Redis(
            host=kwargs.get("host", "localhost"), port=kwargs.get("port", 6379), ssl=ssl, **common
        )

    def resume_state(self, *, resend_unknown: bool) -> ResumeState:
        """The job's state as `send --resume` would see it: lines with an outcome are decided by
        it, lines with a "started" record were in flight. Read by the journal's own reader, from
        the job written out in the journal's and the outcomes file's formats, so the rules are
        the journal's, once."""
        client: Any = self.sync_client()  # replies are bytes (see self.client)
        try:
            meta = client.hgetall(self.meta)
            started = client.hgetall(self.started)
            outcomes = [fields[b"o"] for _, fields in client.xrange(self.outcomes)]
        finally:
            client.close()
        names = {k[5:]: v.decode() for k, v in meta.items() if k.startswith(b"name:")}
        with tempfile.TemporaryDirectory(prefix="streamsend-job-") as folder:
            outcomes_path = os.path.join(folder, "outcomes.ndjson")
            journal_path = os.path.join(folder, "journal")
            with open(outcomes_path, "wb") as out:
                out.writelines(outcomes)
            by_request: dict[int, dict[str, list[list[int]]]] = {}
            with open(journal_path, "wb") as journal:
                for entry, record in started.items():
                    number, _, line = entry.partition(b"-")
                    _, _, request = record.partition(b" ")
                    source = names.get(number)
                    if source is None or not line.isdigit() or not request.isdigit():
                        journal.write(b"{torn\n")  # unreadable: counted and ignored, as torn
                        continue
                    runs = by_request.setdefault(int(request), {}).setdefault(source, [])
                    runs.append([int(line), int(line)])
                for request_, lines in by_request.items():
                    journal.write(orjson.dumps({"start": request_, "lines": lines}) + b"\n")
            state = ResumeState.load(outcomes_path, journal_path, resend_unknown=resend_unknown)
        named = int(meta.get(b"max_request", 0))
        state.next_request = max(state.next_request, named + 1)
        return state

    def note_request_named(self, request: int) -> None:
        """Keep `request` as named (request numbers only grow), without an event loop."""
        client = self.sync_client()
        try:
            top = int(client.hget(self.meta, "max_request") or 0)
            if request > top:
                client.hset(self.meta, "max_request", request)
        finally:
            client.close()
