"""The CSV/TSV reader: RFC 4180 records against the standard library's `csv`, line numbers,
records split across read chunks, and the refusals of malformed records and headers."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsend._csv_source import CsvColumns, CsvReader, parse_record
from streamsend._exceptions import InputError
from streamsend._source import split_lines
from streamsend._template import Template
from streamsend._types import LineBlock


class _Chunks:
    """Hands out `data` in pieces of `size` bytes: records cross chunk (and block) borders."""

    def __init__(self, data: bytes, size: int) -> None:
        self._data = data
        self._size = size

    async def read(self, n: int) -> bytes:
        piece, self._data = self._data[: self._size], self._data[self._size :]
        return piece


async def _read(
    data: bytes,
    *,
    chunk: int = 1 << 20,
    delimiter: str = ",",
    columns: CsvColumns | None = None,
    max_bytes: int = 65536,
) -> list[LineBlock]:
    reader = CsvReader(
        "in.csv",
        delimiter=delimiter,
        columns=columns or CsvColumns(),
        max_record_bytes=max_bytes,
    )
    physical: AsyncIterator[LineBlock] = split_lines("in.csv", _Chunks(data, chunk), max_bytes)
    return [block async for block in reader.blocks(physical)]


def _by_line(blocks: list[LineBlock]) -> dict[int, bytes | None]:
    """Every handed-on line by number, checking the numbering has no gap and no repeat."""
    lines: dict[int, bytes | None] = {}
    expected = 1
    for block in blocks:
        assert block.first_line == expected
        for offset, raw in enumerate(block.lines):
            lines[block.first_line + offset] = raw
        expected = block.first_line + len(block.lines)
    return lines


def _errors(blocks: list[LineBlock]) -> dict[int, tuple[str, str]]:
    return {line: e for block in blocks for line, e in (block.errors or {}).items()}


# Field text: anything printable but CR (line endings inside quotes are read as \n), with
# commas, quotes and newlines well represented.
_field = st.text(
    alphabet=st.sampled_from(list('ab ,"\n\té{}'))
    | st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\r"),
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(st.lists(_field, min_size=3, max_size=3), min_size=1, max_size=12),
    chunk=st.integers(min_value=1, max_value=64),
    quote_all=st.booleans(),
)
async def test_records_match_the_standard_library(
    rows: list[list[str]], chunk: int, quote_all: bool
) -> None:
    """A file written by `csv.writer` reads back as the records `csv.reader` sees, each at the
    physical line where it starts, whatever the read chunk size; other lines come out blank."""
    out = io.StringIO()
    writer = csv.writer(
        out, lineterminator="\n", quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL
    )
    writer.writerow(["phone", "body", "note"])
    for row in rows:
        if row == [""] * 3 and not quote_all:
            row = ["", "", "-"]  # noqa: PLW2901 - an all-empty row is a blank line to csv
        writer.writerow(row)
    text = out.getvalue()
    expected = list(csv.reader(io.StringIO(text, newline="")))[1:]
    # Where each record starts: csv.reader's line_num after the previous record, plus one.
    starts = []
    reader = csv.reader(io.StringIO(text, newline=""))
    next(reader)
    previous_end = reader.line_num
    for _ in reader:
        starts.append(previous_end + 1)
        previous_end = reader.line_num

    blocks = await _read(text.encode(), chunk=chunk, columns=CsvColumns(template=None))
    lines = _by_line(blocks)
    assert not _errors(blocks)
    assert len(lines) == text.count("\n")
    got = {n: orjson.loads(raw) for n, raw in lines.items() if raw}
    assert sorted(got) == starts
    for start, row in zip(starts, expected, strict=True):
        record = got[start]
        assert record["to_msisdn"] == row[0]
        assert record["body"] == row[1]


@settings(max_examples=100, deadline=None)
@given(row=st.lists(_field, min_size=1, max_size=6))
def test_parse_record_matches_the_standard_library(row: list[str]) -> None:
    """One record written by `csv.writer` parses into the same fields as `csv.reader` gives."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(row)
    text = out.getvalue().removesuffix("\n")
    (expected,) = list(csv.reader(io.StringIO(text, newline=""))) or [[""]]
    assert parse_record(text, ",") == expected


