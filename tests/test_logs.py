"""Logging set-up: formats, level filtering, and that no API key ever reaches a log line."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta

import orjson
import pytest
import structlog
from structlog.testing import capture_logs

from streamsend._exceptions import ConfigError
from streamsend._logs import (
    REDACTED,
    SecretRedactor,
    configure_logging,
    get_logger,
    logging_processors,
    redact,
    reset_logging,
)

KEY = "trk_" + "A1b2C3d4" * 4  # shaped like a real key: trk_ and 32 letters/digits
OTHER_SECRET = "hunter2-not-key-shaped"


class FakeTerminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    reset_logging()


def _json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


# --- formats -------------------------------------------------------------------------------------


def test_json_when_stream_is_not_a_terminal() -> None:
    """Auto format on a non-terminal writes one JSON object per line, with an ISO UTC timestamp."""
    stream = io.StringIO()
    configure_logging(stream=stream)
    get_logger("streamsend.test").info("started", rate=17000, senders=["pn_a"])

    [event] = _json_lines(stream)
    assert event["event"] == "started"
    assert event["level"] == "info"
    assert event["rate"] == 17000
    assert event["senders"] == ["pn_a"]
    assert event["logger_name"] == "streamsend.test"
    timestamp = datetime.fromisoformat(str(event["timestamp"]))
    assert timestamp.utcoffset() == timedelta(0)


def test_console_when_stream_is_a_terminal() -> None:
    """Auto format on a terminal uses the console renderer, first erasing a live progress line."""
    stream = FakeTerminal()
    configure_logging(stream=stream)
    get_logger().warning("pausing", seconds=3)

    text = stream.getvalue()
    assert text.startswith("\r\x1b[K")
    assert "pausing" in text
    assert "seconds" in text
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(text)


def test_forced_json_on_a_terminal() -> None:
    """fmt="json" writes JSON even to a terminal, each line erasing the terminal's current
    line first, so it is never glued onto the live progress line."""
    stream = FakeTerminal()
    configure_logging(fmt="json", stream=stream)
    get_logger().info("hello")

    text = stream.getvalue()
    assert text.startswith("\r\x1b[K{")
    assert orjson.loads(text.removeprefix("\r\x1b[K"))["event"] == "hello"


def test_forced_console_off_a_terminal_has_no_escape_codes() -> None:
    """fmt="console" to a file renders human lines without colours or line erasing."""
    stream = io.StringIO()
    configure_logging(fmt="console", stream=stream)
    get_logger().info("hello", n=1)

    text = stream.getvalue()
    assert "hello" in text
    assert "n=1" in text
    assert "\x1b" not in text


def test_values_orjson_cannot_encode_still_log() -> None:
    """A value orjson refuses (an integer over 64 bits) is logged, not raised."""
    stream = io.StringIO()
    configure_logging(fmt="json", stream=stream)
    get_logger().info("big", n=2**70, thing=object())

    [event] = _json_lines(stream)
    assert event["n"] == 2**70
    assert str(event["thing"]).startswith("<object object")


def test_unknown_level_is_a_config_error() -> None:
    """An unknown level names the accepted ones."""
    with pytest.raises(ConfigError, match="debug, info, warning"):
        configure_logging(level="verbose", stream=io.StringIO())


# --- levels --------------------------------------------------------------------------------------


def test_debug_is_dropped_before_any_processor_at_info() -> None:
    """Below the level, events never reach the processors (the filtering logger drops them)."""
    configure_logging(level="info", stream=io.StringIO())
    log = get_logger()
    with capture_logs() as captured:
        log.debug("request", n=1)
        log.info("kept")
    assert [e["event"] for e in captured] == ["kept"]
    assert not log.bind().is_enabled_for(10)


def test_debug_level_keeps_debug_events() -> None:
    """At level debug, debug events are written."""
    stream = io.StringIO()
    configure_logging(level="DEBUG", stream=stream)
    get_logger().debug("request", n=1)
    assert _json_lines(stream)[0]["level"] == "debug"


def test_logger_made_before_configuration_follows_it() -> None:
    """A module-level logger created at import writes where the later configuration says."""
    log = get_logger("early")
    first, second = io.StringIO(), io.StringIO()
    configure_logging(stream=first)
    log.info("one")
    configure_logging(stream=second)
    log.info("two")
    assert [e["event"] for e in _json_lines(first)] == ["one"]
    assert [e["event"] for e in _json_lines(second)] == ["two"]


# --- redaction -----------------------------------------------------------------------------------


def test_redact_replaces_configured_secrets_and_key_shapes() -> None:
    """redact() hides configured secrets and anything shaped trk_ + 8 or more letters/digits."""
    text = f"key {KEY}, other {OTHER_SECRET}, short trk_abcdefgh, too short trk_abc"
    assert redact(text, [OTHER_SECRET]) == (
        f"key {REDACTED}, other {REDACTED}, short {REDACTED}, too short trk_abc"
    )


def test_redact_ignores_empty_secrets() -> None:
    """An empty configured secret does not turn every position of the text into a match."""
    assert redact("plain text", [""]) == "plain text"


def test_secret_containing_another_is_replaced_whole() -> None:
    """When one secret contains another, the longer one is replaced whole, not in pieces."""
    assert redact("x abcdef-long x", ["abc", "abcdef-long"]) == f"x {REDACTED} x"


def test_key_never_in_captured_events_nested_values() -> None:
    """The key is redacted in the event text, in nested dicts/lists/tuples/sets, keys and bytes."""
    configure_logging(level="debug", secrets=[KEY, OTHER_SECRET], stream=io.StringIO())
    log = get_logger()
    with capture_logs(processors=logging_processors(secrets=[KEY, OTHER_SECRET])) as captured:
        log.debug(
            f"sending with {KEY}",
            headers={"X-Api-Key": KEY, "nested": [("k", KEY), {KEY: OTHER_SECRET}]},
            body=b'{"key": "' + KEY.encode() + b'"}',
            numbers={KEY},
            error=ValueError(f"bad key {KEY}"),
        )
    [event] = captured
    assert KEY not in repr(event)
    assert OTHER_SECRET not in repr(event)
    assert event["event"] == f"sending with {REDACTED}"
    assert event["headers"] == {
        "X-Api-Key": REDACTED,
        "nested": [("k", REDACTED), {REDACTED: REDACTED}],
    }
    assert event["body"] == b'{"key": "' + REDACTED.encode() + b'"}'
    assert event["error"] == f"ValueError: bad key {REDACTED}"


def test_key_never_in_logged_exception() -> None:
    """A traceback logged with exc_info is formatted first, then redacted: message and chain."""
    configure_logging(secrets=[KEY], stream=io.StringIO())
    log = get_logger()
    with capture_logs(processors=logging_processors(secrets=[KEY])) as captured:
        try:
            try:
                raise ConnectionError(f"peer said: invalid key {KEY}")
            except ConnectionError as inner:
                raise RuntimeError(f"request with {KEY} failed") from inner
        except RuntimeError:
            log.exception("request failed")
    [event] = captured
    assert "exc_info" not in event
    text = str(event["exception"])
    assert "ConnectionError" in text
    assert "RuntimeError" in text
    assert KEY not in repr(event)
    assert text.count(REDACTED) >= 2


def test_key_shaped_text_in_traceback_source_lines_is_redacted() -> None:
    """A key literally in the source line shown by a traceback is redacted too."""
    configure_logging(stream=io.StringIO())
    with capture_logs(processors=logging_processors()) as captured:
        try:
            raise ValueError("trk_SourceLineKey12345")  # the traceback quotes this line
        except ValueError:
            get_logger().exception("failed")
    text = str(captured[0]["exception"])
    assert "trk_SourceLineKey12345" not in text
    assert "raise ValueError" in text


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_key_never_in_rendered_output(fmt: str) -> None:
    """What is actually written, JSON or console, holds no key, exceptions included."""
    stream = FakeTerminal() if fmt == "console" else io.StringIO()
    configure_logging(level="debug", fmt="auto", secrets=[OTHER_SECRET], stream=stream)
    log = get_logger("streamsend.sender")
    log.debug("request", headers={"X-Api-Key": KEY}, secret=OTHER_SECRET)
    try:
        raise PermissionError(f"401 for key {KEY} / {OTHER_SECRET}")
    except PermissionError:
        log.exception("refused")
    text = stream.getvalue()
    assert KEY not in text
    assert OTHER_SECRET not in text
    assert "PermissionError" in text
    assert text.count(REDACTED) >= 3


@pytest.mark.parametrize("stream_type", [io.StringIO, FakeTerminal])
def test_redaction_runs_after_exception_formatting_and_last_before_rendering(
    stream_type: type[io.StringIO],
) -> None:
    """In both formats the redactor follows format_exc_info and directly precedes the renderer."""
    configure_logging(stream=stream_type())
    processors = list(structlog.get_config()["processors"])
    redactor = next(i for i, p in enumerate(processors) if isinstance(p, SecretRedactor))
    assert redactor == len(processors) - 2
    assert processors.index(structlog.processors.format_exc_info) < redactor


def test_context_bound_values_are_redacted() -> None:
    """A value bound into the context (merged in by merge_contextvars) is redacted too."""
    stream = io.StringIO()
    configure_logging(stream=stream)
    structlog.contextvars.bind_contextvars(api_key=KEY)
    try:
        get_logger().info("hello")
    finally:
        structlog.contextvars.clear_contextvars()
    [event] = _json_lines(stream)
    assert event["api_key"] == REDACTED


# --- other roads to stderr -----------------------------------------------------------------------


def test_standard_library_records_are_rendered_and_redacted() -> None:
    """A record of the `logging` module (asyncio, aiohttp) is rendered as JSON, redacted,
    with its logger's name and its traceback."""
    stream = io.StringIO()
    configure_logging(fmt="json", stream=stream)
    try:
        raise OSError(f"connection reset while sending {KEY}")
    except OSError:
        logging.getLogger("asyncio").error(
            "Task exception was never retrieved %s", KEY, exc_info=True
        )

    [event] = _json_lines(stream)
    assert event["event"] == f"Task exception was never retrieved {REDACTED}"
    assert event["level"] == "error"
    assert event["logger_name"] == "asyncio"
    assert "OSError: connection reset while sending trk_***" in str(event["exception"])
    assert KEY not in stream.getvalue()


