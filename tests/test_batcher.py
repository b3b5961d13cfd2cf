"""Batching: every message in exactly one batch, per-sender order, the count and byte caps, linger
on an injected clock, and the global buffer cap flushing the least recently filled sender first.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsend._batcher import (
    MAX_BATCH_MESSAGES,
    MAX_REQUEST_BYTES,
    Batcher,
)
from streamsend._models import Batch, Encoding, Message
from streamsend._protocol import protocol_for
from streamsend._types import ApiVersion
from streamsend._validate import Validator

SENDERS = ("pn_a", "pn_bb", "pn_ccc")
V2_SENDERS = ("+18005551000", "+18005551001")


def encode_request_body(api: ApiVersion, batch: Batch) -> bytes:
    """The request body the dispatcher sends for `batch`."""
    return protocol_for(api).request_body(batch.sender, [m.wire for m in batch.messages])


def make_message(line: int, sender: str, body_len: int, api: ApiVersion = "v1") -> Message:
    """A message whose wire is what the validator would make for a body of `body_len` chars."""
    body = ("x" * body_len) or "x"
    if api == "v1":
        wire = orjson.dumps({"to_msisdn": "+14155551234", "body": body})
    else:
        wire = orjson.dumps({"to": "+14155551234", "list_number": sender, "body": body})
    return Message("in", line, "+14155551234", sender, wire, b"", 1, Encoding.GSM7)


def check_batch(batch: Batch, batcher: Batcher, api: ApiVersion, caps: dict[str, int]) -> None:
    """One sender, at least one message, within its count cap, body bytes as counted and below
    the byte cap."""
    assert batch.messages
    assert {m.sender for m in batch.messages} == {batch.sender}
    cap = min(batcher.max_messages, batcher.max_buffered, caps.get(batch.sender, 10**9))
    assert len(batch) <= max(cap, 1)
    body = encode_request_body(api, batch)
    assert len(body) < batcher.max_body_bytes
    parsed = orjson.loads(body)  # the envelope and the joined messages are one JSON object
    assert len(parsed["messages"]) == len(batch)
    if api == "v1":
        assert parsed["from_phone_number_id"] == batch.sender


@dataclass
class Add:
    sender: str
    body_lens: list[int]  # one add_many call with this many messages of the sender


@dataclass
class Tick:
    seconds: float  # the clock moves on, then flush_due


_ops = st.lists(
    st.one_of(
        st.builds(
            Add,
            st.integers(0, 2),  # index into the senders, mapped per API version below
            st.lists(st.integers(0, 300), min_size=1, max_size=8),
        ),
        st.builds(Tick, st.floats(0, 1, allow_nan=False)),
    ),
    max_size=60,
)


@given(
    ops=_ops,
    api=st.sampled_from(["v1", "v2"]),
    max_messages=st.integers(1, 12),
    max_body_bytes=st.integers(700, 4000),
    linger=st.floats(0, 2, allow_nan=False),
    max_buffered=st.integers(1, 40),
    capped=st.dictionaries(st.integers(0, 2), st.integers(1, 5), max_size=2),
)
@settings(max_examples=400, deadline=None)
def test_batcher_invariants(
    ops: list[Add | Tick],
    api: ApiVersion,
    max_messages: int,
    max_body_bytes: int,
    linger: float,
    max_buffered: int,
    capped: dict[int, int],
) -> None:
    """Every message comes out in exactly one batch, in order per sender; no batch mixes senders
    or breaks a cap; linger and the buffer cap are honoured after every call."""
    senders = SENDERS if api == "v1" else (*V2_SENDERS, "+18005551002")
    caps = {senders[i]: cap for i, cap in capped.items()}
    batcher = Batcher(
        api_version=api,
        max_messages=max_messages,
        max_body_bytes=max_body_bytes,
        linger=linger,
        max_buffered=max_buffered,
        cap_for_sender=lambda sender: caps.get(sender, 10**6),
    )
    added: dict[str, list[int]] = defaultdict(list)
    emitted: list[Batch] = []
    now = 0.0
    line = 0
    for op in ops:
        if isinstance(op, Tick):
            now += op.seconds
            ready = batcher.flush_due(now)
            deadline = batcher.next_deadline()
            assert deadline is None or deadline > now, "a batch past its linger stayed open"
        else:
            sender = senders[int(op.sender)]
            messages = []
            for body_len in op.body_lens:
                line += 1
                messages.append(make_message(line, sender, body_len, api))
                added[sender].append(line)
            ready = batcher.add_many(messages, now)
        for batch in ready:
            check_batch(batch, batcher, api, caps)
        emitted.extend(ready)
        waiting = sum(map(len, added.values())) - sum(map(len, emitted))
        assert batcher.buffered == waiting
        assert batcher.buffered <= max_buffered
    final = batcher.flush_all()
    for batch in final:
        check_batch(batch, batcher, api, caps)
    emitted.extend(final)
    assert batcher.buffered == 0
    assert batcher.next_deadline() is None

    out: dict[str, list[int]] = defaultdict(list)
    for batch in emitted:
        out[batch.sender].extend(m.line for m in batch.messages)
    assert out == added  # each exactly once, and in the order added, per sender


@given(
    lens=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 200)), max_size=80),
    max_buffered=st.integers(1, 30),
)
@settings(max_examples=200, deadline=None)
def test_add_many_is_repeated_add(lens: list[tuple[int, int]], max_buffered: int) -> None:
    """Feeding a block with add_many gives the same batches, in the same order, as one add per
    message at the same time."""
    messages = [make_message(i, SENDERS[s], n) for i, (s, n) in enumerate(lens)]

    def batcher() -> Batcher:
        return Batcher(max_messages=7, max_body_bytes=1500, max_buffered=max_buffered)

    one_by_one = batcher()
    singly = [batch for m in messages for batch in one_by_one.add(m, 0.0)]
    in_block = batcher()
    together = in_block.add_many(messages, 0.0)
    assert together == singly
    assert in_block.flush_all() == one_by_one.flush_all()


def test_full_batches_at_the_count_cap() -> None:
    """A fast stream of small messages fills batches of exactly --batch-size."""
    batcher = Batcher(max_messages=MAX_BATCH_MESSAGES)
    ready = batcher.add_many([make_message(i, "pn_a", 20) for i in range(2500)], 0.0)
    assert [len(b) for b in ready] == [1000, 1000]
    assert [len(b) for b in batcher.flush_all()] == [500]


def test_emoji_heavy_bodies_split_by_bytes() -> None:
    """1,000 messages of 1,600 emoji (6.4 KB each) don't fit in 5,000,000 bytes: the batcher
    splits them by bytes, each request as full as the byte cap allows and strictly below it."""
    validator = Validator(api_version="v1", default_sender="pn_abc123def456")
    line = orjson.dumps({"to_msisdn": "+14155551234", "body": "😀" * 1600})
    template = validator.validate("-", 1, line)
    assert isinstance(template, Message)
    assert len(template.wire) > 6400
    messages = [template._replace(line=i + 1) for i in range(2000)]

    batcher = Batcher()
    batches = batcher.add_many(messages, 0.0) + batcher.flush_all()

    assert [m.line for b in batches for m in b.messages] == list(range(1, 2001))
    for batch in batches:
        body = encode_request_body("v1", batch)
        assert len(body) < MAX_REQUEST_BYTES
        assert len(batch) < MAX_BATCH_MESSAGES
    for batch in batches[:-1]:  # all but the last were closed because the next didn't fit
        body = encode_request_body("v1", batch)
        assert len(body) + 1 + len(template.wire) >= MAX_REQUEST_BYTES
    assert len(batches) == 3


def test_mixed_ascii_and_emoji_bodies_stay_below_the_byte_cap() -> None:
    """Alternating 1,600-emoji and short ASCII bodies: the byte cap holds for v1 and v2."""
    heavy_line = orjson.dumps({"to": "+14155551234", "body": "é😀" * 800})
    for validator in (
        Validator(api_version="v1", default_sender="pn_abc123def456"),
        Validator(api_version="v2", default_sender="+18005551000"),
    ):
        api = validator.api_version
        heavy = validator.validate("-", 1, heavy_line)
        light = validator.validate("-", 1, b'{"to": "+14155551234", "body": "hi"}')
        assert isinstance(heavy, Message)
        assert isinstance(light, Message)
        messages = [(heavy if i % 3 else light)._replace(line=i) for i in range(3000)]
        batcher = Batcher(api_version=api)
        batches = batcher.add_many(messages, 0.0) + batcher.flush_all()
        assert sum(map(len, batches)) == 3000
        for batch in batches:
            assert len(encode_request_body(api, batch)) < MAX_REQUEST_BYTES
            assert len(batch) <= MAX_BATCH_MESSAGES


def test_linger_counts_from_the_first_message() -> None:
    """An open batch is due `linger` after its first message, however many follow."""
    batcher = Batcher(linger=0.25)
    assert batcher.next_deadline() is None
    assert batcher.add(make_message(1, "pn_a", 5), now=10.0) == []
    assert batcher.add(make_message(2, "pn_a", 5), now=10.2) == []
    assert batcher.next_deadline() == pytest.approx(10.25)
    assert batcher.flush_due(10.24) == []
    (batch,) = batcher.flush_due(10.25)
    assert [m.line for m in batch.messages] == [1, 2]
    assert batcher.next_deadline() is None
    assert batcher.flush_due(99.0) == []


def test_flush_due_at_next_deadline_flushes() -> None:
    """Woken exactly at next_deadline, flush_due hands the batch over: the two agree even where
    `now - opened` rounds below the linger (monotonic clocks run to large values)."""
    opened = 8191.780634  # 8191.780634 + 0.25 - 8191.780634 < 0.25 in binary floating point
    batcher = Batcher(linger=0.25)
    batcher.add(make_message(1, "pn_a", 5), now=opened)
    deadline = batcher.next_deadline()
    assert deadline is not None
    assert len(batcher.flush_due(deadline)) == 1


def test_linger_is_per_sender() -> None:
    """Only the batches whose linger ran out are flushed; later ones keep filling."""
    batcher = Batcher(linger=1.0)
    batcher.add(make_message(1, "pn_a", 5), now=0.0)
    batcher.add(make_message(2, "pn_bb", 5), now=0.6)
    (due,) = batcher.flush_due(1.0)
    assert due.sender == "pn_a"
    assert batcher.next_deadline() == pytest.approx(1.6)
    batcher.add(make_message(3, "pn_bb", 5), now=1.5)
    (due,) = batcher.flush_due(1.6)
    assert (due.sender, [m.line for m in due.messages]) == ("pn_bb", [2, 3])


def test_zero_linger_flushes_at_the_next_tick() -> None:
    """With linger 0, nothing waits past the next flush_due."""
    batcher = Batcher(linger=0.0)
    batcher.add(make_message(1, "pn_a", 5), now=3.0)
    assert len(batcher.flush_due(3.0)) == 1


def test_buffer_cap_flushes_least_recently_filled_sender() -> None:
    """Past max_buffered, the batch filled least recently goes first, not the oldest opened
    and not the one being filled."""
    batcher = Batcher(max_messages=10, max_buffered=5)
    out: list[Batch] = []
    for line, sender in enumerate(["pn_a", "pn_a", "pn_bb", "pn_ccc", "pn_ccc"], start=1):
        out += batcher.add(make_message(line, sender, 5), 0.0)
    assert out == []
    assert batcher.buffered == 5

    (first,) = batcher.add(make_message(6, "pn_bb", 5), 0.0)  # pn_a was filled least recently
    assert (first.sender, [m.line for m in first.messages]) == ("pn_a", [1, 2])

    assert batcher.add(make_message(7, "pn_a", 5), 0.0) == []  # 5 waiting again
    # Recency now: pn_ccc (line 5), pn_bb (line 6), pn_a (line 7). pn_ccc is filled next, so
    # pn_bb is the least recently filled.
    (second,) = batcher.add(make_message(8, "pn_ccc", 5), 0.0)
    assert (second.sender, [m.line for m in second.messages]) == ("pn_bb", [3, 6])
    assert batcher.buffered == 4


def test_buffer_cap_below_batch_size_makes_smaller_batches() -> None:
    """With max_buffered under the batch size, a single sender's batches close at max_buffered."""
    batcher = Batcher(max_messages=100, max_buffered=3)
    ready = batcher.add_many([make_message(i, "pn_a", 5) for i in range(7)], 0.0)
    assert [len(b) for b in ready] == [3, 3]
    assert batcher.buffered == 1


