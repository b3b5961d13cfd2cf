"""Reading input: files and stdin, in large chunks, split into numbered lines.

Promises:
- Every physical line of every input is handed on once, numbered from 1 in its own input, in
  order: blank lines as b"" (the caller skips them but they keep the numbering right), lines
  longer than `max_line_bytes` as None, without ever holding such a line in memory whole.
- A UTF-8 BOM at the start of an input and CR of CRLF line endings are removed.
- Reading is chunked (1 MiB by default): one await per chunk, not per line. A pipe hands on what
  it has as soon as it has it, so a slow stream isn't held back waiting for a full chunk.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from collections.abc import AsyncIterator, Sequence
from typing import BinaryIO, Protocol

from streamsend._csv_source import CsvColumns, CsvReader
from streamsend._exceptions import InputError
from streamsend._expiry import ndjson_deadlines
from streamsend._formats import InputFormat, open_format
from streamsend._template import render_ndjson_block
from streamsend._types import LineBlock

CHUNK_SIZE = 1 << 20
DEFAULT_MAX_LINE_BYTES = 64 * 1024
_BOM = b"\xef\xbb\xbf"


class _ChunkReader(Protocol):
    async def read(self, n: int) -> bytes: ...


class _FileReader:
    """A regular file (or anything seekable): reads happen in a thread so the loop never blocks."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file

    async def read(self, n: int) -> bytes:
        return await asyncio.to_thread(self._file.read, n)


