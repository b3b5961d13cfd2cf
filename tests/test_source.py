"""Reading input: chunked line splitting against a naive reference, files, and stdin as a pipe.

The reference reads the whole stream at once and splits it the obvious way; the chunked splitter
must agree with it whatever the chunk boundaries are, including boundaries inside a CRLF, inside
the BOM and inside a line that turns out to be too long.
"""

from __future__ import annotations

import asyncio
import os
import re
import tracemalloc
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsend._exceptions import InputError
from streamsend._source import read_inputs, split_lines
from streamsend._types import LineBlock

BOM = b"\xef\xbb\xbf"


class ChunkedReader:
    """Hands out `data` in chunks whose sizes cycle through `sizes` (never more than asked)."""

    def __init__(self, data: bytes, sizes: Sequence[int]) -> None:
        self._data = data
        self._sizes = list(sizes)
        self._position = 0
        self._turn = 0

    async def read(self, n: int) -> bytes:
        size = min(n, self._sizes[self._turn % len(self._sizes)])
        self._turn += 1
        chunk = self._data[self._position : self._position + size]
        self._position += len(chunk)
        return chunk


class GeneratedReader:
    """A stream made up on the fly, so that the test itself never holds it whole."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces

    async def read(self, n: int) -> bytes:
        return next(self._pieces, b"")


def reference_lines(data: bytes, max_line_bytes: int) -> list[bytes | None]:
    """The obvious, whole-stream reading of the module's promises."""
    data = data.removeprefix(BOM)
    pieces = data.split(b"\n")
    if pieces[-1] == b"":
        pieces.pop()  # a final newline ends the last line; it does not start another
    lines = [piece.removesuffix(b"\r") for piece in pieces]
    return [None if len(line) > max_line_bytes else line for line in lines]


async def collect(blocks: AsyncIterator[LineBlock]) -> list[LineBlock]:
    return [block async for block in blocks]


def flatten(blocks: Sequence[LineBlock], source: str) -> list[bytes | None]:
    """The lines of `blocks`, checking that they number the lines 1, 2, 3, ... without gaps."""
    lines: list[bytes | None] = []
    for block in blocks:
        assert block.source == source
        assert block.first_line == len(lines) + 1
        assert block.lines, "a block carries at least one line"
        if block.text is not None:  # the lines as read, in one piece (see LineBlock.text)
            assert block.text == b"\n".join(block.lines) + b"\n"  # type: ignore[arg-type]
        lines.extend(block.lines)
    return lines


_fragments = st.one_of(
    st.sampled_from([b"\n", b"\r\n", b"\r", b"\n\n", BOM, b" ", b"{}", b'{"a": 1}']),
    st.binary(max_size=12),
    st.integers(min_value=0, max_value=100).map(lambda n: b"x" * n),
)
_streams = st.lists(_fragments, max_size=40).map(b"".join)


@given(
    data=_streams,
    sizes=st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=5),
    max_line_bytes=st.integers(min_value=1, max_value=40),
)
@settings(max_examples=400, deadline=None)
async def test_chunked_split_matches_reference(
    data: bytes, sizes: list[int], max_line_bytes: int
) -> None:
    """Any chunking gives the reference's lines: numbering, CR, BOM, blanks and long lines."""
    blocks = await collect(split_lines("in.ndjson", ChunkedReader(data, sizes), max_line_bytes))
    expected = reference_lines(data, max_line_bytes)
    assert flatten(blocks, "in.ndjson") == expected
    # Every byte is accounted for progress, except those of an input that has no line at all.
    assert sum(block.nbytes for block in blocks) == (len(data) if expected else 0)


@pytest.mark.parametrize("chunk_size", [3, 7, 1 << 20])
async def test_lf_lines_come_with_their_text(chunk_size: int) -> None:
    """Where the bytes read are exactly the lines (LF endings, no BOM, none over the limit),
    every block carries them in one piece, the lines split across chunks included; a CRLF,
    a leading BOM or a long line takes the text away only from the block it is in."""
    data = b"ab\ncd\n\nefg\n"
    blocks = await collect(split_lines("-", ChunkedReader(data, [chunk_size]), 8, chunk_size))
    assert all(block.text is not None for block in blocks)
    assert b"".join(block.text or b"" for block in blocks) == data
    for odd in (b"ab\r\ncd\n", BOM + b"ab\ncd\n", b"ab\n123456789\n"):
        whole = await collect(split_lines("-", ChunkedReader(odd, [1 << 20]), 8))
        assert [block.text for block in whole] == [None]


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 4, 5, 7, 64, 1 << 20])
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"", [], id="empty"),
        pytest.param(b"a\nb", [b"a", b"b"], id="no-final-newline"),
        pytest.param(b"a\r\nb\r\n", [b"a", b"b"], id="crlf"),
        pytest.param(b"a\r\r\n", [b"a\r"], id="only-one-cr-is-the-line-ending"),
        pytest.param(b"a\rb\n", [b"a\rb"], id="lone-cr-is-content"),
        pytest.param(b"\n\n\nz\n", [b"", b"", b"", b"z"], id="blank-lines-keep-numbering"),
        pytest.param(BOM + b"a\n", [b"a"], id="bom-stripped-at-start"),
        pytest.param(b"a\n" + BOM + b"b\n", [b"a", BOM + b"b"], id="bom-kept-later"),
        pytest.param(BOM + BOM + b"a\n", [BOM + b"a"], id="only-one-bom-stripped"),
        pytest.param(b"12345678\n", [b"12345678"], id="exactly-the-limit"),
        pytest.param(b"123456789\nok\n", [None, b"ok"], id="one-over-the-limit"),
        pytest.param(b"12345678\r\n", [b"12345678"], id="cr-not-counted"),
        pytest.param(BOM + b"12345678\n", [b"12345678"], id="bom-not-counted"),
        pytest.param(BOM + b"123456789\n", [None], id="long-first-line-after-bom"),
        pytest.param(b"x" * 30, [None], id="long-unterminated-last-line"),
    ],
)
async def test_hand_picked_streams(chunk_size: int, data: bytes, expected: list[bytes]) -> None:
    """Edge cases of line endings, the BOM and the 8-byte limit used here, at every chunking."""
    blocks = await collect(split_lines("-", ChunkedReader(data, [chunk_size]), 8, chunk_size))
    assert flatten(blocks, "-") == expected


