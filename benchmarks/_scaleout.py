"""The scale-out scenario: workers on a Redis job, against `send` on the same input.

- `send` vs `worker`: interleaved rounds (send, worker, send, worker, ...) on the same input and
  emulator. A worker round enqueues the input into a fresh job first (not timed), then times one
  `streamsend worker` process from spawn to exit, as a `send` round is timed; Redis's own CPU
  in the round is reported beside it. Every run is checked: the job's outcomes (collected after
  the timed part) hold one `queued` line per input line, and the emulator queued exactly as many.
- 3 workers on 3 sending numbers: an input whose lines rotate over three numbers, three worker
  processes at once; wall time from the first spawn to the last exit, and each worker's share.
- 3 workers on one number at `--rate`: the aggregate rate at the emulator, from its ledger
  (the same measure as the `paced` scenario), and the worst 1 s window.

Needs the Redis of the machine (redis://127.0.0.1:6379, or STREAMSEND_BENCH_REDIS).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

from benchmarks import _analysis as analysis
from benchmarks._emulator import SENDER, EmulatorProcess
from benchmarks._process import ChildRun, cpu_seconds_of, run_measured
from benchmarks._scenarios import Plan, _rounded, child_env
from benchmarks._tools import UNPACED, check_run, remove_run_files, streamsend_command

REDIS_URL = os.environ.get("STREAMSEND_BENCH_REDIS", "redis://127.0.0.1:6379")
SENDERS = (SENDER, "pn_scaleout_b", "pn_scaleout_c")
#: The generated input repeats a few (recipient, body) pairs; `send` and `enqueue` both take
#: every line, so that each run delivers the whole input and the two do the same work.
ALL_LINES = ("--dedupe", "off")


def _redis_pid() -> int | None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        info: dict[str, Any] = client.info("server")
        return int(info["process_id"])
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()


def _streamsend(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamsend", *args]


def _quiet(argv: list[str], env: dict[str, str], *, ok: tuple[int, ...] = (0,)) -> None:
    done = subprocess.run(
        argv, check=False, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    if done.returncode not in ok:
        raise RuntimeError(f"{' '.join(argv[2:])}: exit {done.returncode}: {done.stderr[-500:]!r}")


def _new_job(plan: Plan, input_path: Path, env: dict[str, str], *extra: str) -> str:
    job = f"bench-{uuid.uuid4().hex[:10]}"
    _quiet(_streamsend("enqueue", str(input_path), "--job", job, *ALL_LINES, *extra), env)
    return job


def _collect_and_purge(plan: Plan, job: str, env: dict[str, str], outcomes: Path) -> None:
    # Exit 1 (not every line queued) is for check_run to report, with the reason.
    _quiet(_streamsend("collect", "--job", job, "--outcomes", str(outcomes)), env, ok=(0, 1))
    _quiet(_streamsend("job", "purge", job), env)


def _workers(
    plan: Plan, job: str, env: dict[str, str], base_url: str, count: int, extra: list[str], tag: str
) -> list[ChildRun]:
    """`count` worker processes on `job` at once, each measured; in the order started."""
    runs: list[ChildRun | None] = [None] * count

    def one(i: int) -> None:
        runs[i] = run_measured(
            _streamsend("worker", "--job", job, "--base-url", base_url, *extra),
            env=env,
            log_path=plan.data_dir / "runs" / f"scaleout-{tag}-worker{i}.log",
            timeout_s=plan.timeout_s,
        )

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [r for r in runs if r is not None]


def _write_rotating_input(path: Path, count: int) -> Path:
    """Lines like the standard input, each naming one of SENDERS in turn."""
    with path.open("wb") as file:
        for i in range(count):
            file.write(
                b'{"to_msisdn":"+1415555%04d","body":"Hello! Your order %d ships today.",'
                b'"ref":"m%d","from_phone_number_id":"%s"}\n'
                % (i % 10_000, i, i, SENDERS[i % 3].encode())
            )
    return path


def scaleout(plan: Plan, input_path: Path, messages: int) -> dict[str, Any]:
    env = child_env({"STREAMSEND_REDIS": REDIS_URL})
    redis_pid = _redis_pid()
    rows: dict[str, list[dict[str, Any]]] = {"send": [], "worker": []}
    enqueue_rows: list[dict[str, Any]] = []  # the enqueue before each worker round, timed
    failures: list[str] = []
    runs_dir = plan.data_dir / "runs"
    with EmulatorProcess(
        plan.data_dir / "emulator-scaleout.log",
        ledger=plan.data_dir / "ledger-scaleout.ndjson",
        extra_lists=SENDERS[1:],
    ) as emulator:
        plan.log(f"[scaleout] {messages:,} messages, Redis {REDIS_URL}: send vs one worker")
        for round_ in range(1, plan.runs + 1):
            for tool in ("send", "worker"):
                job = f"bench-{uuid.uuid4().hex[:10]}"
                outcomes = runs_dir / f"scaleout-{tool}-{round_}.outcomes.ndjson"
                remove_run_files(outcomes)
                queued_before = emulator.messages_queued()
                redis_cpu = cpu_seconds_of(redis_pid) if redis_pid else 0.0
                if tool == "send":
                    child = run_measured(
                        streamsend_command(
                            str(input_path),
                            base_url=emulator.base_url,
                            outcomes=outcomes,
                            extra=(*UNPACED, *ALL_LINES),
                        ),
                        env=env,
                        log_path=runs_dir / f"scaleout-send-{round_}.log",
                        timeout_s=plan.timeout_s,
                    )
                else:
                    enqueue = run_measured(
                        _streamsend(
                            "enqueue", str(input_path), "--job", job, "--from", SENDER, *ALL_LINES
                        ),
                        env=env,
                        log_path=runs_dir / f"scaleout-enqueue-{round_}.log",
                        timeout_s=plan.timeout_s,
                    )
                    if enqueue.exit_code:
                        failures.append(f"enqueue round {round_}: exit {enqueue.exit_code}")
                    enqueue_rows.append(
                        {"round": round_, "messages_per_s": round(messages / enqueue.wall_s)}
                    )
                    redis_cpu = cpu_seconds_of(redis_pid) if redis_pid else 0.0
                    [child] = _workers(
                        plan, job, env, emulator.base_url, 1, list(UNPACED), f"one-{round_}"
                    )
                redis_cpu = (cpu_seconds_of(redis_pid) if redis_pid else 0.0) - redis_cpu
                if tool == "worker":
                    _collect_and_purge(plan, job, env, outcomes)
                problem = check_run(
                    exit_code=child.exit_code,
                    timed_out=child.timed_out,
                    outcomes=outcomes,
                    expected=messages,
                    queued_delta=emulator.messages_queued() - queued_before,
                )
                remove_run_files(outcomes)
                row = {
                    "round": round_,
                    "problem": problem,
                    "messages_per_s": round(messages / child.wall_s),
                    "wall_s": round(child.wall_s, 3),
                    "cpu_us_per_message": round((child.user_s + child.sys_s) / messages * 1e6, 3),
                    "redis_cpu_us_per_message": round(redis_cpu / messages * 1e6, 3),
                }
                rows[tool].append(row)
                if problem:
                    failures.append(f"{tool} round {round_}: {problem}")
                plan.log(
                    f"[scaleout] round {round_} {tool:<6} {row['messages_per_s']:>9,} msgs/s "
                    f"{row['cpu_us_per_message']:6.2f} µs/msg CPU, Redis "
                    f"{row['redis_cpu_us_per_message']:.2f} µs/msg"
                    + (f" FAILED {problem}" if problem else "")
                )
        three = _three_numbers(plan, emulator, env, messages, failures)
        paced = _three_paced(plan, emulator, env, failures)
    ok = {tool: [r for r in rows[tool] if not r["problem"]] for tool in rows}
    ratios = [
        w["messages_per_s"] / s["messages_per_s"]
        for s, w in zip(ok["send"], ok["worker"], strict=False)
    ]
    send_median = analysis.spread(r["messages_per_s"] for r in ok["send"])
    worker_median = analysis.spread(r["messages_per_s"] for r in ok["worker"])
    return {
        "messages": messages,
        "runs": plan.runs,
        "redis": REDIS_URL,
        "send": {
            "messages_per_s": _rounded(send_median, 0),
            "cpu_us_per_message": _rounded(
                analysis.spread(r["cpu_us_per_message"] for r in ok["send"]), 3
            ),
        },
        "worker": {
            "messages_per_s": _rounded(worker_median, 0),
            "cpu_us_per_message": _rounded(
                analysis.spread(r["cpu_us_per_message"] for r in ok["worker"]), 3
            ),
            "redis_cpu_us_per_message": _rounded(
                analysis.spread(r["redis_cpu_us_per_message"] for r in ok["worker"]), 3
            ),
        },
        # `enqueue` reads, validates and appends; `send` reads, validates and sends.
        "enqueue": {
            "messages_per_s": _rounded(
                analysis.spread(r["messages_per_s"] for r in enqueue_rows), 0
            ),
        },
        "worker_vs_send": {
            "throughput_ratio_of_medians": (
                round(worker_median["median"] / send_median["median"], 3)
                if worker_median and send_median
                else None
            ),
            "throughput_ratio_per_round": _rounded(analysis.spread(ratios), 3),
            "target": 0.4,
        },
        "three_numbers": three,
        "three_workers_paced": paced,
        "failures": failures,
        "per_run": rows,
    }


def _three_numbers(
    plan: Plan, emulator: EmulatorProcess, env: dict[str, str], messages: int, failures: list[str]
) -> dict[str, Any]:
    """3 workers at once on an input over 3 sending numbers: aggregate throughput, shares."""
    input_path = _write_rotating_input(plan.data_dir / "input-scaleout-3.ndjson", messages)
    job = _new_job(plan, input_path, env)
    queued_before = emulator.messages_queued()
    children = _workers(plan, job, env, emulator.base_url, 3, list(UNPACED), "three")
    wall = max(c.wall_s for c in children)
    shares = _shares(job)
    outcomes = plan.data_dir / "runs" / "scaleout-three.outcomes.ndjson"
    _collect_and_purge(plan, job, env, outcomes)
    problem = check_run(
        exit_code=max(c.exit_code for c in children),
        timed_out=any(c.timed_out for c in children),
        outcomes=outcomes,
        expected=messages,
        queued_delta=emulator.messages_queued() - queued_before,
    )
    remove_run_files(outcomes)
    if problem:
        failures.append(f"three numbers: {problem}")
    cpu = sum(c.user_s + c.sys_s for c in children)
    row = {
        "messages": messages,
        "messages_per_s": round(messages / wall),
        "wall_s": round(wall, 3),
        "cpu_us_per_message": round(cpu / messages * 1e6, 3),
        "worker_shares": shares,
        "problem": problem,
    }
    plan.log(f"[scaleout] 3 workers, 3 numbers: {row}")
    return row


def _three_paced(
    plan: Plan, emulator: EmulatorProcess, env: dict[str, str], failures: list[str]
) -> dict[str, Any]:
    """3 workers on one number at --rate: the aggregate rate at the emulator, and its bursts."""
    rate = plan.paced_rate
    messages = int(rate * plan.paced_seconds)
    from benchmarks._inputs import write_input

    input_path = write_input(plan.data_dir / f"input-scaleout-paced-{messages}.ndjson", messages)
    job = _new_job(plan, input_path, env, "--from", SENDER)
    offset = emulator.ledger_size()
    queued_before = emulator.messages_queued()
    children = _workers(plan, job, env, emulator.base_url, 3, ["--rate", f"{rate}/s"], "paced")
    shares = _shares(job)
    outcomes = plan.data_dir / "runs" / "scaleout-paced.outcomes.ndjson"
    _collect_and_purge(plan, job, env, outcomes)
    # One `queued` outcome per line, and the service queued each line once (as many as lines).
    problem = check_run(
        exit_code=max(c.exit_code for c in children),
        timed_out=any(c.timed_out for c in children),
        outcomes=outcomes,
        expected=messages,
        queued_delta=emulator.messages_queued() - queued_before,
    )
    remove_run_files(outcomes)
    if problem:
        failures.append(f"three workers paced: {problem}")
    ledger = emulator.ledger_since(offset)
    ledger_lines = ledger.count(b"\n")
    if ledger_lines != messages:  # a line in the ledger twice would be a second sending
        failures.append(f"three workers paced: {ledger_lines} ledger lines, not {messages}")
    arrivals = analysis.arrivals_from_ledger(ledger)
    batch = max(a.messages for a in arrivals)
    accuracy = analysis.paced_accuracy(arrivals, target_per_s=rate, batch=batch)
    row = {
        "target_per_s": rate,
        "messages": messages,
        **{k: round(v, 3) for k, v in accuracy.items()},
        "batch_messages": batch,
        "worker_shares": shares,
    }
    plan.log(f"[scaleout] 3 workers, one number at {rate}/s: {row}")
    return row


def _shares(job: str) -> list[int]:
    """Lines each worker of `job` committed, largest first."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        raw: dict[bytes, bytes] = client.hgetall(f"streamsend:job:{{{job}}}:workers")  # type: ignore[assignment]
    finally:
        client.close()
    return sorted((int(v) for k, v in raw.items() if k.startswith(b"done:")), reverse=True)
