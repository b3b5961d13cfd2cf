"""What both baselines share: their command line and the stats file the harness reads."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

BATCH_SIZE = 1000
V1_BULK_PATH = "/v1/messages/bulk"


def parse_args(
    description: str, extra: Callable[[argparse.ArgumentParser], object] | None = None
) -> argparse.Namespace:
    """The shared flags; `extra` adds a baseline's own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("input", type=Path, help="NDJSON file, one message per line")
    parser.add_argument("--base-url", required=True, help="API base URL, e.g. http://HOST:PORT/api")
    parser.add_argument("--from", dest="sender", required=True, help="v1 from_phone_number_id")
    parser.add_argument("--outcomes", type=Path, required=True, help="one outcome line per message")
    parser.add_argument(
        "--stats", type=Path, help="write {elapsed_seconds, request_latencies_s} here at the end"
    )
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def api_key() -> str:
    return os.environ["TRACKLY_API_KEY"]


def write_stats(path: Path | None, elapsed: float, latencies: list[float]) -> None:
    """The harness's view into the run: wall time after start-up, and each request's latency."""
    if path is not None:
        path.write_text(json.dumps({"elapsed_seconds": elapsed, "request_latencies_s": latencies}))
