"""The command line: `streamsend COMMAND ...`, a table of commands each parsing its own flags.

Every command is a `*_main(argv) -> int` function; `main` picks one from `COMMANDS` and is the
last line of defence around it: a user error (a bad flag, config value, input path or key) ends
as one line on stderr and exit 2, an unexpected error as one line and exit 70; no traceback
reaches a user. The exit codes are `ExitCode`'s (0 every line queued, 1 the run finished but
some lines were not queued, 2 usage or config error, 3 aborted by a fatal service answer, 70
stopped by an unexpected error such as a full disk, 130 stopped by a signal after draining).
"""

from __future__ import annotations

import argparse
import gc
import os
import stat
import sys
from collections.abc import Callable, Sequence

from streamsend._exceptions import ConfigError, InputError
from streamsend._types import ExitCode
from streamsend._usage import OneLineParser, add_setting_arguments

_SEND_EPILOG = """\
The API key is read from the environment variable TRACKLY_API_KEY (or the file named by
api_key_file in the config); it is never taken on the command line.

Settings come from, highest first: these flags, STREAMSEND_<KEY> environment variables (e.g.
STREAMSEND_RATE=17000/min), the --config TOML file, the defaults. `streamsend config show` prints
the result.

Outcomes: one JSON object per non-blank input line with `status` queued | rejected | invalid |
failed | unknown | suppressed | duplicate | expired. `unknown` means the request may have been
accepted (the answer was lost): such lines are not resent unless you pass --resend-unknown.

Exit codes: 0 all queued (or suppressed/duplicate); 1 finished, some not queued; 2 usage/config
error; 3 aborted by a fatal service answer (bad key, suspended account, unknown sending list) or
an outage longer than --give-up-after (rerun with --resume once the service is back); 70
stopped by an unexpected error (e.g. a full disk: rerun with --resume); 130 stopped by a signal.
"""


def _send_parser(
    prog: str = "streamsend send",
    description: str = 'Stream NDJSON lines ({"to_msisdn": ..., "body": ..., "ref": ...}), '
    "or CSV/TSV records (gzip and zstd too), from files or stdin to the Trackly bulk API, "
    "writing one outcome per line.",
) -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=prog,
        description=description,
        epilog=_SEND_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "inputs", nargs="*", metavar="INPUT", help="NDJSON, CSV or TSV files; - is stdin (default)"
    )
    add_setting_arguments(p, "config")
    p.add_argument(
        "--emulator",
        action="store_true",
        help="start the built-in Trackly emulator in-process and send to it "
        "(a rehearsal: nothing leaves this machine)",
    )
    p.add_argument("--base-url", help="API base URL (default https://app.tracklysms.com/api)")
    add_setting_arguments(p, "api_version", "sender")
    p.add_argument("--outcomes", metavar="PATH", help="append outcomes here (default stdout)")
    p.add_argument(
        "--journal",
        metavar="PATH",
        help="write-ahead journal (default OUTCOMES.journal when --outcomes is a file)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an earlier run with the same input and --outcomes: skip lines "
        "with a final outcome, resend failed ones, report in-flight ones unknown",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start anew even though --outcomes already holds outcomes (resends all)",
    )
    p.add_argument(
        "--resend-unknown",
        action="store_true",
        default=None,
        help="at-least-once: resend messages that may already have been accepted",
    )
    p.add_argument("--batch-size", type=int, help="messages per request, 1-1000 (default 1000)")
    p.add_argument(
        "--linger-ms",
        type=float,
        help="send a partly filled batch this long after its first message (default 250)",
    )
    p.add_argument(
        "--concurrency",
        help="requests in flight: auto (default) adapts to the service's latency and 429/503 "
        "answers; a number fixes it",
    )
    p.add_argument(
        "--max-concurrency", type=int, help="the most requests in flight auto reaches (default 32)"
    )
    p.add_argument(
        "--rate",
        help="messages per sending number, with a unit: 17000/min (the default: the "
        "service's own send rate per sending list), 300/s; `unlimited` opts out of pacing",
    )
    p.add_argument("--timeout", help="seconds per request attempt (default 30)")
    p.add_argument(
        "--retries",
        type=int,
        help="retries of a request after a 429 (default 5); while the service is down or "
        "unreachable (5xx, no connection), requests wait and probe until --give-up-after",
    )
    p.add_argument(
        "--give-up-after",
        metavar="DURATION",
        help="stop (exit 3) when a sending number's service has been down or unreachable this "
        "long; lines not sent get no outcome, --resume sends them (default 5m)",
    )
    p.add_argument(
        "--drain-timeout",
        help="on SIGTERM/SIGINT, wait this long for requests in flight (default 30s)",
    )
    add_setting_arguments(p, "max_line_bytes")
    p.add_argument(
        "--fsync",
        choices=("request", "off"),
        help="request (default): journal and outcomes reach the disk before each "
        "request is sent / marked done; off: leave it to the OS",
    )
    p.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), help="(default info)"
    )
    p.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        help="auto (default): console on a terminal, JSON lines otherwise",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics and /healthz on this port (default: none, no metrics)",
    )
    p.add_argument(
        "--metrics-host",
        metavar="ADDRESS",
        help="the address --metrics-port listens on, e.g. 0.0.0.0 for a scraper on another "
        "host (default 127.0.0.1)",
    )
    # Imported here: the campaign stage (dedupe, suppression, CSV) is ~0.1 s of imports that
    # `streamsend --help` and `config show` don't need (tests/test_startup.py).
    from streamsend._campaign import add_input_arguments, add_sorting_arguments

    add_input_arguments(p)
    add_sorting_arguments(p)
    p.add_argument(
        "--proxy",
        metavar="URL",
        help="reach the API through this HTTP proxy, e.g. http://proxy:3128; none: directly "
        "(default: HTTPS_PROXY / HTTP_PROXY / ALL_PROXY, minus NO_PROXY, as curl does)",
    )
    p.add_argument(
        "--ca-bundle",
        metavar="PEM",
        help="also trust the CA certificates in this file, e.g. a private CA (default: only "
        "the system's, or SSL_CERT_FILE's)",
    )
    return p


