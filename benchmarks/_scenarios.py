"""The scenarios: each starts its own emulator, runs the tools, and returns its figures.

- `loopback`: no added latency; client and emulator share the machine's cores (CPU-bound).
- `wan`: the emulator adds 50 ms ± 25 ms to every answer.
- `paced`: streamsend with `--rate`; the emulator's ledger says when each request arrived.
- `trickle`: lines written to streamsend's stdin one at a time; ledger arrival minus write time.
- `memory`: streamsend's peak RSS on a small and a 10× larger input.
- `malloc`: streamsend with and without glibc heap-trimming tuned through the environment.
- `capped`: adaptive concurrency against `--max-in-flight 4` at 100 ms, vs 4 held in flight.
- `startup`: CPU and wall time of `streamsend --help` and of a one-line `send`, with baselines.

Throughput scenarios run the tools interleaved (A B C A B C ...) on the same input against the
same emulator, so a phase of the machine running slow hits every tool alike. Before the timed
rounds, each tool runs (also interleaved) on a 100-line input: that warms the emulator and the
page cache, and measures the tool's fixed start-up and shut-down cost, which the "net" figures
subtract (they estimate the per-message cost a much longer input would show). Every run is
checked (see `_tools`) before it counts.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import _analysis as analysis
from benchmarks._emulator import API_KEY, EmulatorProcess
from benchmarks._inputs import message_line, write_head, write_input
from benchmarks._process import Feeder, run_measured, wait_for_text
from benchmarks._tools import (
    LATENCY_SOURCES,
    UNPACED,
    Tool,
    check_run,
    remove_run_files,
    streamsend_command,
    tool_command,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The glibc tunables measured to matter (see --malloc): no heap trimming between requests.
MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": str(256 << 20), "MALLOC_TOP_PAD_": str(64 << 20)}
STARTUP_MESSAGES = 100
WAN_LATENCY_MS = 50.0
WAN_SPREAD_MS = 25.0


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes and repetitions of one benchmark run (quick or full)."""

    mode: str
    data_dir: Path
    messages: int
    wan_messages: int
    runs: int
    paced_rate: int
    paced_seconds: float
    trickle_lines: int
    trickle_interval_s: float
    trickle_linger_ms: int
    memory_small: int
    memory_large: int
    capped_messages: int = 400_000
    startup_runs: int = 5
    timeout_s: float = 900.0
    log: Callable[[str], None] = print


