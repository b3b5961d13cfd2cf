"""Input formats: which format and compression an input is in, and its decompressed bytes.

The format is `--format` when given, else the file's extension (under any `.gz`/`.zst`), else
the first bytes: a line starting with `{` is NDJSON; a first line with tabs is TSV, with commas
CSV. Compression is the extension (`.gz`, `.zst`) or else the magic bytes, so a compressed
stdin works too; gzip may hold several members and zstd several frames, as `cat a.gz b.gz`
and `zstd` write them.

An input that is to be read as NDJSON but looks like something else (a CSV header, bzip2, xz or
zip data) is refused with a hint naming what it looks like: read as NDJSON it would give one
`invalid_json` (or `nul_byte`) outcome per line and no clue why. `precheck_inputs` runs that
check on every named regular file before anything is sent; stdin (and a named pipe) is checked
when it is read, which for the usual single stdin is also before anything is sent.
"""

from __future__ import annotations

import asyncio
import os
import stat
import zlib
from collections.abc import Sequence
from types import ModuleType
from typing import Literal, Protocol

from streamsend._exceptions import InputError

InputFormat = Literal["ndjson", "csv", "tsv"]
Compression = Literal["gzip", "zstd"]
FORMATS: tuple[InputFormat, ...] = ("ndjson", "csv", "tsv")

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_BOM = b"\xef\xbb\xbf"
#: Compressed formats streamsend does not read: named in the refusal, with the fix.
_OTHER_MAGIC = {
    b"BZh": ("bzip2", "bzip2 -dc"),
    b"\xfd7zXZ\x00": ("xz", "xz -dc"),
    b"PK\x03\x04": ("zip", "unzip -p"),
}
_COMPRESSED_EXTENSIONS: dict[str, Compression] = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd"}
_FORMAT_EXTENSIONS: dict[str, InputFormat] = {
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".json": "ndjson",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
}
#: How much decompressed data the detection looks at.
SNIFF_BYTES = 64 * 1024


class ChunkReader(Protocol):
    async def read(self, n: int) -> bytes: ...


def compression_of(path: str, head: bytes) -> Compression | None:
    """The compression by extension (a file) or else by magic bytes (any input, stdin too)."""
    for extension, compression in _COMPRESSED_EXTENSIONS.items():
        if path != "-" and path.lower().endswith(extension):
            return compression
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    return None


def format_of(path: str, head: bytes, given: InputFormat | None) -> InputFormat:
    """The input's format (see the module docstring); refuses what NDJSON would misread.

    `head` is the start of the decompressed data.
    """
    fmt = given
    if fmt is None and path != "-":
        name = path.lower()
        for extension in _COMPRESSED_EXTENSIONS:
            name = name.removesuffix(extension)
        for extension, by_name in _FORMAT_EXTENSIONS.items():
            if name.endswith(extension):
                fmt = by_name
                break
    first = _first_line(head)
    if fmt is None:
        if first.startswith(b"\t") or (b"\t" in first and not first.startswith(b"{")):
            fmt = "tsv"
        elif b"," in first and not first.startswith(b"{"):
            fmt = "csv"
        else:
            fmt = "ndjson"
    if fmt == "ndjson":
        _refuse_if_not_ndjson(path, head, first)
    return fmt


def _first_line(head: bytes) -> bytes:
    text = head.removeprefix(_BOM).lstrip(b"\r\n \t")
    return text.split(b"\n", 1)[0].rstrip(b"\r")


def _refuse_if_not_ndjson(path: str, head: bytes, first: bytes) -> None:
    name = "stdin" if path == "-" else repr(path)
    for magic, (kind, command) in _OTHER_MAGIC.items():
        if head.startswith(magic):
            shown = "FILE" if path == "-" else path
            raise InputError(
                f"input {name} looks like {kind}-compressed data, which streamsend can't "
                f"read: decompress it first ({command} {shown} | streamsend send -)"
            )
    if first and not first.startswith(b"{") and (b"," in first or b"\t" in first):
        kind = "TSV" if b"\t" in first else "CSV"
        shown = first[:60].decode("utf-8", "replace")
        raise InputError(
            f"input {name} looks like {kind} (first line {shown!r}), not NDJSON: pass "
            f"--format {kind.lower()}, or name the file .{kind.lower()}"
        )


