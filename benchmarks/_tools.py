"""The clients under test, how each is started, and how a run of one is checked.

Every tool reads the same input file, sends to the same emulator and writes one outcome line per
input line to a file. A run counts only when it is proved complete: the tool exited 0, its
outcome file has exactly one line per input line, each of them `queued`, and the emulator's
`messages_queued` grew by exactly the number of input lines. Anything else is a failed run,
reported with its reason and never timed.
"""

from __future__ import annotations

import compileall
import sys
from collections.abc import Sequence
from enum import Enum
from pathlib import Path

from benchmarks._emulator import SENDER


class Tool(Enum):
    """A client under test; the value is its name in results."""

    STREAMSEND = "streamsend"
    DOCS_REQUESTS = "docs_requests"
    MINIMAL_ASYNCIO = "minimal_asyncio"

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {
    Tool.STREAMSEND: "streamsend (CLI defaults: validation, outcomes file, journal with fsync)",
    Tool.DOCS_REQUESTS: "docs-style sequential requests.post, 1,000 per batch",
    Tool.MINIMAL_ASYNCIO: "minimal aiohttp + orjson, 1,000 per batch, 8 in flight",
}

#: How each tool's request latency is measured (all client-side, per HTTP request).
LATENCY_SOURCES = {
    Tool.STREAMSEND: "client side: aiohttp trace hooks, request start to response headers",
    Tool.DOCS_REQUESTS: "client side: around requests.post (connect, send, full answer)",
    Tool.MINIMAL_ASYNCIO: "client side: around session.post + read (full answer)",
}


#: What a benchmark of raw throughput passes: streamsend paces at the service's 17,000/min by
#: default, which would measure the pacing instead of the client.
UNPACED = ("--rate", "unlimited")


def compile_as_installed(tree: Path) -> None:
    """Compile the checkout's streamsend package to bytecode, as installing a wheel does.

    The editable install doesn't, and this project's machines set PYTHONDONTWRITEBYTECODE, so
    every streamsend start would otherwise compile each of its modules from source: about
    0.15 s of CPU a run that no installed copy pays (the baselines import only from
    site-packages, compiled at install)."""
    compileall.compile_dir(str(tree / "streamsend"), quiet=1)


def streamsend_command(
    input_path: str,
    *,
    base_url: str,
    outcomes: Path,
    extra: Sequence[str] = (),
    stats: Path | None = None,
) -> list[str]:
    """The `streamsend send` command line; with `stats`, through the latency-recording launcher."""
    if stats is not None:
        launcher = [sys.executable, "-m", "benchmarks._streamsend_traced", "--stats", str(stats)]
    else:
        launcher = [sys.executable, "-m", "streamsend"]
    args = ["send", input_path, "--base-url", base_url, "--from", SENDER]
    return [*launcher, *args, "--outcomes", str(outcomes), *extra]


def tool_command(
    tool: Tool, input_path: Path, *, base_url: str, outcomes: Path, stats: Path
) -> list[str]:
    """The command line of one run of `tool` with its default settings."""
    if tool is Tool.STREAMSEND:
        return streamsend_command(
            str(input_path), base_url=base_url, outcomes=outcomes, extra=UNPACED, stats=stats
        )
    module = f"benchmarks.baselines.{tool.value}"
    args = [str(input_path), "--base-url", base_url, "--from", SENDER]
    return [sys.executable, "-m", module, *args, "--outcomes", str(outcomes), "--stats", str(stats)]


def remove_run_files(outcomes: Path) -> None:
    """Delete a run's outcome file and streamsend's journal next to it (they can be large)."""
    outcomes.unlink(missing_ok=True)
    outcomes.with_name(outcomes.name + ".journal").unlink(missing_ok=True)


def count_outcomes(path: Path) -> tuple[int, int]:
    """(lines, lines whose status is queued) of an outcome file, read in chunks."""
    lines = queued = 0
    carry = b""
    with path.open("rb") as file:
        while chunk := file.read(1 << 22):
            chunk = carry + chunk
            end = chunk.rfind(b"\n") + 1
            whole, carry = chunk[:end], chunk[end:]
            lines += whole.count(b"\n")
            # orjson and streamsend write `"status":"queued"`; json.dumps adds a space.
            queued += whole.count(b'"status":"queued"') + whole.count(b'"status": "queued"')
    if carry:
        lines += 1  # a last line without its newline still counts (and is caught below)
    return lines, queued


def check_run(
    *, exit_code: int, timed_out: bool, outcomes: Path, expected: int, queued_delta: int
) -> str | None:
    """Why a finished run does not count, or None when it is complete and correct."""
    if timed_out:
        return "timed out (killed)"
    if exit_code != 0:
        return f"exit status {exit_code}"
    if not outcomes.exists():
        return "no outcome file"
    lines, queued = count_outcomes(outcomes)
    if lines != expected:
        return f"{lines:,} outcome lines for {expected:,} input lines"
    if queued != expected:
        return f"{queued:,} of {expected:,} outcomes are queued"
    if queued_delta != expected:
        return f"the emulator queued {queued_delta:,} messages, not {expected:,}"
    return None
