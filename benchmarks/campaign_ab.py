"""What the campaign stage costs on the hot path: this checkout against a baseline commit.

Runs `streamsend send` on the same loopback input against one emulator, interleaved round by
round (baseline, then each variant of this checkout), so a slow phase of the machine hits all
alike; prints per variant the median messages/s, client CPU µs per message and peak RSS, and
their ratios to the baseline's medians. The baseline is a detached git worktree of `--baseline`
(created in the temporary directory, reused), run with the same interpreter.

    python -m benchmarks.campaign_ab --baseline main --messages 500000 --runs 5
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from benchmarks._emulator import EmulatorProcess
from benchmarks._inputs import write_input
from benchmarks._process import run_measured
from benchmarks._tools import (
    UNPACED,
    compile_as_installed,
    count_outcomes,
    remove_run_files,
    streamsend_command,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Each variant: the extra `send` flags, and whether it runs the baseline's code.
VARIANTS: dict[str, tuple[list[str], bool]] = {
    "baseline": ([], True),
    "dedupe=message (default)": ([], False),
    "dedupe=off": (["--dedupe", "off"], False),
}


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    # `python -m streamsend` imports the package from the working directory first.
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _baseline_tree(rev: str) -> Path:
    commit = subprocess.run(
        ["git", "rev-parse", rev], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    # Outside the repository: mypy and ruff would otherwise check a second copy of the package.
    tree = Path(tempfile.gettempdir()) / f"streamsend-baseline-{commit[:10]}"
    if not tree.exists():
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), commit],
            cwd=REPO_ROOT,
            check=True,
            capture_output=True,
        )
    compile_as_installed(tree)
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="main", help="git revision to compare with")
    parser.add_argument("--messages", type=int, default=500_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT / "benchmarks" / "data")
    args = parser.parse_args()
    data = args.data_dir
    data.mkdir(parents=True, exist_ok=True)
    baseline = _baseline_tree(args.baseline)
    compile_as_installed(REPO_ROOT)
    source = write_input(data / f"ab-{args.messages}.ndjson", args.messages)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMSEND_")}
    figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in VARIANTS}
    with EmulatorProcess(data / "ab-emulator.log") as emulator:
        from benchmarks._emulator import API_KEY

        env["TRACKLY_API_KEY"] = API_KEY
        for round_ in range(1, args.runs + 1):
            for name, (extra, is_baseline) in VARIANTS.items():
                outcomes = data / "ab-outcomes.ndjson"
                remove_run_files(outcomes)
                argv = streamsend_command(
                    str(source),
                    base_url=emulator.base_url,
                    outcomes=outcomes,
                    extra=[*UNPACED, *extra, "--log-level", "warning"],
                )
                with _cwd(baseline if is_baseline else REPO_ROOT):
                    run = run_measured(argv, env=env, log_path=data / "ab.log", timeout_s=600)
                total, queued = count_outcomes(outcomes)
                # The generated input repeats a few (recipient, body) pairs: --dedupe makes
                # those `duplicate`, so every line needs an outcome, not every line `queued`.
                if run.exit_code != 0 or total != args.messages:
                    sys.exit(f"{name}: exit {run.exit_code}, {queued}/{total} queued; see ab.log")
                row = (
                    args.messages / run.wall_s,
                    run.cpu_s / args.messages * 1e6,
                    run.max_rss_kib / 1024,
                )
                figures[name].append(row)
                print(
                    f"round {round_} {name:<26} {row[0]:>9,.0f} msgs/s "
                    f"{row[1]:5.2f} µs CPU/msg  {row[2]:6.1f} MiB",
                    flush=True,
                )
    base = [statistics.median(col) for col in zip(*figures["baseline"], strict=True)]
    print(f"\nmedians of {args.runs} interleaved rounds, {args.messages:,} messages on loopback:")
    for name, rows in figures.items():
        med = [statistics.median(col) for col in zip(*rows, strict=True)]
        print(
            f"  {name:<26} {med[0]:>9,.0f} msgs/s ({med[0] / base[0]:.3f}×)  "
            f"{med[1]:5.2f} µs CPU/msg ({med[1] / base[1]:.3f}×)  "
            f"peak RSS {med[2]:6.1f} MiB ({med[2] - base[2]:+.1f})"
        )


if __name__ == "__main__":
    main()