async def test_tsv_and_other_columns() -> None:
    """TSV splits on tabs; --to-column/--body-column/--ref-column pick the columns; in v2 the
    other columns go to contact_data.custom_fields."""
    data = b"mobile\ttext\tid\tcity\n+14155550001\thello\tr1\tOslo\n"
    columns = CsvColumns(api_version="v2", to_column="mobile", body_column="text", ref_column="id")
    blocks = await _read(data, delimiter="\t", columns=columns)
    (line,) = [raw for raw in _by_line(blocks).values() if raw]
    assert orjson.loads(line) == {
        "to_msisdn": "+14155550001",
        "body": "hello",
        "ref": "r1",
        "contact_data": {"custom_fields": {"city": "Oslo"}},
    }


async def test_template_renders_from_the_columns() -> None:
    """With a template, the body is rendered from the record's columns; a missing value makes
    the record `missing_field` at its first line."""
    data = b'phone,name\n+14155550001,"Ann\nLee"\n+14155550002,\n'
    blocks = await _read(data, columns=CsvColumns(template=Template("Hi {name}!")))
    lines = _by_line(blocks)
    assert orjson.loads(lines[2] or b"")["body"] == "Hi Ann\nLee!"
    assert lines[4] == b""
    assert _errors(blocks)[4][0] == "missing_field"


@pytest.mark.parametrize(
    ("data", "line", "code"),
    [
        (b'phone,body\n+14155550001,a"b\n+14155550002,ok\n', 2, "invalid_csv"),
        (b'phone,body\n+14155550001,"a"b\n+14155550002,ok\n', 2, "invalid_csv"),
        (b"phone,body\n+14155550001,a,extra\n+14155550002,ok\n", 2, "invalid_csv"),
        (b"phone,body\n+14155550001,\xff\n+14155550002,ok\n", 2, "invalid_utf8"),
    ],
)
async def test_a_malformed_record_is_refused_and_the_next_read(
    data: bytes, line: int, code: str
) -> None:
    """A record that breaks RFC 4180, has the wrong field count or isn't UTF-8 is refused with
    a code at its line, and the record after it is read normally."""
    blocks = await _read(data)
    assert _errors(blocks)[line][0] == code
    assert orjson.loads(_by_line(blocks)[3] or b"")["body"] == "ok"


async def test_an_unclosed_quote_is_refused_within_the_limit() -> None:
    """A quote never closed makes its record invalid once it passes --max-line-bytes, and the
    records after that are read; at the end of input, the open record is refused."""
    data = b'phone,body\n+14155550001,"never closed\n' + b"x\n" * 40 + b"+14155550002,ok\n"
    blocks = await _read(data, max_bytes=64)
    errors = _errors(blocks)
    assert errors[2][0] == "invalid_csv"
    assert orjson.loads(_by_line(blocks)[43] or b"")["body"] == "ok"
    tail = await _read(b'phone,body\n+14155550001,"open\n')
    assert _errors(tail)[2] == ("invalid_csv", "the input ends inside a quoted field")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"name,body\nAnn,hi\n", "no recipient column"),
        (b"phone,phone\n1,2\n", "more than once"),
    ],
)
async def test_a_bad_header_stops_the_input(data: bytes, message: str) -> None:
    """A header without a recipient column, or naming one twice, is an InputError (exit 2)."""
    with pytest.raises(InputError, match=message):
        await _read(data)


async def test_a_named_column_that_is_missing_is_an_input_error() -> None:
    """--to-column naming a column the header lacks lists the columns there are."""
    with pytest.raises(InputError, match=r"no column 'mobile'.*phone, body"):
        await _read(b"phone,body\n", columns=CsvColumns(to_column="mobile"))
