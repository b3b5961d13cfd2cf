"""--dedupe: copies against a reference model, duplicate_of, the bounded window, and
--skip-sent's reading of earlier outcome files."""

from __future__ import annotations

from pathlib import Path

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsend._dedupe import Dedupe, load_sent_recipients
from streamsend._models import Encoding, Message, Status


def _message(line: int, to: int, body: str, source: str = "in") -> Message:
    wire = orjson.dumps({"to_msisdn": f"+1415555{to:04d}", "body": body})
    return Message(source, line, f"+1415555{to:04d}", "pn", wire, b"", 1, Encoding.GSM7)


@settings(max_examples=150, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["a", "b", "c"])), max_size=60),
    block=st.integers(1, 9),
    recipient=st.booleans(),
)
def test_copies_match_a_reference(
    pairs: list[tuple[int, str]], block: int, recipient: bool
) -> None:
    """Fed in blocks of any size, exactly the lines whose message (or recipient) appeared on an
    earlier line are duplicates, each naming that first line; the others go, in order."""
    dedupe = Dedupe("recipient" if recipient else "message")
    messages = [_message(n + 1, to, body) for n, (to, body) in enumerate(pairs)]
    first: dict[object, int] = {}
    expected: dict[int, int] = {}
    for m in messages:
        key = m.to if recipient else m.wire
        if key in first:
            expected[m.line] = first[key]
        else:
            first[key] = m.line
    got: dict[int, int] = {}
    kept: list[int] = []
    for start in range(0, len(messages), block):
        chunk = messages[start : start + block]
        for outcome in dedupe.sort_out(chunk):
            assert outcome.status is Status.DUPLICATE
            assert outcome.duplicate_of is not None
            got[outcome.line] = outcome.duplicate_of
        kept += [m.line for m in chunk]
    assert got == expected
    assert kept == [m.line for m in messages if m.line not in expected]


def test_a_copy_from_another_input_names_it() -> None:
    """A copy of a line of an earlier input says which input and line the first one was."""
    dedupe = Dedupe("message")
    assert dedupe.sort_out([_message(3, 1, "x", "a.csv")]) == []
    (outcome,) = dedupe.sort_out([_message(1, 1, "x", "b.csv")])
    assert outcome.duplicate_of == 3
    assert outcome.error is not None
    assert "line 3 of a.csv" in outcome.error


def test_memory_is_bounded_by_the_window() -> None:
    """On a stream much longer than the window, at most two windows of messages are held, and
    a copy within the window is still caught."""
    dedupe = Dedupe("message", window=100)
    for start in range(0, 5000, 10):
        batch = [_message(n, n % 10_000, f"m{n}") for n in range(start, start + 10)]
        assert dedupe.sort_out(batch) == []
        assert dedupe.held <= 200
    (copy,) = dedupe.sort_out([_message(6000, 4990 % 10_000, "m4990")])
    assert copy.duplicate_of == 4990


def test_remember_makes_later_copies_duplicates() -> None:
    """Lines an earlier run settled (remembered on --resume) make their later copies
    duplicates of them."""
    dedupe = Dedupe("message")
    dedupe.remember([_message(1, 1, "x")])
    (outcome,) = dedupe.sort_out([_message(2, 1, "x"), _message(3, 2, "x")])
    assert (outcome.line, outcome.duplicate_of) == (2, 1)


def test_skip_sent_reads_queued_recipients(tmp_path: Path) -> None:
    """--skip-sent takes the recipients of `queued` lines (streamsend's own format, or JSON
    written any other way), not those of other statuses, and survives a torn last line."""
    ours = tmp_path / "a.ndjson"
    ours.write_bytes(
        b'{"line":1,"source":"x","status":"queued","to_msisdn":"+14155550001","attempts":1}\n'
        b'{"line":2,"source":"x","status":"failed","code":"c","to_msisdn":"+14155550002"}\n'
    )
    other = tmp_path / "b.ndjson"
    other.write_bytes(
        b'{"status": "queued", "to_msisdn": "+14155550003"}\n{"status": "queued", "to_m'
    )
    sent = load_sent_recipients([str(ours), str(other)])
    assert "+14155550001" in sent
    assert "+14155550003" in sent
    assert "+14155550002" not in sent