def test_reconfiguring_replaces_the_standard_library_handler() -> None:
    """Configuring twice leaves one handler of ours, writing to the latest stream."""
    first, second = io.StringIO(), io.StringIO()
    configure_logging(fmt="json", stream=first)
    configure_logging(fmt="json", stream=second)
    logging.getLogger("aiohttp.client").warning("once")
    assert first.getvalue() == ""
    assert [e["event"] for e in _json_lines(second)] == ["once"]


def test_reset_removes_the_standard_library_handler() -> None:
    """After reset_logging(), records no longer reach the old stream."""
    stream = io.StringIO()
    configure_logging(fmt="json", stream=stream)
    reset_logging()
    logging.getLogger("asyncio").warning("after reset")
    assert stream.getvalue() == ""
    assert sys.excepthook is sys.__excepthook__


def test_uncaught_exception_is_logged_redacted() -> None:
    """An exception nobody caught is logged as an `uncaught_exception` event, redacted, instead
    of Python's raw traceback."""
    stream = io.StringIO()
    configure_logging(fmt="json", secrets=[OTHER_SECRET], stream=stream)
    try:
        raise KeyError(f"{KEY} and {OTHER_SECRET}")
    except KeyError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)

    [event] = _json_lines(stream)
    assert event["event"] == "uncaught_exception"
    assert event["level"] == "critical"
    assert "KeyError" in str(event["exception"])
    assert KEY not in stream.getvalue()
    assert OTHER_SECRET not in stream.getvalue()
