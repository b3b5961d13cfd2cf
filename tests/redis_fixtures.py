"""Redis for the tests: the machine's shared server, and private servers a test can kill.

Loaded by conftest.py (`pytest_plugins`). Every machine of the project runs Redis 7 on
127.0.0.1:6379; a test that needs it and finds none FAILS, with how to start one (it never skips).
Tests share that server with each other and with other runs of the suite, so each one works in a
job of its own (`job_name`) and rate keys of its own (`unique_prefix`), deleted afterwards.

`private_redis` starts a `redis-server` of the test's own on a unix socket in tmp_path, with
AOF and `appendfsync always` (what the README asks of production): the test can SIGKILL it and
start it again on the same files.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from streamsend._redis_job import START_REDIS_HINT, RedisJob, connect

SHARED_REDIS_URL = os.environ.get("STREAMSEND_TEST_REDIS", "redis://127.0.0.1:6379")


def require_redis(url: str) -> None:
    """Fail the test (never skip it) when no Redis answers at `url`, saying how to start one."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        pytest.fail(f"no Redis reachable at {url} ({exc}): {START_REDIS_HINT}", pytrace=False)
    finally:
        client.close()


_OPEN_CLIENTS: list[aioredis.Redis] = []


def tracked_client(url: str) -> aioredis.Redis:
    """A client for factories that can't close what they open (the Protocol suites' plain
    callables): closed when the test ends."""
    client = connect(url)
    _OPEN_CLIENTS.append(client)
    return client


async def close_tracked_clients() -> None:
    """Close what `tracked_client` opened (an autouse fixture of the modules that use it)."""
    while _OPEN_CLIENTS:
        await _OPEN_CLIENTS.pop().aclose()


@pytest.fixture
def redis_url() -> str:
    """The shared Redis's URL, after checking it answers."""
    require_redis(SHARED_REDIS_URL)
    return SHARED_REDIS_URL


@pytest.fixture
def unique_prefix() -> str:
    return f"streamsend-test:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def job(redis_url: str) -> AsyncIterator[RedisJob]:
    """A job of this test's own on the shared Redis (a unique name), purged afterwards."""
    client = connect(redis_url)
    made = RedisJob(client, f"test-{uuid.uuid4().hex[:12]}")
    try:
        yield made
    finally:
        await made.purge()
        await client.aclose()


class PrivateRedis:
    """A redis-server of one test's own: AOF with `appendfsync always`, on a unix socket."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.socket = folder / "redis.sock"
        self.url = f"unix://{self.socket}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("no redis-server binary on PATH: install Redis 7 (apt-get install redis)")
        self.process = subprocess.Popen(
            [
                binary,
                *("--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700"),
                *("--dir", str(self.folder), "--save", ""),
                *("--appendonly", "yes", "--appendfsync", "always"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=2)
                try:
                    client.ping()
                    return
                finally:
                    client.close()
            except (redis.ConnectionError, OSError):
                assert self.process.poll() is None, "redis-server exited at start"
                assert time.monotonic() < deadline, "redis-server didn't start within 20 s"
                time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: what the server acknowledged is in its AOF (fsynced), nothing else."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.kill()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def private_job(private_redis: PrivateRedis) -> AsyncIterator[RedisJob]:
    client: aioredis.Redis = connect(private_redis.url)
    try:
        yield RedisJob(client, "private")
    finally:
        await client.aclose()
