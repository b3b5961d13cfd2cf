"""What the campaign features cost: loading a big opt-out list, and dedupe's memory bound.

Each measurement runs in a fresh child process, so its peak RSS (ru_maxrss) is its own:

- `suppress`: write N random E.164 numbers (one per line, 10 M by default) to a file, then
  time `load_suppression` on it in a child: wall and CPU seconds, peak RSS, and RSS before the
  load (the interpreter and imports), so the list's own share is the difference.
- `dedupe`: feed M distinct messages through `Dedupe` (the default window) in a child and
  report peak RSS against the same child fed nothing: the memory bound of --dedupe on an
  endless stream is the window, whatever M is.

    python benchmarks/campaign_memory.py                    # 10 M numbers, 5 M messages
    python benchmarks/campaign_memory.py --numbers 1000000 --messages 1000000
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _write_numbers(path: Path, count: int) -> None:
    rng = random.Random(15)
    with path.open("wb") as out:
        batch = 100_000
        for start in range(0, count, batch):
            n = min(batch, count - start)
            out.write(b"".join(b"+1%010d\n" % rng.randrange(10**10) for _ in range(n)))


def _child_suppress(path: str) -> None:
    from streamsend._suppress import load_suppression

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    wall, cpu = time.perf_counter(), time.process_time()
    loaded = load_suppression([path])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "numbers": len(loaded.numbers),
                "wall_s": round(wall, 2),
                "cpu_s": round(cpu, 2),
                "peak_rss_mib": round(rss / 1024, 1),
                "rss_before_mib": round(rss_before / 1024, 1),
                "table_mib": round(loaded.numbers.nbytes / 2**20, 1),
            }
        )
    )


def _child_dedupe(messages: int) -> None:
    from streamsend._dedupe import Dedupe
    from streamsend._models import Encoding, Message

    dedupe = Dedupe("message")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    block = 10_000
    for start in range(0, messages, block):
        batch = [
            Message(
                "in",
                n,
                "+1415",
                "pn",
                b'{"to_msisdn":"+1%010d","body":"hi"}' % n,
                b"",
                1,
                Encoding.GSM7,
            )
            for n in range(start, min(start + block, messages))
        ]
        dedupe.sort_out(batch)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "messages": messages,
                "window": dedupe.window,
                "held": dedupe.held,
                "peak_rss_mib": round(rss / 1024, 1),
                "rss_before_mib": round(rss_before / 1024, 1),
            }
        )
    )


def _run_child(*args: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numbers", type=int, default=10_000_000)
    parser.add_argument("--messages", type=int, default=5_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, value = args.child
        if kind == "suppress":
            _child_suppress(value)
        else:
            _child_dedupe(int(value))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "optout.txt"
        _write_numbers(path, args.numbers)
        for _ in range(args.runs):
            print("suppress", json.dumps(_run_child("suppress", str(path))), flush=True)
    for messages in (0, args.messages):
        print("dedupe", json.dumps(_run_child("dedupe", str(messages))), flush=True)


if __name__ == "__main__":
    main()
