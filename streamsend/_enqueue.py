"""Enqueueing: validate input lines like `send` and append them to a job's streams in Redis.

Promises:
- every non-blank line ends either as an entry of its sending number's stream (a worker sends
  it) or, when invalid, suppressed, a duplicate or already past its `send_before`, with that
  outcome written to the job at once: the campaign stage (templates, --suppress, --dedupe,
  --skip-sent; see `_campaign`) runs here, so workers never see those lines;
- an entry's ID is <input number>-<line>, and each input keeps a high-water mark of the lines
  already enqueued, in the same script as the entries: enqueueing the same input again (after a
  crash, or twice by mistake) adds nothing, and a cut-short enqueue rerun adds only the rest;
- a block of input is one script call per ~1 MiB read (round trips batched), and reading waits
  for each call, so a slow Redis slows the reading and memory stays flat on an endless stdin;
- at the end of its input (never, for an endless stream) the job's input is marked complete.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from streamsend._campaign import Campaign, source_refusals
from streamsend._config import Settings
from streamsend._exceptions import InputError
from streamsend._expiry import Expiry
from streamsend._models import Message, Outcome
from streamsend._outcomes import OutcomeEncoder
from streamsend._redis_job import RedisJob, pack_message, until_reachable
from streamsend._types import LineSource, Logger
from streamsend._validate import Validator


@dataclass(slots=True)
class EnqueueResult:
    added: int = 0  # entries added for workers to send
    invalid: int = 0  # lines not to send (invalid, suppressed, ...), their outcomes written
    already: int = 0  # lines an earlier enqueue of the same input had added
    by_source: dict[str, int] = field(default_factory=dict)


async def enqueue(
    settings: Settings,
    job: RedisJob,
    source: LineSource,
    *,
    complete: bool = True,
    log: Logger = None,
    campaign: Campaign | None = None,
) -> EnqueueResult:
    """Validate and append every line of `source` to `job`; mark its input complete at the end
    when `complete` (the caller passes False to keep a job open for more inputs)."""
    await until_reachable(lambda: job.create(settings.api_version), log, "enqueue")
    validator = Validator(
        api_version=settings.api_version,
        default_sender=settings.sender,
        max_line_bytes=settings.max_line_bytes,
    )
    encoder = OutcomeEncoder()
    result = EnqueueResult()
    campaign = campaign if campaign is not None else Campaign.load(settings)
    async for block in source:
        messages: list[Message] = []
        invalid: list[Outcome] = []
        validator.validate_lines(block.source, block.first_line, block.lines, messages, invalid)
        if block.errors:
            invalid += source_refusals(block)
        if campaign.sorts_out or block.deadlines:
            invalid += campaign.sort_out(messages, block)
        if not block.lines:
            continue
        number = await until_reachable(partial(job.source_number, block.source), log, "enqueue")
        last_line = block.first_line + len(block.lines) - 1
        entries = _by_sender(messages, campaign.expiry)
        campaign.expiry.forget(messages)  # the moments travel in the entries now
        outcomes = _encoded(encoder, invalid)
        added, invalid_added, refused = await until_reachable(
            partial(job.enqueue_block, number, last_line, entries, outcomes),
            log,
            "enqueue",
        )
        if refused:
            raise InputError(
                f"{block.source}: {refused} lines from line {block.first_line} come before "
                "entries of an input enqueued after it; enqueue the rest into a new job"
            )
        result.added += added
        result.invalid += invalid_added
        result.already += len(messages) + len(invalid) - added - invalid_added
        result.by_source[block.source] = result.by_source.get(block.source, 0) + added
    if complete:
        await until_reachable(job.mark_input_complete, log, "enqueue")
    return result


def _by_sender(messages: Sequence[Message], expiry: Expiry) -> dict[str, list[Any]]:
    now_ms = int(time.time() * 1000)
    flat: dict[str, list[Any]] = {}
    for message in messages:
        entries = flat.get(message.sender)
        if entries is None:
            entries = flat[message.sender] = []
        entries += (message.line, pack_message(message, now_ms, expiry.moment_of(message)))
    return flat


def _encoded(encoder: OutcomeEncoder, outcomes: Sequence[Outcome]) -> list[tuple[int, bytes]]:
    return [(o.line, encoder.encode([o])) for o in outcomes]
