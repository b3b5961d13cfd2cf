"""The results: a table on stdout (ending with issue 12's targets), the summary JSON and the chart.

`benchmarks/results/latest.json` holds the summary of the latest run (per tool and scenario:
median [min–max] of the checked runs, plus each run's figures); raw data (request latencies,
per-line latencies, logs) stays in the git-ignored data directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks._targets import MISSED, NOT_MEASURED, check_targets

THROUGHPUT_SCENARIOS = ("loopback", "wan")


def _k(value: float | None) -> str:
    return "-" if value is None else f"{value / 1000:,.1f}k"


def _spread_k(figure: dict[str, float] | None) -> str:
    if not figure:
        return "failed"
    return f"{_k(figure['median'])} [{_k(figure['min'])}–{_k(figure['max'])}]"


def _spread(figure: dict[str, float] | None, digits: int = 2) -> str:
    if not figure:
        return "-"
    return f"{figure['median']:.{digits}f} [{figure['min']:.{digits}f}–{figure['max']:.{digits}f}]"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_table(results: dict[str, Any]) -> str:
    """The figures of a results document as plain-text tables."""
    out: list[str] = []
    scenarios = results["scenarios"]
    for name in THROUGHPUT_SCENARIOS:
        if name not in scenarios:
            continue
        scenario = scenarios[name]
        out.append(
            f"\n{name}: {scenario['messages']:,} messages, {scenario['runs_per_tool']} runs per "
            f"tool, interleaved; emulator: {scenario['emulator']['command']}"
        )
        head = (
            f"{'tool':<16} {'msgs/s median [min–max]':<26} {'net':>7} "
            f"{'CPU µs/msg [min–max]':>22} {'net':>6} {'start-up':>9} {'peak RSS':>9} "
            f"{'req p50/p99 ms':>15} {'emu µs/msg':>10} {'emu busy':>8}"
        )
        out += [head, "-" * len(head)]
        for tool, figures in scenario["tools"].items():
            net_rate = figures.get("net_messages_per_s")
            net_cpu = figures.get("net_cpu_us_per_message")
            startup = figures.get("startup")
            latency = figures["request_latency_ms"]
            emulator = figures["emulator_cpu_us_per_message"]
            busy = figures["emulator_busy"]
            out.append(
                f"{tool:<16} {_spread_k(figures['messages_per_s']):<26} "
                f"{_k(net_rate['median'] if net_rate else None):>7} "
                f"{_spread(figures['cpu_us_per_message']):>22} "
                f"{net_cpu['median'] if net_cpu else float('nan'):>6.2f} "
                f"{startup['wall_s']['median'] if startup else float('nan'):>7.2f} s "
                f"{figures['peak_rss_mib']:>5.0f} MiB "
                f"{_ms(latency['p50']) + ' / ' + _ms(latency['p99']):>15} "
                f"{emulator['median'] if emulator else 0:>10.2f} "
                f"{busy['median'] if busy else 0:>8.0%}"
            )
            for failure in figures["failures"]:
                out.append(f"{'':<16} FAILED {failure}")
        for other, ratio in scenario["streamsend_vs"].items():
            per_round = ratio["throughput_ratio_per_round"]
            cpu = ratio["cpu_ratio_per_round"]
            out.append(
                f"streamsend vs {other}: {_x(ratio['throughput_ratio_of_medians'])} throughput "
                f"(per round {_spread(per_round)}; net of start-up "
                f"{_x(ratio.get('net_throughput_ratio_of_medians'))}), "
                f"CPU per message {_spread(cpu)}×"
            )
        out.append(
            "net: start-up (the median wall and CPU of a run on "
            f"{scenario.get('startup_lines', '?')} lines) subtracted; emu busy: emulator CPU s "
            "per wall s"
        )
    if "paced" in scenarios:
        paced = scenarios["paced"]
        achieved = paced["achieved_per_s"]
        error = paced["error_pct"]
        out.append(
            f"\npaced: streamsend --rate {paced['target_per_s']:,}/s, {paced['messages']:,} "
            f"messages, {paced['ok_runs']}/{paced['runs']} runs ok"
        )
        if achieved and error:
            out.append(
                f"  achieved (steady state) {_spread(achieved, 0)}/s, error {_spread(error, 2)}%; "
                f"worst 1 s window {paced['max_excess_batches']:+.2f} batches above the target"
            )
        out += [f"  FAILED {failure}" for failure in paced["failures"]]
    if "trickle" in scenarios:
        trickle = scenarios["trickle"]
        lat = trickle["line_latency_ms"]
        out.append(
            f"\ntrickle: {trickle['lines_per_run']} lines per run, one every "
            f"{trickle['interval_ms']:.0f} ms, --linger-ms {trickle['linger_ms']}, "
            f"{trickle['ok_runs']}/{trickle['runs']} runs ok"
        )
        share = trickle["share_within_bound"]
        out.append(
            f"  stdin write → emulator arrival: p50 {_ms(lat['p50'])} ms, p90 {_ms(lat['p90'])} "
            f"ms, p99 {_ms(lat['p99'])} ms, max {_ms(lat['max'])} ms over {lat['lines']} lines; "
            f"within linger + 50 ms ({trickle['bound_ms']} ms): "
            + ("-" if share is None else f"{share:.1%}")
        )
        out += [f"  FAILED {failure}" for failure in trickle["failures"]]
    if "capped" in scenarios:
        out += _capped_table(scenarios["capped"])
    if "startup" in scenarios:
        out += _startup_table(scenarios["startup"])
    if "memory" in scenarios:
        memory = scenarios["memory"]
        ratio = memory["ratio"]
        out.append(
            f"\nmemory: streamsend peak RSS {memory['small_peak_rss_mib']:.1f} MiB at "
            f"{memory['small_lines']:,} lines, {memory['large_peak_rss_mib']:.1f} MiB at "
            f"{memory['large_lines']:,} lines: ratio " + ("-" if ratio is None else f"{ratio:.3f}")
        )
        out += [f"  FAILED {failure}" for failure in memory["failures"]]
    if "malloc" in scenarios:
        malloc = scenarios["malloc"]
        out.append(f"\nmalloc: {malloc['messages']:,} messages, env {malloc['env']}")
        for variant, figures in malloc["variants"].items():
            faults = figures["minor_faults_per_message"]
            out.append(
                f"  {variant:<22} {_spread_k(figures['messages_per_s'])} msgs/s, "
                f"{_spread(figures['cpu_us_per_message'])} µs/msg, "
                f"{faults['median'] if faults else 0:.3f} minor faults/msg"
            )
        ratio = malloc["with_env_vs_without"]
        out.append(
            f"  with env / without: {_x(ratio['throughput_ratio_of_medians'])} throughput "
            f"(per round {_spread(ratio['throughput_ratio_per_round'])}), CPU per message "
            f"{_spread(ratio['cpu_ratio_per_round'])}×"
        )
    if "scaleout" in scenarios:
        out += _scaleout_table(scenarios["scaleout"])
    targets = results.get("targets")
    out += _targets_table(check_targets(results) if targets is None else targets)
    return "\n".join(out) + "\n"


def _targets_table(targets: list[dict[str, Any]]) -> list[str]:
    """One line per target of issue 12: this run's figure, the target, met or by how much not."""
    out = ["\ntargets (issue 12), figures from this run, baselines measured alongside:"]
    width = max((len(t["name"]) for t in targets), default=0)
    for target in targets:
        op, unit = target["op"], target["unit"]
        bound = ("±" if op == "±" else f"{op} ") + _in_unit(target["bound"], unit)
        measured = target["measured"]
        status = target["status"]
        if status == NOT_MEASURED:
            verdict = f"{NOT_MEASURED} ({target['note']})"
        elif status == MISSED:
            relative = abs(target["missed_by"] / target["bound"]) if target["bound"] else 0
            verdict = f"{MISSED} by {_in_unit(target['missed_by'], unit)} ({relative:.0%} " + (
                "short of it)" if op == ">=" else "over it)"
            )
        else:
            verdict = status
        if target["note"] and status != NOT_MEASURED:
            verdict += f"; {target['note']}"
        shown = (
            "-"
            if measured is None
            else _in_unit(measured, unit, signed=op == "±" or unit == "batches")
        )
        out.append(f"  {target['name']:<{width}}  {shown:>13}  target {bound:<14} {verdict}")
    return out