@dataclass(slots=True)
class RunRecord:
    """One measured run of one tool (or streamsend variant) in one scenario."""

    scenario: str
    tool: str
    round: int
    messages: int
    problem: str | None
    exit_code: int
    wall_s: float
    user_s: float
    sys_s: float
    max_rss_kib: int
    minor_faults: int
    emulator_cpu_s: float
    in_process_s: float | None = None
    latencies_s: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.wall_s

    @property
    def cpu_us_per_message(self) -> float:
        return (self.user_s + self.sys_s) / self.messages * 1e6

    def row(self) -> dict[str, Any]:
        """The run's figures for the results file (raw latencies stay in the data directory)."""
        return {
            "round": self.round,
            "ok": self.ok,
            "problem": self.problem,
            "messages_per_s": round(self.messages_per_s),
            "wall_s": round(self.wall_s, 3),
            "in_process_s": None if self.in_process_s is None else round(self.in_process_s, 3),
            "cpu_us_per_message": round(self.cpu_us_per_message, 3),
            "user_s": round(self.user_s, 3),
            "sys_s": round(self.sys_s, 3),
            "peak_rss_mib": round(self.max_rss_kib / 1024, 1),
            "minor_faults": self.minor_faults,
            "emulator_cpu_s": round(self.emulator_cpu_s, 3),
            **self.extra,
        }


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every client: the key, the repo importable, no stray malloc tuning."""
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    env["TRACKLY_API_KEY"] = API_KEY
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def run_once(
    plan: Plan,
    emulator: EmulatorProcess,
    *,
    scenario: str,
    tool: str,
    round_: int,
    messages: int,
    command: Callable[[Path, Path], list[str]],
    env: Mapping[str, str] | None = None,
    feed: Feeder | None = None,
) -> RunRecord:
    """Run one client to completion against `emulator` and check it; `command(outcomes, stats)`."""
    stem = plan.data_dir / "runs" / f"{scenario}-{tool}-{round_}"
    outcomes = stem.with_suffix(".outcomes.ndjson")
    stats_path = stem.with_suffix(".stats.json")
    remove_run_files(outcomes)
    stats_path.unlink(missing_ok=True)
    queued_before = emulator.messages_queued()
    cpu_before = emulator.cpu_seconds()
    child = run_measured(
        command(outcomes, stats_path),
        env=env if env is not None else child_env(),
        log_path=stem.with_suffix(".log"),
        timeout_s=plan.timeout_s,
        feed=feed,
    )
    emulator_cpu = emulator.cpu_seconds() - cpu_before
    problem = check_run(
        exit_code=child.exit_code,
        timed_out=child.timed_out,
        outcomes=outcomes,
        expected=messages,
        queued_delta=emulator.messages_queued() - queued_before,
    )
    remove_run_files(outcomes)
    reported: dict[str, Any] = {}
    if stats_path.exists():
        reported = json.loads(stats_path.read_text())
    return RunRecord(
        scenario=scenario,
        tool=tool,
        round=round_,
        messages=messages,
        problem=problem,
        exit_code=child.exit_code,
        wall_s=child.wall_s,
        user_s=child.user_s,
        sys_s=child.sys_s,
        max_rss_kib=child.max_rss_kib,
        minor_faults=child.minor_faults,
        emulator_cpu_s=emulator_cpu,
        in_process_s=reported.get("elapsed_seconds"),
        latencies_s=list(reported.get("request_latencies_s", [])),
    )


def _describe(record: RunRecord) -> str:
    if not record.ok:
        return f"FAILED: {record.problem}"
    return (
        f"{record.messages_per_s:>10,.0f} msgs/s  {record.cpu_us_per_message:6.2f} µs/msg  "
        f"{record.max_rss_kib / 1024:6.1f} MiB  emulator {record.emulator_cpu_s:5.2f} s CPU"
    )


# -- throughput: loopback and wan ---------------------------------------------------------------


def throughput(
    plan: Plan,
    name: str,
    input_path: Path,
    messages: int,
    *,
    latency_ms: float | None = None,
    latency_spread_ms: float | None = None,
    tools: Sequence[Tool] = tuple(Tool),
) -> tuple[dict[str, Any], list[RunRecord]]:
    """Interleaved runs of every tool on one input; their summary and the raw records."""
    startup_input = write_head(input_path, plan.data_dir / "input-startup.ndjson", STARTUP_MESSAGES)
    records: list[RunRecord] = []
    startups: list[RunRecord] = []
    with EmulatorProcess(
        plan.data_dir / f"emulator-{name}.log",
        latency_ms=latency_ms,
        latency_spread_ms=latency_spread_ms,
    ) as emulator:
        plan.log(f"[{name}] {messages:,} messages, emulator: {emulator.command}")
        for round_ in range(1, plan.runs + 1):
            for tool in tools:
                startup = run_once(
                    plan,
                    emulator,
                    scenario=f"{name}-startup",
                    tool=tool.value,
                    round_=round_,
                    messages=STARTUP_MESSAGES,
                    command=_tool_builder(tool, startup_input, emulator.base_url),
                )
                startups.append(startup)
                if not startup.ok:
                    plan.log(f"[{name}] start-up run of {tool.value}: {_describe(startup)}")
        for tool in tools:
            mine = [r for r in startups if r.tool == tool.value and r.ok]
            wall = analysis.spread(r.wall_s for r in mine)
            cpu = analysis.spread(r.user_s + r.sys_s for r in mine)
            if wall and cpu:
                plan.log(
                    f"[{name}] start-up {tool.value:<16} {wall['median']:.2f} s wall, "
                    f"{cpu['median']:.2f} s CPU ({STARTUP_MESSAGES} lines)"
                )
        for round_ in range(1, plan.runs + 1):
            for tool in tools:
                record = run_once(
                    plan,
                    emulator,
                    scenario=name,
                    tool=tool.value,
                    round_=round_,
                    messages=messages,
                    command=_tool_builder(tool, input_path, emulator.base_url),
                )
                records.append(record)
                plan.log(f"[{name}] run {round_} {tool.value:<16} {_describe(record)}")
        emulator_stats = emulator.stats()
    tool_figures: dict[str, dict[str, Any]] = {}
    for tool in tools:
        figures = summarise_tool(records, tool.value, startups)
        figures["label"] = tool.label
        figures["request_latency_ms"]["source"] = LATENCY_SOURCES[tool]
        tool_figures[tool.value] = figures
    summary: dict[str, Any] = {
        "messages": messages,
        "runs_per_tool": plan.runs,
        "startup_lines": STARTUP_MESSAGES,
        "emulator": {
            "command": emulator.command,
            "largest_request_messages": emulator_stats.get("largest_request_messages"),
            "peak_in_flight": emulator_stats.get("peak_in_flight"),
            "requests_by_status": emulator_stats.get("requests_by_status"),
        },
        "tools": tool_figures,
        "streamsend_vs": {
            tool.value: compare(records, Tool.STREAMSEND.value, tool.value)
            for tool in tools
            if tool is not Tool.STREAMSEND
        },
    }
    ours = tool_figures[Tool.STREAMSEND.value].get("net_messages_per_s")
    for other, ratio in summary["streamsend_vs"].items():
        theirs = tool_figures[other].get("net_messages_per_s")
        ratio["net_throughput_ratio_of_medians"] = (
            round(ours["median"] / theirs["median"], 3) if ours and theirs else None
        )
    return summary, [*startups, *records]


def _tool_builder(tool: Tool, input_path: Path, base_url: str) -> Callable[[Path, Path], list[str]]:
    def build(outcomes: Path, stats: Path) -> list[str]:
        return tool_command(tool, input_path, base_url=base_url, outcomes=outcomes, stats=stats)

    return build


def summarise_tool(
    records: Sequence[RunRecord], tool: str, startups: Sequence[RunRecord] = ()
) -> dict[str, Any]:
    """Median [min–max] of one tool's checked runs; failed runs are listed, not timed.

    With `startups` (runs of the same tool on a tiny input), also the start-up cost and the
    figures net of it: messages / (wall - start-up wall), (CPU - start-up CPU) / messages.
    """
    mine = [r for r in records if r.tool == tool]
    ok = [r for r in mine if r.ok]
    latencies = [latency for r in ok for latency in r.latencies_s]
    in_process = [r.messages / r.in_process_s for r in ok if r.in_process_s]
    p50 = analysis.percentile(latencies, 0.5)
    p99 = analysis.percentile(latencies, 0.99)
    figures: dict[str, Any] = {
        "runs": len(mine),
        "ok_runs": len(ok),
        "failures": [f"run {r.round}: {r.problem}" for r in mine if not r.ok],
        "messages_per_s": _rounded(analysis.spread(r.messages_per_s for r in ok), 0),
        "cpu_us_per_message": _rounded(analysis.spread(r.cpu_us_per_message for r in ok), 3),
    }
    started = [r for r in startups if r.tool == tool and r.ok]
    startup_wall = analysis.spread(r.wall_s for r in started)
    startup_cpu = analysis.spread(r.user_s + r.sys_s for r in started)
    if startup_wall and startup_cpu:
        wall0, cpu0 = startup_wall["median"], startup_cpu["median"]
        figures["startup"] = {
            "lines": started[0].messages,
            "wall_s": _rounded(startup_wall, 3),
            "cpu_s": _rounded(startup_cpu, 3),
        }
        figures["net_messages_per_s"] = _rounded(
            analysis.spread(r.messages / (r.wall_s - wall0) for r in ok if r.wall_s > wall0), 0
        )
        figures["net_cpu_us_per_message"] = _rounded(
            analysis.spread((r.user_s + r.sys_s - cpu0) / r.messages * 1e6 for r in ok), 3
        )
    figures |= {
        # The tool's own clock, from after its imports to its end (streamsend: around main()).
        "in_process_messages_per_s": _rounded(analysis.spread(in_process), 0),
        "sys_share_of_cpu": _rounded(
            analysis.spread(r.sys_s / (r.user_s + r.sys_s) for r in ok if r.user_s + r.sys_s), 3
        ),
        "peak_rss_mib": round(max((r.max_rss_kib for r in ok), default=0) / 1024, 1),
        "minor_faults_per_message": _rounded(
            analysis.spread(r.minor_faults / r.messages for r in ok), 4
        ),
        "request_latency_ms": {
            "p50": None if p50 is None else round(p50 * 1000, 2),
            "p99": None if p99 is None else round(p99 * 1000, 2),
            "requests": len(latencies),
        },
        "emulator_cpu_us_per_message": _rounded(
            analysis.spread(r.emulator_cpu_s / r.messages * 1e6 for r in ok), 3
        ),
        # The emulator's CPU seconds per wall second: near 1.0, the emulator is the bottleneck.
        "emulator_busy": _rounded(analysis.spread(r.emulator_cpu_s / r.wall_s for r in ok), 3),
        "per_run": [r.row() for r in mine],
    }
    return figures


def compare(records: Sequence[RunRecord], tool: str, other: str) -> dict[str, Any]:
    """How many times faster `tool` was than `other`: ratio of medians, and per round."""
    by_round: dict[int, dict[str, RunRecord]] = {}
    for r in records:
        if r.ok and r.tool in (tool, other):
            by_round.setdefault(r.round, {})[r.tool] = r
    paired = [pair for pair in by_round.values() if len(pair) == 2]
    ratios = [p[tool].messages_per_s / p[other].messages_per_s for p in paired]
    mine = analysis.spread(r.messages_per_s for r in records if r.ok and r.tool == tool)
    theirs = analysis.spread(r.messages_per_s for r in records if r.ok and r.tool == other)
    return {
        "throughput_ratio_of_medians": (
            round(mine["median"] / theirs["median"], 3) if mine and theirs else None
        ),
        "throughput_ratio_per_round": _rounded(analysis.spread(ratios), 3),
        "cpu_ratio_per_round": _rounded(
            analysis.spread(
                p[tool].cpu_us_per_message / p[other].cpu_us_per_message for p in paired
            ),
            3,
        ),
    }


def _rounded(values: dict[str, float] | None, digits: int) -> dict[str, float] | None:
    if values is None:
        return None
    return {key: round(value, digits) for key, value in values.items()}


# -- paced --------------------------------------------------------------------------------------


def paced(plan: Plan, input_path: Path, messages: int) -> tuple[dict[str, Any], list[RunRecord]]:
    """streamsend with `--rate`: the achieved rate and the largest burst, from the ledger."""
    rate = plan.paced_rate
    records: list[RunRecord] = []
    with EmulatorProcess(
        plan.data_dir / "emulator-paced.log", ledger=plan.data_dir / "ledger-paced.ndjson"
    ) as emulator:
        plan.log(f"[paced] {messages:,} messages at --rate {rate}/s, emulator: {emulator.command}")
        for round_ in range(1, plan.runs + 1):
            offset = emulator.ledger_size()
            record = run_once(
                plan,
                emulator,
                scenario="paced",
                tool=Tool.STREAMSEND.value,
                round_=round_,
                messages=messages,
                command=_streamsend_builder(
                    str(input_path), emulator.base_url, ["--rate", f"{rate}/s"]
                ),
            )
            if record.ok:
                arrivals = analysis.arrivals_from_ledger(emulator.ledger_since(offset))
                batch = max(a.messages for a in arrivals)
                accuracy = analysis.paced_accuracy(arrivals, target_per_s=rate, batch=batch)
                accuracy["batch_messages"] = batch
                record.extra = {k: round(v, 3) for k, v in accuracy.items()}
                plan.log(
                    f"[paced] run {round_} achieved {accuracy['achieved_per_s']:,.0f}/s "
                    f"({accuracy['error_pct']:+.2f}%), max in 1 s "
                    f"{accuracy['max_messages_in_1s']:,.0f} = "
                    f"{accuracy['max_excess_batches']:+.2f} batches over; {_describe(record)}"
                )
            else:
                plan.log(f"[paced] run {round_} {_describe(record)}")
            records.append(record)
    ok = [r for r in records if r.ok]
    summary = {
        "messages": messages,
        "target_per_s": rate,
        "runs": len(records),
        "ok_runs": len(ok),
        "failures": [f"run {r.round}: {r.problem}" for r in records if not r.ok],
        "achieved_per_s": _rounded(analysis.spread(r.extra["achieved_per_s"] for r in ok), 1),
        "error_pct": _rounded(analysis.spread(r.extra["error_pct"] for r in ok), 3),
        "max_excess_batches": max((r.extra["max_excess_batches"] for r in ok), default=None),
        # The batch the excess is counted in (the largest request seen): with the rate, it
        # gives the bound "one batch plus 5 ms of the rate" in batches.
        "batch_messages": max((int(r.extra["batch_messages"]) for r in ok), default=None),
        "cpu_us_per_message": _rounded(analysis.spread(r.cpu_us_per_message for r in ok), 3),
        "method": (
            "ledger arrival times; steady state leaves out the first and last second; rate = "
            "messages of all but the last request / (last arrival - first arrival); excess = most "
            "messages in any 1 s window starting at a request, minus the target, in batches"
        ),
        "per_run": [r.row() for r in records],
    }
    return summary, records


def _streamsend_builder(
    input_arg: str, base_url: str, extra: Sequence[str]
) -> Callable[[Path, Path], list[str]]:
    def build(outcomes: Path, stats: Path) -> list[str]:
        return streamsend_command(input_arg, base_url=base_url, outcomes=outcomes, extra=extra)

    return build


# -- trickle ------------------------------------------------------------------------------------


def trickle(plan: Plan) -> tuple[dict[str, Any], list[RunRecord]]:
    """Lines written to streamsend's stdin one at a time: how long until each is on the wire."""
    lines = plan.trickle_lines
    linger_ms = plan.trickle_linger_ms
    records: list[RunRecord] = []
    with EmulatorProcess(
        plan.data_dir / "emulator-trickle.log", ledger=plan.data_dir / "ledger-trickle.ndjson"
    ) as emulator:
        plan.log(
            f"[trickle] {lines} lines, one every {plan.trickle_interval_s * 1000:.0f} ms, "
            f"--linger-ms {linger_ms}"
        )
        for round_ in range(1, plan.runs + 1):
            offset = emulator.ledger_size()
            written_at: dict[str, float] = {}
            log_path = plan.data_dir / "runs" / f"trickle-streamsend-{round_}.log"
            record = run_once(
                plan,
                emulator,
                scenario="trickle",
                tool=Tool.STREAMSEND.value,
                round_=round_,
                messages=lines,
                command=_streamsend_builder(
                    "-", emulator.base_url, [*UNPACED, "--linger-ms", str(linger_ms)]
                ),
                feed=_trickle_feeder(plan, log_path, written_at),
            )
            latencies = analysis.line_latencies(emulator.ledger_since(offset), written_at)
            record.latencies_s = latencies
            if record.ok and len(latencies) != lines:
                record.problem = f"{len(latencies)} of {lines} lines found in the ledger"
            p50, p99 = analysis.percentile(latencies, 0.5), analysis.percentile(latencies, 0.99)
            if record.ok and p50 is not None and p99 is not None:
                record.extra = {"p50_ms": round(p50 * 1000, 1), "p99_ms": round(p99 * 1000, 1)}
                plan.log(
                    f"[trickle] run {round_} line → wire p50 {p50 * 1000:.0f} ms, "
                    f"p99 {p99 * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
                )
            else:
                plan.log(f"[trickle] run {round_} {_describe(record)}")
            records.append(record)
    ok = [r for r in records if r.ok]
    pooled = [latency for r in ok for latency in r.latencies_s]
    bound_s = (linger_ms + 50) / 1000
    summary = {
        "lines_per_run": lines,
        "interval_ms": plan.trickle_interval_s * 1000,
        "linger_ms": linger_ms,
        "runs": len(records),
        "ok_runs": len(ok),
        "failures": [f"run {r.round}: {r.problem}" for r in records if not r.ok],
        "line_latency_ms": _latency_figures(pooled),
        "bound_ms": linger_ms + 50,
        "share_within_bound": (
            round(sum(1 for x in pooled if x <= bound_s) / len(pooled), 4) if pooled else None
        ),
        "method": (
            "per line: the emulator ledger's arrival time of its request minus the time the "
            "harness began writing it to streamsend's stdin (same clock); writing starts 0.5 s "
            "after streamsend logged `start`"
        ),
        "per_run": [r.row() for r in records],
    }
    return summary, records


