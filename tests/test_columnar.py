"""The columnar hot path against the per-line path: the same messages, the same outcome bytes.

`Validator.validate_block` proves runs of plain lines at once and hands their messages on as
`Columns`; every other line takes the per-line path. What is checked:
- for any mix of lines (plain ones in every spelling the plain shape allows, and lines that must
  take the full path: escapes, non-ASCII, other fields, per-line senders, numbers to normalise,
  numeric refs, blank and overlong lines, garbage), both paths give the same Messages, field by
  field, and the same `invalid` outcomes (hypothesis);
- carried through dedupe, the batcher, the request bodies, the journal's line runs and the
  outcome encoder, both paths write byte-for-byte the same outcomes "file" (hypothesis);
- the usual block really takes the columnar path, and one odd line in it only costs that line;
- end to end over loopback HTTP, a run with the columnar path and one without write the same
  outcome lines.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamsend._batcher import Batcher
from streamsend._columns import Columns
from streamsend._config import Settings
from streamsend._dedupe import Dedupe
from streamsend._journal import line_ranges
from streamsend._models import Batch, BatchOutcome, Message, Outcome, Status
from streamsend._outcomes import FileSink, OutcomeEncoder
from streamsend._pipeline import Pipeline, _parts
from streamsend._protocol import protocol_for
from streamsend._source import read_inputs
from streamsend._types import LineBlock
from streamsend._validate import MIN_COLUMNAR_RUN, Validator
from tests.conftest import API_KEY, V1_LIST, EmulatorFactory

SENDER = "pn_abc123def456"
OTHER_SENDER = "pn_other0000001"
PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F))
PLAIN_TEXT = "".join(c for c in PRINTABLE if c not in '"\\')

_recipients = st.sampled_from(
    [
        "+14155550100",
        "+14155550101",
        "+442071838750",
        "+33612345678",
        "+123456789012345",  # 15 digits: the longest E.164
        "+12345678",  # 8 digits: the shortest
        "+1234567",  # too short
        "+1234567890123456",  # too long
        "+04155550100",  # a leading zero
        "14155550102",  # normalised to +1...
        "(415) 555-0103",  # a national number
        "+1 415 555 0104",  # formatting
        "abc",
    ]
)
_bodies = st.one_of(
    st.text(alphabet=PLAIN_TEXT, min_size=1, max_size=30),
    st.text(alphabet=PLAIN_TEXT, min_size=150, max_size=170),  # one or two segments
    st.sampled_from(
        [
            "Hello Ann",
            "Hello Ann",  # copies for dedupe
            "Hi [you] {x} ~^|",  # GSM-7 extension characters: two septets each
            "a`b",  # a backtick: not GSM-7, UCS-2
            "café",  # non-ASCII
            "tab\there",  # a control character
            'say "hi"',  # an escaped quote
            "back\\slash",  # an escaped backslash
            "",  # empty: invalid
            "x" * 1600,
            "x" * 1601,  # too long
            "😀 emoji",
        ]
    ),
)
_refs = st.one_of(
    st.none(),
    st.text(alphabet=PLAIN_TEXT, max_size=12),
    st.just("r" * 256),
    st.just("r" * 257),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.sampled_from([{"a": 1}, [1, 2], True, 1.5, "é"]),
)


@st.composite
def _json_line(draw: st.DrawFn) -> bytes:
    """A JSON object line: usually of the plain shape, in any spelling it allows."""
    fields: dict[str, object] = {
        draw(st.sampled_from(["to_msisdn", "to_msisdn", "to"])): draw(_recipients),
        "body": draw(_bodies),
    }
    ref = draw(_refs)
    if ref is not None or draw(st.booleans()):
        fields["ref"] = ref  # a null ref sometimes: the full path
    extra = draw(
        st.sampled_from(
            [
                None,
                None,
                None,
                None,
                ("from_phone_number_id", SENDER),
                ("from_phone_number_id", OTHER_SENDER),
                ("list_number", "+15550001111"),
                ("note", "x"),
            ]
        )
    )
    if extra is not None:
        fields[extra[0]] = extra[1]
    items = list(fields.items())
    if draw(st.integers(0, 9)) == 0:
        items.reverse()  # body before the recipient: the full path
    spacing = draw(st.sampled_from(["compact", "compact", "spaced", "colon", "comma"]))
    separators = {
        "compact": (",", ":"),
        "spaced": (", ", ": "),
        "colon": (",", ": "),
        "comma": (", ", ":"),
    }[spacing]
    return json.dumps(dict(items), separators=separators, ensure_ascii=draw(st.booleans())).encode()


SAFE_TEXT = "".join(c for c in PLAIN_TEXT if c not in "`[]^{|}~")


@st.composite
def _plain_line(draw: st.DrawFn) -> bytes:
    """A line of the plain shape, in one of the spellings it allows (key `to_msisdn` or `to`,
    an optional space after each colon and comma, with a string ref or none)."""
    key = draw(st.sampled_from([b"to_msisdn", b"to_msisdn", b"to"]))
    hostile = draw(st.integers(0, 9)) == 0  # plain-looking, but the proof must refuse it
    good_to = [b"+14155550100", b"+14155550101", b"+442071838750", b"+12345678"]
    bad_to = [b"+04155550100", b"+1234567", b"+1234567890123456", b"14155550100", b"+1415+555"]
    to = draw(st.sampled_from(bad_to if hostile and draw(st.booleans()) else good_to))
    bad_body = ["", "x" * 1601, "a`b", r"tab\there", r"caf\u00e9", r"\u0041", r"\u00", "\t"]
    body = draw(
        st.sampled_from(bad_body)
        if hostile
        else st.one_of(
            st.text(alphabet=SAFE_TEXT, min_size=1, max_size=20),
            st.text(alphabet=SAFE_TEXT, min_size=155, max_size=320),  # 1 to 3 segments
            st.sampled_from(["Hello Ann", "Hello Ann", "Hi [you] ~", "x" * 1600, "x" * 161]),
        )
    ).encode()
    colon = draw(st.sampled_from([b":", b":", b": "]))
    comma = draw(st.sampled_from([b",", b",", b", "]))
    line = b'{"%b"%b"%b"%b"body"%b"%b"' % (key, colon, to, comma, colon, body)
    if draw(st.booleans()):
        ref = "r" * 257 if hostile else draw(st.text(alphabet=SAFE_TEXT, max_size=8))
        line += b'%b"ref"%b"%b"' % (comma, colon, ref.encode())
    return line + b"}"


_lines = st.one_of(
    _plain_line(),
    _plain_line(),
    _json_line(),
    _json_line(),
    _json_line(),
    _json_line(),
    st.sampled_from(
        [b"", b"   ", None, b"not json", b"[1,2]", b'{"to_msisdn":"+14155550100"', b"\x00"]
    ),
    st.binary(max_size=20),
)


def _block(lines: Sequence[bytes | None]) -> Sequence[bytes | None]:
    return lines


def _both(
    lines: list[bytes | None], *, first_line: int = 1
) -> tuple[
    tuple[Columns | None, list[Message], list[Outcome]], tuple[list[Message], list[Outcome]]
]:
    columnar = Validator(default_sender=SENDER)
    per_line = Validator(default_sender=SENDER, columnar=False)
    invalid_a: list[Outcome] = []
    columns, elsewhere = columnar.validate_block("in.ndjson", first_line, lines, invalid_a)
    messages_b: list[Message] = []
    invalid_b: list[Outcome] = []
    per_line.validate_lines("in.ndjson", first_line, lines, messages_b, invalid_b)
    return (columns, elsewhere, invalid_a), (messages_b, invalid_b)


def _outcomes_file(blocks: list[list[bytes | None]], *, columnar: bool, dedupe: bool) -> bytes:
    """What the pipeline's stages up to the outcome file make of the blocks, every request
    answered `queued`: the invalid and duplicate outcomes, then per request its journal runs,
    its request body and its outcome lines."""
    validator = Validator(default_sender=SENDER, columnar=columnar)
    batcher = Batcher(linger=1e9, max_messages=7)  # small requests: many cuts
    duplicates = Dedupe("message", window=16) if dedupe else None
    protocol = protocol_for("v1")
    encoder = OutcomeEncoder()
    written: list[bytes] = []
    batches: list[Batch] = []
    first = 1
    for lines in blocks:
        others: list[Outcome] = []
        columns, messages = validator.validate_block("in.ndjson", first, lines, others)
        first += len(lines)
        if duplicates is not None:
            others += duplicates.sort_out(columns if columns is not None else messages)
        written.append(encoder.encode(others))
        if columns is not None:
            batches += batcher.add_many(columns, 0.0)
        batches += batcher.add_many(messages, 0.0)
    batches += batcher.flush_all()
    for request, batch in enumerate(batches, 1):
        written.append(orjson.dumps(line_ranges(batch.messages)) + b"\n")
        written.append(
            protocol.request_body(batch.sender, [m.wire for m in batch.messages]) + b"\n"
        )
        outcome = BatchOutcome(batch.messages, Status.QUEUED, request, 1, batch.sender)
        written.append(encoder.encode_batch(outcome))
    return b"".join(written)


@st.composite
def _plain_heavy_blocks(draw: st.DrawFn) -> list[list[bytes | None]]:
    """Blocks made mostly of runs of plain lines (long enough for the columnar path), with odd
    lines and copies mixed in."""
    pool = draw(
        st.lists(st.one_of(_plain_line(), _plain_line(), _json_line()), min_size=1, max_size=12)
    )
    blocks: list[list[bytes | None]] = []
    for _ in range(draw(st.integers(1, 4))):
        block: list[bytes | None] = []
        for _ in range(draw(st.integers(0, 5))):
            kind = draw(st.integers(0, 4))
            if kind == 0:
                block.append(draw(_lines))
            else:
                run = draw(st.integers(1, 3 * MIN_COLUMNAR_RUN))
                block += [draw(st.sampled_from(pool)) for _ in range(run)]
        blocks.append(block)
    return blocks


@given(
    st.one_of(
        st.lists(_lines, max_size=60),
        _plain_heavy_blocks().map(lambda blocks: [line for b in blocks for line in b]),
    )
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_columnar_validation_gives_the_per_line_messages_and_outcomes(
    lines: list[bytes | None],
) -> None:
    """Any mix of lines: the same Messages (field by field, in order per sender) and the same
    invalid outcomes as the per-line path."""
    (columns, elsewhere, invalid_a), (messages_b, invalid_b) = _both(lines)
    assert columns is None or elsewhere == []
    assert [*(columns or ()), *elsewhere] == messages_b
    assert sorted(invalid_a, key=lambda o: o.line) == sorted(invalid_b, key=lambda o: o.line)


#: One line that looks plain but breaks exactly one rule of the shape (as `%`-templates over
#: a good line's recipient and body): the proof must refuse its run, not take it.
_ODD_LINES = [
    b'{"to_msisdn":"+04155550100","body":"%.0b%b"}',  # a leading zero
    b'{"to_msisdn":"1415555+5100","body":"%.0b%b"}',  # the plus not in front
    b'{"to_msisdn";"%b","body":"%b"}',  # not a colon
    b'{"to_msisdn":"%b";"body":"%b"}',  # not a comma
    b'{"to_msisdn":"+123456","body":"%.0b%b"}',  # 6 digits
    b'{"to_msisdn":"+1234567890123456","body":"%.0b%b"}',  # 16 digits
    b'{"to_msisdn":"%b","body":"%.0b"}',  # an empty body
    b'{"to_msisdn":"%b","body":"%.0b' + b"x" * 1601 + b'"}',  # a body over 1,600
    b'{"to_msisdn":"%b","body":"%.0b' + b"x" * 161 + b'"}',  # 161 characters: two segments
    b'{"to_msisdn":"%b","body":"%b`"}',  # a backtick: UCS-2
    b'{"to_msisdn":"%b","body":"%b\\u0041"}',  # an escape
    b'{"to_msisdn":"%b","body":"%b\x7f"}',  # DEL
    b'{"to_msisdn":"%b","body":"%b\xc3\xa9"}',  # UTF-8
    b'{"to_msisdn":"%b","body":"%b","ref":"' + b"r" * 257 + b'"}',  # a long ref: still plain
    b'{"to_msisdn":"%b","body":"%b","ref":7}',  # a numeric ref
    b'{"To":"%b","body":"%b"}',  # another key
    b'{"to_msisdn":"%b","Body":"%b"}',  # another key
    b'{"to_msisdn":"+1415555O100","body":"%.0b%b"}',  # a letter
    b'{"to_msisdn" :"%b","body":"%b"}',  # a space before a colon
    b'{"to_msisdn":"%b",  "body":"%b"}',  # two spaces after a comma
    b'{ "to_msisdn":"%b","body":"%b"}',  # a space after the brace
    b'x{"to_msisdn":"%b","body":"%b"}',  # not JSON
    b'{"to_msisdn":"%b","body":"%b"} ',  # a space after the object
    b'{"to_msisdn":"%b","body":"%b","body":"x"}',  # a field twice
    b'{"to_msisdn":"%b","body":"%b","from_phone_number_id":"pn_other0000001"}',  # a sender
    b'{"to_msisdn":"+%b","body":"%b"}',  # two pluses
    b'{"to_msisdn":"%b5+5","body":"%b"}',  # a plus inside
    b'{"to_msisdn":"%b","body":"%b"',  # no closing brace
]


@st.composite
def _good_run(draw: st.DrawFn, *, with_ref: bool) -> list[bytes | None]:
    """A run of plain lines, all with a ref or none, long enough to be proved."""
    run: list[bytes | None] = []
    for _ in range(draw(st.integers(MIN_COLUMNAR_RUN, 3 * MIN_COLUMNAR_RUN))):
        to = draw(st.sampled_from([b"+14155550100", b"+442071838750", b"+12345678"]))
        body = draw(st.text(alphabet=SAFE_TEXT, min_size=1, max_size=12)).encode()
        ref = b',"ref":"r"' if with_ref else b""
        run.append(b'{"to_msisdn":"%b","body":"%b"%b}' % (to, body, ref))
    return run


@pytest.mark.parametrize("where", ["first", "inside", "last"])
@pytest.mark.parametrize("with_ref", [True, False], ids=["ref", "no-ref"])
@pytest.mark.parametrize("odd", _ODD_LINES, ids=range(len(_ODD_LINES)))
@given(data=st.data())
@settings(max_examples=3, deadline=None)
def test_one_odd_line_never_slips_into_a_proved_run(
    odd: bytes, with_ref: bool, where: str, data: st.DataObject
) -> None:
    """Each rule of the plain shape, broken by one line in a run of plain ones: the columnar
    path still gives exactly what the per-line path gives."""
    lines = data.draw(_good_run(with_ref=with_ref))
    if with_ref and odd.endswith(b'"}'):
        odd = odd[:-1] + b',"ref":"r"}'  # the same quote count as its neighbours
    if where == "first":
        at = 0
    elif where == "last":
        at = len(lines)
    else:
        at = data.draw(st.integers(1, len(lines) - 1))
    lines.insert(at, odd % (b"+14155550100", b"Hi"))
    (columns, elsewhere, invalid_a), (messages_b, invalid_b) = _both(lines)
    assert [*(columns or ()), *elsewhere] == messages_b
    assert sorted(invalid_a, key=lambda o: o.line) == sorted(invalid_b, key=lambda o: o.line)


@given(_plain_heavy_blocks(), st.booleans())
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_both_paths_write_the_same_outcomes_file(
    blocks: list[list[bytes | None]], dedupe: bool
) -> None:
    """Through dedupe, batching, request bodies, journal runs and outcome encoding, the
    columnar path writes byte for byte what the per-line path writes."""
    assert _outcomes_file(blocks, columnar=True, dedupe=dedupe) == _outcomes_file(
        blocks, columnar=False, dedupe=dedupe
    )


def _plain(i: int, *, ref: bool = True) -> bytes:
    line = b'{"to_msisdn":"+1415555%04d","body":"Hello %d"' % (i % 10_000, i)
    return line + (b',"ref":"m%d"}' % i if ref else b"}")


def test_the_usual_block_is_proved_in_one_go() -> None:
    """A block of plain lines (with refs, or without) comes back as one Columns, every
    recipient, wire, ref and segment count as the per-line path has it."""
    for ref in (True, False):
        lines: list[bytes | None] = [_plain(i, ref=ref) for i in range(500)]
        (columns, elsewhere, invalid), (messages, _) = _both(lines, first_line=41)
        assert type(columns) is Columns
        assert elsewhere == []
        assert invalid == []
        assert columns.lines == list(range(41, 541))
        assert list(columns) == messages
        assert columns.refs[0] == (b'"m0"' if ref else b"")


def test_an_odd_line_takes_the_full_path_alone() -> None:
    """One escaped line in the middle of a plain block: it is validated on its own, the runs
    around it stay columnar, and its message sits in the columns at its place."""
    lines: list[bytes | None] = [_plain(i) for i in range(100)]
    lines[50] = b'{"to_msisdn":"+14155550050","body":"caf\\u00e9","ref":"m50"}'
    lines[70] = b""
    (columns, elsewhere, invalid), (messages, _) = _both(lines)
    assert columns is not None
    assert elsewhere == []
    assert invalid == []
    assert list(columns) == messages
    assert columns.lines == [line for line in range(1, 101) if line != 71]
    assert columns.wires[50] == b'{"to_msisdn":"+14155550050","body":"caf\xc3\xa9"}'


def test_a_line_naming_another_sender_makes_the_block_messages() -> None:
    """A line with a sender of its own: the block comes back as Messages in input order, as
    the per-line path has them (batches and dedupe go by input order across senders)."""
    lines: list[bytes | None] = [_plain(i) for i in range(20)]
    lines[3] = b'{"to_msisdn":"+14155550003","body":"x","from_phone_number_id":"%b"}' % (
        OTHER_SENDER.encode()
    )
    (columns, elsewhere, _), (messages, _) = _both(lines)
    assert columns is None
    assert elsewhere == messages
    assert elsewhere[3].sender == OTHER_SENDER


async def _run_pipeline(
    emulator: EmulatorFactory, tmp_path: Path, input_path: Path, *, columnar: bool
) -> list[bytes]:
    running = await emulator()
    outcomes = tmp_path / f"outcomes-{columnar}.ndjson"
    settings = Settings(base_url=running.base_url, sender=V1_LIST, rate=None)
    sink = FileSink.open_path(str(outcomes), fsync=False)
    try:
        pipeline = Pipeline(
            settings,
            api_key=API_KEY,
            source=read_inputs([str(input_path)], chunk_size=4096),
            sink=sink,
            columnar=columnar,
        )
        await pipeline.run()
    finally:
        sink.close()
    return sorted(outcomes.read_bytes().splitlines())


async def test_a_run_writes_the_same_outcome_lines_either_way(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """End to end over loopback HTTP: plain lines in small chunks (many blocks, batches across
    them), copies, invalid and odd lines; the outcome lines are the same bytes either way (in
    the order requests happen to finish, so compared sorted)."""
    lines = [_plain(i, ref=i % 300 < 200) for i in range(3000)]
    lines[10] = b'{"to_msisdn":"+14155550010","body":"caf\\u00e9"}'
    lines[11] = b"not json"
    lines[12] = b""
    lines[500] = lines[400]  # a copy: duplicate
    lines[900] = b'{"to_msisdn":"14155550900","body":"normalise me"}'
    input_path = tmp_path / "in.ndjson"
    input_path.write_bytes(b"\n".join(lines) + b"\n")
    columnar = await _run_pipeline(emulator, tmp_path, input_path, columnar=True)
    per_line = await _run_pipeline(emulator, tmp_path, input_path, columnar=False)
    assert len(columnar) == 2999  # every line but the blank one
    assert columnar == per_line
    statuses = [orjson.loads(line)["status"] for line in columnar]
    assert statuses.count("queued") == 2997
    assert statuses.count("invalid") == 1
    assert statuses.count("duplicate") == 1


@given(
    st.lists(st.sampled_from([b"a", b"", None]), max_size=40),
    st.integers(1, 12),
    st.integers(1, 1000),
    st.integers(0, 10_000),
)
def test_a_block_cut_into_parts_keeps_every_line_and_its_refusal_once(
    lines: list[bytes | None], most: int, first_line: int, nbytes: int
) -> None:
    """The pipeline takes a block in parts of at most PART_LINES lines (the event loop runs
    between them): the parts hold every line once, numbered on, each with the refusals and
    deadlines of its own lines, and the bytes read add up."""
    errors = {first_line + i: ("bad", "x") for i in range(0, len(lines), 3)}
    deadlines = {first_line + i: float(i) for i in range(1, len(lines), 4)}
    block = LineBlock("in", first_line, lines, nbytes, errors or None, deadlines or None)
    parts = list(_parts(block, most))
    assert [line for part in parts for line in part.lines] == lines
    assert all(len(part.lines) <= most for part in parts)
    assert sum(part.nbytes for part in parts) == nbytes
    line = first_line
    seen_errors: dict[int, tuple[str, str]] = {}
    seen_deadlines: dict[int, float] = {}
    for part in parts:
        assert part.first_line == line
        line += len(part.lines)
        for found, into in ((part.errors, seen_errors), (part.deadlines, seen_deadlines)):
            for at, value in (found or {}).items():
                assert part.first_line <= at < line
                into[at] = value  # type: ignore[assignment]
    assert seen_errors == errors
    assert seen_deadlines == deadlines


@pytest.mark.parametrize(
    ("status", "code", "error", "rejections"),
    [
        (Status.QUEUED, None, None, {1: ("invalid_phone", 'the service says "no"'), 6: ("x", "y")}),
        (Status.FAILED, "bad_request", "the service refused the request (400) 100%", None),
        (Status.UNKNOWN, "timeout", "no answer in 30 s", None),
    ],
)
def test_a_request_of_columns_encodes_as_its_messages_do(
    status: Status,
    code: str | None,
    error: str | None,
    rejections: dict[int, tuple[str, str]] | None,
) -> None:
    """Every answer a request can end with (some messages rejected, failed, unknown) encodes
    the same outcome lines from columns as from the same messages in a tuple, refs or none."""
    lines: list[bytes | None] = [_plain(i, ref=i % 3 != 0) for i in range(10)]
    lines += [_plain(i, ref=True) for i in range(10, 20)]
    (columns, _, _), _ = _both(lines)
    assert type(columns) is Columns
    encoder = OutcomeEncoder()
    for part in (columns, columns[10:]):
        from_columns = BatchOutcome(part, status, 7, 2, SENDER, code, error, rejections)
        from_tuple = BatchOutcome(tuple(part), status, 7, 2, SENDER, code, error, rejections)
        assert encoder.encode_batch(from_columns) == encoder.encode_batch(from_tuple)
        assert encoder.encode_batch(from_columns) == encoder.encode(from_tuple.outcomes())