async def _pipe_reader(file: BinaryIO) -> _ChunkReader:
    """A pipe or terminal: the loop is told when data arrives, so partial reads return at once."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2 * CHUNK_SIZE, loop=loop)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), file)
    return reader


def _is_regular(file: BinaryIO) -> bool:
    try:
        return stat.S_ISREG(os.fstat(file.fileno()).st_mode)
    except (OSError, ValueError):
        return False


def total_input_bytes(inputs: Sequence[str]) -> int | None:
    """The summed size of the inputs when all are regular files (for an ETA), else None."""
    total = 0
    for path in inputs:
        if path == "-":
            if not _is_regular(sys.stdin.buffer):
                return None
            try:
                total += os.fstat(sys.stdin.buffer.fileno()).st_size
            except (OSError, ValueError):
                return None
            continue
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        total += st.st_size
    return total


async def read_inputs(
    inputs: Sequence[str],
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    chunk_size: int = CHUNK_SIZE,
    stdin: BinaryIO | None = None,
    input_format: InputFormat | None = None,
    columns: CsvColumns | None = None,
) -> AsyncIterator[LineBlock]:
    """Yield the lines of each input in turn ("-" is stdin). Raises InputError if one can't open.

    Each input is read in its own format, decompressed (see `_formats`); CSV and TSV records
    come out as NDJSON lines, and with a template in `columns` NDJSON lines get their body
    rendered too (see `_csv_source` and `_template`).
    """
    columns = columns or CsvColumns()
    for path in inputs:
        if path == "-":
            file = stdin if stdin is not None else sys.stdin.buffer
            reader: _ChunkReader = (
                _FileReader(file) if _is_regular(file) else await _pipe_reader(file)
            )
            async for block in _read_one(
                "-", reader, input_format, columns, max_line_bytes, chunk_size
            ):
                yield block
            continue
        try:
            # Opened here rather than up front so a run over many files holds one descriptor.
            file = open(path, "rb")  # noqa: SIM115, ASYNC230 - closed below; a one-off syscall
        except OSError as exc:
            raise InputError(f"can't open input {path!r}: {exc.strerror}") from exc
        try:
            async for block in _read_one(
                path, _FileReader(file), input_format, columns, max_line_bytes, chunk_size
            ):
                yield block
        except OSError as exc:
            raise InputError(f"can't read input {path!r}: {exc.strerror}") from exc
        finally:
            file.close()


async def _read_one(  # noqa: PLR0917 - a private helper of read_inputs
    path: str,
    reader: _ChunkReader,
    input_format: InputFormat | None,
    columns: CsvColumns,
    max_line_bytes: int,
    chunk_size: int,
) -> AsyncIterator[LineBlock]:
    fmt, reader = await open_format(path, reader, input_format, chunk_size)
    physical = split_lines(path, reader, max_line_bytes, chunk_size)
    if fmt == "ndjson":
        template = columns.template
        async for block in physical:
            if template is not None:
                block = render_ndjson_block(block, template)  # noqa: PLW2901
            yield ndjson_deadlines(block)
        return
    csv = CsvReader(
        path,
        delimiter="," if fmt == "csv" else "\t",
        columns=columns,
        max_record_bytes=max_line_bytes,
    )
    async for block in csv.blocks(physical):
        yield block


async def split_lines(
    source: str, reader: _ChunkReader, max_line_bytes: int, chunk_size: int = CHUNK_SIZE
) -> AsyncIterator[LineBlock]:
    """Split a chunked byte stream into numbered lines (see the module's promises).

    A line's length is that of its content: neither its line ending (LF or CRLF) nor the BOM at
    the start of the input counts, so the verdict doesn't depend on where the chunks happen to
    split a CRLF or the BOM.
    """
    next_line = 1
    tail = b""  # the start of a line whose end hasn't arrived yet (never over the limit)
    skipping = False  # inside a line already known to be too long: drop bytes until its end
    pending_bytes = 0  # bytes read but not yet handed on with a line
    while chunk := await reader.read(chunk_size):
        pending_bytes += len(chunk)
        parts = chunk.split(b"\n")
        rest = parts.pop()  # after the last newline: the start of the next line
        if not parts:  # no line ended in this chunk
            if not skipping:
                tail += rest
                if _content_length(tail, first_line=next_line == 1) > max_line_bytes:
                    skipping, tail = True, b""
            continue
        ended_long_line = skipping
        head = tail  # where this chunk's first line began, in the chunk before
        # Whether the bytes read are exactly the lines (see LineBlock.text): no line ending or
        # BOM taken off, no line dropped for its length.
        exact = not ended_long_line
        parts[0] = b"" if skipping else tail + parts[0]
        if next_line == 1 and not ended_long_line and parts[0].startswith(_BOM):
            parts[0] = parts[0].removeprefix(_BOM)
            exact = False
        skipping = _content_length(rest, first_line=False) > max_line_bytes
        tail = b"" if skipping else rest
        if b"\r" in chunk or parts[0].endswith(b"\r"):
            parts = [part[:-1] if part.endswith(b"\r") else part for part in parts]
            exact = False
        lines: list[bytes | None] = list(parts)
        if max(map(len, parts)) > max_line_bytes:
            lines = [None if len(part) > max_line_bytes else part for part in parts]
            exact = False
        if ended_long_line:
            lines[0] = None
        text = head + chunk[: len(chunk) - len(rest)] if exact else None
        yield LineBlock(source, next_line, lines, pending_bytes, text=text)
        next_line += len(lines)
        pending_bytes = 0
    if skipping:
        yield LineBlock(source, next_line, [None], pending_bytes)
        return
    if next_line == 1:
        tail = tail.removeprefix(_BOM)  # an input that is only a BOM has no lines
    if tail:
        last = tail.removesuffix(b"\r")
        yield LineBlock(
            source, next_line, [None if len(last) > max_line_bytes else last], pending_bytes
        )


def _content_length(partial: bytes, *, first_line: bool) -> int:
    """How much of an unfinished line surely counts toward the limit.

    Not the BOM (or the start of one) at the start of the input, and not a final CR, which may
    turn out to be half of a CRLF; once the line ends, its exact length is checked.
    """
    size = len(partial)
    if first_line:
        if partial.startswith(_BOM):
            size -= len(_BOM)
        elif _BOM.startswith(partial):
            return 0
    if partial.endswith(b"\r"):
        size -= 1
    return max(size, 0)