def _latency_figures(latencies: Sequence[float]) -> dict[str, Any]:
    figures: dict[str, Any] = {"lines": len(latencies)}
    for name, fraction in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)):
        value = analysis.percentile(latencies, fraction)
        figures[name] = None if value is None else round(value * 1000, 1)
    return figures


def _trickle_feeder(plan: Plan, log_path: Path, written_at: dict[str, float]) -> Feeder:
    def feed(process: subprocess.Popen[bytes]) -> None:
        assert process.stdin is not None
        # Start-up (imports, config) is not what this scenario measures: wait until the run
        # has begun and its stdin reader is surely open. If it never starts, nothing is
        # written and the run fails its check (no outcomes), as any broken run does.
        try:
            wait_for_text(
                log_path, b'"event":"start"', timeout_s=60, alive=lambda: process.poll() is None
            )
        except TimeoutError:
            return
        time.sleep(0.5)
        fd = process.stdin.fileno()
        begin = time.monotonic()
        for index in range(plan.trickle_lines):
            pause = begin + index * plan.trickle_interval_s - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            line = message_line(index, "Trickle", 10_000 + index)
            written_at[f"+1415555{index % 10_000:04d}"] = time.time()
            try:
                os.write(fd, line)
            except BrokenPipeError:
                return

    return feed


