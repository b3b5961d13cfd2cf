"""Writing outcomes: one JSON object per input line, and nothing else in the outcomes file.

Promises:
- `write()` appends whole lines only; `flush()` is the durability point (called at least once
  per request, with fsync when the policy asks for it).
- Lines are built from pre-encoded pieces: the source path and sender are JSON-encoded once, the
  recipient needs no escaping once it has passed validation (E.164 is `+` and digits), and only
  free text (the service's error messages) goes through orjson. Throwaway prototypes found encoding
  outcomes one dict at a time to be a third of the client's CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from itertools import chain
from typing import BinaryIO

import orjson

from streamsend._columns import Columns
from streamsend._durable import GroupSync, cut_torn_line
from streamsend._models import BatchOutcome, Encoding, Outcome

_ENCODING_BYTES = {Encoding.GSM7: b"gsm7", Encoding.UCS2: b"ucs2"}
# The end of a request's outcome template, and what it becomes when every message of the
# request is one GSM-7 segment (the usual request).
_VARYING_TAIL = b',"segments":%d,"encoding":"%b"}\n'
_ONE_GSM7_SEGMENT_TAIL = b',"segments":1,"encoding":"gsm7"}\n'


def _runs_by_ref(columns: Columns) -> list[Columns]:
    """The columns cut where messages with a ref meet messages without one."""
    refs = columns.refs
    runs: list[Columns] = []
    start = 0
    for i in range(1, len(refs)):
        if bool(refs[i]) != bool(refs[i - 1]):
            runs.append(columns[start:i])
            start = i
    runs.append(columns[start:])
    return runs


class OutcomeEncoder:
    """Encodes Outcomes as the outcomes file's lines."""

    def __init__(self) -> None:
        self._json_cache: dict[str, bytes] = {}

    def _cached(self, text: str) -> bytes:
        encoded = self._json_cache.get(text)
        if encoded is None:
            if len(self._json_cache) > 4096:  # sources and senders are few; don't grow forever
                self._json_cache.clear()
            encoded = self._json_cache[text] = orjson.dumps(text)
        return encoded

    def encode(self, outcomes: Sequence[Outcome]) -> bytes:
        cached = self._cached
        parts: list[bytes] = []
        append = parts.append
        for o in outcomes:
            line = b'{"line":%d,"source":%b,"status":"%b"' % (
                o.line,
                cached(o.source),
                o.status.value.encode(),
            )
            if o.code is not None:
                line += b',"code":' + cached(o.code)
            if o.error is not None:
                line += b',"error":' + orjson.dumps(o.error)
            if o.to_msisdn is not None:
                line += b',"to_msisdn":"' + o.to_msisdn.encode() + b'"'
            if o.ref_json:
                line += b',"ref":' + o.ref_json
            line += b',"attempts":%d' % o.attempts
            if o.request is not None:
                line += b',"request":%d' % o.request
            if o.sender is not None:
                line += b',"sender":' + cached(o.sender)
            if o.segments is not None:
                line += b',"segments":%d' % o.segments
            if o.encoding is not None:
                line += b',"encoding":"' + o.encoding.value.encode() + b'"'
            if o.duplicate_of is not None:
                line += b',"duplicate_of":%d' % o.duplicate_of
            append(line + b"}\n")
        return b"".join(parts)

    def encode_batch(self, result: BatchOutcome) -> bytes:
        """Encode a request's outcomes: one `%` format per message from per-request templates.

        Everything the messages of one request share (source, status, code, attempts, request,
        sender) is baked into two templates once, one for messages with a `ref` and one
        without; only line, recipient, ref, segments and encoding vary per message.
        """
        messages = result.messages
        if not messages:
            return b""
        if type(messages) is Columns and not result.rejections:
            return self._encode_columns(result, messages)
        encoding_bytes = _ENCODING_BYTES
        source = messages[0].source
        if not result.rejections and messages[-1].source == source:
            # The usual request: one input, nothing refused. (Inputs are read one after another
            # and never named twice, so equal sources at both ends mean one source throughout.)
            with_ref, without_ref = self._batch_templates(result, source)
            return b"".join(
                [
                    with_ref
                    % (m.line, m.to.encode(), m.ref_json, m.segments, encoding_bytes[m.encoding])
                    if m.ref_json
                    else without_ref
                    % (m.line, m.to.encode(), m.segments, encoding_bytes[m.encoding])
                    for m in messages
                ]
            )
        rejections = result.rejections or {}
        lines: list[bytes] = []
        templates_source = None
        for index, m in enumerate(messages):
            if index in rejections:
                lines.append(self.encode([result.outcome_at(index)]))
                continue
            if m.source != templates_source:
                templates_source = m.source
                with_ref, without_ref = self._batch_templates(result, m.source)
            if m.ref_json:
                line = with_ref % (
                    m.line,
                    m.to.encode(),
                    m.ref_json,
                    m.segments,
                    encoding_bytes[m.encoding],
                )
            else:
                line = without_ref % (m.line, m.to.encode(), m.segments, encoding_bytes[m.encoding])
            lines.append(line)
        return b"".join(lines)

    def _encode_columns(self, result: BatchOutcome, columns: Columns) -> bytes:
        """`encode_batch` for a request of columns with nothing refused: one `%` over the
        per-request template repeated for every message, with the values of the columns
        interleaved: a `%` call and a tuple per message cost more than the formatting itself.
        """
        n = len(columns)
        with_ref, without_ref = self._batch_templates(result, columns.source)
        refs = columns.refs
        columns_of: list[Sequence[object]] = [columns.lines, columns.tos]
        if all(refs):
            template = with_ref
            columns_of.append(refs)
        elif not any(refs):
            template = without_ref
        else:  # some with a ref, some without: two templates, one `%` per message
            return b"".join(
                self.encode_batch(replace(result, messages=part)) for part in _runs_by_ref(columns)
            )
        if columns.segments.count(1) == n and columns.encodings.count(Encoding.GSM7) == n:
            template = template[: -len(_VARYING_TAIL)] + _ONE_GSM7_SEGMENT_TAIL
        else:
            columns_of.append(columns.segments)
            columns_of.append([_ENCODING_BYTES[e] for e in columns.encodings])
        return (template * n) % tuple(chain.from_iterable(zip(*columns_of, strict=True)))

    def _batch_templates(self, result: BatchOutcome, source: str) -> tuple[bytes, bytes]:
        def literal(data: bytes) -> bytes:
            return data.replace(b"%", b"%%")

        status = b',"status":"' + result.status.value.encode() + b'"'
        if result.code is not None:
            status += b',"code":' + self._cached(result.code)
        if result.error is not None:
            status += b',"error":' + orjson.dumps(result.error)
        head = (
            b'{"line":%d,"source":' + literal(self._cached(source) + status) + b',"to_msisdn":"%b"'
        )
        shared = b',"attempts":%d,"request":%d,"sender":' % (result.attempts, result.request)
        tail = literal(shared + self._cached(result.sender)) + _VARYING_TAIL
        return head + b',"ref":%b' + tail, head + tail


