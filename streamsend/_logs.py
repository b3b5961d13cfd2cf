"""Structured logs for the whole tool: structlog, to stderr, with every API key redacted.

Promises:
- No Trackly API key reaches the log stream. Every configured secret, and anything shaped like a
  Trackly key (`trk_` and 8 or more letters/digits), is replaced by `trk_***` in every value of
  every event: strings, bytes, nested dicts/lists/tuples/sets, dict keys, arbitrary objects (by
  their text), and exceptions, whose tracebacks are formatted *before* redaction so that the
  rendered text is what gets checked. Records of the standard `logging` module and uncaught
  exceptions go through the same processors, so they are covered too.
- JSON lines (rendered with orjson) when the stream isn't a terminal or `fmt="json"`; structlog's
  console renderer when it is a terminal or `fmt="console"`. Timestamps are ISO 8601 in UTC.
- Logging never raises into the caller because of an odd value: what orjson can't encode is
  encoded by the standard library, with `repr` as the last resort.
- Disabled levels cost almost nothing: the bound loggers come from
  `structlog.make_filtering_bound_logger`, whose methods below the level are no-ops (about
  0.1 µs on a bound logger; about 2 µs through `get_logger()`'s lazy proxy, which binds on
  each call so that it follows reconfiguration: bind once for a hot loop).

`redact()` is the same redaction as a plain function, for error messages that leave the tool by
another road (outcome records, exit messages).

`configure_logging()` is for the command line only: it takes over the process's logging. The
library (`Client`, `open_run`, a `Pipeline` built without a logger) logs through
`library_logger()` instead: the standard `logging` module, logger "streamsend" (or one the
caller passes), silent unless the caller's logging set-up lets its records through.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Literal, TextIO

import orjson
import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from streamsend._exceptions import ConfigError

LogFormat = Literal["auto", "json", "console"]

REDACTED = "trk_***"

#: Generous on purpose: a real key is `trk_` and 32 letters/digits, but a truncated or mistyped
#: key is still a secret worth hiding, and a false positive only costs a few log characters.
KEY_SHAPE = r"trk_[A-Za-z0-9]{8,}"

LEVELS: Mapping[str, int] = {
    "debug": 10,
    "info": 20,
    "warning": 30,
    "error": 40,
    "critical": 50,
}

# Nested values deeper than this are turned into text and redacted as text, so a cyclic or
# absurdly deep structure can't make a log call recurse without end.
_MAX_DEPTH = 12

_CLEAR_LINE = "\r\x1b[K"

# The convention for libraries: records of "streamsend" reach no handler unless the application
# configures one (without it, Python's last-resort handler would print warnings to stderr).
logging.getLogger("streamsend").addHandler(logging.NullHandler())

_ExceptHook = Callable[[type[BaseException], BaseException, TracebackType | None], object]


class SecretRedactor:
    """A structlog processor replacing secrets and key-shaped text with `trk_***` in an event.

    Place it after `format_exc_info` (so formatted tracebacks are covered) and last before the
    renderer (so nothing added later escapes it).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is replaced whole. Empty strings are
        # dropped: they would match everywhere.
        literal = sorted({s for s in secrets if s}, key=len, reverse=True)
        alternatives = [re.escape(s) for s in literal] + [KEY_SHAPE]
        self._pattern = re.compile("|".join(alternatives))
        self._bytes_pattern = re.compile("|".join(alternatives).encode("utf-8"))

    def redact(self, text: str) -> str:
        """`text` with every secret and key-shaped run replaced by `trk_***`."""
        return self._pattern.sub(REDACTED, text)

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        return {self._redact_key(k): self._redact_value(v, 0) for k, v in event_dict.items()}

    def _redact_key(self, key: str) -> str:
        return self._pattern.sub(REDACTED, key) if isinstance(key, str) else key

    def _redact_value(self, value: object, depth: int) -> object:
        # Strings and scalars first: they are nearly every value of nearly every event.
        if isinstance(value, str):
            return self._pattern.sub(REDACTED, value)
        if value is None or isinstance(value, bool | int | float):
            return value
        if depth >= _MAX_DEPTH:
            return self._pattern.sub(REDACTED, repr(value))
        return self._redact_compound(value, depth + 1)

    def _redact_compound(self, value: object, depth: int) -> object:
        if isinstance(value, bytes | bytearray):
            return self._bytes_pattern.sub(REDACTED.encode(), value)
        if isinstance(value, dict):
            return {
                self._redact_value(k, depth): self._redact_value(v, depth) for k, v in value.items()
            }
        if isinstance(value, list | set | frozenset):
            return [self._redact_value(v, depth) for v in value]
        if isinstance(value, tuple) and not hasattr(value, "_fields"):
            return tuple(self._redact_value(v, depth) for v in value)
        # Anything else (an exception passed as a value, a NamedTuple, a custom object) would be
        # rendered through its text, so that text is what must be clean. Objects whose text holds
        # no secret are left alone for the renderer to show as it normally would.
        if isinstance(value, BaseException):
            text = f"{type(value).__name__}: {value}"
        else:
            text = repr(value)
        redacted = self._pattern.sub(REDACTED, text)
        return value if redacted == text else redacted


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every one of `secrets` and anything shaped like a Trackly key as `trk_***`."""
    return SecretRedactor(secrets).redact(text)


def logging_processors(*, secrets: Iterable[str] = ()) -> list[Processor]:
    """The processors every event passes through before it is rendered, redaction last.

    Tests hand these to `structlog.testing.capture_logs(processors=...)` to see events exactly
    as the renderer would.
    """
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        # The traceback must be text before redaction runs: a key can sit in an exception's
        # message or in a frame's source line, and only the formatted text shows both.
        structlog.processors.format_exc_info,
        SecretRedactor(secrets),
    ]


def configure_logging(
    *,
    level: str = "info",
    fmt: LogFormat = "auto",
    secrets: Sequence[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Set logging up for the whole process. Safe to call again (the last call wins).

    Besides structlog, two other roads to stderr are covered, because a key can travel in any
    exception's text: records of the standard `logging` module (asyncio's "Task exception was
    never retrieved", aiohttp's warnings) are rendered by the same processors, redaction
    included; and an uncaught exception is logged as a redacted `uncaught_exception` event
    instead of Python's raw traceback.

    Raises ConfigError for an unknown level or format, naming the accepted values.
    """
    min_level = LEVELS.get(level.lower())
    if min_level is None:
        raise ConfigError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}")
    if fmt not in ("auto", "json", "console"):
        raise ConfigError(f"unknown log format {fmt!r}; use auto, json or console")
    out = stream if stream is not None else sys.stderr
    is_terminal = _is_terminal(out)
    console = fmt == "console" or (fmt == "auto" and is_terminal)

    renderer: Processor
    if console:
        console_renderer = (
            _TerminalConsoleRenderer if is_terminal else structlog.dev.ConsoleRenderer
        )
        renderer = console_renderer(colors=is_terminal)
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_dumps_json)
        if is_terminal:
            renderer = _on_fresh_line(renderer)
    processors = [*logging_processors(secrets=secrets), renderer]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        context_class=dict,
        # Not cached: loggers created at import time must follow a later configure_logging()
        # (the CLI configures once it has parsed its flags; tests reconfigure freely). Hot
        # loops bind once, `log = get_logger(...).bind()`, and then pay nothing per call.
        cache_logger_on_first_use=False,
    )

    handler = logging.StreamHandler(out)
    handler.setLevel(min_level)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[_add_record_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *processors,
            ],
        )
    )
    _install(handler, _log_uncaught)