def _in_unit(value: float, unit: str, *, signed: bool = False) -> str:
    sign = "+" if signed else ""
    if unit == "×":
        return f"{value:{sign}.2f}×"
    if unit == "s":
        return f"{value:{sign}.3f} s"
    if unit == "%":
        return f"{value:{sign}.2f}%"
    if unit == "batches":
        return f"{value:{sign}.2f} batches"
    return f"{value:{sign}.1f} {unit}"


def _scaleout_table(scaleout: dict[str, Any]) -> list[str]:
    send, worker, ratio = scaleout["send"], scaleout["worker"], scaleout["worker_vs_send"]
    lines = [
        f"\nscaleout: {scaleout['messages']:,} messages, {scaleout['runs']} rounds, "
        f"interleaved; Redis {scaleout['redis']}",
        f"  send           {_spread_k(send['messages_per_s'])} msgs/s, "
        f"{_spread(send['cpu_us_per_message'])} µs/msg CPU",
        f"  one worker     {_spread_k(worker['messages_per_s'])} msgs/s, "
        f"{_spread(worker['cpu_us_per_message'])} µs/msg CPU, Redis "
        f"{_spread(worker['redis_cpu_us_per_message'])} µs/msg",
        f"  enqueue        {_spread_k(scaleout['enqueue']['messages_per_s'])} msgs/s "
        "(read, validate, append to Redis)",
        f"  worker / send: {_x(ratio['throughput_ratio_of_medians'])} throughput (per round "
        f"{_spread(ratio['throughput_ratio_per_round'])}; target {ratio['target']}×)",
    ]
    three = scaleout["three_numbers"]
    lines.append(
        f"  3 workers, 3 numbers: {three['messages_per_s']:,} msgs/s, "
        f"{three['cpu_us_per_message']:.2f} µs/msg CPU (all workers), shares "
        f"{three['worker_shares']}"
    )
    paced = scaleout["three_workers_paced"]
    lines.append(
        f"  3 workers, one number at --rate {paced['target_per_s']:,}/s: achieved "
        f"{paced['achieved_per_s']:,.0f}/s ({paced['error_pct']:+.2f}%), worst 1 s window "
        f"{paced['max_excess_batches']:+.2f} batches above; shares {paced['worker_shares']}"
    )
    lines += [f"  FAILED {failure}" for failure in scaleout["failures"]]
    return lines