class FileSink:
    """Appends outcome lines to a file (or stdout). `fsync` makes every flush durable on disk.

    `close()` closes the file only when the sink owns it (not stdout: it only flushes that).
    """

    def __init__(self, file: BinaryIO, *, fsync: bool, owns_file: bool = True) -> None:
        self._file = file
        self._owns_file = owns_file
        self._fsync = fsync
        self._encoder = OutcomeEncoder()
        self._dirty = False
        self._group_sync = GroupSync(file.fileno(), quiet=True)

    @classmethod
    def open_path(cls, path: str, *, fsync: bool) -> FileSink:
        # "a+b": appends, and reads for cut_torn_line. A run killed mid-write, or stopped by a
        # full disk, leaves part of a line at the end: cut off, its line has no outcome yet,
        # and the file stays valid NDJSON.
        file = open(path, "a+b")  # noqa: SIM115 - owned by the sink, closed by close()
        with contextlib.suppress(OSError):  # a device or pipe: no torn line to cut
            cut_torn_line(file.fileno())
        return cls(file, fsync=fsync)

    def write(self, outcomes: Sequence[Outcome]) -> None:
        if outcomes:
            self._file.write(self._encoder.encode(outcomes))
            self._dirty = True

    def write_batch(self, result: BatchOutcome) -> None:
        if result.messages:
            self._file.write(self._encoder.encode_batch(result))
            self._dirty = True

    async def flush(self) -> None:
        if self._dirty:
            self._dirty = False
            self._file.flush()
            self._group_sync.wrote()
        if self._fsync:
            # Even when this caller wrote nothing new: another request's sync may still be
            # under way for lines this caller counts on. A thread and group commit keep the
            # event loop and the other requests from waiting on each fsync.
            await self._group_sync.sync()

    def close(self) -> None:
        self._file.flush()
        if self._fsync:
            self._group_sync.sync_now()
        if self._owns_file:
            self._file.close()


class MemorySink:
    """Keeps outcomes in memory, for the library API and tests; `stream()` hands them out."""

    def __init__(self) -> None:
        self.outcomes: deque[Outcome] = deque()
        self._changed = asyncio.Event()
        self.closed = False

    def write(self, outcomes: Sequence[Outcome]) -> None:
        self.outcomes.extend(outcomes)
        self._changed.set()

    def write_batch(self, result: BatchOutcome) -> None:
        self.write(result.outcomes())

    async def flush(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True
        self._changed.set()

    async def stream(self) -> AsyncIterator[Outcome]:
        """Yield outcomes as they arrive (each handed out once) until the sink is closed."""
        while True:
            while self.outcomes:
                yield self.outcomes.popleft()
            if self.closed:
                return
            self._changed.clear()
            await self._changed.wait()
