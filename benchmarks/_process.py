"""Running one measured child process: wall time, CPU time, peak RSS and page faults.

The command is started by `_measure_child`, a bare interpreter that spawns it, reaps it with
`os.wait4` (whose rusage covers exactly that process and all its threads) and hands back the
figures. It is not started straight from here because a child's `ru_maxrss` begins at its
parent's peak RSS (see `_measure_child`), and this process grows as it reads ledgers. The
child's stdout is discarded and its stderr goes to a log file, so a chatty child can never block
on a full pipe while we wait for it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

Feeder = Callable[["subprocess.Popen[bytes]"], None]
_MEASURE_CHILD = Path(__file__).with_name("_measure_child.py")


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

    The wall clock runs from just before the spawn to the reaping, so it includes the
    interpreter's start-up and imports: what a user waits for. A child still running after
    `timeout_s` is killed, with its measuring parent (and reported with `timed_out`).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result_path = log_path.with_suffix(".rusage.json")
    result_path.unlink(missing_ok=True)
    measure = [sys.executable, "-S", str(_MEASURE_CHILD), str(result_path), "--"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*measure, *argv],
            stdin=subprocess.PIPE if feed is not None else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=dict(env),
            start_new_session=True,  # one process group: a timeout kills the child too
        )
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            os.killpg(process.pid, signal.SIGKILL)

        watchdog = threading.Timer(timeout_s, kill)
        watchdog.start()
        try:
            if feed is not None:
                try:
                    feed(process)
                finally:
                    if process.stdin is not None and not process.stdin.closed:
                        process.stdin.close()
            process.wait()
        except BaseException:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
        finally:
            watchdog.cancel()
    if not result_path.exists():  # killed before its child ended
        return ChildRun(process.returncode, timeout_s, 0.0, 0.0, 0, 0, timed_out=True)
    figures = json.loads(result_path.read_text())
    return ChildRun(
        exit_code=figures["exit_code"],
        wall_s=figures["wall_s"],
        user_s=figures["user_s"],
        sys_s=figures["sys_s"],
        max_rss_kib=figures["max_rss_kib"],
        minor_faults=figures["minor_faults"],
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
