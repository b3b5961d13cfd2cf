"""The emulator's per-message validation: the whole-request fast path agrees with the reference.

The fast path exists for speed only; these properties pin it to the one-by-one reference path on
generated requests that mix valid messages with every kind of near-miss.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from streamsend.emulator._validation import (
    check_v1_messages,
    check_v1_one_by_one,
    check_v2_messages,
    check_v2_one_by_one,
    normalise_v1_phone,
)
from streamsend.testing import V2_LIST

LISTS = frozenset({V2_LIST, "+18005552000"})

valid_numbers = st.from_regex(r"\+[1-9][0-9]{7,14}", fullmatch=True)
phones = st.one_of(
    valid_numbers,
    valid_numbers,  # weighted: most requests are all valid
    valid_numbers.map(lambda n: n + "\n+14155551234"),  # two numbers in one string
    valid_numbers.map(lambda n: n[:4] + " " + n[4:]),
    st.from_regex(r"1[0-9]{10}", fullmatch=True),
    st.sampled_from(["", "555", "+0123456789", "+1234567", "+١٤١٥٥٥٥١٢٣٤", "+14155551234 "]),
    st.none(),
    st.integers(),
)
bodies = st.one_of(
    st.text(min_size=1, max_size=40),
    st.sampled_from(["", "x" * 1600, "x" * 1601, "😀" * 1600]),
    st.none(),
    st.integers(),
)
list_numbers = st.one_of(
    st.sampled_from(sorted(LISTS)),
    st.sampled_from(["+18005559999", "18005551000", ""]),
    st.none(),
    st.just(["unhashable"]),
)


def with_fields(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Message objects with each field present or absent, plus the odd non-object."""
    present = st.fixed_dictionaries({}, optional=fields)
    return st.one_of(present, present, present, st.sampled_from([7, "text", None, []]))


v1_messages = st.lists(with_fields(to_msisdn=phones, to=phones, body=bodies), min_size=1)
v2_messages = st.lists(with_fields(to=phones, list_number=list_numbers, body=bodies), min_size=1)
all_valid_v1 = st.lists(
    st.fixed_dictionaries({"to_msisdn": valid_numbers, "body": st.text(min_size=1)}), min_size=1
)


@given(v1_messages)
def test_v1_fast_path_agrees_with_reference(messages: list[Any]) -> None:
    """check_v1_messages gives exactly what the one-by-one reference gives, for any request."""
    assert check_v1_messages(messages) == check_v1_one_by_one(messages)


@given(v2_messages)
def test_v2_fast_path_agrees_with_reference(messages: list[Any]) -> None:
    """check_v2_messages gives exactly what the one-by-one reference gives, for any request."""
    assert check_v2_messages(messages, LISTS) == check_v2_one_by_one(messages, LISTS)


@given(all_valid_v1)
def test_valid_v1_requests_are_accepted_whole(messages: list[dict[str, str]]) -> None:
    """A request of only valid messages is accepted in full, in order, with no errors."""
    accepted = check_v1_messages(messages)
    assert accepted.errors == []
    assert accepted.tos == [m["to_msisdn"] for m in messages]
    assert accepted.bodies == [m["body"] for m in messages]


@given(valid_numbers)
def test_normalised_numbers_are_fixed_points(number: str) -> None:
    """An E.164 number normalises to itself, also when written with spaces, dots and brackets."""
    assert normalise_v1_phone(number) == number
    assert normalise_v1_phone(f"{number[:3]} ({number[3:6]}) {number[6:]}") == number
    assert normalise_v1_phone(f"{number[:2]}.{number[2:5]}-{number[5:]}") == number