def _cli_values(args: argparse.Namespace) -> dict[str, object]:
    from streamsend._campaign import INPUT_SETTINGS, SORTING_SETTINGS

    names = (
        "base_url",
        "api_version",
        "sender",
        "outcomes",
        "journal",
        "resend_unknown",
        "batch_size",
        "linger_ms",
        "concurrency",
        "max_concurrency",
        "rate",
        "timeout",
        "retries",
        "drain_timeout",
        "give_up_after",
        "max_line_bytes",
        "fsync",
        "log_level",
        "log_format",
        "metrics_port",
        "metrics_host",
        *INPUT_SETTINGS,
        *SORTING_SETTINGS,
        "proxy",
        "ca_bundle",
    )
    return {name: getattr(args, name, None) for name in names}


def send_main(argv: Sequence[str]) -> int:
    """`streamsend send`: stream NDJSON inputs to the Trackly bulk API, one outcome per line."""
    # Every message is a few GC-tracked tuples that live for milliseconds and form no cycles, so
    # the default generation-0 threshold (700 allocations) runs a collection every few hundred
    # messages for nothing; measured on 1M lines, a higher threshold saves ~10% of client CPU.
    # Set before the imports below (the campaign stage, aiohttp, structlog): they allocate tens
    # of thousands of long-lived objects, and the default thresholds ran ~80 collections over
    # them, ~25 ms of a one-line send's CPU; they are frozen once imported (gc.freeze below).
    gc.set_threshold(100_000, 50, 100)
    # Imported here, not at the top: the settings (a dataclass of 45 fields, the JSON module)
    # are ~10 ms of CPU that `streamsend --help` needn't pay (tests/test_startup.py).
    from streamsend._config import load_api_key, load_settings

    args = _send_parser().parse_args(list(argv))
    settings = load_settings(config_path=args.config, cli=_cli_values(args))
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; pick one")
    inputs = args.inputs or ["-"]
    duplicated = sorted({path for path in inputs if inputs.count(path) > 1})
    if duplicated:
        # Outcomes and --resume identify a line by (input, line number): a repeated input would
        # make two lines one.
        raise ConfigError(f"input named more than once: {', '.join(duplicated)}")
    _check_inputs(inputs)
    from streamsend._formats import precheck_inputs

    precheck_inputs(inputs, settings.input_format)
    if settings.sender is not None:
        from streamsend._validate import sender_problem

        problem = sender_problem(settings.api_version, settings.sender)
        if problem:
            raise ConfigError(f"--from: {problem}")
    api_key = None if args.emulator else load_api_key(settings)
    import asyncio  # here, not at the top: `--help` and `config show` need no event loop

    from streamsend._run import send_campaign

    # What is alive now (modules, classes, settings) lives as long as the run: out of the
    # collector's sight, no collection walks it again.
    gc.freeze()
    _hand_back_large_blocks()
    return asyncio.run(
        send_campaign(
            settings,
            inputs,
            api_key=api_key,
            resume=args.resume,
            overwrite=args.overwrite,
            emulator=args.emulator,
            command=argv,
        )
    )


