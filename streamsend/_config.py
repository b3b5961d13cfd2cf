"""Configuration: defaults < `--config` TOML file < `STREAMSEND_*` environment < command line.

Every key is declared once in `_FIELDS` with its type and range; the file, the environment and
the command line are all checked by the same code, so an error always names the key and where it
came from ("rate in configs/production.toml: ..."). The API key is never a setting: it comes from
TRACKLY_API_KEY or from the file `api_key_file` names, and it is never printed.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from streamsend._exceptions import ConfigError
from streamsend._pacing import DEFAULT_RATE_PER_MIN, UNLIMITED, format_rate, parse_rate
from streamsend._types import ApiVersion

DEFAULT_BASE_URL = "https://app.tracklysms.com/api"

#: --dedupe-window's default: two generations of it are about 60 MiB of peak RSS at most
#: (about 120 bytes a message with the allocator's slack; see _dedupe).
DEDUPE_WINDOW = 1 << 18

API_KEY_ENV = "TRACKLY_API_KEY"
_KEY_SHAPE = re.compile(r"trk_[A-Za-z0-9]{32}")


def parse_duration(text: str) -> float:
    """'30s', '250ms', '5m' or a bare number of seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 30s, 250ms or 5m")
    return float(match[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match[2] or "s"]


@dataclass(frozen=True, slots=True)
class Settings:
    """The effective configuration of one `streamsend send` run."""

    base_url: str = DEFAULT_BASE_URL
    api_version: ApiVersion = "v1"
    sender: str | None = None  # --from: v1 from_phone_number_id / v2 list_number
    batch_size: int = 1000
    linger_ms: float = 250.0
    concurrency: int | Literal["auto"] = "auto"  # auto: adapted to the service's answers
    max_concurrency: int = 32  # the most requests in flight "auto" may reach
    # Messages per second per sender; None: unpaced (`--rate unlimited`). The default is the
    # service's own default send rate: faster, messages wait in its queue and go stale.
    rate: float | None = DEFAULT_RATE_PER_MIN / 60
    sender_rates: Mapping[str, float] = field(default_factory=dict)
    timeout: float = 30.0
    retries: int = 5
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    resend_unknown: bool = False
    drain_timeout: float = 30.0
    give_up_after: float = 300.0  # seconds a sending number's service may be down: then exit 3
    max_line_bytes: int = 64 * 1024
    max_buffered: int = 10_000
    outcomes: str = "-"
    journal: str | None = None  # default: OUTCOMES.journal when outcomes is a file
    fsync: Literal["request", "off"] = "request"
    api_key_file: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    metrics_port: int | None = None
    progress_interval: float = 5.0
    redis: str | None = None  # the Redis of `enqueue`, `worker`, `collect`, `job`
    # Campaign input (see _formats, _csv_source, _template).
    input_format: Literal["ndjson", "csv", "tsv"] | None = None  # None: by extension / content
    to_column: str | None = None
    body_column: str | None = None
    ref_column: str | None = None
    template: str | None = None
    template_file: str | None = None
    # Which lines go (see _suppress, _dedupe, _expiry).
    suppress: tuple[str, ...] = ()  # opt-out list files
    dedupe: Literal["message", "recipient", "off"] = "message"
    dedupe_window: int = DEDUPE_WINDOW  # distinct messages remembered at least
    skip_sent: tuple[str, ...] = ()  # earlier runs' outcome files
    expire_after: float | None = None  # seconds from reading a line
    # None: the proxy HTTPS_PROXY & co. name (see `_dispatch.proxy_for`); "": connect directly.
    proxy: str | None = None
    ca_bundle: str | None = None  # PEM CAs trusted besides the system's (a private CA)
    metrics_host: str = "127.0.0.1"  # where metrics_port listens

    @property
    def fixed_concurrency(self) -> int | None:
        """The number of requests in flight `concurrency` fixes; None when it adapts (auto)."""
        return None if self.concurrency == "auto" else self.concurrency

    @property
    def most_in_flight(self) -> int:
        """The most requests that can ever be in flight at once."""
        return self.max_concurrency if self.concurrency == "auto" else self.concurrency

    def rate_for(self, sender: str) -> float | None:
        return self.sender_rates.get(sender, self.rate)

    @property
    def journal_path(self) -> str | None:
        if self.journal is not None:
            return self.journal
        if self.outcomes == "-" or not _regular_or_absent(self.outcomes):
            # Beside /dev/null or a pipe there is no file to put one in (and no outcomes to
            # resume from): the run says so at start instead of writing /dev/null.journal.
            return None
        return self.outcomes + ".journal"

    def redacted(self) -> dict[str, object]:
        """The settings as a dict for `config show` and the start log (no secret is in here)."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = dict(value) if isinstance(value, Mapping) else value
        return out


def _regular_or_absent(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True  # it will be created as a regular file
    except OSError:
        return True  # opening it will say what is wrong


def _int_in(lo: int, hi: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, str):
            value = value.strip()
            if not re.fullmatch(r"-?\d+", value):
                raise ValueError(f"{value!r} is not a whole number")
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {type(value).__name__}")
        if not lo <= value <= hi:
            raise ValueError(f"{value} is out of range ({lo} to {hi})")
        return value

    return parse


def _float_in(lo: float, hi: float, *, duration: bool = False) -> Callable[[object], float]:
    def parse(value: object) -> float:
        if isinstance(value, str):
            value = parse_duration(value) if duration else float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {type(value).__name__}")
        if not lo <= float(value) <= hi:
            raise ValueError(f"{value} is out of range ({lo:g} to {hi:g})")
        return float(value)

    return parse


def _ms_in(lo: float, hi: float) -> Callable[[object], float]:
    def parse(value: object) -> float:
        if isinstance(value, str) and not re.fullmatch(r"\s*\d+(\.\d+)?\s*", value):
            value = parse_duration(value) * 1000
        return _float_in(lo, hi)(value)

    return parse


def _choice(*options: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if not isinstance(value, str) or value not in options:
            raise ValueError(f"{value!r} is not one of {', '.join(options)}")
        return value

    return parse


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    return value


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in (
        "1",
        "true",
        "yes",
        "on",
        "0",
        "false",
        "no",
        "off",
    ):
        return value.lower() in ("1", "true", "yes", "on")
    raise ValueError(f"{value!r} is not true or false")


def _rate(value: object) -> float | None:
    if value == UNLIMITED:
        return None
    if not isinstance(value, str):
        # A TOML number has no unit, and 600 means 600/s to one reader and 600/min to another.
        raise ValueError(
            f'{value!r} has no unit: write a string like "{value}/min" or "{value}/s", '
            f'or "{UNLIMITED}"'
        )
    return parse_rate(value)


def _concurrency(value: object) -> int | Literal["auto"]:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return _int_in(1, 256)(value)
    except ValueError as exc:
        raise ValueError(f"{exc}; expected auto or a whole number of requests") from None


def _sender_rates(value: object) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise ValueError("expected a table of sender = rate")
    rates: dict[str, float] = {}
    for sender, rate in value.items():
        parsed = _rate(rate)
        if parsed is None:
            raise ValueError(f"sender {sender!r}: a rate is required")
        rates[str(sender)] = parsed
    return rates


def _proxy(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a proxy URL like http://proxy:3128, got {type(value).__name__}")
    text = value.strip()
    if text.lower() in ("", "none", "direct"):
        return ""  # explicitly no proxy, whatever HTTPS_PROXY says
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "http", text  # curl reads a bare host:port as an HTTP proxy
    if scheme.lower() not in ("http", "https") or not re.match(r"^[^\s/]+", rest):
        raise ValueError(f"{text!r} is not a proxy URL like http://proxy:3128 (or none)")
    return text


def _paths(value: object) -> tuple[str, ...]:
    """File names: a list (TOML, repeated flags) or one string, comma-separated (environment)."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(p, str) for p in items):
        raise ValueError("expected a list of file names")
    paths = tuple(p.strip() for p in items if p.strip())
    if not paths:
        raise ValueError("expected at least one file name")
    return paths


def _url(value: object) -> str:
    text = _text(value)
    if not re.match(r"^https?://[^\s/]+", text):
        raise ValueError(f"{text!r} is not an http(s) URL")
    return text.rstrip("/")


def _redis_url(value: object) -> str:
    text = _text(value).strip()
    if not re.match(r"^(redis|rediss|unix)://", text):
        raise ValueError(f"{text!r} is not a Redis URL (redis://HOST:PORT, rediss://, unix://PATH)")
    return text


_FIELDS: dict[str, Callable[[Any], Any]] = {
    "base_url": _url,
    "api_version": _choice("v1", "v2"),
    "sender": _text,
    "batch_size": _int_in(1, 1000),
    "linger_ms": _ms_in(0, 60_000),
    "concurrency": _concurrency,
    "max_concurrency": _int_in(1, 256),
    "rate": _rate,
    "sender_rates": _sender_rates,
    "timeout": _float_in(0.1, 600, duration=True),
    "retries": _int_in(0, 100),
    "backoff_base": _float_in(0, 60, duration=True),
    "backoff_cap": _float_in(0, 3600, duration=True),
    "resend_unknown": _bool,
    "drain_timeout": _float_in(0, 3600, duration=True),
    "give_up_after": _float_in(0.1, 7 * 86400, duration=True),
    "max_line_bytes": _int_in(64, 64 * 1024 * 1024),
    "max_buffered": _int_in(1, 1_000_000),
    "outcomes": _text,
    "journal": _text,
    "fsync": _choice("request", "off"),
    "api_key_file": _text,
    "log_level": _choice("debug", "info", "warning", "error"),
    "log_format": _choice("auto", "json", "console"),
    "metrics_port": _int_in(0, 65535),
    "progress_interval": _float_in(0.1, 3600, duration=True),
    "redis": _redis_url,
    "input_format": _choice("ndjson", "csv", "tsv"),
    "to_column": _text,
    "body_column": _text,
    "ref_column": _text,
    "template": _text,
    "template_file": _text,
    "suppress": _paths,
    "dedupe": _choice("message", "recipient", "off"),
    "dedupe_window": _int_in(1, 1 << 30),
    "skip_sent": _paths,
    "expire_after": _float_in(0.001, 365 * 86400, duration=True),
    "proxy": _proxy,
    "ca_bundle": _text,
    "metrics_host": _text,
}
# Friendlier spellings accepted in files and the environment.
_ALIASES = {"from": "sender", "rates": "sender_rates", "format": "input_format"}


#: Keys a TOML file must give as TOML integers or booleans: `concurrency = "4"` is a mistake
#: worth naming (quoted numbers often come from templating), though the environment, where
#: every value is text, may spell them as strings.
_TOML_INTEGERS = {
    "batch_size", "concurrency", "retries", "max_line_bytes", "max_buffered", "metrics_port",
}  # fmt: skip
_TOML_BOOLEANS = {"resend_unknown"}
#: What users call a field (in files, messages and `config show`), where it differs.
USER_NAMES = {"sender_rates": "rates"}
CONFIG_ENV = "STREAMSEND_CONFIG"


@dataclass(frozen=True, slots=True)
class _Source:
    """Where values come from: how an error names a key, and what `config show` says."""

    kind: Literal["file", "env", "flag"]
    where: str = ""  # the file's path
    lines: tuple[str, ...] = ()  # the file's text, to find a key's line

    def name(self, raw_key: str) -> str:
        if self.kind == "flag":
            return "--" + raw_key.replace("_", "-")
        if self.kind == "env":
            return "STREAMSEND_" + raw_key.upper()
        return f"{raw_key} in {self.where}"

    def origin(self, raw_key: str) -> str:
        if self.kind != "file":
            return self.name(raw_key)
        pattern = re.compile(
            rf'^\s*(?:"?{re.escape(raw_key)}"?\s*=|\[\s*"?{re.escape(raw_key)}"?\s*\])'
        )
        for number, line in enumerate(self.lines, 1):
            if pattern.match(line):
                return f"{self.where}:{number}"
        return self.where


def _apply(
    settings: Settings,
    values: Mapping[str, object],
    source: _Source,
    origins: dict[str, str],
) -> Settings:
    changes: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = _ALIASES.get(raw_key, raw_key)
        parser = _FIELDS.get(key)
        if parser is None:
            known = ", ".join(sorted(USER_NAMES.get(k, k) for k in _FIELDS))
            what = (
                f"unknown setting {source.name(raw_key)} in the environment"
                if source.kind == "env"
                else f"unknown key {raw_key!r} in {source.where or 'the command line'}"
            )
            raise ConfigError(f"{what} (known keys: {known})")
        try:
            if source.kind == "file":
                _check_toml_type(key, value)
            changes[key] = parser(value)
        except ValueError as exc:
            raise ConfigError(f"{source.name(raw_key)}: {exc}") from None
        origins[key] = source.origin(raw_key)
        _remember_rates_as_written(key, value, origins)
    return replace(settings, **changes)


def _remember_rates_as_written(key: str, value: object, origins: dict[str, str]) -> None:
    # `config show` prints a rate as it was written ("6000/min", not "100/s"); kept beside the
    # origins as "=rate" and "=rates.SENDER" entries.
    if key == "rate" and isinstance(value, str):
        origins["=rate"] = value.strip()
    elif key == "sender_rates" and isinstance(value, Mapping):
        for sender, rate in value.items():
            if isinstance(rate, str):
                origins[f"=rates.{sender}"] = rate.strip()


def _check_toml_type(key: str, value: object) -> None:
    # Only quoted numbers: a word such as concurrency = "auto" is for the key's own parser.
    quoted_number = isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+(\.\d*)?\s*", value)
    if quoted_number and key in _TOML_INTEGERS:
        raise ValueError(f"expected a whole number, got the string {value!r} (drop the quotes)")
    if isinstance(value, str) and key in _TOML_BOOLEANS:
        raise ValueError(f"expected true or false, got the string {value!r} (drop the quotes)")


def load_settings(
    *,
    config_path: str | None = None,
    env: Mapping[str, str] | None = None,
    cli: Mapping[str, object] | None = None,
) -> Settings:
    """Build the effective settings; raises ConfigError naming the key and its source."""
    return resolve_settings(config_path=config_path, env=env, cli=cli)[0]


def resolve_settings(
    *,
    config_path: str | None = None,
    env: Mapping[str, str] | None = None,
    cli: Mapping[str, object] | None = None,
) -> tuple[Settings, dict[str, str]]:
    """The effective settings, and where each value not left at its default came from: the
    flag (`--rate`), the environment variable (`STREAMSEND_RATE`) or the file (`path:line`).

    The config file is `config_path` (--config) or else the file STREAMSEND_CONFIG names.
    """
    settings = Settings()
    origins: dict[str, str] = {}
    environ = os.environ if env is None else env
    if config_path is None and environ.get(CONFIG_ENV):
        config_path = environ[CONFIG_ENV]
    if config_path is not None:
        # Imported here: ~6 ms of CPU (its parser builds a dozen regexes) that a run without a
        # config file, the usual one, needn't pay (tests/test_startup.py).
        import tomllib

        try:
            with open(config_path, "rb") as file:
                raw = file.read()
            data = tomllib.loads(raw.decode("utf-8"))
        except OSError as exc:
            raise ConfigError(f"can't read config file {config_path}: {exc.strerror}") from None
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{config_path} is not valid TOML: {exc}") from None
        data.pop("emulator", None)  # the emulator's own table, read by `streamsend emulator`
        source = _Source("file", config_path, tuple(raw.decode("utf-8").splitlines()))
        settings = _apply(settings, data, source, origins)
    from_env = {
        name[len("STREAMSEND_") :].lower(): value
        for name, value in sorted(environ.items())
        if name.startswith("STREAMSEND_") and name != CONFIG_ENV
    }
    settings = _apply(settings, from_env, _Source("env"), origins)
    if cli:
        given = {k: v for k, v in cli.items() if v is not None}
        settings = _apply(settings, given, _Source("flag"), origins)
    if settings.backoff_cap < settings.backoff_base:
        raise ConfigError("backoff_cap must not be below backoff_base")
    return settings, origins


def settings_as_toml(settings: Settings, origins: Mapping[str, str]) -> str:
    """The settings as a TOML file that loads back to the same settings, each value with where
    it came from as a comment (`origins` from `resolve_settings`; "default" when absent), and
    rates as a person writes them."""
    rows: list[tuple[str, str]] = []
    tables: list[str] = []
    for f in fields(Settings):
        name = USER_NAMES.get(f.name, f.name)
        value = getattr(settings, f.name)
        origin = origins.get(f.name, "default")
        if isinstance(value, Mapping):
            if value:
                tables.append(f"\n[{name}]  # {origin}")
                for sender, rate in value.items():
                    written = origins.get(f"=rates.{sender}") or format_rate(rate)
                    tables.append(f"{_toml_string(sender)} = {_toml_string(written)}")
            else:
                rows.append((f"# [{name}] (none)", origin))
        elif f.name == "rate":
            written = origins.get("=rate") or format_rate(value)
            rows.append((f"{name} = {_toml_string(written)}", origin))
        elif value is None or value == ():
            rows.append((f"# {name} (not set)", origin))
        else:
            rows.append((f"{name} = {_toml_value(value)}", origin))
    width = max(len(text) for text, _ in rows) + 2
    lines = [f"{text:<{width}}# {origin}" for text, origin in rows]
    return "\n".join(lines + tables) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return _toml_string(str(value))


def _toml_string(text: str) -> str:
    # A JSON string is a TOML basic string (same quotes and escapes, `\uXXXX` included).
    return json.dumps(text, ensure_ascii=False)


def load_api_key(settings: Settings, env: Mapping[str, str] | None = None) -> str:
    """The API key from TRACKLY_API_KEY or `api_key_file`; a clear error (without it) otherwise."""
    environ = os.environ if env is None else env
    key = environ.get(API_KEY_ENV)
    where = f"the environment variable {API_KEY_ENV}"
    if not key and settings.api_key_file:
        try:
            with open(settings.api_key_file, encoding="utf-8") as file:
                key = file.read().strip()
        except OSError as exc:
            raise ConfigError(
                f"can't read api_key_file {settings.api_key_file}: {exc.strerror}"
            ) from None
        where = f"api_key_file {settings.api_key_file}"
    if not key:
        raise ConfigError(
            f"no API key: set {API_KEY_ENV}, or name a key file with api_key_file in the config"
        )
    return check_api_key(key, where)


def check_api_key(key: str, where: str) -> str:
    """`key` stripped, if it is shaped like a Trackly key; a ConfigError naming `where` if not
    (a placeholder such as `trk_...` is refused here, not by the service mid-run)."""
    key = key.strip()
    if not _KEY_SHAPE.fullmatch(key):
        # Never echo the value: a mistyped key is still mostly a secret.
        raise ConfigError(
            f"the API key in {where} is not shaped like a Trackly key "
            "(trk_ followed by 32 letters or digits)"
        )
    return key
