"""The send-rate model: each sending list drains its queue at its rate and drops stale messages.

The real service accepts whatever a client pushes (v2 has no request-rate limit), queues it per
sending list, sends from each list at its send rate (17,000 messages/min unless support changed
it), and silently drops messages that have waited in that queue longer than 30 minutes. A client
that pushes faster than the list's rate for long enough therefore loses messages without any
error: pacing is the client's job, and this model is how a test proves the client does it.

The model keeps one number per list, the time its queue next has a free sending slot. When `n`
messages arrive at time `t`, the first starts at `s = max(t, next_free)` and the k-th (0-based)
at `s + k / rate`; those whose wait `s - t + k / rate` would exceed the stale limit are counted
as dropped. Dropped messages never take a sending slot (the service discards them instead of
sending them), so `next_free` moves on by the kept messages only. That is O(1) per request.
The API response still says `queued` for all of them, as the real one does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypedDict

# Keeps a message that waits exactly the stale limit (up to float rounding) rather than dropping it.
_EPSILON = 1e-9


class ListCounts(TypedDict):
    """One sending list's counters (`requests`: accepted requests that named the list)."""

    queued: int
    rejected: int
    dropped_stale: int
    requests: int


class SendingList:
    """One sending list (a v1 `from_phone_number_id` or a v2 list number): its queue and counts."""

    __slots__ = (
        "dropped_stale",
        "name",
        "next_free",
        "queued",
        "rate_per_s",
        "rejected",
        "requests",
    )

    def __init__(self, name: str, rate_per_min: float) -> None:
        self.name = name
        self.rate_per_s = rate_per_min / 60.0
        self.next_free = 0.0  # monotonic time at which the list's queue next has a free slot
        self.queued = 0
        self.rejected = 0
        self.dropped_stale = 0
        self.requests = 0

    def admit(self, count: int, now: float, stale_after_s: float) -> int:
        """Queue `count` messages arriving at `now`; return how many will be dropped as stale."""
        if count <= 0:
            return 0
        start = max(now, self.next_free)
        headroom = stale_after_s - (start - now)  # how long the first message may still wait
        # Message k (0-based) is kept while k / rate <= headroom.
        kept = 0 if headroom < 0 else min(count, int(headroom * self.rate_per_s + _EPSILON) + 1)
        self.next_free = start + kept / self.rate_per_s
        dropped = count - kept
        self.queued += count
        self.dropped_stale += dropped
        return dropped

    def backlog_s(self, now: float) -> float:
        """How long a message arriving at `now` would wait before it is sent."""
        return max(0.0, self.next_free - now)

    def counters(self) -> ListCounts:
        """The list's counters, as the stats endpoint shows them."""
        return {
            "queued": self.queued,
            "rejected": self.rejected,
            "dropped_stale": self.dropped_stale,
            "requests": self.requests,
        }


class SendRateModel:
    """All configured sending lists, by name, with the stale limit they share."""

    __slots__ = ("lists", "stale_after_s")

    def __init__(
        self,
        names: Iterable[str],
        *,
        rate_per_min: float,
        overrides: Mapping[str, float],
        stale_after_s: float,
    ) -> None:
        self.stale_after_s = stale_after_s
        self.lists: dict[str, SendingList] = {
            name: SendingList(name, overrides.get(name, rate_per_min)) for name in names
        }

    def admit(self, name: str, count: int, now: float) -> int:
        """Queue `count` messages on list `name` at `now`; return the number dropped as stale."""
        return self.lists[name].admit(count, now, self.stale_after_s)