def _hand_back_large_blocks() -> None:
    """Have glibc serve every allocation of 1 MiB or more with mmap, so that freeing it hands
    the memory back (unless the user set MALLOC_MMAP_THRESHOLD_ themselves).

    glibc raises its mmap threshold each time a large mmapped block is freed (up to 32 MiB);
    after that, the dedupe window's dict tables (several MiB, replaced at every rotation and
    resize) came from the heap and stayed there when freed: peak RSS 113 MiB at 500k lines and
    135 MiB at 5M (x1.20). Fixed at 1 MiB: 103 and 116 MiB (x1.13), at no cost in throughput
    (1.01x, `benchmarks.campaign_ab`, 300k lines, 5 rounds). Lower thresholds hand back more but
    put the per-request buffers on mmap too: 512 KiB x1.085 at 0.94x the throughput, 256 KiB
    x1.08 at 0.90x, 128 KiB x1.08 at 0.83x. Nothing happens where the C library isn't glibc.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _check_inputs(inputs: Sequence[str]) -> None:
    """Refuse inputs that can't be read before anything is sent, not after the earlier ones.

    stat and access rather than a trial open: opening a named pipe would wait for its writer.
    """
    for path in inputs:
        if path == "-":
            continue
        try:
            is_dir = stat.S_ISDIR(os.stat(path).st_mode)
        except OSError as exc:
            raise InputError(f"can't open input {path!r}: {exc.strerror}") from None
        if is_dir:
            raise InputError(f"can't open input {path!r}: it is a directory")
        if not os.access(path, os.R_OK):
            raise InputError(f"can't open input {path!r}: permission denied")


def config_main(argv: Sequence[str]) -> int:
    """`streamsend config show [SEND FLAGS]`: the effective settings as TOML, with origins."""
    if list(argv[:1]) != ["show"]:
        parser = OneLineParser(prog="streamsend config", description="Show the configuration.")
        sub = parser.add_subparsers(dest="config_command", required=True, metavar="show")
        sub.add_parser("show", help="print the effective config as TOML (key redacted)")
        parser.parse_args(list(argv))  # --help, or a one-line usage error (exit 2)
        return ExitCode.USAGE
    from streamsend._config import (  # here, not at the top: see send_main
        API_KEY_ENV,
        CONFIG_ENV,
        load_api_key,
        resolve_settings,
        settings_as_toml,
    )

    # The very flags `send` takes, so `config show` answers "what would this send use?".
    args = _send_parser(
        prog="streamsend config show",
        description="Print the settings `streamsend send` would run with, given these flags, "
        "the STREAMSEND_* variables and the config file, as TOML that can be saved and "
        "passed back with --config; each value's origin is a comment.",
    ).parse_args(list(argv[1:]))
    settings, origins = resolve_settings(config_path=args.config, cli=_cli_values(args))
    key_problem = None
    try:
        load_api_key(settings)
        key_note = (
            f"from {API_KEY_ENV}"
            if os.environ.get(API_KEY_ENV)
            else f"from api_key_file {settings.api_key_file}"
        ) + " (trk_***, shaped like a Trackly key)"
    except ConfigError as exc:
        key_note = "not usable: " + str(exc)
        key_problem = exc
    config = os.environ.get(CONFIG_ENV) if args.config is None else args.config
    header = [
        "# streamsend config show: the effective settings; save them and pass --config FILE",
        f"# config file: {config or 'none'}",
        f"# api_key: {key_note}",
    ]
    sys.stdout.write("\n".join(header) + "\n" + settings_as_toml(settings, origins))
    if key_problem is not None and (os.environ.get(API_KEY_ENV) or settings.api_key_file):
        raise key_problem  # the key `send` would refuse: one line, exit 2, as send does
    return ExitCode.OK


def _check_main(argv: Sequence[str]) -> int:
    from streamsend._check import check_main

    return check_main(list(argv))


def _emulator_main(argv: Sequence[str]) -> int:
    from streamsend.emulator import emulator_main

    return emulator_main(list(argv))


def _demo_main(argv: Sequence[str]) -> int:
    from streamsend._demo import demo_main

    return demo_main(argv)


def _job_command(name: str) -> Callable[[Sequence[str]], int]:
    """A scale-out command (`_job_cli`), handed `send`'s parser to borrow its flags from."""

    def run(argv: Sequence[str]) -> int:
        from streamsend import _job_cli

        command: Callable[[Sequence[str], _job_cli.SendCommand], int] = getattr(
            _job_cli, f"{name}_main"
        )
        return command(argv, _job_cli.SendCommand(_send_parser, _check_inputs))

    return run