def test_per_sender_caps() -> None:
    """A paced sender's cap makes its batches smaller without touching other senders'."""
    batcher = Batcher(max_messages=50, cap_for_sender=lambda s: 3 if s == "pn_slow" else 10**6)
    messages = [make_message(i, "pn_slow" if i % 2 else "pn_fast", 5) for i in range(40)]
    batches = batcher.add_many(messages, 0.0) + batcher.flush_all()
    slow = [len(b) for b in batches if b.sender == "pn_slow"]
    fast = [len(b) for b in batches if b.sender == "pn_fast"]
    assert slow == [3, 3, 3, 3, 3, 3, 2]
    assert fast == [20]


def test_cap_for_sender_below_one_means_one() -> None:
    """A nonsensical per-sender cap (0) still lets messages through, one per batch."""
    batcher = Batcher(cap_for_sender=lambda s: 0)
    ready = batcher.add_many([make_message(i, "pn_a", 5) for i in range(3)], 0.0)
    assert [len(b) for b in ready] == [1, 1, 1]


@pytest.mark.parametrize("size", [0, -1, MAX_BATCH_MESSAGES + 1])
def test_batch_size_out_of_range(size: int) -> None:
    """The batch size must be 1 to 1,000: the service refuses more than 1,000 messages."""
    with pytest.raises(ValueError, match="1000"):
        Batcher(max_messages=size)


