"""Benchmark input: NDJSON messages of the usual shape, deterministic for a given count.

    {"to_msisdn":"+14155550042","body":"Hello Chen! Your order 5968 ships today. ...","ref":"m42"}

Every line is valid and takes streamsend's plain-line path, as most real campaigns would. A
smaller input is always the head of a larger one, so scenarios with fewer messages send the same
first lines.
"""

from __future__ import annotations

import random
from pathlib import Path

_NAMES = ("Ana", "Bob", "Chen", "Dara", "Eve", "Femi", "Gus", "Hana", "Ines", "Jon")
_BLOCK = 10_000


def message_line(index: int, name: str, order: int) -> bytes:
    """Line `index` (0-based) of an input: a distinct recipient for every 10,000 lines."""
    return (
        b'{"to_msisdn":"+1415555%04d","body":"Hello %s! Your order %d ships today. '
        b'Track it at trk.ly/o%d. Reply STOP to opt out.","ref":"m%d"}\n'
        % (index % 10_000, name.encode(), order, order, index)
    )


def write_input(path: Path, count: int, *, seed: int = 5) -> Path:
    """Write `count` message lines to `path` (replacing it); return the path."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        for start in range(0, count, _BLOCK):
            lines = [
                # The order number is unique per line: with a random one, a few (recipient,
                # body) pairs repeated, and `--dedupe` (on by default) rightly sent them once,
                # which failed every run's "each line queued" check.
                message_line(index, rng.choice(_NAMES), 100_000 + index)
                for index in range(start, min(start + _BLOCK, count))
            ]
            file.write(b"".join(lines))
    return path


def write_head(source: Path, path: Path, count: int) -> Path:
    """Write the first `count` lines of `source` to `path`; return the path."""
    written = 0
    with source.open("rb") as reader, path.open("wb") as writer:
        for line in reader:
            if written == count:
                break
            writer.write(line)
            written += 1
    if written != count:
        raise ValueError(f"{source} has {written} lines, fewer than {count}")
    return path


def count_lines(path: Path) -> int:
    count = 0
    with path.open("rb") as file:
        while chunk := file.read(1 << 22):
            count += chunk.count(b"\n")
    return count