def reset_logging() -> None:
    """Undo configure_logging(): structlog's defaults, no handler of ours, Python's excepthook."""
    structlog.reset_defaults()
    _install(None, sys.__excepthook__)


_installed_handler: logging.Handler | None = None


def _install(handler: logging.Handler | None, excepthook: _ExceptHook) -> None:
    # Only our own handler is replaced: others on the root logger (pytest's, an embedding
    # application's) are left alone, and so is the root logger's level.
    global _installed_handler  # noqa: PLW0603 - one process-wide logging set-up
    root = logging.getLogger()
    if _installed_handler is not None:
        root.removeHandler(_installed_handler)
    _installed_handler = handler
    if handler is not None:
        root.addHandler(handler)
    sys.excepthook = excepthook


def _log_uncaught(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    get_logger("streamsend").critical("uncaught_exception", exc_info=(exc_type, exc, tb))


def _add_record_name(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    record = event_dict.get("_record")
    if isinstance(record, logging.LogRecord):
        event_dict["logger_name"] = record.name
    return event_dict


def library_logger(target: logging.Logger | None = None) -> FilteringBoundLogger:
    """A structlog logger whose events become records of the standard logger `target`
    ("streamsend" when None), with keys redacted; for streamsend used as a library.

    Nothing is configured globally and nothing goes to stdout: with no logging set up by the
    caller, the NullHandler on "streamsend" keeps even warnings quiet. Whether an event is
    wanted is asked of `target` at each call, so a later `logging.basicConfig()` or
    `setLevel()` takes effect at once.
    """
    target = target if target is not None else logging.getLogger("streamsend")

    def enabled(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        if not target.isEnabledFor(LEVELS.get(method_name, logging.INFO)):
            raise structlog.DropEvent
        return event_dict

    logger: FilteringBoundLogger = structlog.wrap_logger(
        target,
        wrapper_class=structlog.make_filtering_bound_logger(logging.NOTSET),
        processors=[
            enabled,
            structlog.processors.format_exc_info,
            SecretRedactor(),
            _render_for_stdlib,
        ],
        context_class=dict,
    )
    return logger


def _render_for_stdlib(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
    # "event key=value ...": the caller's formatter adds time, level and logger name.
    event = event_dict.pop("event", "")
    return " ".join([str(event), *(f"{key}={value!r}" for key, value in event_dict.items())])


def get_logger(name: str | None = None) -> FilteringBoundLogger:
    """A logger; `name` (usually the module's) is added to its events as `logger_name`.

    The logger follows later `configure_logging()` calls (it binds lazily, on each call).
    """
    if name is None:
        return structlog.get_logger()  # type: ignore[no-any-return]
    # Not `logger=`: that is a parameter of structlog's own wrap_logger.
    return structlog.get_logger(logger_name=name)  # type: ignore[no-any-return]


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or already closed
        return False


class _TerminalConsoleRenderer(structlog.dev.ConsoleRenderer):
    """The console renderer, erasing the terminal's current line first.

    A live progress line (see _progress) has no newline; without the erase, a log line would be
    appended to it. The progress line is redrawn on its next tick.
    """

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        return _CLEAR_LINE + super().__call__(logger, name, event_dict)


def _on_fresh_line(renderer: Processor) -> Processor:
    """`renderer`, erasing the terminal's current line first (see _TerminalConsoleRenderer):
    JSON lines on a terminal would otherwise be glued onto the live progress line."""

    def render(logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        return _CLEAR_LINE + str(renderer(logger, name, event_dict))

    return render


def _dumps_json(obj: object, **kwargs: object) -> str:
    default = kwargs.get("default")
    try:
        return orjson.dumps(
            obj,
            default=default if callable(default) else repr,
            option=orjson.OPT_NON_STR_KEYS,
        ).decode("utf-8")
    except TypeError:
        # orjson refuses a few things the standard library takes (integers over 64 bits,
        # subclassed containers in some cases); a log line is never worth an exception.
        return json.dumps(obj, default=repr, ensure_ascii=False, separators=(",", ":"))


__all__ = [
    "KEY_SHAPE",
    "REDACTED",
    "LogFormat",
    "SecretRedactor",
    "configure_logging",
    "get_logger",
    "library_logger",
    "logging_processors",
    "redact",
    "reset_logging",
]
