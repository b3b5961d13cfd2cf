"""The opt-out list: `--suppress FILE...`, numbers that must never be texted.

Promises:
- Each file is one number per line, or CSV/TSV with a header naming a phone column
  (`to_msisdn`, `to`, `phone`, `msisdn`, `mobile`, `number`), or NDJSON with one of those
  fields; gzip/zstd by extension or magic bytes, like the campaign input. Blank lines and
  lines starting with `#` are skipped.
- Numbers are normalised by the same rule as recipients (`normalise_phone`), so
  `1 (415) 555-0100` on the list stops `+14155550100` in the campaign. An entry that doesn't
  normalise can't match any recipient the service would accept; it is counted, not fatal.
- A recipient on the list gets the outcome `suppressed` (final, never sent, exit code 0).

Ten million numbers in ≤ 10 s and ≤ 500 MB: a Python set of ten million numbers takes
about 1 GB (a str or int object plus a set slot each), so they are kept as 64-bit integers
(the E.164 digits) in an open-addressing hash table in one `array('q')` at most 60% full:
about 13 bytes a number. Plain E.164 lines are found with one regular expression per 4 MiB
chunk, not a Python call per line. `benchmarks/campaign_memory.py` measures it (see the README).
"""

from __future__ import annotations

import csv
import gzip
import re
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import orjson

from streamsend._exceptions import ConfigError
from streamsend._formats import compression_of, decompress_errors, zstd
from streamsend._validate import normalise_phone

PHONE_COLUMNS = ("to_msisdn", "to", "phone", "msisdn", "mobile", "number")
_CHUNK = 1 << 22
# Plain E.164 lines (the usual opt-out export): the digits come out without a Python call each.
_PLAIN = re.compile(rb"^\+([1-9][0-9]{7,14})\r?$", re.MULTILINE)


class NumberSet:
    """A set of E.164 numbers as 64-bit integers: open addressing, linear probing, 0 = empty.

    `+` and up to 15 digits (first not 0) fit in 50 bits, and the digits alone identify the
    number, so the integer is the number itself: no false matches.
    """

    def __init__(self, numbers: array[int]) -> None:
        count = len(numbers)
        # At most 60% full: linear probing stays at a few probes a look-up (about 3.6 for a
        # number that isn't there), and ten million numbers fit 2^24 slots (128 MiB).
        size = 16
        while size * 0.6 < count:
            size *= 2
        self._mask = mask = size - 1
        table = array("q", [0]) * size
        stored = 0
        for number in numbers:
            i = (number * 0x9E3779B1) & mask  # spread the low digits (Fibonacci hashing)
            while True:
                held = table[i]
                if held == 0:
                    table[i] = number
                    stored += 1
                    break
                if held == number:
                    break
                i = (i + 1) & mask
        self._table = table
        self._count = stored

    def __len__(self) -> int:
        return self._count

    def __contains__(self, e164: object) -> bool:
        if not isinstance(e164, str):
            return False
        return self.has_digits(int(e164[1:]))

    def has_digits(self, number: int) -> bool:
        table = self._table
        mask = self._mask
        i = (number * 0x9E3779B1) & mask
        while True:
            held = table[i]
            if held == number:
                return True
            if held == 0:
                return False
            i = (i + 1) & mask

    @property
    def nbytes(self) -> int:
        return self._table.itemsize * len(self._table)


@dataclass(frozen=True, slots=True)
class Suppression:
    """The loaded opt-out list: `numbers`, and how many entries couldn't be read as numbers."""

    numbers: NumberSet
    unreadable: int
    files: tuple[str, ...]


def load_suppression(paths: Sequence[str]) -> Suppression:
    """Read every file; ConfigError (naming --suppress and the file) if one can't be read."""
    digits = array("q")
    unreadable = 0
    for path in paths:
        try:
            unreadable += _read_numbers(path, digits)
        except OSError as exc:
            raise ConfigError(f"--suppress: can't read {path}: {exc.strerror or exc}") from None
        except Exception as exc:
            # zstandard's error class is only known once a zstd file made us import it.
            if not isinstance(
                exc, (*decompress_errors("zstd"), *decompress_errors("gzip"), EOFError)
            ):
                raise
            raise ConfigError(f"--suppress: {path} is not valid compressed data: {exc}") from None
    return Suppression(NumberSet(digits), unreadable, tuple(paths))