def _capped_table(capped: dict[str, Any]) -> list[str]:
    out = [
        f"\ncapped: emulator --max-in-flight {capped['max_in_flight']} at "
        f"{capped['latency_ms']:.0f} ms a request, {capped['messages']:,} messages, "
        f"{capped['runs_per_tool']} runs per tool, interleaved; targets after the first "
        f"{capped['settle_s']:g} s: < 1% of requests 429, >= 85% of the 4-in-flight client",
        f"  {'tool':<18} {'msgs/s median [min–max]':<26} {'steady msgs/s':<26} 429 share after",
    ]
    for tool, figures in capped["tools"].items():
        share = figures.get("refused_share_after_settle")
        out.append(
            f"  {tool:<18} {_spread_k(figures['messages_per_s']):<26} "
            f"{_spread_k(figures.get('steady_messages_per_s')):<26} "
            + ("-" if not share else f"{share['median']:.2%} [max {share['max']:.2%}]")
        )
        out += [f"  {'':<18} FAILED {failure}" for failure in figures["failures"]]
    ratio = capped["streamsend_vs_minimal_4"]
    out.append(
        f"  streamsend / minimal_asyncio_4: {_x(ratio['throughput_ratio_of_medians'])} whole run "
        f"(per round {_spread(ratio['throughput_ratio_per_round'])}), "
        f"{_x(capped['steady_ratio_of_medians'])} after the first {capped['settle_s']:g} s"
    )
    return out


