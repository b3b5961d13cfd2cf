"""The minimal asyncio client: aiohttp + orjson, batches of 1,000, 8 requests in flight.

The quick script a competent engineer writes in an afternoon: read lines, `orjson.loads` each,
put 1,000-message batches on a bounded queue, 8 workers post them over one keep-alive session
(`--in-flight N` for another number: the adaptive-concurrency scenario holds exactly 4),
and each answer becomes one `orjson.dumps` outcome line per message. No input validation, no
retries, no pacing, no journal.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson

from benchmarks.baselines._common import (
    BATCH_SIZE,
    V1_BULK_PATH,
    api_key,
    parse_args,
    write_stats,
)

IN_FLIGHT = 8

Batch = tuple[int, list[dict[str, Any]]]  # (first line number, messages)


async def run() -> int:
    args = parse_args(
        __doc__.split("\n\n")[0],
        lambda parser: parser.add_argument(
            "--in-flight", type=int, default=IN_FLIGHT, help=f"requests in flight ({IN_FLIGHT})"
        ),
    )
    in_flight: int = args.in_flight
    started = time.perf_counter()
    url = args.base_url.rstrip("/") + V1_BULK_PATH
    headers = {"X-Api-Key": api_key(), "Content-Type": "application/json"}
    latencies: list[float] = []
    failed = 0
    queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=in_flight * 2)
    outcomes = args.outcomes.open("wb")

    async def post_batches(session: aiohttp.ClientSession) -> None:
        nonlocal failed
        while (item := await queue.get()) is not None:
            first_line, batch = item
            body = orjson.dumps({"from_phone_number_id": args.sender, "messages": batch})
            sent_at = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                answer = await response.read()
            latencies.append(time.perf_counter() - sent_at)
            rejected: dict[int, str] = {}
            if response.status == 201:
                for error in orjson.loads(answer).get("errors", []):
                    rejected[error["index"]] = error["error"]
                status = "queued"
            else:
                status = "failed"
                failed += 1
            lines = []
            for index, message in enumerate(batch):
                outcome = {
                    "line": first_line + index,
                    "to_msisdn": message["to_msisdn"],
                    "ref": message.get("ref"),
                    "status": "rejected" if index in rejected else status,
                }
                if index in rejected:
                    outcome["error"] = rejected[index]
                lines.append(orjson.dumps(outcome))
            outcomes.write(b"\n".join(lines) + b"\n")

    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(connector=connector) as session:
        workers = [asyncio.create_task(post_batches(session)) for _ in range(in_flight)]
        with args.input.open("rb") as lines:
            batch: list[dict[str, Any]] = []
            first_line = 1
            for line_no, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                if not batch:
                    first_line = line_no
                batch.append(orjson.loads(line))
                if len(batch) == BATCH_SIZE:
                    await queue.put((first_line, batch))
                    batch = []
            if batch:
                await queue.put((first_line, batch))
        for _ in workers:
            await queue.put(None)
        await asyncio.gather(*workers)
    outcomes.close()

    write_stats(args.stats, time.perf_counter() - started, latencies)
    return 1 if failed else 0


def main() -> int:
    return asyncio.run(run())


if __name__ == "__main__":
    raise SystemExit(main())