def _read_numbers(path: str, out: array[int]) -> int:
    """Append the digits of every number in `path` to `out`; the count of unreadable entries."""
    with open(path, "rb") as raw:
        head = raw.read(4)
        raw.seek(0)
        compression = compression_of(path, head)
        file: _Readable = raw
        if compression == "gzip":
            file = gzip.GzipFile(fileobj=raw)
        elif compression == "zstd":
            file = zstd().ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        chunks = _chunks(file)
        first = next(chunks, b"")
        first_line = first.lstrip(b"\xef\xbb\xbf \r\n").split(b"\n", 1)[0]
        rest = _prepend(first, chunks)
        if first_line.startswith(b"{"):
            return _read_ndjson(rest, out)
        if b"," in first_line or b"\t" in first_line or _is_header(first_line):
            return _read_table(path, first_line, rest, out)
        return _read_plain(rest, out)


class _Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


def _chunks(file: _Readable) -> Iterator[bytes]:
    """Whole lines, about _CHUNK bytes at a time."""
    tail = b""
    while data := file.read(_CHUNK):
        data = tail + data
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            tail = data
            continue
        tail = data[cut:]
        yield data[:cut]
    if tail:
        yield tail + b"\n"


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def _is_header(line: bytes) -> bool:
    return line.strip().decode("utf-8", "replace").lower() in PHONE_COLUMNS


def _read_plain(chunks: Iterable[bytes], out: array[int]) -> int:
    unreadable = 0
    for chunk in chunks:
        found = _PLAIN.findall(chunk)
        out.extend(map(int, found))
        lines = chunk.count(b"\n")
        if len(found) == lines:
            continue
        # Some lines aren't plain E.164: normalise those one by one.
        for line in chunk.split(b"\n"):
            if _PLAIN.fullmatch(line):
                continue
            text = line.strip().decode("utf-8", "replace")
            if not text or text.startswith("#") or text.lower() in PHONE_COLUMNS:
                continue
            number = normalise_phone(text)
            if number is None:
                unreadable += 1
            else:
                out.append(int(number[1:]))
    return unreadable


def _read_ndjson(chunks: Iterable[bytes], out: array[int]) -> int:
    unreadable = 0
    for chunk in chunks:
        for line in chunk.split(b"\n"):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                unreadable += 1
                continue
            value = None
            if isinstance(record, dict):
                value = next((record[k] for k in PHONE_COLUMNS if record.get(k) is not None), None)
            number = normalise_phone(value) if isinstance(value, str) else None
            if number is None:
                unreadable += 1
            else:
                out.append(int(number[1:]))
    return unreadable


def _read_table(path: str, header_line: bytes, chunks: Iterable[bytes], out: array[int]) -> int:
    delimiter = "\t" if b"\t" in header_line else ","
    rows = csv.reader(_text_lines(chunks), delimiter=delimiter)
    header = [name.strip().lower() for name in next(rows, [])]
    column = next((header.index(name) for name in PHONE_COLUMNS if name in header), None)
    if column is None:
        raise ConfigError(
            f"--suppress: {path} has no phone column ({', '.join(PHONE_COLUMNS)}); "
            f"its header is {header_line[:80].decode('utf-8', 'replace')!r}"
        )
    unreadable = 0
    try:
        for row in rows:
            if not row:
                continue
            number = normalise_phone(row[column]) if column < len(row) else None
            if number is None:
                unreadable += 1
            else:
                out.append(int(number[1:]))
    except (csv.Error, UnicodeDecodeError) as exc:
        raise ConfigError(f"--suppress: {path} is not readable CSV: {exc}") from None
    return unreadable


def _text_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """The lines of whole-line chunks, with their endings (csv reads quoted newlines)."""
    first = True
    for chunk in chunks:
        text = chunk.decode("utf-8")
        if first:
            text, first = text.removeprefix("\ufeff"), False
        for line in text.split("\n")[:-1]:
            yield line + "\n"


__all__ = ["PHONE_COLUMNS", "NumberSet", "Suppression", "load_suppression"]
