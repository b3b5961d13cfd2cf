"""CSV and TSV input: records with a header row, turned into the NDJSON lines the validator reads.

Promises:
- RFC 4180: fields separated by `,` (TSV: tab), optionally in double quotes; inside quotes a
  doubled `""` is a quote, and delimiters and newlines are data. A record may span physical
  lines; line endings inside a quoted field are read as `\\n`.
- The record is reported at its first physical line: the outcome's `line` is where it starts in
  the file. Every other physical line (the header, a record's continuation lines, blank lines)
  is handed on as b"" and gets no outcome, so numbering stays that of the file.
- Columns: the recipient is `--to-column`, else the first of `to_msisdn`, `to`, `phone`; the
  body is `--body-column` (default `body`) or the template's rendering; `--ref-column` (default
  `ref`) becomes the outcome's `ref`, a `send_before` column the line's deadline. Every column
  is a template field; the columns that aren't one of those go, in v2, into
  `contact_data.custom_fields`.
- A record that breaks the grammar (a quote inside an unquoted field, text after a closing
  quote, a quote never closed within --max-line-bytes) or has a different number of fields than
  the header is `invalid` with code `invalid_csv` saying which; the records after it are read
  normally.
- A header that lacks a recipient column, or names a column twice, stops the run (exit 2)
  before any of its records is sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson

from streamsend._exceptions import InputError
from streamsend._template import MISSING_FIELD, MissingField, Template
from streamsend._types import ApiVersion, LineBlock

DEFAULT_TO_COLUMNS = ("to_msisdn", "to", "phone")
INVALID_CSV = "invalid_csv"


@dataclass(frozen=True, slots=True)
class CsvColumns:
    """How a record's columns become a message (see the module docstring)."""

    api_version: ApiVersion = "v1"
    to_column: str | None = None
    body_column: str | None = None
    ref_column: str | None = None
    template: Template | None = None


def parse_record(text: str, delimiter: str) -> list[str] | str:
    """The fields of one complete record, or why it breaks RFC 4180."""
    fields: list[str] = []
    i = 0
    n = len(text)
    while True:
        if i < n and text[i] == '"':
            pieces: list[str] = []
            j = i + 1
            while True:
                k = text.find('"', j)
                if k < 0:
                    return f"a quoted field opened at character {i + 1} is never closed"
                pieces.append(text[j:k])
                if text.startswith('""', k):
                    pieces.append('"')
                    j = k + 2
                    continue
                break
            fields.append("".join(pieces))
            i = k + 1
            if i == n:
                return fields
            if text[i] != delimiter:
                return f"text after the closing quote at character {i}"
            i += 1
        else:
            k = text.find(delimiter, i)
            end = n if k < 0 else k
            field = text[i:end]
            if '"' in field:
                return (
                    f"a quote inside an unquoted field at character {i + 1} "
                    '(quote the whole field and double the quote: "a ""b"" c")'
                )
            fields.append(field)
            if k < 0:
                return fields
            i = k + 1


def _ends_in_quotes(line: bytes, delimiter: bytes, in_quotes: bool) -> bool:
    """Whether a quoted field is still open at the end of `line` (which starts inside one when
    `in_quotes`). Only the quotes are looked at: most lines have none.

    A quote opens a field only at the field's start; anywhere else outside quotes it is a
    stray (the record is refused later, by parse_record), so it can't swallow the next line.
    """
    q = line.find(b'"')
    while q >= 0:
        if in_quotes:
            if line.startswith(b'""', q):
                q = line.find(b'"', q + 2)
                continue
            in_quotes = False
        elif q == 0 or line[q - 1 : q] == delimiter:
            in_quotes = True
        q = line.find(b'"', q + 1)
    return in_quotes


class _Header:
    def __init__(self, source: str, names: list[str], columns: CsvColumns) -> None:
        names = [name.strip() for name in names]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise InputError(
                f"input {source!r}: the header names column {twice[0]!r} more than once"
            )
        self.names = names
        index = {name: i for i, name in enumerate(names)}

        def column(given: str | None, defaults: tuple[str, ...], what: str) -> int | None:
            if given is not None:
                if given not in index:
                    raise InputError(
                        f"input {source!r} has no column {given!r} ({what}); its columns are "
                        + ", ".join(names)
                    )
                return index[given]
            return next((index[name] for name in defaults if name in index), None)

        self.to = column(columns.to_column, DEFAULT_TO_COLUMNS, "--to-column")
        if self.to is None:
            raise InputError(
                f"input {source!r} has no recipient column (to_msisdn, to or phone): name it "
                f"with --to-column; its columns are {', '.join(names)}"
            )
        self.body = column(columns.body_column, ("body",), "--body-column")
        self.ref = column(columns.ref_column, ("ref",), "--ref-column")
        self.send_before = index.get("send_before")
        taken = {self.to, self.body, self.ref, self.send_before}
        self.custom = [(i, name) for i, name in enumerate(names) if i not in taken]


