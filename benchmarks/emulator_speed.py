"""How many validated messages per second the emulator handles, so benchmarks measure the client.

Starts `python -m streamsend.emulator --port 0 ...` in a subprocess (the emulator on one core),
then, from this process, blasts pre-encoded 1,000-message bulk bodies at it over N keep-alive
connections with aiohttp, and prints the messages/s the emulator queued, for each run and the
median. Bodies are encoded before timing starts, so this process does almost nothing per
message; on a 2-core machine the client still takes some CPU of its own, so the figure is a
lower bound for the emulator, and on a busy machine (other processes competing for the two cores)
the wall-clock figure drops while the emulator's CPU cost per message does not. So the
emulator's own CPU seconds (from /proc) are printed too, as microseconds per message and
messages per CPU-second: the cost that matters when client and emulator share the machine.

    python benchmarks/emulator_speed.py                 # v1, 8 connections, 3 runs of ~3 s
    python benchmarks/emulator_speed.py --api v2 --ledger /tmp/ledger.ndjson
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson

from streamsend.testing import API_KEY, V1_LIST, V2_LIST

_LISTENING = re.compile(rb"listening on (http://\S+/api)")
_BODY_WORDS = (
    "Hi {name}, your order {order} ships today. Track it at trk.ly/{code} Reply STOP to end"
)
_NAMES = ("Ana", "Bob", "Chen", "Dara", "Eve", "Femi", "Gus", "Hana")


def encode_bodies(api: str, count: int, per_request: int, seed: int = 1) -> list[bytes]:
    """`count` distinct request bodies of `per_request` valid messages each."""
    rng = random.Random(seed)
    bodies: list[bytes] = []
    for _ in range(count):
        messages: list[dict[str, str]] = []
        for _ in range(per_request):
            to = f"+1{rng.randrange(200, 999)}{rng.randrange(10**6, 10**7)}"
            text = _BODY_WORDS.format(
                name=rng.choice(_NAMES), order=rng.randrange(10**5), code=rng.randrange(10**6)
            )
            if api == "v1":
                messages.append({"to_msisdn": to, "body": text})
            else:
                messages.append({"to": to, "list_number": V2_LIST, "body": text})
        if api == "v1":
            bodies.append(orjson.dumps({"from_phone_number_id": V1_LIST, "messages": messages}))
        else:
            bodies.append(orjson.dumps({"messages": messages}))
    return bodies


def start_emulator(ledger: Path | None) -> tuple[subprocess.Popen[bytes], str]:
    """Start the emulator subprocess; return it and its base URL (parsed from its one line)."""
    command = [sys.executable, "-m", "streamsend.emulator", "--port", "0", "--list", V1_LIST]
    command += ["--v2-list", V2_LIST, "--send-rate", "1000000000/min"]
    if ledger is not None:
        command += ["--ledger", str(ledger)]
    environment = {**os.environ, "TRACKLY_API_KEY": API_KEY}  # keeps the key off the command line
    process = subprocess.Popen(command, stderr=subprocess.PIPE, env=environment)
    assert process.stderr is not None
    line = process.stderr.readline()
    match = _LISTENING.search(line)
    if match is None:
        process.kill()
        raise SystemExit(f"the emulator did not start: {line!r}")
    return process, match.group(1).decode()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def blast(url: str, bodies: list[bytes], seconds: float, connections: int) -> int:
    """Post bodies over `connections` connections for `seconds`; return the messages queued."""
    headers = {"X-Api-Key": API_KEY, "Content-Type": "application/json"}
    deadline = time.monotonic() + seconds
    queued = 0

    async def worker(session: aiohttp.ClientSession, offset: int) -> None:
        nonlocal queued
        index = offset
        while time.monotonic() < deadline:
            async with session.post(url, data=bodies[index % len(bodies)], headers=headers) as r:
                answer = await r.read()
                if r.status != 201:
                    raise SystemExit(f"unexpected answer {r.status}: {answer[:200]!r}")
            queued += orjson.loads(answer)["queued_count"]
            index += connections

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session, offset) for offset in range(connections)))
    return queued


async def measure(args: argparse.Namespace, base_url: str, pid: int) -> list[float]:
    bodies = encode_bodies(args.api, 32, args.messages)
    path = "/v1/messages/bulk" if args.api == "v1" else "/v2/send/bulk"
    url = base_url + path
    await blast(url, bodies, 0.5, args.connections)  # warm up connections and the emulator
    rates: list[float] = []
    for run in range(1, args.runs + 1):
        cpu_before = cpu_seconds(pid)
        client_before = time.process_time()
        started = time.monotonic()
        queued = await blast(url, bodies, args.seconds, args.connections)
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(pid) - cpu_before
        client_cpu = time.process_time() - client_before
        rate = queued / elapsed
        rates.append(rate)
        print(
            f"run {run}: {queued:,} messages in {elapsed:.2f} s = {rate:,.0f} msgs/s; "
            f"emulator CPU {cpu:.2f} s = {cpu / queued * 1e6:.2f} µs/msg "
            f"({queued / cpu:,.0f} msgs per CPU-second); client CPU {client_cpu:.2f} s"
        )
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api", choices=("v1", "v2"), default="v1")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one run")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--messages", type=int, default=1000, help="messages per request")
    parser.add_argument("--ledger", type=Path, help="have the emulator write a ledger here")
    args = parser.parse_args(argv)
    process, base_url = start_emulator(args.ledger)
    try:
        rates = asyncio.run(measure(args, base_url, process.pid))
    finally:
        process.terminate()
        process.wait(timeout=10)
    print(
        f"emulator, {args.api}, {args.connections} connections, {args.messages} messages/request: "
        f"median {statistics.median(rates):,.0f} validated msgs/s over {len(rates)} runs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
