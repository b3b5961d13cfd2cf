"""`python -m benchmarks`: run the scenarios, print the table, write results/latest.{json,png}.

    python -m benchmarks --quick                   # make bench
    python -m benchmarks                           # make bench-full: 1M messages on loopback
    python -m benchmarks --quick --malloc --profile
    python -m benchmarks --scenarios loopback --messages 300000 --runs 5

`latest.json` and `latest.png` are rewritten only by a run that covers the seven standard
scenarios (loopback, wan, paced, trickle, capped, startup, memory); any run's full figures, with
raw latencies, go to `data/results-<time>.json`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import _report as report
from benchmarks._inputs import write_head, write_input
from benchmarks._profile import profile_loopback
from benchmarks._scenarios import (
    REPO_ROOT,
    WAN_LATENCY_MS,
    WAN_SPREAD_MS,
    Plan,
    RunRecord,
    capped,
    malloc_env,
    memory,
    paced,
    startup,
    throughput,
    trickle,
)
from benchmarks._targets import check_targets
from benchmarks._tools import compile_as_installed

BENCH_DIR = Path(__file__).resolve().parent
# memory is standard: issue 12's "peak RSS flat in input size" is one of the targets every run
# reports (see _targets).
STANDARD = ("loopback", "wan", "paced", "trickle", "capped", "startup", "memory")
OPTIONAL = ("malloc", "profile", "scaleout")

#: mode: (messages, wan messages, paced seconds, trickle lines, memory small, memory large,
#: capped messages, start-up rounds). Loopback is issue 12's "300k messages from process start
#: to exit" row in quick mode and its "1M messages" row in full mode.
SIZES = {
    "quick": (300_000, 100_000, 10.0, 40, 100_000, 1_000_000, 400_000, 5),
    "full": (1_000_000, 200_000, 11.0, 100, 500_000, 5_000_000, 1_000_000, 11),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark streamsend against the docs-style and minimal asyncio clients.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller inputs: 300k messages on loopback"
    )
    parser.add_argument(
        "--scenarios",
        nargs="+",
        choices=STANDARD + OPTIONAL,
        help=f"what to run (default: {' '.join(STANDARD)})",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="add the memory check to a --scenarios selection (it is in the standard set)",
    )
    parser.add_argument("--malloc", action="store_true", help="add the malloc-env comparison")
    parser.add_argument("--profile", action="store_true", help="add the loopback profile")
    parser.add_argument(
        "--scaleout",
        action="store_true",
        help="add the Redis workers: one worker vs send, 3 workers on 3 numbers, 3 paced",
    )
    parser.add_argument("--messages", type=int, help="messages on loopback (and malloc, profile)")
    parser.add_argument("--wan-messages", type=int, help="messages in the wan scenario")
    parser.add_argument("--runs", type=int, default=3, help="runs per tool and scenario (3)")
    parser.add_argument("--rate", type=int, default=20_000, help="paced target, msgs/s (20000)")
    parser.add_argument("--data-dir", type=Path, default=BENCH_DIR / "data")
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    mode = "quick" if args.quick else "full"
    messages, wan, paced_s, trickle_lines, small, large, capped_n, startup_runs = SIZES[mode]
    return Plan(
        mode=mode,
        data_dir=args.data_dir,
        messages=args.messages or messages,
        wan_messages=args.wan_messages or wan,
        runs=args.runs,
        paced_rate=args.rate,
        paced_seconds=paced_s,
        trickle_lines=trickle_lines,
        trickle_interval_s=0.1,
        trickle_linger_ms=100,
        memory_small=small,
        memory_large=large,
        capped_messages=capped_n,
        startup_runs=startup_runs,
    )


def chosen_scenarios(args: argparse.Namespace) -> list[str]:
    chosen = list(args.scenarios or STANDARD)
    for flag in ("memory", *OPTIONAL):
        if getattr(args, flag) and flag not in chosen:
            chosen.append(flag)
    return chosen


def git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def run_benchmarks(plan: Plan, scenarios: list[str], results_dir: Path) -> dict[str, Any]:
    """Run `scenarios`; return the results document (also written to the data directory)."""
    started = time.monotonic()
    compile_as_installed(REPO_ROOT)
    plan.data_dir.mkdir(parents=True, exist_ok=True)
    commit = git("rev-parse", "HEAD")
    paced_messages = int(plan.paced_rate * plan.paced_seconds)
    biggest = max(plan.messages, plan.wan_messages, paced_messages, plan.capped_messages)
    plan.log(f"generating {biggest:,} input lines in {plan.data_dir}")
    source = write_input(plan.data_dir / f"input-{biggest}.ndjson", biggest)

    def input_of(count: int) -> Path:
        if count == biggest:
            return source
        return write_head(source, plan.data_dir / f"input-{count}.ndjson", count)

    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mode": plan.mode,
        "command": "python -m benchmarks " + " ".join(sys.argv[1:]),
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            # Other work on the machine skews everything; the load says whether there was any.
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "git": {
            "commit": commit,
            "streamsend_uncommitted_changes": bool(
                git("status", "--porcelain", "--", "streamsend")
            ),
        },
        "scenarios": {},
    }
    raw: dict[str, list[RunRecord]] = {}
    for name in scenarios:
        scenario_started = time.monotonic()
        if name == "loopback":
            summary, records = throughput(plan, name, input_of(plan.messages), plan.messages)
        elif name == "wan":
            summary, records = throughput(
                plan,
                name,
                input_of(plan.wan_messages),
                plan.wan_messages,
                latency_ms=WAN_LATENCY_MS,
                latency_spread_ms=WAN_SPREAD_MS,
            )
        elif name == "paced":
            summary, records = paced(plan, input_of(paced_messages), paced_messages)
        elif name == "trickle":
            summary, records = trickle(plan)
        elif name == "capped":
            summary, records = capped(plan, input_of(plan.capped_messages), plan.capped_messages)
        elif name == "startup":
            summary, records = startup(plan)
        elif name == "memory":
            summary, records = memory(plan)
        elif name == "scaleout":
            from benchmarks._scaleout import scaleout

            summary, records = scaleout(plan, input_of(plan.messages), plan.messages), []
        elif name == "malloc":
            summary, records = malloc_env(plan, input_of(plan.messages), plan.messages)
        else:
            summary = profile_loopback(
                plan,
                input_of(plan.messages),
                plan.messages,
                results_dir / "profile-loopback.txt",
                commit,
            )
            records = []
        summary["seconds"] = round(time.monotonic() - scenario_started, 1)
        results["scenarios"][name] = summary
        raw[name] = records
    results["targets"] = check_targets(results)
    results["duration_s"] = round(time.monotonic() - started, 1)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    raw_document = {
        **results,
        "raw_runs": {
            name: [{"tool": r.tool, **r.row(), "latencies_s": r.latencies_s} for r in records]
            for name, records in raw.items()
        },
    }
    report.write_json(raw_document, plan.data_dir / f"results-{stamp}.json")
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = make_plan(args)
    scenarios = chosen_scenarios(args)
    results = run_benchmarks(plan, scenarios, args.results_dir)
    print(report.format_table(results))
    machine = results["machine"]
    print(
        f"took {results['duration_s']:.0f} s ({plan.mode} mode); load average at start "
        f"{machine['load_average_at_start']}, at end {machine['load_average_at_end']}"
    )
    if all(name in results["scenarios"] for name in STANDARD):
        report.write_json(results, args.results_dir / "latest.json")
        report.write_chart(results, args.results_dir / "latest.png")
        print(f"wrote {args.results_dir / 'latest.json'} and {args.results_dir / 'latest.png'}")
    else:
        print("a partial run: latest.json and latest.png left as they were")
    failures = [
        failure for summary in results["scenarios"].values() for failure in _failures(summary)
    ]
    return 1 if failures else 0


def _failures(summary: dict[str, Any]) -> list[str]:
    found = list(summary.get("failures", []))
    for key in ("tools", "variants"):
        for figures in summary.get(key, {}).values():
            found += figures.get("failures", [])
    return found


if __name__ == "__main__":
    sys.exit(main())
