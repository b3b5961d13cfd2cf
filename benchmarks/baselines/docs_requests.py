"""The docs-style client: a sequential `requests.post(json=...)` per 1,000-message batch.

What a user copies from the API documentation and wraps in a loop: parse each line with `json`,
collect 1,000 messages, post them, write one outcome line per message from the answer. No input
validation, no retries, no pacing, no journal, one request at a time.
"""

from __future__ import annotations

import json
import time
from typing import Any

import requests

from benchmarks.baselines._common import (
    BATCH_SIZE,
    V1_BULK_PATH,
    api_key,
    parse_args,
    write_stats,
)


def main() -> int:
    args = parse_args(__doc__.split("\n\n")[0])
    started = time.perf_counter()
    url = args.base_url.rstrip("/") + V1_BULK_PATH
    headers = {"X-Api-Key": api_key()}
    latencies: list[float] = []
    failed = 0

    with args.input.open(encoding="utf-8") as lines, args.outcomes.open("w") as outcomes:

        def send(batch: list[dict[str, Any]], first_line: int) -> None:
            nonlocal failed
            sent_at = time.perf_counter()
            response = requests.post(
                url,
                json={"from_phone_number_id": args.sender, "messages": batch},
                headers=headers,
                timeout=30,
            )
            latencies.append(time.perf_counter() - sent_at)
            rejected: dict[int, str] = {}
            if response.status_code == 201:
                for error in response.json().get("errors", []):
                    rejected[error["index"]] = error["error"]
                status = "queued"
            else:
                status = "failed"
                failed += 1
            for index, message in enumerate(batch):
                outcome = {
                    "line": first_line + index,
                    "to_msisdn": message["to_msisdn"],
                    "ref": message.get("ref"),
                    "status": "rejected" if index in rejected else status,
                }
                if index in rejected:
                    outcome["error"] = rejected[index]
                outcomes.write(json.dumps(outcome) + "\n")

        batch: list[dict[str, Any]] = []
        first_line = 1
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            if not batch:
                first_line = line_no
            batch.append(json.loads(line))
            if len(batch) == BATCH_SIZE:
                send(batch, first_line)
                batch = []
        if batch:
            send(batch, first_line)

    write_stats(args.stats, time.perf_counter() - started, latencies)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
