"""Issue 12's targets, checked against the figures of one results document.

Every figure compared comes from the same run (its baselines included): ratios of medians
where a baseline is involved, as the issue states its targets. A target whose scenario did not
run, or whose runs all failed their checks, is "not measured". Pure: no measuring here.
"""

from __future__ import annotations

from typing import Any

#: Issue 12's bars (the start-up ones are in the startup summary, the trickle bound in its own).
LOOPBACK_THROUGHPUT_X = 1.5
LOOPBACK_CPU_X = 0.67
WAN_THROUGHPUT_X = 1.5
CAPPED_REFUSED_PCT = 1.0
CAPPED_THROUGHPUT_X = 0.85
PACED_ERROR_PCT = 1.0
#: The leaky bucket's promise: no 1 s window above the rate by more than one batch plus this.
PACED_SLACK_S = 0.005
MEMORY_RATIO = 1.10

MET = "met"
MISSED = "MISSED"
NOT_MEASURED = "not measured"


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per target: name, scenario, measured, op (">=", "<=", "<", "±"), bound, unit,
    status (met / MISSED / not measured), missed_by (in the unit; None unless missed), note."""
    scenarios: dict[str, Any] = results["scenarios"]
    out: list[dict[str, Any]] = []

    def check(
        name: str,
        scenario: str,
        measured: float | None,
        op: str,
        bound: float,
        unit: str,
        note: str = "",
    ) -> None:
        entry = {"name": name, "scenario": scenario, "measured": measured, "op": op}
        entry |= {"bound": round(bound, 4), "unit": unit, "missed_by": None, "note": note}
        if measured is None:
            ran = scenario in scenarios
            entry["status"] = NOT_MEASURED
            entry["note"] = "no checked run" if ran else f"the {scenario} scenario did not run"
        else:
            short = {
                ">=": bound - measured,
                "<=": measured - bound,
                "<": measured - bound,
                "±": abs(measured) - bound,
            }[op]
            met = short < 0 or (short == 0 and op != "<")
            entry["status"] = MET if met else MISSED
            entry["missed_by"] = None if met else round(short, 4)
        out.append(entry)

    def get(*path: str) -> Any:
        value: Any = scenarios
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    def ratio(mine: Any, theirs: Any) -> float | None:
        return round(mine / theirs, 3) if mine is not None and theirs else None

    def sized(text: str, count: Any, suffix: str = " msgs") -> str:
        return text if count is None else f"{text} {count:,}{suffix}"

    # Named by size: full mode runs issue 12's 1M row, quick mode its 300k start-to-exit row.
    loopback_n = get("loopback", "messages")
    rows = {1_000_000: "loopback 1M row", 300_000: "loopback 300k start-to-exit row"}
    loopback = rows.get(loopback_n) or sized("loopback", loopback_n)
    check(
        f"{loopback}: throughput ÷ minimal_asyncio",
        "loopback",
        get("loopback", "streamsend_vs", "minimal_asyncio", "throughput_ratio_of_medians"),
        ">=",
        LOOPBACK_THROUGHPUT_X,
        "×",
    )
    check(
        f"{loopback}: client CPU/msg ÷ minimal_asyncio",
        "loopback",
        ratio(
            get("loopback", "tools", "streamsend", "cpu_us_per_message", "median"),
            get("loopback", "tools", "minimal_asyncio", "cpu_us_per_message", "median"),
        ),
        "<=",
        LOOPBACK_CPU_X,
        "×",
    )
    check(
        sized("wan", get("wan", "messages")) + ": throughput ÷ minimal_asyncio",
        "wan",
        get("wan", "streamsend_vs", "minimal_asyncio", "throughput_ratio_of_medians"),
        ">=",
        WAN_THROUGHPUT_X,
        "×",
    )
    settle = get("capped", "settle_s") or 5.0
    share = get("capped", "tools", "streamsend", "refused_share_after_settle", "median")
    check(
        f"capped: 429 share after the first {settle:g} s",
        "capped",
        None if share is None else round(share * 100, 3),
        "<",
        CAPPED_REFUSED_PCT,
        "%",
    )
    check(
        f"capped: throughput after {settle:g} s ÷ minimal_asyncio_4",
        "capped",
        get("capped", "steady_ratio_of_medians"),
        ">=",
        CAPPED_THROUGHPUT_X,
        "×",
    )
    rate = get("paced", "target_per_s")
    check(
        sized("paced --rate", rate, "/s") + ": steady rate error",
        "paced",
        get("paced", "error_pct", "median"),
        "±",
        PACED_ERROR_PCT,
        "%",
    )
    runs = get("paced", "per_run") or []  # results from before the summary held the batch
    batch = get("paced", "batch_messages") or max(
        (r.get("batch_messages") or 0 for r in runs), default=0
    )
    excess = get("paced", "max_excess_batches")
    check(
        "paced: worst 1 s window above the rate",
        "paced",
        excess if batch and rate else None,
        "<=",
        1 + PACED_SLACK_S * (rate or 0) / batch if batch else 1.0,
        "batches",
        f"worst of all runs; bound: one batch ({batch:,}) + {PACED_SLACK_S * 1000:g} ms of the rate"
        if batch
        else "",
    )
    linger = get("trickle", "linger_ms")
    check(
        sized("trickle --linger-ms", linger, "") + ": line to wire p99",
        "trickle",
        get("trickle", "line_latency_ms", "p99"),
        "<=",
        get("trickle", "bound_ms") or (linger or 0) + 50,
        "ms",
        "linger + 50 ms",
    )
    small, large = get("memory", "small_lines"), get("memory", "large_lines")
    check(
        "memory: peak RSS "
        + (
            "large / small input"
            if small is None or large is None
            else f"{large:,} / {small:,} lines"
        ),
        "memory",
        get("memory", "ratio"),
        "<=",
        MEMORY_RATIO,
        "×",
    )
    bounds = get("startup", "targets") or {"help_cpu_s": 0.15, "send_first_request_s": 0.35}
    check(
        "startup: --help CPU",
        "startup",
        get("startup", "rows", "streamsend --help", "cpu_s", "median"),
        "<=",
        bounds["help_cpu_s"],
        "s",
    )
    check(
        "startup: one-line send to first request",
        "startup",
        get("startup", "rows", "streamsend send", "to_first_request_s", "median"),
        "<=",
        bounds["send_first_request_s"],
        "s",
    )
    return out
