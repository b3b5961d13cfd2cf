"""`streamsend demo`: a rehearsal campaign through the built-in emulator, end to end.

It writes a sample campaign (personalised bodies, a few accented and emoji bodies, and a handful of
deliberately bad lines), sends it through the same run as `streamsend send --emulator` (the
emulator in-process, the journal, the outcomes file), and prints the outcome summary. Nothing
leaves the machine.
"""

from __future__ import annotations

import asyncio
import collections
import os
import sys
import tempfile
import time
from collections.abc import Sequence

import orjson

from streamsend._config import load_settings
from streamsend._pacing import parse_rate
from streamsend._stats import RunStats
from streamsend._types import ExitCode
from streamsend._usage import OneLineParser

#: The demo's emulator sends each list's messages this fast, and the demo paces at the same rate,
#: as a real campaign paces at its list's send rate; a fast one, so that `make demo` is quick.
DEMO_SEND_RATE = "3000000/min"

_NAMES = ("Ana", "Bo", "Chidi", "Dana", "Émile", "Farah", "Goran", "Hana", "Ivo", "Júlia")
_BAD_LINES = (
    b'{"to_msisdn": "555", "body": "too short to be a phone"}',
    b'{"to_msisdn": "+14155550000"}',
    b"this line is not JSON",
    b'["an", "array"]',
)


def write_campaign(path: str, messages: int) -> None:
    """A sample campaign of `messages` good lines plus a few bad ones."""
    with open(path, "wb") as out:
        for i in range(messages):
            name = _NAMES[i % len(_NAMES)]
            body = f"Hello {name}! Your code is {i % 10000:04d}."
            if i % 500 == 7:
                body += " 🎉"  # an emoji makes the whole body UCS-2
            out.write(
                orjson.dumps(
                    {"to_msisdn": f"+1415{i % 10_000_000:07d}", "body": body, "ref": f"demo-{i}"}
                )
                + b"\n"
            )
            if i % (messages // len(_BAD_LINES) + 1) == 3:
                out.write(_BAD_LINES[i % len(_BAD_LINES)] + b"\n")


def demo_main(argv: Sequence[str]) -> int:
    """`streamsend demo`: write a sample campaign, send it to the built-in emulator, summarise."""
    parser = OneLineParser(
        prog="streamsend demo",
        description="Send a sample campaign through the built-in Trackly emulator and print "
        "the outcome summary.",
    )
    parser.add_argument("--messages", type=int, default=50_000, help="good lines (default 50000)")
    parser.add_argument("--keep", metavar="DIR", help="keep the campaign and outcomes in DIR")
    parser.add_argument(
        "--workers",
        type=int,
        help="scale-out instead: enqueue into the local Redis, run N workers, kill one mid-run",
    )
    parser.add_argument(
        "--redis", metavar="URL", help="with --workers: the Redis (default redis://127.0.0.1:6379)"
    )
    args = parser.parse_args(list(argv))
    if args.messages < 1:
        parser.error("--messages must be at least 1")
    if args.workers is not None:
        if not 1 <= args.workers <= 32:
            parser.error("--workers must be between 1 and 32")
        from streamsend._demo_cluster import demo_cluster

        return asyncio.run(
            demo_cluster(
                workers=args.workers,
                messages=args.messages,
                keep=args.keep,
                redis_url=args.redis or os.environ.get("STREAMSEND_REDIS"),
                write_campaign=write_campaign,
            )
        )

    from streamsend._run import send_campaign

    with tempfile.TemporaryDirectory(prefix="streamsend-demo-") as scratch:
        folder = args.keep or scratch
        os.makedirs(folder, exist_ok=True)
        campaign = os.path.join(folder, "campaign.ndjson")
        outcomes = os.path.join(folder, "outcomes.ndjson")
        write_campaign(campaign, args.messages)
        print(f"campaign: {args.messages} messages (+ a few bad lines) in {campaign}")
        print("sending through the built-in emulator (streamsend send --emulator) ...", flush=True)
        # Errors only: the one expected warning (v1 is deprecated) is said in words below,
        # not as a raw log event in the middle of this output.
        settings = load_settings(
            cli={"outcomes": outcomes, "log_level": "error", "rate": DEMO_SEND_RATE}
        )
        stats = RunStats()
        started = time.perf_counter()
        code = asyncio.run(
            send_campaign(
                settings,
                [campaign],
                api_key=None,
                overwrite=True,
                emulator=True,
                stats=stats,
                emulator_send_rate_per_min=parse_rate(DEMO_SEND_RATE) * 60,
            )
        )
        elapsed = time.perf_counter() - started
        if code not in (ExitCode.OK, ExitCode.NOT_ALL_QUEUED):
            print(f"the send failed with exit code {code}", file=sys.stderr)
            return int(code)
        by_status: collections.Counter[str] = collections.Counter()
        by_code: collections.Counter[str] = collections.Counter()
        segments = 0
        with open(outcomes, "rb") as file:
            for raw in file:
                record = orjson.loads(raw)
                by_status[record["status"]] += 1
                if record.get("code"):
                    by_code[record["code"]] += 1
                segments += record.get("segments") or 0
        total = sum(by_status.values())
        print(f"\noutcomes: {total} lines in {elapsed:.2f} s ({total / elapsed:,.0f} lines/s)")
        for status, count in by_status.most_common():
            print(f"  {status:<9} {count:>9,}")
        if by_code:
            print("  codes: " + ", ".join(f"{c} {n}" for c, n in by_code.most_common()))
        print(f"  segments sent: {segments:,}")
        if stats.deprecation:
            print(f"note: {stats.deprecation}")
        print(f"exit code {int(code)} (1 = finished, some lines not queued: the bad lines above)")
        if args.keep:
            print(f"outcomes kept in {outcomes}")
    return 0
