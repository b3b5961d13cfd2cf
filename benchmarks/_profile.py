"""Profiling streamsend's hot path on the loopback scenario, summarised as a short text file.

py-spy (when installed: `pip install py-spy`; it is not a dependency) samples the `streamsend send`
process from outside, with native frames (`--native`) so time inside orjson, the regex engine or
libc shows up under its own name; the raw collapsed stacks are kept in the data directory for a
flame graph. Without py-spy, pyinstrument runs the CLI in-process and its pstats output is used.
Either way the summary lists the top functions by self time and by inclusive time, and the
self time per source file, as shares of the sampled (non-idle) time.
"""

from __future__ import annotations

import datetime
import os
import pstats
import re
import shutil
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from benchmarks._emulator import EmulatorProcess
from benchmarks._scenarios import REPO_ROOT, Plan, run_once
from benchmarks._tools import UNPACED, streamsend_command

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
TOP = 15
#: Samples per second: enough samples on a run of a few seconds, little slowdown.
PY_SPY_RATE = 200


#: A py-spy frame on the event loop thread's stack (the thread the CLI's asyncio.run runs on).
MAIN_THREAD_FRAME = "_run_module_as_main ("
#: Frames that mean the thread is waiting, not computing.
_EVENT_LOOP_WAIT = "EpollSelector.select ("
_GIL_WAIT = "take_gil ("
_WORK_QUEUE_WAIT = "_queue_SimpleQueue_get"
_FSYNC = "fdatasync"


@dataclass(frozen=True, slots=True)
class Profile:
    """Time per function, in samples (py-spy) or seconds (pyinstrument).

    `total` is the busy time of the event loop thread, which the shares are of; `threads`
    says where the rest of the samples went (waiting in epoll, for the GIL, worker threads).
    """

    tool: str
    total: float
    self_time: Counter[str]
    inclusive: Counter[str]
    by_file: Counter[str]
    threads: Counter[str]


def frame_key(frame: str) -> tuple[str, str]:
    """(function, file) of a py-spy frame like `Batcher.add (streamsend/_batcher.py:91)`."""
    match = _FRAME.match(frame)
    if match is None:
        return frame, "?"
    function, file = match.group("function"), match.group("file")
    if function.startswith("0x"):
        function = "[unresolved native]"
    return function, file


def classify_stack(stack: str) -> str:
    """Which thread a py-spy stack is from, and whether it was computing or waiting."""
    if MAIN_THREAD_FRAME in stack:
        if _EVENT_LOOP_WAIT in stack:
            return "event loop thread: waiting in epoll"
        if _GIL_WAIT in stack:
            return "event loop thread: waiting for the GIL"
        return "event loop thread: busy"
    if _WORK_QUEUE_WAIT in stack:
        return "worker threads: waiting for work"
    if _FSYNC in stack:
        return "worker threads: in fdatasync (I/O wait)"
    return "worker threads: other"


BUSY = "event loop thread: busy"


def parse_collapsed(lines: Iterable[str]) -> Profile:
    """A profile of the event loop thread's busy samples from collapsed stacks.

    Each line is `frame;frame;...;leaf COUNT`. py-spy's idle filter does not recognise every
    wait once native frames are on (a thread-pool worker blocked on its queue looks busy), so
    the stacks are classified here instead, and only the event loop thread's busy samples count
    towards the shares: that thread is the one the client's throughput is bound by.
    """
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for line in lines:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        kind = classify_stack(stack)
        threads[kind] += count
        if kind != BUSY:
            continue
        keys = [frame_key(frame) for frame in stack.split(";")]
        function, file = keys[-1]
        self_time[f"{function} ({file})"] += count
        by_file[file] += count
        for name in {f"{function} ({file})" for function, file in keys}:
            inclusive[name] += count
    return Profile("py-spy", float(threads[BUSY]), self_time, inclusive, by_file, threads)


def parse_pstats(path: Path) -> Profile:
    """A profile from pyinstrument's pstats output."""
    stats = pstats.Stats(str(path))
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    table = stats.stats  # type: ignore[attr-defined]
    for (file, _line, function), (_cc, _nc, tottime, cumtime, _callers) in table.items():
        short = _short_path(file)
        self_time[f"{function} ({short})"] += tottime
        inclusive[f"{function} ({short})"] = max(inclusive[f"{function} ({short})"], cumtime)
        by_file[short] += tottime
    total = float(stats.total_tt)  # type: ignore[attr-defined]
    return Profile("pyinstrument", total, self_time, inclusive, by_file, Counter())


