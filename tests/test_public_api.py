"""The public API: `streamsend.__all__` is a checked list, every module stays private, and the
records and exceptions keep the shape the README documents.
"""

from __future__ import annotations

import dataclasses
import pkgutil
import re

import pytest

import streamsend
from streamsend import _exceptions, _models

#: The public names. A change here is a change of the library's API: update the README with it.
EXPECTED_ALL = [
    "Batch",
    "Client",
    "ConfigError",
    "Encoding",
    "ExitCode",
    "FatalServiceError",
    "InputError",
    "Journal",
    "LineBlock",
    "LineSource",
    "MaybeSent",
    "Message",
    "NotSent",
    "Outcome",
    "OutcomeSink",
    "Pipeline",
    "RateLimited",
    "RateLimiter",
    "Refused",
    "Run",
    "RunResult",
    "RunStats",
    "SendError",
    "Settings",
    "StatsSnapshot",
    "Status",
    "StreamsendError",
    "Validator",
    "count_segments",
    "load_settings",
    "normalise_phone",
    "open_run",
]


def test_all_is_the_checked_list() -> None:
    """`streamsend.__all__` is exactly the documented public names, sorted, without repeats."""
    assert streamsend.__all__ == EXPECTED_ALL
    assert sorted(set(streamsend.__all__)) == streamsend.__all__


def test_every_export_exists_and_lives_in_a_private_module() -> None:
    """Each exported name resolves, and is defined in a private `streamsend._*` module (the
    package re-exports; it defines nothing itself)."""
    for name in streamsend.__all__:
        obj = getattr(streamsend, name)
        module = getattr(obj, "__module__", "")
        assert module.startswith("streamsend._"), f"{name} is defined in {module!r}"


def test_star_import_gives_exactly_all() -> None:
    """`from streamsend import *` brings in the public names and nothing else."""
    namespace: dict[str, object] = {}
    exec("from streamsend import *", namespace)  # the only way to exercise a star import
    namespace.pop("__builtins__")
    assert sorted(namespace) == EXPECTED_ALL


def test_core_names_in_their_modules() -> None:
    """The pipeline's records and entry points live in the modules the layout names."""
    from streamsend._config import Settings
    from streamsend._models import Message, Outcome, Status
    from streamsend._pipeline import Pipeline

    assert (streamsend.Message, streamsend.Outcome, streamsend.Status) == (Message, Outcome, Status)
    assert (streamsend.Settings, streamsend.Pipeline) == (Settings, Pipeline)


def test_modules_are_private() -> None:
    """Every module of the package is private (`_name`) except the `emulator` subpackage and
    the public test kit `testing`."""
    public = [
        info.name
        for info in pkgutil.iter_modules(streamsend.__path__)
        if not info.name.startswith("_")
    ]
    assert public == ["emulator", "testing"]


def test_status_values_are_the_outcome_file_vocabulary() -> None:
    """The outcomes file holds these eight statuses and nothing else; the final ones are those
    `--resume` never sends again, the deliberate ones those that leave the exit code 0."""
    assert {s.value for s in streamsend.Status} == {
        "queued",
        "rejected",
        "invalid",
        "failed",
        "unknown",
        "suppressed",
        "duplicate",
        "expired",
    }
    assert {s.value for s in _models.FINAL_STATUSES} == {
        "queued",
        "rejected",
        "invalid",
        "suppressed",
        "duplicate",
        "expired",
    }
    assert {s.value for s in _models.DELIBERATE_STATUSES} == {"queued", "suppressed", "duplicate"}


def test_records_are_immutable() -> None:
    """Message, Outcome and Batch can't be changed after they are made."""
    message = streamsend.Message(
        "-", 1, "+14155551234", "pn", b"{}", b"", 1, streamsend.Encoding.GSM7
    )
    outcome = streamsend.Outcome("-", 1, streamsend.Status.QUEUED)
    batch = streamsend.Batch("pn", (message,))
    with pytest.raises(AttributeError):
        message.line = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        outcome.status = streamsend.Status.FAILED  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        batch.sender = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("child", "parent"),
    [
        (_exceptions.ConfigError, _exceptions.StreamsendError),
        (_exceptions.InputError, _exceptions.StreamsendError),
        (_exceptions.SendError, _exceptions.StreamsendError),
        (_exceptions.NotSent, _exceptions.SendError),
        (_exceptions.RateLimited, _exceptions.NotSent),
        (_exceptions.MaybeSent, _exceptions.SendError),
        (_exceptions.Refused, _exceptions.SendError),
        (_exceptions.FatalServiceError, _exceptions.Refused),
    ],
)
def test_exception_tree(child: type[Exception], parent: type[Exception]) -> None:
    """The exception tree drawn in `_exceptions` holds."""
    assert issubclass(child, parent)


def test_not_sent_and_maybe_sent_are_apart() -> None:
    """*Maybe sent* is never a kind of *not sent*: catching NotSent must not catch ambiguity."""
    assert not issubclass(_exceptions.MaybeSent, _exceptions.NotSent)
    assert not issubclass(_exceptions.MaybeSent, _exceptions.Refused)


def test_the_module_map_names_every_module() -> None:
    """`streamsend/__init__.py`'s docstring names each private module of the package, and
    names no module that doesn't exist: the map a newcomer reads matches the files."""
    doc = streamsend.__doc__ or ""
    named = set(re.findall(r"(?<![\w.])(_[a-z]+(?:_[a-z]+)*)\b", doc))
    files = {
        info.name
        for info in pkgutil.iter_modules(streamsend.__path__)
        if info.name.startswith("_") and info.name != "__main__"
    }
    assert named == files
