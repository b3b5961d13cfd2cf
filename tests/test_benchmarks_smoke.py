"""The benchmark harness's pieces run and produce well-formed results (behaviour, never timing).

One tiny end-to-end run (loopback, paced, trickle, startup and memory on ~2,000 messages, one
round each) against a real emulator process, plus the analysis functions and the targets of
issue 12 on made-up numbers whose answers are known.
No assertion here depends on how fast anything ran.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import _report as report
from benchmarks.__main__ import run_benchmarks
from benchmarks._analysis import Arrival, arrivals_from_ledger, paced_accuracy, percentile
from benchmarks._process import run_measured
from benchmarks._profile import parse_collapsed, render
from benchmarks._scenarios import Plan
from benchmarks._targets import check_targets
from benchmarks._tools import Tool, check_run


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One tiny harness run, shared by the tests that read its results."""
    root = tmp_path_factory.mktemp("bench")
    plan = Plan(
        mode="smoke",
        data_dir=root / "data",
        messages=2_000,
        wan_messages=2_000,
        runs=1,
        paced_rate=2_000,
        paced_seconds=1.0,
        trickle_lines=5,
        trickle_interval_s=0.02,
        trickle_linger_ms=20,
        memory_small=100,
        memory_large=1_000,
        startup_runs=1,
        timeout_s=120,
        log=lambda line: None,
    )
    results = run_benchmarks(
        plan, ["loopback", "paced", "trickle", "startup", "memory"], root / "results"
    )
    results["_root"] = str(root)
    return results


def test_every_tool_completes_a_checked_loopback_run(tiny_results: dict[str, Any]) -> None:
    """Each tool's run passes the outcome and emulator checks and gets figures."""
    loopback = tiny_results["scenarios"]["loopback"]
    assert set(loopback["tools"]) == {tool.value for tool in Tool}
    for tool, figures in loopback["tools"].items():
        assert figures["failures"] == [], tool
        assert figures["ok_runs"] == 1
        assert figures["messages_per_s"]["median"] > 0
        assert figures["cpu_us_per_message"]["median"] > 0
        assert figures["peak_rss_mib"] > 0
        assert figures["request_latency_ms"]["requests"] >= 2  # 2,000 messages: 2 requests
        assert figures["startup"]["lines"] == 100
    assert set(loopback["streamsend_vs"]) == {"docs_requests", "minimal_asyncio"}


def test_paced_and_trickle_report_their_figures(tiny_results: dict[str, Any]) -> None:
    """The paced run yields a rate from the ledger; the trickle run a latency for every line."""
    scenarios = tiny_results["scenarios"]
    paced = scenarios["paced"]
    assert paced["failures"] == []
    assert paced["target_per_s"] == 2_000
    assert paced["achieved_per_s"]["median"] > 0
    assert paced["max_excess_batches"] is not None
    trickle = scenarios["trickle"]
    assert trickle["failures"] == []
    assert trickle["line_latency_ms"]["lines"] == 5
    assert 0 <= trickle["share_within_bound"] <= 1


def test_startup_rows_measure_every_command(tiny_results: dict[str, Any]) -> None:
    """The start-up scenario measures the interpreter floor, --help and a one-line send of
    streamsend and of the minimal client; each send is checked and its request found."""
    rows = tiny_results["scenarios"]["startup"]["rows"]
    assert set(rows) == {
        "python -c pass",
        "streamsend --help",
        "streamsend send",
        "minimal_asyncio",
    }
    for name, row in rows.items():
        assert row["failures"] == [], name
        assert row["cpu_s"]["median"] > 0
    assert rows["streamsend send"]["to_first_request_s"]["median"] > 0
    assert rows["streamsend --help"]["to_first_request_s"] is None
    assert "startup:" in report.format_table(tiny_results)


