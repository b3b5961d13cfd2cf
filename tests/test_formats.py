"""Input formats: detection by --format, extension and content; gzip and zstd by extension and
magic bytes (several members/frames too); refusals of what NDJSON would misread."""

from __future__ import annotations

import asyncio
import gzip
import os
from pathlib import Path
from typing import BinaryIO

import orjson
import pytest
import zstandard

from streamsend._exceptions import InputError
from streamsend._formats import format_of, precheck_inputs
from streamsend._source import read_inputs

NDJSON = b'{"to":"+14155550001","body":"a"}\n{"to":"+14155550002","body":"b"}\n'
CSV = b"phone,body\n+14155550001,a\n+14155550002,b\n"


async def _bodies(path: str, stdin: BinaryIO | None = None, **options: object) -> list[str]:
    bodies = []
    async for block in read_inputs([path], stdin=stdin, chunk_size=16, **options):  # type: ignore[arg-type]
        bodies += [orjson.loads(raw)["body"] for raw in block.lines if raw]
    return bodies


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("c.ndjson", NDJSON),
        ("c.ndjson.gz", gzip.compress(NDJSON[:20]) + gzip.compress(NDJSON[20:])),
        ("c.jsonl.zst", zstandard.ZstdCompressor().compress(NDJSON)),
        ("c.csv", CSV),
        ("c.csv.gz", gzip.compress(CSV)),
        (
            "c.csv.zst",
            zstandard.ZstdCompressor().compress(CSV[:15])
            + zstandard.ZstdCompressor().compress(CSV[15:]),
        ),
        ("c.tsv", CSV.replace(b",", b"\t")),
        ("noext", CSV),
        ("noext.gz", gzip.compress(CSV)),
    ],
)
async def test_files_by_extension_and_content(tmp_path: Path, name: str, data: bytes) -> None:
    """Every format and compression reads back the same two messages, by extension or, without
    one, by content; gzip members and zstd frames are read one after another."""
    path = tmp_path / name
    path.write_bytes(data)
    assert await _bodies(str(path)) == ["a", "b"]


@pytest.mark.parametrize(
    "data",
    [gzip.compress(NDJSON), zstandard.ZstdCompressor().compress(CSV), NDJSON, CSV],
)
async def test_stdin_by_magic_bytes_and_content(data: bytes) -> None:
    """On stdin (a pipe), gzip and zstd are recognised by their magic bytes and CSV by its
    first line."""
    read_end, write_end = os.pipe()
    os.write(write_end, data)  # small: fits in the pipe's buffer
    os.close(write_end)
    with os.fdopen(read_end, "rb") as stdin:
        assert await _bodies("-", stdin=stdin) == ["a", "b"]


def test_format_flag_wins_over_the_extension() -> None:
    """--format csv reads a .txt (or anything) as CSV; --format tsv a .csv as TSV."""
    assert format_of("x.txt", CSV, "csv") == "csv"
    assert format_of("x.csv", CSV, "tsv") == "tsv"


@pytest.mark.parametrize(
    ("name", "data", "given", "hint"),
    [
        ("c.ndjson", CSV, None, "looks like CSV.*--format csv"),
        ("c.txt", CSV, "ndjson", "looks like CSV"),
        ("c.ndjson", CSV.replace(b",", b"\t"), None, "looks like TSV"),
        ("c.ndjson", b"BZh91AY&SY...", None, "bzip2-compressed.*bzip2 -dc"),
        ("c.ndjson", b"\xfd7zXZ\x00\x00", None, "xz-compressed"),
    ],
)
def test_refused_before_anything_is_sent(
    tmp_path: Path, name: str, data: bytes, given: str | None, hint: str
) -> None:
    """A file to be read as NDJSON that looks like CSV/TSV or bzip2/xz is refused with a hint
    naming what it looks like, by the pre-check that runs before a send starts."""
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(InputError, match=hint):
        precheck_inputs([str(path)], given)  # type: ignore[arg-type]


async def test_truncated_gzip_is_an_input_error(tmp_path: Path) -> None:
    """A gzip file cut short reads its whole lines, then stops the input with a clear error."""
    path = tmp_path / "c.ndjson.gz"
    path.write_bytes(gzip.compress(NDJSON * 50)[:-12])
    with pytest.raises(InputError, match="ends in the middle of its gzip data"):
        await _bodies(str(path))


async def test_a_named_pipe_loses_nothing_to_the_precheck(tmp_path: Path) -> None:
    """The pre-check leaves a named pipe alone (reading it would take the run's first bytes);
    the pipe is detected and read whole when the run reads it."""
    fifo = tmp_path / "campaign.fifo"
    os.mkfifo(fifo)
    precheck_inputs([str(fifo)], None)  # returns at once: no writer needed

    def write() -> None:
        with fifo.open("wb") as pipe:
            pipe.write(CSV)

    writer = asyncio.get_running_loop().run_in_executor(None, write)
    assert await _bodies(str(fifo)) == ["a", "b"]
    await writer