def _startup_table(startup: dict[str, Any]) -> list[str]:
    targets = startup["targets"]
    out = [
        f"\nstartup: {startup['rounds']} rounds, interleaved; targets: --help "
        f"<= {targets['help_cpu_s']} s CPU, send to first request <= "
        f"{targets['send_first_request_s']} s",
        f"  {'command':<22} {'CPU s median [min–max]':<24} {'wall s median [min–max]':<24} "
        "first request s",
    ]
    for name, row in startup["rows"].items():
        first = row["to_first_request_s"]
        out.append(
            f"  {name:<22} {_spread(row['cpu_s'], 3):<24} {_spread(row['wall_s'], 3):<24} "
            + ("-" if not first else _spread(first, 3))
        )
        out += [f"  {'':<22} FAILED {failure}" for failure in row["failures"]]
    out.append("  sends are of one line, to exit (CPU) and to its arrival at the emulator")
    return out


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")


def write_chart(results: dict[str, Any], path: Path) -> None:
    """Bars of msgs/s (min–max error bars) and CPU µs/msg per tool, for loopback and wan; with
    the memory scenario, a third panel: streamsend's peak RSS on the small and the large input."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = [s for s in THROUGHPUT_SCENARIOS if s in results["scenarios"]]
    tools: list[str] = []
    for name in scenarios:
        tools += [t for t in results["scenarios"][name]["tools"] if t not in tools]
    memory = results["scenarios"].get("memory")
    panels = 3 if memory else 2
    figure, axes_row = plt.subplots(
        1, panels, figsize=(12 + 3 * (panels - 2), 4.8), width_ratios=[2, 2, 1][:panels]
    )
    rate_axes, cpu_axes = axes_row[0], axes_row[1]
    width = 0.8 / max(len(tools), 1)
    for index, tool in enumerate(tools):
        positions = [s + (index - (len(tools) - 1) / 2) * width for s in range(len(scenarios))]
        medians, lows, highs, cpus = [], [], [], []
        for name in scenarios:
            figures = results["scenarios"][name]["tools"].get(tool, {})
            rate = figures.get("messages_per_s") or {"median": 0, "min": 0, "max": 0}
            cpu = figures.get("cpu_us_per_message") or {"median": 0}
            medians.append(rate["median"] / 1000)
            lows.append((rate["median"] - rate["min"]) / 1000)
            highs.append((rate["max"] - rate["median"]) / 1000)
            cpus.append(cpu["median"])
        bars = rate_axes.bar(positions, medians, width, yerr=[lows, highs], capsize=4, label=tool)
        rate_axes.bar_label(bars, fmt="%.0fk", padding=2, fontsize=8)
        cpu_bars = cpu_axes.bar(positions, cpus, width, label=tool)
        cpu_axes.bar_label(cpu_bars, fmt="%.1f", padding=2, fontsize=8)
    labels = [f"{name}\n{results['scenarios'][name]['messages']:,} msgs" for name in scenarios]
    for axes in (rate_axes, cpu_axes):
        axes.set_xticks(range(len(scenarios)), labels)
        axes.grid(axis="y", alpha=0.3)
    rate_axes.set_ylabel("thousand messages/s (median, min–max)")
    rate_axes.set_title("Throughput, process start to exit")
    cpu_axes.set_ylabel("client CPU µs per message (median)")
    cpu_axes.set_title("Client CPU per message (user + sys, whole process)")
    rate_axes.legend(fontsize=8)
    if memory:
        _memory_panel(axes_row[2], memory)
    machine = results["machine"]
    commit = results["git"]["commit"][:10]
    figure.suptitle(
        f"streamsend benchmarks ({results['mode']}), {results['date'][:10]}, "
        f"{machine['cpu_count']} cores, Python {machine['python']}, commit {commit}",
        fontsize=10,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _memory_panel(axes: Any, memory: dict[str, Any]) -> None:
    labels = [f"{memory['small_lines']:,}\nlines", f"{memory['large_lines']:,}\nlines"]
    bars = axes.bar(
        labels, [memory["small_peak_rss_mib"], memory["large_peak_rss_mib"]], 0.6, color="C0"
    )
    axes.bar_label(bars, fmt="%.0f MiB", padding=2, fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    axes.set_ylabel("streamsend peak RSS, MiB")
    ratio = memory["ratio"]
    axes.set_title("Peak RSS by input size" + ("" if ratio is None else f" (×{ratio:.3f})"))