# -- memory -------------------------------------------------------------------------------------


def memory(plan: Plan) -> tuple[dict[str, Any], list[RunRecord]]:
    """streamsend's peak RSS on `memory_small` and on `memory_large` lines (plain CLI, defaults)."""
    large_input = write_input(
        plan.data_dir / f"input-memory-{plan.memory_large}.ndjson", plan.memory_large
    )
    small_input = write_head(
        large_input, plan.data_dir / f"input-memory-{plan.memory_small}.ndjson", plan.memory_small
    )
    records: list[RunRecord] = []
    try:
        with EmulatorProcess(plan.data_dir / "emulator-memory.log") as emulator:
            for size, path in ((plan.memory_small, small_input), (plan.memory_large, large_input)):
                record = run_once(
                    plan,
                    emulator,
                    scenario="memory",
                    tool=f"streamsend-{size}",
                    round_=1,
                    messages=size,
                    command=_streamsend_builder(str(path), emulator.base_url, UNPACED),
                )
                records.append(record)
                plan.log(f"[memory] {size:>10,} lines {_describe(record)}")
    finally:
        large_input.unlink(missing_ok=True)
        small_input.unlink(missing_ok=True)
    small, large = records
    ratio = large.max_rss_kib / small.max_rss_kib if small.ok and large.ok else None
    return {
        "small_lines": plan.memory_small,
        "large_lines": plan.memory_large,
        "small_peak_rss_mib": round(small.max_rss_kib / 1024, 1),
        "large_peak_rss_mib": round(large.max_rss_kib / 1024, 1),
        "ratio": None if ratio is None else round(ratio, 3),
        "failures": [f"{r.tool}: {r.problem}" for r in records if not r.ok],
        "per_run": [{"lines": r.messages, **r.row()} for r in records],
    }, records


