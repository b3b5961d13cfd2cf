"""Running one measured child process: wall time, CPU time, peak RSS and page faults.

The child is reaped with `os.wait4`, whose rusage covers exactly that process (all its threads,
none of its siblings), so two tools measured one after the other never share a CPU figure. Its
stdout is discarded and its stderr goes to a log file, so a chatty child can never block on a
full pipe while we wait for it.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

Feeder = Callable[["subprocess.Popen[bytes]"], None]


@dataclass(frozen=True, slots=True)
class ChildRun:
    """What one finished child cost."""

    exit_code: int
    wall_s: float
    user_s: float
    sys_s: float
    max_rss_kib: int
    minor_faults: int
    timed_out: bool

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


def run_measured(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log_path: Path,
    timeout_s: float,
    feed: Feeder | None = None,
) -> ChildRun:
    """Run `argv` to completion and measure it. `feed` (if any) writes the child's stdin.

    The wall clock runs from just before the fork to the reaping, so it includes the
    interpreter's start-up and imports: what a user waits for. A child still running after
    `timeout_s` is killed (and reported with `timed_out`).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if feed is not None else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=dict(env),
        )
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            process.kill()

        watchdog = threading.Timer(timeout_s, kill)
        watchdog.start()
        try:
            if feed is not None:
                try:
                    feed(process)
                finally:
                    if process.stdin is not None and not process.stdin.closed:
                        process.stdin.close()
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
        finally:
            watchdog.cancel()
        wall = time.perf_counter() - started
    # We reaped it ourselves; tell Popen, so it neither waits again nor warns about a live child.
    process.returncode = os.waitstatus_to_exitcode(status)
    return ChildRun(
        exit_code=process.returncode,
        wall_s=wall,
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
        max_rss_kib=usage.ru_maxrss,  # KiB on Linux
        minor_faults=usage.ru_minflt,
        timed_out=killed.is_set(),
    )


def cpu_seconds_of(pid: int) -> float:
    """User + system CPU seconds a running process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for_text(
    path: Path, needle: bytes, *, timeout_s: float, alive: Callable[[], bool]
) -> bytes:
    """Poll a log file until it contains `needle`; return its content then.

    Raises TimeoutError when the text does not show up in time or the writer (`alive`) exits.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        content = path.read_bytes() if path.exists() else b""
        if needle in content:
            return content
        if not alive() or time.monotonic() > deadline:
            raise TimeoutError(f"{needle!r} not seen in {path}: {content[-2000:]!r}")
        time.sleep(0.01)