def test_results_render_as_table_json_and_chart(
    tiny_results: dict[str, Any], tmp_path: Path
) -> None:
    """The table names every tool; the JSON round-trips; the chart is a PNG file."""
    table = report.format_table(tiny_results)
    for tool in Tool:
        assert tool.value in table
    assert "paced:" in table
    assert "trickle:" in table
    report.write_json(tiny_results, tmp_path / "latest.json")
    document = json.loads((tmp_path / "latest.json").read_text())
    assert document["machine"]["cpu_count"] >= 1
    assert {"date", "git", "scenarios"} <= set(document)
    report.write_chart(tiny_results, tmp_path / "latest.png")
    assert (tmp_path / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    raw = list((Path(tiny_results["_root"]) / "data").glob("results-*.json"))
    assert len(raw) == 1


def test_a_run_with_missing_outcomes_is_failed(tmp_path: Path) -> None:
    """A run is failed, with the reason, when its outcomes or the emulator's count fall short."""
    outcomes = tmp_path / "out.ndjson"
    outcomes.write_bytes(b'{"status":"queued"}\n' * 3)

    def problem(expected: int, queued_delta: int, exit_code: int = 0) -> str | None:
        return check_run(
            exit_code=exit_code,
            timed_out=False,
            outcomes=outcomes,
            expected=expected,
            queued_delta=queued_delta,
        )

    assert problem(3, 3) is None
    assert "3 outcome lines for 4 input lines" in str(problem(4, 4))
    assert "the emulator queued 2 messages" in str(problem(3, 2))
    assert "exit status 1" in str(problem(3, 3, exit_code=1))


def test_paced_accuracy_of_a_perfect_schedule() -> None:
    """Batches of 100 every 0.1 s are exactly 1,000/s and never exceed any 1 s window."""
    arrivals = [Arrival(i + 1, 1000.0 + i * 0.1, 100) for i in range(50)]
    figures = paced_accuracy(arrivals, target_per_s=1000, batch=100)
    assert figures["achieved_per_s"] == pytest.approx(1000)
    assert figures["error_pct"] == pytest.approx(0, abs=1e-6)
    assert figures["max_excess_batches"] == pytest.approx(0)


def test_paced_accuracy_sees_a_burst() -> None:
    """Two extra batches at once show up as two batches of excess in the worst window."""
    arrivals = [Arrival(i + 1, 1000.0 + i * 0.1, 100) for i in range(50)]
    arrivals.insert(20, Arrival(99, arrivals[20].t, 200))
    figures = paced_accuracy(arrivals, target_per_s=1000, batch=100)
    assert figures["max_excess_batches"] == pytest.approx(2)


def test_ledger_lines_group_into_requests() -> None:
    """Ledger lines are counted per request and ordered by arrival."""
    ledger = b"".join(
        b'{"list":"pn","to":"+1","body":"b","request":%d,"t":%s,"api":"v1"}\n' % (r, t)
        for r, t in ((2, b"5.5"), (1, b"5.0"), (2, b"5.5"))
    )
    assert arrivals_from_ledger(ledger) == [Arrival(1, 5.0, 1), Arrival(2, 5.5, 2)]


def test_percentile_interpolates() -> None:
    """p50 of 1..5 is 3, p99 lies just under the maximum, nothing gives None."""
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.99) == pytest.approx(4.96)
    assert percentile([], 0.5) is None


def test_profile_summary_from_collapsed_stacks() -> None:
    """Only the event loop's busy samples count: self time to the leaf, inclusive to each frame."""
    main = "_run_module_as_main (<frozen runpy>:198);loop (app.py:5)"
    stacks = [
        f"{main};parse (app.py:9) 3",
        f"{main};parse (app.py:10);0x7f00 (libc.so.6) 1",
        f"{main};step (app.py:6) 1",
        f"{main};EpollSelector.select (selectors.py:468);epoll_wait (libc.so.6) 7",
        "thread_run (libpython3.11.so);_worker (thread.py:83);_queue_SimpleQueue_get (q.c) 9",
    ]
    profile = parse_collapsed(stacks)
    assert profile.total == 5
    assert profile.self_time["parse (app.py)"] == 3
    assert profile.self_time["[unresolved native] (libc.so.6)"] == 1
    assert profile.inclusive["parse (app.py)"] == 4
    assert profile.threads["event loop thread: waiting in epoll"] == 7
    assert profile.threads["worker threads: waiting for work"] == 9
    text = render(profile, ["header"])
    assert "60.0%  parse (app.py)" in text


def test_peak_rss_is_the_childs_own(tmp_path: Path) -> None:
    """A child's peak RSS doesn't include the harness's: Linux starts a child's ru_maxrss at its
    parent's peak, so the harness starts clients from a small measuring process."""
    ballast = b"\x01" * (200 << 20)  # written, so every page is resident
    child = run_measured(
        [sys.executable, "-c", "pass"], env=os.environ, log_path=tmp_path / "c.log", timeout_s=60
    )
    assert child.exit_code == 0
    assert child.max_rss_kib < 100 * 1024 < len(ballast) // 1024