# -- malloc -------------------------------------------------------------------------------------


def malloc_env(
    plan: Plan, input_path: Path, messages: int
) -> tuple[dict[str, Any], list[RunRecord]]:
    """streamsend on loopback, interleaved with and without MALLOC_TRIM_THRESHOLD_/TOP_PAD_."""
    variants = {"streamsend": child_env(), "streamsend+malloc_env": child_env(MALLOC_ENV)}
    records: list[RunRecord] = []
    with EmulatorProcess(plan.data_dir / "emulator-malloc.log") as emulator:
        plan.log(f"[malloc] {messages:,} messages, env {MALLOC_ENV}")
        build = _streamsend_builder(str(input_path), emulator.base_url, UNPACED)
        for round_ in range(1, plan.runs + 1):
            for variant, env in variants.items():
                record = run_once(
                    plan,
                    emulator,
                    scenario="malloc",
                    tool=variant,
                    round_=round_,
                    messages=messages,
                    command=build,
                    env=env,
                )
                records.append(record)
                plan.log(
                    f"[malloc] run {round_} {variant:<22} {_describe(record)} "
                    f"{record.minor_faults / messages:.3f} faults/msg"
                )
    return {
        "messages": messages,
        "env": MALLOC_ENV,
        "variants": {name: summarise_tool(records, name) for name in variants},
        "with_env_vs_without": compare(records, "streamsend+malloc_env", "streamsend"),
    }, records


