"""Start one command from a small process and report its exact rusage: the measured child's parent.

    python -S benchmarks/_measure_child.py RESULT.json -- COMMAND [ARGS...]

Why a separate parent: on Linux a child's `ru_maxrss` starts from its parent's peak RSS at the
fork (exec records the outgoing address space's high-water mark in the process's rusage), so a
tool started straight from the harness, which holds ledgers and results, would "peak" at the
harness's size (a `python -c pass` started from a 300 MiB parent reports 310 MiB). This process
is a bare interpreter of about 10 MiB, below any client it starts, so the child's figure is its
own. It spawns the command with the same stdin, stdout, stderr and environment, waits for it
with `os.wait4`, writes {exit_code, wall_s, user_s, sys_s, max_rss_kib, minor_faults} to
RESULT.json and exits with the command's status. Only the standard library is imported.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -S _measure_child.py RESULT -- COMMAND...", file=sys.stderr)
        return 2
    result_path, command = argv[0], argv[2:]
    started = time.perf_counter()
    # Python ignores SIGPIPE and SIGXFSZ; give the command the defaults, as subprocess does.
    defaults = (signal.SIGPIPE, signal.SIGXFSZ)
    pid = os.posix_spawnp(command[0], command, os.environ, setsigdef=defaults)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    exit_code = os.waitstatus_to_exitcode(status)
    with open(result_path, "w") as result:
        json.dump(
            {
                "exit_code": exit_code,
                "wall_s": wall,
                "user_s": usage.ru_utime,
                "sys_s": usage.ru_stime,
                "max_rss_kib": usage.ru_maxrss,  # KiB on Linux
                "minor_faults": usage.ru_minflt,
            },
            result,
        )
    return exit_code if exit_code >= 0 else 128 - exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
