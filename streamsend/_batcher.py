"""Batching: Messages become requests of one sender, at most 1,000 messages, under 5,000,000 bytes.

Promises (checked by property-based tests):
- every message added comes out in exactly one batch, in the order it was added for its sender;
- a batch never mixes senders, never exceeds its sender's message cap, and its encoded request
  body stays strictly below `max_body_bytes` (the service answers 413 above 5 MB; we take the
  strict reading, 5,000,000 bytes, and stay below it);
- an open batch waits at most `linger` seconds after its first message (like Kafka's linger.ms),
  so a slow stream is never held back for long and a fast one still fills whole batches;
- at most `max_buffered` messages wait in open batches across all senders: past that, the least
  recently filled batch is sent early, so a stream naming fifty senders can't hold 50 × 1,000.

The batcher is plain synchronous code: the pipeline calls it from one task and drives the clock,
which keeps it easy to test and free of locks.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, chain, count
from operator import add, attrgetter

from streamsend._columns import Columns, wires_of
from streamsend._models import Batch, Message
from streamsend._protocol import protocol_for
from streamsend._types import ApiVersion

_SENDER = attrgetter("sender")

MAX_BATCH_MESSAGES = 1000
# The service refuses bodies over 5 MB with 413; "5 MB" is read strictly as 5,000,000 bytes.
MAX_REQUEST_BYTES = 5_000_000


@dataclass(slots=True)
class _OpenBatch:
    opened_at: float
    cap: int
    size: int  # the request body's bytes with the messages so far
    count: int = 0  # messages so far
    # The messages, as the slices they were added in: Columns (the columnar path) or lists.
    parts: list[Sequence[Message]] = field(default_factory=list)

    def append(self, message: Message) -> None:
        last = self.parts[-1] if self.parts else None
        if type(last) is list:
            last.append(message)
        else:
            self.parts.append([message])
        self.count += 1

    def extend(self, messages: Sequence[Message]) -> None:
        self.parts.append(messages)
        self.count += len(messages)

    def messages(self) -> Sequence[Message]:
        """One request's messages: Columns when they all came as columns of one input (the
        hot path keeps its columns to the wire and the outcomes file), else a tuple."""
        parts = self.parts
        if all(type(part) is Columns for part in parts):
            columns: list[Columns] = parts  # type: ignore[assignment]
            if len({part.source for part in columns}) == 1:
                return Columns.concat(columns)
        return tuple(chain.from_iterable(parts))


class Batcher:
    """Groups messages into per-sender batches; see the module's promises."""

    def __init__(
        self,
        *,
        api_version: ApiVersion = "v1",
        max_messages: int = MAX_BATCH_MESSAGES,
        max_body_bytes: int = MAX_REQUEST_BYTES,
        linger: float = 0.25,
        max_buffered: int = 10 * MAX_BATCH_MESSAGES,
        cap_for_sender: Callable[[str], int] | None = None,
    ) -> None:
        if not 1 <= max_messages <= MAX_BATCH_MESSAGES:
            raise ValueError("max_messages must be between 1 and 1000")
        self.api_version = api_version
        self._protocol = protocol_for(api_version)
        self.max_messages = max_messages
        self.max_body_bytes = max_body_bytes
        self.linger = linger
        # Not raised to a whole batch: the cap is a memory promise; below the batch size it
        # simply makes batches smaller.
        self.max_buffered = max_buffered
        self._cap_for_sender = cap_for_sender
        # Insertion order is recency of filling: the first entry is the least recently filled.
        self._open: dict[str, _OpenBatch] = {}
        self._envelope_sizes: dict[str, int] = {}
        self.buffered = 0

    def add(self, message: Message, now: float) -> list[Batch]:
        """Add one message; return the batches that are ready because of it (often none)."""
        return self.add_many((message,), now)

    def add_many(self, messages: Sequence[Message], now: float) -> list[Batch]:
        """Add messages in order; return the batches that became ready, in the order they did.

        The loop is the batcher's hot path (once per message), so the batch being filled is
        kept in locals and only put back in `_open` (as the most recently filled) when the
        sender changes or the loop ends.
        """
        ready: list[Batch] = []
        if type(messages) is Columns:
            if messages:
                self._add_run(messages.sender, messages, now, ready)
            return ready
        if messages and len(set(map(_SENDER, messages))) == 1:
            self._add_run(messages[0].sender, messages, now, ready)
            return ready
        open_batches = self._open
        max_bytes = self.max_body_bytes
        sender = ""  # no sender is empty (validation refuses it), so the first message switches
        batch: _OpenBatch | None = None
        for message in messages:
            if message.sender != sender:
                if batch is not None:
                    open_batches[sender] = batch
                sender = message.sender
                batch = open_batches.pop(sender, None)
            wire_size = len(message.wire) + 1  # with the comma before it
            if batch is None:
                batch = self._new_batch(sender, now)
            elif batch.size + wire_size >= max_bytes:
                ready.append(self._close(sender, batch))
                batch = self._new_batch(sender, now)
            batch.append(message)
            batch.size += wire_size
            self.buffered += 1
            if batch.count >= batch.cap:
                ready.append(self._close(sender, batch))
                batch = None
            elif self.buffered > self.max_buffered:
                # Too much waits in open batches: send the least recently filled one early.
                # (The batch being filled is the most recent, so it is never the one chosen
                # while another is open.)
                if open_batches:
                    oldest = next(iter(open_batches))
                    ready.append(self._close(oldest, open_batches.pop(oldest)))
                else:
                    ready.append(self._close(sender, batch))
                    batch = None
        if batch is not None:
            open_batches[sender] = batch
        return ready

    def _add_run(
        self, sender: str, messages: Sequence[Message], now: float, ready: list[Batch]
    ) -> None:
        """`add_many` for messages of one sender (the usual block): whole slices at a time.

        Cut points come from cumulative sizes and a binary search instead of a check per
        message, so the per-message work is a few C-level passes over the block.
        """
        open_batches = self._open
        batch = open_batches.pop(sender, None) or self._new_batch(sender, now)
        # limits[k] - limits[j]: the bytes messages[j:k] add to a batch, a comma each included.
        sizes = accumulate(map(len, wires_of(messages)), initial=0)
        limits = list(map(add, sizes, count()))
        total = len(messages)
        start = 0
        while start < total:
            # The furthest end such that the batch stays under the byte cap and the count cap.
            budget = self.max_body_bytes - batch.size + limits[start]
            furthest = min(total, start + batch.cap - batch.count)
            end = bisect_left(limits, budget, start, furthest + 1) - 1
            if end == start:
                if batch.count:  # the next message doesn't fit: this batch is full
                    ready.append(self._close(sender, batch))
                    batch = self._new_batch(sender, now)
                    continue
                end = start + 1  # one message alone over the cap: validation prevents this
            batch.extend(messages[start:end])
            batch.size += limits[end] - limits[start]
            self.buffered += end - start
            start = end
            if batch.count >= batch.cap:
                ready.append(self._close(sender, batch))
                batch = self._new_batch(sender, now)
            while self.buffered > self.max_buffered and open_batches:
                # Too much waits in open batches: send the least recently filled one early.
                oldest = next(iter(open_batches))
                ready.append(self._close(oldest, open_batches.pop(oldest)))
        if batch.count:
            open_batches[sender] = batch  # re-inserted last: the most recently filled

    def _new_batch(self, sender: str, now: float) -> _OpenBatch:
        # The first message adds no comma, so the size starts one below the envelope's.
        return _OpenBatch(now, self._cap(sender), self._envelope_size(sender) - 1)

    def next_deadline(self) -> float | None:
        """When the oldest open batch's linger runs out (None when nothing is open)."""
        if not self._open:
            return None
        return min(b.opened_at for b in self._open.values()) + self.linger

    def flush_due(self, now: float) -> list[Batch]:
        """Close every batch whose linger has run out."""
        # The same sum as next_deadline: `now - opened_at >= linger` rounds differently, so a
        # caller woken at next_deadline could get nothing back and wait for a deadline past.
        due = [s for s, b in self._open.items() if b.opened_at + self.linger <= now]
        return [self._close(s, self._open.pop(s)) for s in due]

    def flush_all(self) -> list[Batch]:
        """Close every open batch (end of input, or shutdown)."""
        ready = [self._close(s, b) for s, b in self._open.items()]
        self._open.clear()
        return ready

    def _close(self, sender: str, open_batch: _OpenBatch) -> Batch:
        self.buffered -= open_batch.count
        return Batch(sender, open_batch.messages())

    def _cap(self, sender: str) -> int:
        # Never above max_buffered: a batch that reached the cap must close at the cap, not one
        # message later, when the global cap flushes it.
        most = max(1, min(self.max_messages, self.max_buffered))
        if self._cap_for_sender is None:
            return most
        return max(1, min(most, self._cap_for_sender(sender)))

    def _envelope_size(self, sender: str) -> int:
        size = self._envelope_sizes.get(sender)
        if size is None:
            head, tail = self._protocol.envelope(sender)
            size = self._envelope_sizes[sender] = len(head) + len(tail)
        return size