# -- startup ------------------------------------------------------------------------------------

#: The start-up targets of issue 12, in seconds.
STARTUP_TARGETS = {"help_cpu_s": 0.15, "send_first_request_s": 0.35}


def startup(plan: Plan) -> tuple[dict[str, Any], list[RunRecord]]:
    """What a command costs before it does anything: CPU (user + sys of the child, from
    `os.wait4`) and wall time, median of `startup_runs` interleaved rounds.

    Rows: the bare interpreter (`python -c pass`, the floor), `streamsend --help`, `streamsend
    send` of one line to exit (checked like any run), and the minimal asyncio client on the same
    line. For the sends, also the wall time from spawning to the request's arrival in the
    emulator's ledger ("to first request"; it includes ~10 ms of the measuring parent's spawn).
    """
    one_line = plan.data_dir / "input-1.ndjson"
    one_line.write_bytes(message_line(0, "Start-up", 10_000))
    records: list[RunRecord] = []
    first_request: dict[str, list[float]] = {}
    with EmulatorProcess(
        plan.data_dir / "emulator-startup.log", ledger=plan.data_dir / "ledger-startup.ndjson"
    ) as emulator:
        plan.log(f"[startup] {plan.startup_runs} rounds, emulator: {emulator.command}")
        rows: dict[str, tuple[Callable[[Path, Path], list[str]], int]] = {
            "python -c pass": (lambda outcomes, stats: [sys.executable, "-c", "pass"], 0),
            "streamsend --help": (
                lambda outcomes, stats: [sys.executable, "-m", "streamsend", "--help"],
                0,
            ),
            "streamsend send": (_streamsend_builder(str(one_line), emulator.base_url, []), 1),
            Tool.MINIMAL_ASYNCIO.value: (
                _tool_builder(Tool.MINIMAL_ASYNCIO, one_line, emulator.base_url),
                1,
            ),
        }
        for round_ in range(1, plan.startup_runs + 1):
            for name, (build, messages) in rows.items():
                offset = emulator.ledger_size()
                spawned = time.time()
                record = _startup_run(plan, emulator, name, round_, build, messages)
                records.append(record)
                if messages and record.ok:
                    arrivals = analysis.arrivals_from_ledger(emulator.ledger_since(offset))
                    if arrivals:
                        first_request.setdefault(name, []).append(arrivals[0].t - spawned)
                if not record.ok:
                    plan.log(f"[startup] {name} round {round_}: {record.problem}")
    rows_out: dict[str, dict[str, Any]] = {}
    for name in rows:
        ok = [r for r in records if r.tool == name and r.ok]
        rows_out[name] = {
            "runs": sum(1 for r in records if r.tool == name),
            "ok_runs": len(ok),
            "failures": [
                f"round {r.round}: {r.problem}" for r in records if r.tool == name and not r.ok
            ],
            "cpu_s": _rounded(analysis.spread(r.user_s + r.sys_s for r in ok), 3),
            "wall_s": _rounded(analysis.spread(r.wall_s for r in ok), 3),
            "to_first_request_s": _rounded(analysis.spread(first_request.get(name, [])), 3),
            "peak_rss_mib": round(max((r.max_rss_kib for r in ok), default=0) / 1024, 1),
        }
        plan.log(f"[startup] {name:<20} {_startup_describe(rows_out[name])}")
    return {
        "rounds": plan.startup_runs,
        "targets": STARTUP_TARGETS,
        "rows": rows_out,
        "method": (
            "rows interleaved per round; CPU = user + sys of the child (os.wait4); sends are one "
            "line to exit; to first request = the emulator ledger's arrival time minus the time "
            "just before spawning"
        ),
    }, records


