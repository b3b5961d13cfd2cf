"""--suppress: the opt-out list in every format it comes in, normalised like recipients, and
the compact number set against Python's own set."""

from __future__ import annotations

import gzip
from array import array
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from streamsend._exceptions import ConfigError
from streamsend._suppress import NumberSet, load_suppression

_digits = st.integers(min_value=10_000_000, max_value=999_999_999_999_999)


@settings(max_examples=100, deadline=None)
@given(stored=st.lists(_digits, max_size=300), probes=st.lists(_digits, max_size=50))
def test_number_set_matches_a_python_set(stored: list[int], probes: list[int]) -> None:
    """Membership in the open-addressing table is exactly membership in a set of the numbers,
    duplicates and consecutive runs included."""
    numbers = NumberSet(array("q", stored + [n + 1 for n in stored[:20]]))
    reference = set(stored) | {n + 1 for n in stored[:20]}
    assert len(numbers) == len(reference)
    for n in [*probes, *stored]:
        assert numbers.has_digits(n) == (n in reference)
        assert (f"+{n}" in numbers) == (n in reference)


def test_every_format_and_normalisation(tmp_path: Path) -> None:
    """Plain lines (with formatting and comments), CSV with a phone column, NDJSON, and gzip/
    zstd: every number is read and normalised as recipients are; junk is counted."""
    plain = tmp_path / "stop.txt"
    plain.write_text("# replied STOP\n+14155550001\n1 (415) 555-0002\n\nnot a number\n")
    table = tmp_path / "crm.csv.gz"
    table.write_bytes(gzip.compress(b'name,Phone\nAnn,+14155550003\n"Lee, B",14155550004\n'))
    ndjson = tmp_path / "optout.ndjson.zst"
    lines = b'{"to":"+14155550005"}\n{"msisdn":"+1 415 555 0006"}\n'
    ndjson.write_bytes(zstandard.ZstdCompressor().compress(lines))
    loaded = load_suppression([str(plain), str(table), str(ndjson)])
    for n in range(1, 7):
        assert f"+1415555000{n}" in loaded.numbers
    assert "+14155550007" not in loaded.numbers
    assert loaded.unreadable == 1


def test_a_table_without_a_phone_column_is_refused(tmp_path: Path) -> None:
    """A CSV opt-out list with no recognisable phone column is a usage error naming the file."""
    path = tmp_path / "list.csv"
    path.write_text("name,email\nAnn,a@example.com\n")
    with pytest.raises(ConfigError, match=r"--suppress: .*list\.csv has no phone column"):
        load_suppression([str(path)])


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    """An opt-out list that can't be read stops the run before anything is sent."""
    with pytest.raises(ConfigError, match="--suppress: can't read"):
        load_suppression([str(tmp_path / "nope.txt")])