class CsvReader:
    """Turns blocks of physical lines (from `_source.split_lines`) into blocks of NDJSON lines.

    A record still open at the end of a block (a quoted field goes on) is held back with its
    physical lines, and the next block handed on starts at its first line: a record's line is
    always in the block that carries it.
    """

    def __init__(
        self, source: str, *, delimiter: str, columns: CsvColumns, max_record_bytes: int
    ) -> None:
        self._source = source
        self._delimiter = delimiter
        self._columns = columns
        self._max_record_bytes = max_record_bytes
        self._header: _Header | None = None
        self._out: list[bytes | None] = []  # lines not yet handed on, from line _out_first
        self._out_first = 1
        self._out_bytes = 0
        self._open: list[bytes] = []  # the physical lines of a record not yet complete
        self._open_line = 0  # its first line's number
        self._open_size = 0
        self._in_quotes = False  # the open record's last line ended inside a quoted field
        self._delimiter_byte = delimiter.encode()
        self._errors: dict[int, tuple[str, str]] = {}
        self._deadlines: dict[int, float] = {}

    async def blocks(self, physical: AsyncIterator[LineBlock]) -> AsyncIterator[LineBlock]:
        async for block in physical:
            out = self.take(block)
            if out is not None:
                yield out
        if self._open:
            self._refuse_open("the input ends inside a quoted field")
        if self._out:
            yield self._hand_on(len(self._out))

    def take(self, block: LineBlock) -> LineBlock | None:
        """The NDJSON lines (and refusals) ready after one block of physical lines."""
        if not self._out:
            self._out_first = block.first_line
        self._out_bytes += block.nbytes
        out = self._out
        for offset, raw in enumerate(block.lines):
            number = block.first_line + offset
            out.append(b"")
            if raw is None:  # over --max-line-bytes: the record it belongs to is refused
                line = self._open_line if self._open else number
                self._open = []
                self._errors[line] = (
                    "line_too_long",
                    f"the record has a line longer than {self._max_record_bytes} bytes",
                )
                continue
            if not self._open:
                if not raw or raw.isspace():
                    continue
                self._open_line = number
                self._open_size = 0
                self._in_quotes = False
            self._open.append(raw)
            self._open_size += len(raw) + 1
            self._in_quotes = _ends_in_quotes(raw, self._delimiter_byte, self._in_quotes)
            if self._in_quotes:  # a quoted field goes on: so does the record
                if self._open_size > self._max_record_bytes:
                    self._refuse_open(
                        f"a quoted field is never closed within {self._max_record_bytes} bytes"
                    )
                continue
            record = b"\n".join(self._open)
            self._open = []
            message = self._record_line(record, self._open_line)
            if message is not None:
                out[self._open_line - self._out_first] = message
        ready = (self._open_line - self._out_first) if self._open else len(out)
        return self._hand_on(ready) if ready > 0 else None

    def _hand_on(self, count: int) -> LineBlock:
        lines, self._out = self._out[:count], self._out[count:]
        block = LineBlock(
            self._source,
            self._out_first,
            lines,
            self._out_bytes,
            self._errors or None,
            self._deadlines or None,
        )
        self._out_first += count
        self._out_bytes = 0
        self._errors = {}
        self._deadlines = {}
        return block

    def _refuse_open(self, why: str) -> None:
        self._errors[self._open_line] = (INVALID_CSV, why)
        self._open = []

    def _record_line(self, record: bytes, line: int) -> bytes | None:
        """The NDJSON line for one complete record (None: refused, or the header)."""
        errors = self._errors
        try:
            text = record.decode("utf-8")
        except UnicodeDecodeError as exc:
            errors[line] = ("invalid_utf8", f"the record is not valid UTF-8 (byte {exc.start + 1})")
            return None
        if "\x00" in text:
            errors[line] = ("nul_byte", "the record contains a NUL byte")
            return None
        fields = parse_record(text, self._delimiter)
        if isinstance(fields, str):
            if self._header is None:
                raise InputError(
                    f"input {self._source!r}: its header row is not valid CSV: {fields}"
                )
            errors[line] = (INVALID_CSV, fields)
            return None
        header = self._header
        if header is None:
            self._header = _Header(self._source, fields, self._columns)
            return None
        if len(fields) != len(header.names):
            errors[line] = (
                INVALID_CSV,
                f"the record has {len(fields)} fields, the header {len(header.names)}",
            )
            return None
        return self._message_line(header, fields, line)

    def _message_line(self, header: _Header, fields: list[str], line: int) -> bytes | None:
        from streamsend._expiry import parse_send_before

        assert header.to is not None
        errors, deadlines = self._errors, self._deadlines
        message: dict[str, object] = {"to_msisdn": fields[header.to]}
        template = self._columns.template
        if template is not None:
            try:
                message["body"] = template.render(dict(zip(header.names, fields, strict=True)))
            except MissingField as missing:
                errors[line] = (MISSING_FIELD, str(missing))
                return None
        elif header.body is not None:
            message["body"] = fields[header.body]
        if header.ref is not None and fields[header.ref]:
            message["ref"] = fields[header.ref]
        if header.send_before is not None and fields[header.send_before]:
            try:
                deadlines[line] = parse_send_before(fields[header.send_before])
            except ValueError as exc:
                errors[line] = ("invalid_send_before", str(exc))
                return None
        if self._columns.api_version == "v2" and header.custom:
            custom = {name: fields[i] for i, name in header.custom}
            message["contact_data"] = {"custom_fields": custom}
        return orjson.dumps(message)