def _startup_run(
    plan: Plan,
    emulator: EmulatorProcess,
    name: str,
    round_: int,
    build: Callable[[Path, Path], list[str]],
    messages: int,
) -> RunRecord:
    if messages:
        return run_once(
            plan,
            emulator,
            scenario="startup",
            tool=name,
            round_=round_,
            messages=messages,
            command=build,
        )
    stem = plan.data_dir / "runs" / f"startup-{name.replace(' ', '_')}-{round_}"
    child = run_measured(
        build(stem, stem), env=child_env(), log_path=stem.with_suffix(".log"), timeout_s=60
    )
    return RunRecord(
        scenario="startup",
        tool=name,
        round=round_,
        messages=1,  # a command, not messages: per-message figures are meaningless here
        problem=None if child.exit_code == 0 else f"exit status {child.exit_code}",
        exit_code=child.exit_code,
        wall_s=child.wall_s,
        user_s=child.user_s,
        sys_s=child.sys_s,
        max_rss_kib=child.max_rss_kib,
        minor_faults=child.minor_faults,
        emulator_cpu_s=0.0,
    )


def _startup_describe(row: dict[str, Any]) -> str:
    cpu, wall, first = row["cpu_s"], row["wall_s"], row["to_first_request_s"]
    if not cpu or not wall:
        return "FAILED"
    text = f"CPU {cpu['median']:.3f} s, wall {wall['median']:.3f} s"
    if first:
        text += f", first request at {first['median']:.3f} s"
    return text


# -- capped: adaptive concurrency against a service that caps requests in flight ---------------

CAPPED_IN_FLIGHT = 4
CAPPED_LATENCY_MS = 100.0
#: Issue 12's bar: after the first 5 s, < 1% of requests 429 and >= 85% of a plain client's
#: throughput holding exactly the cap in flight.
CAPPED_SETTLE_S = 5.0


