"""`streamsend emulator`: run the Trackly emulator as a server process.

Settings come from three places, later ones winning: the defaults, a TOML file (`--config`,
the same keys as `EmulatorConfig`, faults in a `[faults]` table, per-list rates in a
`[list_rates_per_min]` table), then the flags. The API key may also come from the
`TRACKLY_API_KEY` environment variable when neither flags nor file give one; keys are never
printed.

What other programs rely on: once the server accepts connections it prints exactly one line
to stderr, `streamsend emulator listening on http://HOST:PORT/api` (with `--port 0`, the port
it got); SIGTERM and SIGINT stop it cleanly with exit status 0; a bad flag or config prints one
`streamsend emulator: error: ...` line and exits 2; failing to listen exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import fields, replace
from pathlib import Path

from streamsend._types import ExitCode
from streamsend._usage import OneLineParser
from streamsend.emulator._app import run_emulator
from streamsend.emulator._config import (
    EmulatorConfig,
    EmulatorConfigError,
    FaultConfig,
    check_config,
    parse_duration_s,
    parse_rate_per_min,
)

PROG = "streamsend emulator"
API_KEY_ENV = "TRACKLY_API_KEY"


def _flag_type(parse: Callable[[str], float]) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            return parse(text)
        except EmulatorConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__  # argparse names the type in its messages
    return convert


def _list_rate(text: str) -> tuple[str, float]:
    name, sep, rate = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LIST=RATE, e.g. pn_abc=600/min")
    try:
        return name, parse_rate_per_min(rate)
    except EmulatorConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser (its --help is the command's documentation)."""
    parser = OneLineParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Serve a local, faithful Trackly SMS API under /api: v1 bulk and single sends and v2\n"
            "bulk, with per-message validation, each sending list's send rate (messages that\n"
            "would wait too long are dropped, as the service does), an optional ledger of every\n"
            "accepted message, seeded fault injection, and counters at GET /_emulator/stats.\n\n"
            "Once it accepts connections it prints one line to stderr:\n"
            "  streamsend emulator listening on http://HOST:PORT/api\n"
            "SIGTERM or Ctrl-C stops it (exit 0)."
        ),
        epilog=(
            "example:\n"
            f"  export {API_KEY_ENV}=trk_...   # keeps the key out of the process list\n"
            "  streamsend emulator --port 8080 --list pn_abc123def456 --v2-list +18005551000 \\\n"
            "      --ledger ledger.ndjson --error-5xx 0.02 --seed 7"
        ),
    )
    serve = parser.add_argument_group("serving")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port; 0 picks a free one (default 0)")
    serve.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help=f"an accepted X-Api-Key (repeatable; default: ${API_KEY_ENV}); never printed",
    )
    serve.add_argument(
        "--list",
        action="append",
        dest="v1_lists",
        metavar="ID",
        help="a v1 sending-list id (from_phone_number_id) that exists, e.g. pn_abc123def456 "
        "(repeatable; default: none)",
    )
    serve.add_argument(
        "--v2-list",
        action="append",
        dest="v2_lists",
        metavar="NUMBER",
        help="a v2 list number (E.164) that exists, e.g. +18005551000 (repeatable; default: none)",
    )
    serve.add_argument(
        "--ledger", type=Path, metavar="PATH", help="append accepted messages here (default: none)"
    )
    serve.add_argument(
        "--config", type=Path, metavar="PATH", help="a TOML file of settings (default: none)"
    )
    serve.add_argument(
        "--tls-cert",
        type=Path,
        metavar="PEM",
        help="serve HTTPS with this certificate (chain); needs --tls-key (default: plain HTTP)",
    )
    serve.add_argument(
        "--tls-key", type=Path, metavar="PEM", help="the key of --tls-cert (default: none)"
    )
    serve.add_argument(
        "--max-in-flight",
        type=int,
        metavar="N",
        help="answer requests beyond N in flight 429 with Retry-After (--retry-after), as a "
        "gateway capping concurrency would (default: no cap)",
    )
    serve.add_argument(
        "--no-validate",
        action="store_false",
        dest="validate",
        default=None,
        help="accept every message as given (per-message validation is on by default)",
    )

    model = parser.add_argument_group("send-rate model")
    model.add_argument(
        "--send-rate",
        type=_flag_type(parse_rate_per_min),
        metavar="RATE",
        help="each list's send rate, e.g. 17000/min (the default) or 300/s",
    )
    model.add_argument(
        "--list-rate",
        type=_list_rate,
        action="append",
        metavar="LIST=RATE",
        help="a send rate for one list, e.g. pn_abc123def456=600/min (repeatable; default: "
        "--send-rate)",
    )
    model.add_argument(
        "--stale-after",
        type=_flag_type(parse_duration_s),
        metavar="TIME",
        help="drop messages that would wait longer than this, e.g. 30m (default), 2s or 90",
    )

    faults = parser.add_argument_group(
        "fault injection",
        "Fractions of requests, drawn from one seeded generator in arrival order.",
    )
    faults.add_argument("--seed", type=int, help="fault generator seed (default 0)")
    fault_flags = {
        "--error-5xx": "answered 500/502/503/504 (nothing queued)",
        "--rate-429": "answered 429 with Retry-After (nothing queued)",
        "--drop-before": "whose connection is closed before anything is queued",
        "--drop-after": "queued, then the connection closed without an answer",
        "--hang": "queued and never answered",
        "--truncated-body": "queued and answered 201 with the body cut off",
        "--gateway-after": "queued, then answered 502/504 (a gateway whose upstream accepted)",
        "--partial-500": "half their messages queued, then answered 500",
    }
    for flag, meaning in fault_flags.items():
        faults.add_argument(
            flag, type=float, metavar="F", help=f"fraction of requests {meaning} (default 0)"
        )
    faults.add_argument(
        "--retry-after",
        type=float,
        metavar="S",
        help="the Retry-After of 429s, seconds (default 1)",
    )
    faults.add_argument(
        "--latency-ms", type=float, metavar="MS", help="added latency, mean (default 0)"
    )
    faults.add_argument(
        "--latency-spread-ms",
        type=float,
        metavar="MS",
        help="latency spread, +/- uniform (default 0)",
    )
    faults.add_argument(
        "--fault-list",
        action="append",
        dest="fault_lists",
        metavar="LIST",
        help="only fault requests for this sending list (repeatable; default: all)",
    )
    return parser