def _short_path(path: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def render(profile: Profile, header: list[str], top: int = TOP) -> str:
    """The short text summary: top functions by self and inclusive time, and self time by file."""

    def share(value: float) -> str:
        return f"{value / profile.total * 100:5.1f}%" if profile.total else "    -"

    lines = [*header]
    if profile.threads:
        all_samples = sum(profile.threads.values())
        lines.append("Samples by thread and state (the shares below are of the first line):")
        lines += [
            f"  {value / all_samples * 100:5.1f}%  {value:>7,}  {kind}"
            for kind, value in profile.threads.most_common()
        ]
    of_what = "the event loop's busy time" if profile.threads else "the main thread's samples"
    lines += ["", f"Top {top} functions by self time (share of {of_what}):"]
    lines += [f"  {share(v)}  {name}" for name, v in profile.self_time.most_common(top)]
    lines += ["", f"Top {top} functions by inclusive time (below the event loop):"]
    # The frames every sample passes through (runpy, main, the event loop) say nothing.
    threshold = 0.9 * profile.total
    inclusive = [(n, v) for n, v in profile.inclusive.most_common() if v < threshold]
    lines += [f"  {share(v)}  {name}" for name, v in inclusive[:top]]
    lines += ["", "Self time by source file:"]
    lines += [f"  {share(v)}  {name}" for name, v in profile.by_file.most_common(top)]
    return "\n".join(lines) + "\n"


def profile_loopback(
    plan: Plan, input_path: Path, messages: int, summary_path: Path, commit: str
) -> dict[str, object]:
    """Profile one `streamsend send` of `input_path` on loopback; write the text summary."""
    raw = plan.data_dir / "profile-loopback.collapsed.txt"
    pstats_path = plan.data_dir / "profile-loopback.pstats"
    raw.unlink(missing_ok=True)
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    with EmulatorProcess(plan.data_dir / "emulator-profile.log") as emulator:

        def command(outcomes: Path, stats: Path) -> list[str]:
            send = streamsend_command(
                str(input_path), base_url=emulator.base_url, outcomes=outcomes, extra=UNPACED
            )
            if py_spy is not None:
                sample = [py_spy, "record", "--rate", str(PY_SPY_RATE), "--native"]
                return [*sample, "--format", "raw", "-o", str(raw), "--", *send]
            pyinstrument = [sys.executable, "-m", "pyinstrument", "-r", "pstats"]
            return [*pyinstrument, "-o", str(pstats_path), "-m", "streamsend", *send[3:]]

        record = run_once(
            plan,
            emulator,
            scenario="profile",
            tool="streamsend",
            round_=1,
            messages=messages,
            command=command,
        )
    if not record.ok:
        raise RuntimeError(f"the profiled run failed: {record.problem}")
    if py_spy is not None:
        profile = parse_collapsed(raw.read_text().splitlines())
        how = f"py-spy record --native --rate {PY_SPY_RATE} (stacks: {_shown(raw)})"
        unit = f"{profile.total:,.0f} busy samples of the event loop thread"
    else:
        profile = parse_pstats(pstats_path)
        how = f"pyinstrument (pstats: {_shown(pstats_path)})"
        unit = f"{profile.total:.2f} s sampled"
    header = [
        f"streamsend send, loopback, {messages:,} messages, CLI defaults "
        f"(outcomes file, journal, fsync); {how}",
        f"{datetime.date.today().isoformat()}, commit {commit[:12]}, {_cores()} cores; {unit}; "
        f"{record.messages_per_s:,.0f} msgs/s under the profiler",
    ]
    summary_path.write_text(render(profile, header))
    plan.log(f"[profile] wrote {summary_path} ({unit})")
    top = [
        {"function": name, "self_share": round(value / profile.total, 4)}
        for name, value in profile.self_time.most_common(10)
    ]
    return {"profiler": profile.tool, "messages": messages, "top_self": top}


def _shown(path: Path) -> str:
    """A path relative to the repository when it is inside it (the summary is committed)."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _cores() -> int:
    return os.cpu_count() or 0