def capped(plan: Plan, input_path: Path, messages: int) -> tuple[dict[str, Any], list[RunRecord]]:
    """streamsend with its defaults (adaptive concurrency), unpaced, against `--max-in-flight 4` and
    100 ms a request, interleaved with the minimal client holding exactly 4 in flight."""
    records: list[RunRecord] = []
    tools: dict[str, Callable[[str], Callable[[Path, Path], list[str]]]] = {
        Tool.STREAMSEND.value: lambda url: _streamsend_builder(str(input_path), url, UNPACED),
        "minimal_asyncio_4": lambda url: _minimal_in_flight(input_path, url, CAPPED_IN_FLIGHT),
    }
    with EmulatorProcess(
        plan.data_dir / "emulator-capped.log",
        latency_ms=CAPPED_LATENCY_MS,
        ledger=plan.data_dir / "ledger-capped.ndjson",
        max_in_flight=CAPPED_IN_FLIGHT,
    ) as emulator:
        plan.log(f"[capped] {messages:,} messages, emulator: {emulator.command}")
        for round_ in range(1, plan.runs + 1):
            for tool, build in tools.items():
                offset = emulator.ledger_size()
                refused_before = emulator.stats()["over_in_flight_cap"]
                spawned = time.time()
                record = run_once(
                    plan,
                    emulator,
                    scenario="capped",
                    tool=tool,
                    round_=round_,
                    messages=messages,
                    command=build(emulator.base_url),
                )
                refused = emulator.stats()["over_in_flight_cap"] - refused_before
                if record.ok:
                    arrivals = analysis.arrivals_from_ledger(emulator.ledger_since(offset))
                    log = plan.data_dir / "runs" / f"capped-{tool}-{round_}.log"
                    record.extra = _capped_figures(arrivals, spawned, refused, log)
                plan.log(f"[capped] run {round_} {tool:<18} {_describe(record)} {record.extra}")
                records.append(record)
    figures = {tool: summarise_tool(records, tool) for tool in tools}
    for tool, summary in figures.items():
        ok = [r for r in records if r.tool == tool and r.ok]
        for key in ("steady_messages_per_s", "refused_share_after_settle"):
            values = [r.extra[key] for r in ok if r.extra.get(key) is not None]
            summary[key] = _rounded(analysis.spread(values), 4)
    return {
        "messages": messages,
        "runs_per_tool": plan.runs,
        "max_in_flight": CAPPED_IN_FLIGHT,
        "latency_ms": CAPPED_LATENCY_MS,
        "settle_s": CAPPED_SETTLE_S,
        "tools": figures,
        "streamsend_vs_minimal_4": compare(records, Tool.STREAMSEND.value, "minimal_asyncio_4"),
        "steady_ratio_of_medians": _ratio(
            figures[Tool.STREAMSEND.value].get("steady_messages_per_s"),
            figures["minimal_asyncio_4"].get("steady_messages_per_s"),
        ),
        "method": (
            "whole run: messages / wall time; steady: messages arriving after the first "
            f"{CAPPED_SETTLE_S:g} s (from spawning) / (last arrival - that moment), from the "
            "ledger; refused share: 429s streamsend logged after that moment / requests it made "
            "then"
        ),
    }, records


def _minimal_in_flight(
    input_path: Path, base_url: str, in_flight: int
) -> Callable[[Path, Path], list[str]]:
    def build(outcomes: Path, stats: Path) -> list[str]:
        command = tool_command(
            Tool.MINIMAL_ASYNCIO, input_path, base_url=base_url, outcomes=outcomes, stats=stats
        )
        return [*command, "--in-flight", str(in_flight)]

    return build


def _capped_figures(
    arrivals: Sequence[analysis.Arrival], spawned: float, refused: int, log: Path
) -> dict[str, Any]:
    settled = spawned + CAPPED_SETTLE_S
    late = [a for a in arrivals if a.t >= settled]
    steady = None
    if len(late) >= 2 and late[-1].t > settled:
        steady = sum(a.messages for a in late) / (late[-1].t - settled)
    # streamsend logs each 429 (`rate_limited`) with a timestamp; the minimal client retries
    # nothing and would fail its run on a 429, so its refusals are the emulator's count.
    refused_late = _logged_429s_after(log, settled) if log.exists() else None
    share = None
    if refused_late is not None and late:
        share = refused_late / (len(late) + refused_late)
    return {
        "requests": len(arrivals),
        "refused_429": refused,
        "steady_messages_per_s": None if steady is None else round(steady),
        "refused_after_settle": refused_late,
        "refused_share_after_settle": None if share is None else round(share, 4),
    }


def _logged_429s_after(log: Path, after: float) -> int:
    count = 0
    for line in log.read_bytes().splitlines():
        if b'"rate_limited"' not in line:
            continue
        stamp = json.loads(line).get("timestamp", "")
        when = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        count += when >= after
    return count


def _ratio(mine: dict[str, float] | None, theirs: dict[str, float] | None) -> float | None:
    return round(mine["median"] / theirs["median"], 3) if mine and theirs else None
