"""Durable appends: group-commit fdatasync, and cutting off a line a crash left torn.

The journal and the outcomes file are both append-only files whose lines must reach the disk
before the work they describe goes on; both use these.
"""

from __future__ import annotations

import asyncio
import os

_CHUNK = 64 * 1024


def cut_torn_line(fd: int) -> int:
    """If a killed run (or a full disk) left part of a line at the end of the file open as
    `fd`, cut it off: truncate back to the last newline. Returns the bytes removed.

    Cut, not ended with a newline: an ended torn line stays in the file as a line that is no
    JSON, which `jq` and pandas choke on long after the run. Its record is lost either way,
    and both readers of these files (resume, users) take a missing record for "no outcome
    yet" / "not journaled", which --resume handles.
    """
    size = os.fstat(fd).st_size
    end = size
    while end > 0:
        start = max(0, end - _CHUNK)
        chunk = os.pread(fd, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            keep = start + newline + 1
            break
        end = start
    else:
        keep = 0
    if keep < size:
        os.ftruncate(fd, keep)
    return size - keep


class GroupSync:
    """fdatasync for an append-only file, shared by concurrent callers (group commit).

    Each request used to pay its own fdatasync, one after another, while holding a request slot;
    with eight requests in flight most of those calls covered the same writes. Here one call
    covers every write noted before it started: a caller whose writes are already covered
    returns at once, otherwise it joins the sync under way or starts the next one.
    """

    def __init__(self, fd: int, *, quiet: bool = False) -> None:
        self._fd = fd
        self._quiet = quiet  # pipes and terminals can't be synced: nothing to do there
        self._written = 0  # writes noted so far
        self._synced = 0  # writes known to be on disk
        self._running: asyncio.Future[None] | None = None

    def wrote(self) -> None:
        self._written += 1

    async def sync(self) -> None:
        target = self._written
        while self._synced < target:
            if self._running is None:
                self._running = asyncio.ensure_future(self._sync_once())
            # Shielded: a caller cancelled while waiting must not cancel the others' sync.
            await asyncio.shield(self._running)

    async def _sync_once(self) -> None:
        covers = self._written
        try:
            await asyncio.to_thread(self.sync_now)
            self._synced = max(self._synced, covers)
        finally:
            self._running = None

    def sync_now(self) -> None:
        try:
            os.fdatasync(self._fd)
        except OSError:
            if not self._quiet:
                raise