def precheck_inputs(inputs: Sequence[str], given: InputFormat | None) -> None:
    """Detect the format of every named file now, so a refusal comes before anything is sent.

    Regular files only: reading a named pipe (or a device) here would take its first bytes
    from the run, and opening one would wait for its writer. Those are checked when read.
    """
    for path in inputs:
        if path == "-":
            continue
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):
                continue
            with open(path, "rb") as file:
                raw = file.read(SNIFF_BYTES)
        except OSError as exc:
            raise InputError(f"can't open input {path!r}: {exc.strerror}") from None
        compression = compression_of(path, raw)
        head = _decompress_head(path, raw, compression) if compression else raw
        format_of(path, head, given)


def zstd() -> ModuleType:
    """The `zstandard` module, imported when a zstd input first needs it (not at start-up).

    zstd is what warehouse exports (Snowflake, BigQuery, ClickHouse, Spark) write next to
    gzip; the standard library reads it only from Python 3.14, so `zstandard` (the reference
    binding, a wheel on every platform) is a dependency.
    """
    import zstandard

    return zstandard


def decompress_errors(compression: Compression) -> tuple[type[Exception], ...]:
    return (zlib.error,) if compression == "gzip" else (zstd().ZstdError,)


def _decompress_head(path: str, raw: bytes, compression: Compression) -> bytes:
    decompressor = _new_decompressor(compression)
    try:
        return bytes(decompressor.decompress(raw)[:SNIFF_BYTES])
    except decompress_errors(compression) as exc:
        raise InputError(f"input {path!r} is not valid {compression} data: {exc}") from None


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes) -> bytes: ...


def _new_decompressor(compression: Compression) -> _Decompressor:
    if compression == "gzip":
        return zlib.decompressobj(wbits=31)
    decompressor: _Decompressor = zstd().ZstdDecompressor().decompressobj()
    return decompressor


class Prefixed:
    """A reader that first hands out bytes already read (for detection), then the rest."""

    def __init__(self, first: bytes, reader: ChunkReader) -> None:
        self._first = first
        self._reader = reader

    async def read(self, n: int) -> bytes:
        if self._first:
            first, self._first = self._first, b""
            return first
        return await self._reader.read(n)


class Decompressing:
    """Decompresses a gzip or zstd stream read in chunks, member after member (frame after frame).

    Each chunk is decompressed in a worker thread: a megabyte of input can take milliseconds,
    which the event loop's requests shouldn't wait for.
    """

    def __init__(self, path: str, reader: ChunkReader, compression: Compression) -> None:
        self._path = path
        self._reader = reader
        self._compression = compression
        self._decompressor = _new_decompressor(compression)
        self._started = False  # the current member has had input

    async def read(self, n: int) -> bytes:
        while chunk := await self._reader.read(n):
            data = await asyncio.to_thread(self._decompress, chunk)
            if data:
                return data
        if self._started and not self._decompressor.eof:
            raise InputError(
                f"input {self._name()} ends in the middle of its {self._compression} data "
                "(a truncated file?); the lines before the cut were read"
            )
        return b""

    def _decompress(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        try:
            while chunk:
                self._started = True
                out.append(self._decompressor.decompress(chunk))
                if not self._decompressor.eof:
                    break
                # The end of one member: what follows is the next member (or padding zeros).
                chunk = self._decompressor.unused_data.lstrip(b"\x00")
                self._decompressor = _new_decompressor(self._compression)
                self._started = False
        except decompress_errors(self._compression) as exc:
            raise InputError(
                f"input {self._name()} is not valid {self._compression} data: {exc}"
            ) from None
        return b"".join(out)

    def _name(self) -> str:
        return "stdin" if self._path == "-" else repr(self._path)


async def open_format(
    path: str, reader: ChunkReader, given: InputFormat | None, chunk_size: int
) -> tuple[InputFormat, ChunkReader]:
    """Read the start of `reader`, and return the input's format and a reader of its
    decompressed bytes from the beginning."""
    first = await reader.read(chunk_size)
    reader = Prefixed(first, reader)
    compression = compression_of(path, first)
    if compression is not None:
        reader = Decompressing(path, reader, compression)
    head = await reader.read(chunk_size)
    # A pipe may hand over a few bytes at a time: gather enough to see the first line.
    while b"\n" not in head and len(head) < SNIFF_BYTES and (more := await reader.read(chunk_size)):
        head += more
    return format_of(path, head, given), Prefixed(head, reader)


__all__ = [
    "FORMATS",
    "ChunkReader",
    "InputFormat",
    "compression_of",
    "format_of",
    "open_format",
    "precheck_inputs",
]