def test_v1_envelope_escapes_the_sender() -> None:
    """A sender with characters JSON must escape still gives a parseable body of the counted
    size."""
    sender = 'pn_"odd"\\name'
    batcher = Batcher(max_body_bytes=300)
    messages = [make_message(line, sender, 5) for line in range(1, 21)]
    batches = batcher.add_many(messages, 0.0) + batcher.flush_all()
    assert len(batches) > 1
    for batch, following in itertools.pairwise(batches):
        body = encode_request_body("v1", batch)
        assert orjson.loads(body)["from_phone_number_id"] == sender
        # Counted exactly, escapes included: under the cap, and full (one more would reach it).
        assert len(body) < 300 <= len(body) + 1 + len(following.messages[0].wire)


def _lines(batches: Sequence[Batch]) -> list[int]:
    return [m.line for b in batches for m in b.messages]


def test_flush_all_empties_every_sender() -> None:
    """End of input: every open batch comes out, and the batcher is empty."""
    batcher = Batcher()
    for i, sender in enumerate(SENDERS * 3):
        batcher.add(make_message(i, sender, 5), 0.0)
    batches = batcher.flush_all()
    assert sorted(b.sender for b in batches) == sorted(SENDERS)
    assert sorted(_lines(batches)) == list(range(9))
    assert batcher.flush_all() == []