async def test_long_line_is_never_held_whole() -> None:
    """A 32 MiB line under a 1 KiB limit is dropped as it streams past: memory stays small."""
    chunk = 64 * 1024

    def pieces() -> Iterator[bytes]:
        yield b'{"first": 1}\n'
        for _ in range(512):  # 32 MiB of one line, made up chunk by chunk
            yield b"x" * chunk
        yield b"\nlast\n"

    tracemalloc.start()
    try:
        blocks = await collect(split_lines("-", GeneratedReader(pieces()), 1024, chunk))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert flatten(blocks, "-") == [b'{"first": 1}', None, b"last"]
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes: the long line was buffered"


async def test_files_are_numbered_separately(tmp_path: Path) -> None:
    """Each file's lines are numbered from 1 under its own path, each file's BOM is stripped."""
    first = tmp_path / "a.ndjson"
    second = tmp_path / "b.ndjson"
    first.write_bytes(BOM + b"one\r\ntwo\r\n")
    second.write_bytes(BOM + b"three\n\nfive")
    blocks = await collect(read_inputs([str(first), str(second)], chunk_size=3))
    assert flatten([b for b in blocks if b.source == str(first)], str(first)) == [b"one", b"two"]
    assert flatten([b for b in blocks if b.source == str(second)], str(second)) == [
        b"three",
        b"",
        b"five",
    ]
    assert [b.source for b in blocks] == sorted(b.source for b in blocks), "files in order"


async def test_line_limit_applies_to_files(tmp_path: Path) -> None:
    """`max_line_bytes` reaches the splitter when reading files."""
    path = tmp_path / "in.ndjson"
    path.write_bytes(b"short\n" + b"y" * 100 + b"\nshort again\n")
    blocks = await collect(read_inputs([str(path)], max_line_bytes=64))
    assert flatten(blocks, str(path)) == [b"short", None, b"short again"]


async def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    """An input that can't be opened raises InputError naming the path."""
    missing = tmp_path / "nope.ndjson"
    with pytest.raises(InputError, match=re.escape("nope.ndjson")):
        await collect(read_inputs([str(missing)]))


async def test_directory_is_an_input_error(tmp_path: Path) -> None:
    """A directory given as input is an InputError, not a traceback from deep inside."""
    with pytest.raises(InputError, match=re.escape(tmp_path.name)):
        await collect(read_inputs([str(tmp_path)]))


async def test_stdin_regular_file_is_read(tmp_path: Path) -> None:
    """`-` with stdin redirected from a regular file reads it like a file, source `-`."""
    path = tmp_path / "stdin.ndjson"
    path.write_bytes(BOM + b"a\r\nb\n")
    with path.open("rb") as stdin:
        blocks = await collect(read_inputs(["-"], stdin=stdin))
    assert flatten(blocks, "-") == [b"a", b"b"]


async def test_stdin_pipe_hands_on_a_partial_stream_at_once() -> None:
    """From a pipe, a complete line is handed on while the writer still holds the pipe open;
    the rest of a split line follows when it arrives, and EOF ends the stream."""
    read_fd, write_fd = os.pipe()
    stdin = os.fdopen(read_fd, "rb", buffering=0)
    blocks = read_inputs(["-"], stdin=stdin)
    try:
        os.write(write_fd, BOM + b'{"n": 1}\r\n{"n"')
        first = await asyncio.wait_for(anext(blocks), timeout=10)
        assert (first.source, first.first_line, first.lines) == ("-", 1, [b'{"n": 1}'])

        os.write(write_fd, b": 2}\n")
        second = await asyncio.wait_for(anext(blocks), timeout=10)
        assert (second.first_line, second.lines) == (2, [b'{"n": 2}'])

        os.write(write_fd, b'{"n": 3}')  # no newline: only EOF ends this line
        os.close(write_fd)
        write_fd = -1
        rest = await asyncio.wait_for(collect(blocks), timeout=10)
        assert [(b.first_line, b.lines) for b in rest] == [(3, [b'{"n": 3}'])]
    finally:
        if write_fd != -1:
            os.close(write_fd)
        await cast(AsyncGenerator[LineBlock, None], blocks).aclose()
        stdin.close()
