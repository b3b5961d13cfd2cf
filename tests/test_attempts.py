"""The attempt loop's backoff (`streamsend._attempts.Backoff`): full jitter within its bounds.

The attempt loop's behaviour under each answer is checked end to end over loopback HTTP in
test_delivery_e2e.py and test_exceptions.py.
"""

from __future__ import annotations

import random
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from streamsend._attempts import Backoff, next_probe_in

# -- backoff -----------------------------------------------------------------------------------


@given(
    base=st.floats(min_value=0, max_value=60),
    extra=st.floats(min_value=0, max_value=3600),
    retry_number=st.integers(min_value=0, max_value=5000),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_backoff_stays_within_full_jitter_bounds(
    base: float, extra: float, retry_number: int, seed: int
) -> None:
    """Full jitter: every delay lies in [0, min(cap, base·2ⁿ)], for any retry number."""
    cap = base + extra
    backoff = Backoff(base=base, cap=cap)
    delay = backoff.delay(retry_number, random.Random(seed))
    bound = min(Fraction(cap), Fraction(base) * 2**retry_number)  # exact: no float overflow
    assert delay >= 0
    assert Fraction(delay) <= bound


def test_backoff_grows_until_the_cap() -> None:
    """The upper bound doubles per retry, then holds at the cap (seen through the jitter's max)."""

    class Highest(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    backoff = Backoff(base=0.5, cap=5.0)
    delays = [backoff.delay(n, Highest()) for n in range(6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


# -- outages: the next probe ---------------------------------------------------------------------


@given(
    pause=st.floats(min_value=0, max_value=3600),
    retry_after=st.none() | st.floats(min_value=0, max_value=3600),
    until_give_up=st.floats(min_value=-10, max_value=3600),
)
def test_the_next_probe_never_comes_after_the_give_up_deadline(
    pause: float, retry_after: float | None, until_give_up: float
) -> None:
    """A sending number in an outage waits its backoff pause, at least a 503's Retry-After, but
    never past --give-up-after: the run gives up when the user said, not a backoff cap later
    (with `--give-up-after 8s` it used to give up after 14 s)."""
    wait = next_probe_in(pause, retry_after, until_give_up)
    assert 0 <= wait <= max(0.0, until_give_up)
    wanted = pause if retry_after is None else max(pause, retry_after)
    if wanted <= until_give_up:
        assert wait == wanted
    else:
        assert wait == max(0.0, until_give_up)
