"""The emulator under test, as its own process: `streamsend emulator --port 0 ...`.

One emulator serves one scenario (its latency and ledger settings are the scenario's). The
send-rate model is set far above anything a client here reaches, so no message is counted as
stale: the benchmarks measure delivery to the API, not the service's drain rate.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from benchmarks._process import cpu_seconds_of, wait_for_text

#: A key in Trackly's format (`trk_` and 32 letters or digits); only the local emulator knows it.
API_KEY = "trk_" + "BenchmarkKey0nlyForTheEmulat0r00"
#: The v1 sending list every benchmark sends from.
SENDER = "pn_abc123def456"

_LISTENING = re.compile(rb"listening on (http://\S+/api)")


class EmulatorProcess:
    """A running emulator: its URL, counters, CPU time and ledger. Use as a context manager."""

    def __init__(
        self,
        log_path: Path,
        *,
        latency_ms: float | None = None,
        latency_spread_ms: float | None = None,
        ledger: Path | None = None,
        extra_lists: tuple[str, ...] = (),
        max_in_flight: int | None = None,
    ) -> None:
        self.log_path = log_path
        self.ledger = ledger
        self._argv = [sys.executable, "-m", "streamsend", "emulator", "--port", "0"]
        self._argv += ["--list", SENDER, "--send-rate", "1000000000/min"]
        for name in extra_lists:
            self._argv += ["--list", name]
        if latency_ms is not None:
            self._argv += ["--latency-ms", str(latency_ms)]
        if latency_spread_ms is not None:
            self._argv += ["--latency-spread-ms", str(latency_spread_ms)]
        if max_in_flight is not None:
            self._argv += ["--max-in-flight", str(max_in_flight)]
        if ledger is not None:
            ledger.unlink(missing_ok=True)
            self._argv += ["--ledger", str(ledger)]
        self._process: subprocess.Popen[bytes] | None = None
        self.base_url = ""

    @property
    def command(self) -> str:
        return " ".join(["streamsend", *self._argv[3:]])

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def __enter__(self) -> EmulatorProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            # The key goes through the environment, as the emulator's --help recommends.
            env = {**os.environ, "TRACKLY_API_KEY": API_KEY}
            self._process = subprocess.Popen(
                self._argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )
        process = self._process
        try:
            text = wait_for_text(
                self.log_path,
                b"listening on",
                timeout_s=30,
                alive=lambda: process.poll() is None,
            )
        except TimeoutError:
            self.__exit__(None, None, None)
            raise
        match = _LISTENING.search(text)
        assert match is not None
        self.base_url = match.group(1).decode()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def stats(self) -> dict[str, Any]:
        """`GET /_emulator/stats`."""
        url = self.base_url.removesuffix("/api") + "/_emulator/stats"
        with urllib.request.urlopen(url, timeout=10) as response:
            stats: dict[str, Any] = json.loads(response.read())
        return stats

    def messages_queued(self) -> int:
        return int(self.stats()["messages_queued"])

    def cpu_seconds(self) -> float:
        return cpu_seconds_of(self.pid)

    def ledger_size(self) -> int:
        return self.ledger.stat().st_size if self.ledger and self.ledger.exists() else 0

    def ledger_since(self, offset: int) -> bytes:
        """The ledger's lines appended after byte `offset` (one run's messages)."""
        if self.ledger is None:
            return b""
        with self.ledger.open("rb") as file:
            file.seek(offset)
            return file.read()