def test_results_list_every_target_of_issue_12(tiny_results: dict[str, Any]) -> None:
    """The run's results hold the targets: those of the scenarios it ran have a figure, the
    others (wan, capped) are "not measured"; the table ends with them."""
    targets = tiny_results["targets"]
    assert len(targets) == 11
    for target in targets:
        if target["scenario"] in ("wan", "capped"):
            assert target["status"] == "not measured", target
        else:
            assert target["measured"] is not None, target
            assert target["status"] in ("met", "MISSED"), target
    table = report.format_table(tiny_results)
    assert "\nmemory: streamsend peak RSS" in table
    assert table.rstrip().splitlines()[-1].startswith("  startup: one-line send")


def _made_up_results() -> dict[str, Any]:
    streamsend = {"cpu_us_per_message": {"median": 3.0}}
    minimal = {"cpu_us_per_message": {"median": 4.0}}
    return {
        "mode": "full",
        "scenarios": {
            "loopback": {
                "messages": 1_000_000,
                "tools": {"streamsend": streamsend, "minimal_asyncio": minimal},
                "streamsend_vs": {"minimal_asyncio": {"throughput_ratio_of_medians": 1.6}},
            },
            "paced": {
                "target_per_s": 20_000,
                "batch_messages": 1_000,
                "error_pct": {"median": -1.2},
                "max_excess_batches": 1.08,
            },
            "trickle": {"linger_ms": 100, "bound_ms": 150, "line_latency_ms": {"p99": 174.0}},
            "memory": {"small_lines": 500_000, "large_lines": 5_000_000, "ratio": 1.045},
            "startup": {
                "targets": {"help_cpu_s": 0.15, "send_first_request_s": 0.35},
                "rows": {
                    "streamsend --help": {"cpu_s": {"median": 0.6}},
                    "streamsend send": {"to_first_request_s": None},  # every round failed
                },
            },
        },
    }


def test_targets_met_missed_and_not_measured() -> None:
    """Made-up figures: each target is met, missed by the right amount, or not measured."""
    targets = {t["name"]: t for t in check_targets(_made_up_results())}
    status = {name: (t["status"], t["missed_by"]) for name, t in targets.items()}
    assert status["loopback 1M row: throughput ÷ minimal_asyncio"] == ("met", None)
    assert status["loopback 1M row: client CPU/msg ÷ minimal_asyncio"] == ("MISSED", 0.08)
    assert status["paced --rate 20,000/s: steady rate error"] == ("MISSED", 0.2)
    # one batch of 1,000 plus 5 ms of 20,000/s (100 messages): 1.1 batches above the rate
    assert targets["paced: worst 1 s window above the rate"]["bound"] == pytest.approx(1.1)
    assert status["paced: worst 1 s window above the rate"] == ("met", None)
    assert status["trickle --linger-ms 100: line to wire p99"] == ("MISSED", 24.0)
    assert status["memory: peak RSS 5,000,000 / 500,000 lines"] == ("met", None)
    assert status["startup: --help CPU"] == ("MISSED", 0.45)
    # the startup scenario ran, but no send reached the emulator: nothing to compare
    assert status["startup: one-line send to first request"] == ("not measured", None)
    assert targets["startup: one-line send to first request"]["note"] == "no checked run"
    for name in (  # wan and capped did not run
        "wan: throughput ÷ minimal_asyncio",
        "capped: 429 share after the first 5 s",
        "capped: throughput after 5 s ÷ minimal_asyncio_4",
    ):
        assert targets[name]["status"] == "not measured", name
        assert "did not run" in targets[name]["note"]


def test_targets_table_says_by_how_much() -> None:
    """The table's targets section shows each shortfall and what was not measured."""
    results = {"scenarios": {}, "targets": check_targets(_made_up_results())}
    section = report.format_table(results).split("targets (issue 12)", 1)[1]
    assert "MISSED by 0.08×" in section
    assert "MISSED by 24.0 ms" in section
    assert "not measured (the wan scenario did not run)" in section
    assert "not measured (no checked run)" in section
    assert len(section.strip().splitlines()) == 12  # the heading and one line per target