# -- the TOML file ------------------------------------------------------------------------------

_Converter = Callable[[str, object], object]


def _string(key: str, value: object) -> object:
    if not isinstance(value, str):
        raise EmulatorConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _strings(key: str, value: object) -> object:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise EmulatorConfigError(f"{key}: expected a list of strings")
    return tuple(value)


def _number(key: str, value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EmulatorConfigError(f"{key}: expected a number, got {value!r}")
    return float(value)


def _integer(key: str, value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EmulatorConfigError(f"{key}: expected an integer, got {value!r}")
    return value


def _boolean(key: str, value: object) -> object:
    if not isinstance(value, bool):
        raise EmulatorConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def _rate(key: str, value: object) -> object:
    return parse_rate_per_min(value) if isinstance(value, str) else _number(key, value)


def _duration(key: str, value: object) -> object:
    return parse_duration_s(value) if isinstance(value, str) else _number(key, value)


def _path(key: str, value: object) -> object:
    return Path(str(_string(key, value)))


def _rates(key: str, value: object) -> object:
    if not isinstance(value, dict):
        raise EmulatorConfigError(f"{key}: expected a table of list = rate")
    return {str(name): _rate(f"{key}.{name}", rate) for name, rate in value.items()}


_TOP_KEYS: dict[str, _Converter] = {
    "host": _string,
    "port": _integer,
    "api_keys": _strings,
    "v1_lists": _strings,
    "v2_lists": _strings,
    "send_rate_per_min": _rate,
    "list_rates_per_min": _rates,
    "stale_after_s": _duration,
    "ledger_path": _path,
    "validate": _boolean,
    "tls_cert": _path,
    "tls_key": _path,
    "max_in_flight": _integer,
}
_FAULT_KEYS: dict[str, _Converter] = {
    field.name: _number for field in fields(FaultConfig) if field.name not in ("seed", "lists")
}
_FAULT_KEYS |= {"seed": _integer, "lists": _strings}


def _table(key: str, value: object) -> Mapping[str, object]:
    if not isinstance(value, dict):
        raise EmulatorConfigError(f"{key}: expected a table")
    return value


def _convert_table(
    table: Mapping[str, object], known: Mapping[str, _Converter], prefix: str
) -> dict[str, object]:
    converted: dict[str, object] = {}
    for key, value in table.items():
        converter = known.get(key)
        if converter is None:
            raise EmulatorConfigError(
                f"unknown key {prefix + key!r} (known: {', '.join(sorted(known))})"
            )
        converted[key] = converter(prefix + key, value)
    return converted


def load_config_file(path: Path, base: EmulatorConfig) -> EmulatorConfig:
    """`base` with the settings of a TOML file applied; errors name the file and the key."""
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise EmulatorConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise EmulatorConfigError(f"{path}: not valid TOML: {exc}") from None
    # A file may also be a `streamsend send` profile with the emulator's settings in an
    # [emulator] table (configs/emulator.toml is both); then only that table is ours.
    if "emulator" in document:
        document = dict(_table("emulator", document["emulator"]))
    try:
        fault_table = document.pop("faults", {})
        settings = _convert_table(document, _TOP_KEYS, "")
        fault_settings = _convert_table(_table("faults", fault_table), _FAULT_KEYS, "faults.")
    except EmulatorConfigError as exc:
        raise EmulatorConfigError(f"{path}: {exc}") from None
    faults = replace(base.faults, **fault_settings)  # type: ignore[arg-type]
    return replace(base, **settings, faults=faults)  # type: ignore[arg-type]


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> EmulatorConfig:
    """The emulator config the parsed flags (and their config file and environment) describe."""
    config = EmulatorConfig()
    if args.config is not None:
        config = load_config_file(args.config, config)
    top: dict[str, object] = {}
    for name in ("host", "port", "api_keys", "v1_lists", "v2_lists", "validate", "max_in_flight"):
        value = getattr(args, name)
        if value is not None:
            top[name] = tuple(value) if isinstance(value, list) else value
    if args.ledger is not None:
        top["ledger_path"] = args.ledger
    for name in ("tls_cert", "tls_key"):
        if (path := getattr(args, name)) is not None:
            top[name] = path
    if args.send_rate is not None:
        top["send_rate_per_min"] = args.send_rate
    if args.stale_after is not None:
        top["stale_after_s"] = args.stale_after
    if args.list_rate:
        top["list_rates_per_min"] = {**config.list_rates_per_min, **dict(args.list_rate)}
    fault_settings: dict[str, object] = {}
    for name in ("seed", "error_5xx", "rate_429", "drop_before", "drop_after", "hang"):
        if (value := getattr(args, name)) is not None:
            fault_settings[name] = value
    for name, attribute in (
        ("truncated_body", "truncated_body"),
        ("gateway_after", "gateway_after"),
        ("partial_500", "partial_500"),
        ("retry_after_s", "retry_after"),
        ("latency_ms", "latency_ms"),
        ("latency_spread_ms", "latency_spread_ms"),
    ):
        if (value := getattr(args, attribute)) is not None:
            fault_settings[name] = value
    if args.fault_lists:
        fault_settings["lists"] = tuple(args.fault_lists)
    faults = replace(config.faults, **fault_settings)  # type: ignore[arg-type]
    config = replace(config, **top, faults=faults)  # type: ignore[arg-type]
    if not config.api_keys and environ.get(API_KEY_ENV):
        config = replace(config, api_keys=(environ[API_KEY_ENV],))
    return config


# -- running ------------------------------------------------------------------------------------


async def _serve_until_signalled(config: EmulatorConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        async with run_emulator(config) as emulator:
            print(f"{PROG} listening on {emulator.base_url}", file=sys.stderr, flush=True)
            await stop.wait()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def emulator_main(argv: list[str]) -> int:
    """Run `streamsend emulator` with these arguments; return the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    try:
        config = config_from_args(args, os.environ)
        check_config(config)
    except EmulatorConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        asyncio.run(_serve_until_signalled(config))
    except EmulatorConfigError as exc:  # found only when starting, e.g. an unopenable ledger
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except OSError as exc:
        print(
            f"{PROG}: error: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1  # the documented "failing to listen" status of a server process
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were in place
        return ExitCode.OK
    return ExitCode.OK