#: Every command: its function (which imports what it needs when called) and its one-line help.
COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "send": (send_main, "send NDJSON messages through the Trackly bulk API"),
    "check": (_check_main, "validate a campaign offline: segments, encoding, cost"),
    "emulator": (_emulator_main, "run the built-in Trackly emulator"),
    "demo": (_demo_main, "send a sample campaign through the built-in emulator"),
    "config": (config_main, "show the effective configuration (config show)"),
    "enqueue": (_job_command("enqueue"), "validate lines and add them to a job in Redis"),
    "worker": (_job_command("worker"), "send a job's lines from Redis (run any number)"),
    "collect": (_job_command("collect"), "write a job's outcomes (--follow: until complete)"),
    "job": (_job_command("job"), "a job's status (job status NAME), or delete it (job purge)"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: `streamsend --help` and the command's name."""
    parser = OneLineParser(
        prog="streamsend",
        description="Send SMS at volume through the Trackly bulk API: validated, batched, "
        "paced, retried safely, one outcome per input line.",
        epilog="Run `streamsend COMMAND --help` for a command's flags.",
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


class _VersionAction(argparse.Action):
    """`--version`, looked up only when asked for: reading the installed package's metadata
    costs ~25 ms of CPU, which `streamsend --help` would otherwise pay too."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(
            option_strings, dest=argparse.SUPPRESS, nargs=0, help="show the version and exit"
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        print(f"streamsend {_version()}")
        parser.exit()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("streamsend")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        build_parser().parse_args(args[:1])  # --help, or a one-line usage error (exit 2)
        return ExitCode.USAGE
    command, _ = COMMANDS[args[0]]
    try:
        return command(args[1:])
    except (ConfigError, InputError) as exc:
        print(f"streamsend: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except OSError as exc:
        # The disk filled up, a file vanished mid-run...: not a bug, but the run can't go on.
        return _stopped_by(f"{exc.strerror or exc} ({exc.filename or 'I/O'})", exc)
    except Exception as exc:  # the last line of defence: no traceback reaches a user
        return _stopped_by(f"internal error: {type(exc).__name__}: {exc}", exc)


def _stopped_by(reason: str, exc: BaseException) -> int:
    """One line instead of a traceback; the traceback goes to the log at debug level."""
    from streamsend._logs import get_logger, redact

    get_logger("streamsend").debug("stopped_by_error", exc_info=exc)
    print(
        f"streamsend: error: {redact(reason)}; the outcomes and the journal written so far are "
        "kept: fix the cause and rerun with --resume",
        file=sys.stderr,
    )
    return ExitCode.INTERNAL
