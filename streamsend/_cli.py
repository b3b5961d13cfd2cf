"""The command line: `streamsend send | check | emulator | config show`.

Every user error (a bad flag, config value, input path or key) ends as one line on stderr and
exit 2; no traceback reaches a user. Exit codes of `send`: 0 every line queued, 1 the run finished
but some lines were not queued, 2 usage or config error, 3 aborted by a fatal service answer
(401, 403, list_not_found), 70 stopped by an unexpected error such as a full disk (one line; the
traceback goes to the log at debug level), 130 stopped by a signal (SIGINT/SIGTERM) after draining.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import secrets
import signal
import stat
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson

from streamsend._config import API_KEY_ENV, Settings, load_api_key, load_settings
from streamsend._exceptions import ConfigError, InputError
from streamsend._journal import Journal, ResumeState
from streamsend._outcomes import FileSink
from streamsend._pipeline import EXIT_USAGE, Pipeline
from streamsend._source import read_inputs, total_input_bytes
from streamsend._stats import RunStats
from streamsend._usage import OneLineParser
from streamsend._validate import sender_problem

_SEND_EPILOG = """\
The API key is read from the environment variable TRACKLY_API_KEY (or the file named by
api_key_file in the config); it is never taken on the command line.

Settings come from, highest first: these flags, STREAMSEND_<KEY> environment variables (e.g.
STREAMSEND_RATE=17000/min), the --config TOML file, the defaults. `streamsend config show` prints
the result.

Outcomes: one JSON object per non-blank input line with `status` queued | rejected | invalid |
failed | unknown. `unknown` means the request may have been accepted (the answer was lost): such
lines are not resent unless you pass --resend-unknown.

Exit codes: 0 all queued; 1 finished, some not queued; 2 usage/config error; 3 aborted by a fatal
service answer (bad key, suspended account, unknown sending list); 70 stopped by an unexpected
error (e.g. a full disk: rerun with --resume); 130 stopped by a signal.
"""


def _send_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "send",
        help="send NDJSON messages through the Trackly bulk API",
        description='Stream NDJSON lines ({"to_msisdn": ..., "body": ..., "ref": ...}) '
        "from files or stdin to the Trackly bulk API, writing one outcome per line.",
        epilog=_SEND_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="NDJSON files; - is stdin (default)")
    p.add_argument("--config", metavar="TOML", help="a config file (see configs/)")
    p.add_argument(
        "--emulator",
        action="store_true",
        help="start the built-in Trackly emulator in-process and send to it "
        "(a rehearsal: nothing leaves this machine)",
    )
    p.add_argument("--base-url", help="API base URL (default https://app.tracklysms.com/api)")
    p.add_argument("--api-version", choices=("v1", "v2"), help="bulk API version (default v1)")
    p.add_argument(
        "--from",
        dest="sender",
        metavar="SENDER",
        help="sending list: v1 from_phone_number_id, v2 list_number (E.164); a line's "
        "own from_phone_number_id / list_number overrides it",
    )
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
    p.add_argument("--concurrency", type=int, help="requests in flight at most (default 8)")
    p.add_argument(
        "--rate",
        help="messages per sending number, e.g. 17000/min or 300/s "
        "(default unlimited; the service's default send rate is 17000/min)",
    )
    p.add_argument("--timeout", help="seconds per request attempt (default 30)")
    p.add_argument(
        "--retries",
        type=int,
        help="retries of a request the service proved it "
        "did not accept (5xx, 429, connection failures; default 5)",
    )
    p.add_argument(
        "--drain-timeout",
        help="on SIGTERM/SIGINT, wait this long for requests in flight (default 30s)",
    )
    p.add_argument("--max-line-bytes", type=int, help="longer lines are invalid (default 65536)")
    p.add_argument(
        "--fsync",
        choices=("request", "off"),
        help="request (default): journal and outcomes reach the disk before each "
        "request is sent / marked done; off: leave it to the OS",
    )
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        help="auto: console on a terminal, JSON lines otherwise",
    )
    p.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics and /healthz on 127.0.0.1:PORT"
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="streamsend",
        description="Send SMS at volume through the Trackly bulk API: validated, batched, "
        "paced, retried safely, one outcome per input line.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _send_parser(sub)
    sub.add_parser(
        "check", help="validate a campaign offline: segments, encoding, cost", add_help=False
    )
    sub.add_parser("emulator", help="run the built-in Trackly emulator", add_help=False)
    sub.add_parser(
        "demo", help="send a sample campaign through the built-in emulator", add_help=False
    )
    config = sub.add_parser("config", help="show the effective configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="show")
    show = config_sub.add_parser("show", help="print the effective config (key redacted)")
    show.add_argument("--config", metavar="TOML")
    return parser


def _cli_values(args: argparse.Namespace) -> dict[str, object]:
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
        "rate",
        "timeout",
        "retries",
        "drain_timeout",
        "max_line_bytes",
        "fsync",
        "log_level",
        "log_format",
        "metrics_port",
    )
    return {name: getattr(args, name, None) for name in names}


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # `check` and `emulator` own their flags; hand them over before argparse sees them.
    if args_list and args_list[0] == "emulator":
        from streamsend.emulator import emulator_main

        return emulator_main(args_list[1:])
    if args_list and args_list[0] == "check":
        from streamsend._check import check_main

        return check_main(args_list[1:])
    if args_list and args_list[0] == "demo":
        from streamsend._demo import demo_main

        return demo_main(args_list[1:])
    args = build_parser().parse_args(args_list)
    try:
        if args.command == "config":
            return _config_show(args)
        return _send(args)
    except (ConfigError, InputError) as exc:
        print(f"streamsend: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        # The disk filled up, a file vanished mid-run...: not a bug, but the run can't go on.
        return _stopped_by(f"{exc.strerror or exc} ({exc.filename or 'I/O'})", exc)
    except Exception as exc:  # the last line of defence: no traceback reaches a user
        return _stopped_by(f"internal error: {type(exc).__name__}: {exc}", exc)


EXIT_INTERNAL = 70  # sysexits' EX_SOFTWARE


def _stopped_by(reason: str, exc: BaseException) -> int:
    """One line instead of a traceback; the traceback goes to the log at debug level."""
    from streamsend._logs import get_logger, redact

    get_logger("streamsend").debug("stopped_by_error", exc_info=exc)
    print(
        f"streamsend: error: {redact(reason)}; the outcomes and the journal written so far are "
        "kept: fix the cause and rerun with --resume",
        file=sys.stderr,
    )
    return EXIT_INTERNAL


def _config_show(args: argparse.Namespace) -> int:
    settings = load_settings(config_path=args.config)
    shown = settings.redacted()
    key_set = bool(os.environ.get(API_KEY_ENV))
    shown["api_key"] = (
        "trk_*** (from TRACKLY_API_KEY)"
        if key_set
        else ("(from api_key_file)" if settings.api_key_file else "(not set)")
    )
    sys.stdout.buffer.write(orjson.dumps(shown, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


def _send(args: argparse.Namespace) -> int:
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
    if settings.sender is not None:
        problem = sender_problem(settings.api_version, settings.sender)
        if problem:
            raise ConfigError(f"--from: {problem}")
    api_key = None if args.emulator else load_api_key(settings)
    _check_outcomes_path(settings, resume=args.resume, overwrite=args.overwrite)
    journal_path = settings.journal_path
    if args.overwrite:
        for path in (settings.outcomes, journal_path):
            if path and os.path.exists(path):
                os.truncate(path, 0)
    resume_state = None
    if args.resume and journal_path is not None:
        resume_state = ResumeState.load(
            settings.outcomes, journal_path, resend_unknown=settings.resend_unknown
        )
    # Every message is a few GC-tracked tuples that live for milliseconds and form no cycles, so
    # the default generation-0 threshold (700 allocations) runs a collection every few hundred
    # messages for nothing; measured on 1M lines, a higher threshold saves ~10% of client CPU.
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    return asyncio.run(_run_send(settings, inputs, api_key, resume_state, emulator=args.emulator))


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


def _check_outcomes_path(settings: Settings, *, resume: bool, overwrite: bool) -> None:
    path = settings.outcomes
    if path == "-":
        if resume:
            raise ConfigError("--resume needs --outcomes PATH: the outcomes of the earlier run")
        return
    has_outcomes = os.path.exists(path) and os.path.getsize(path) > 0
    if (
        resume
        and not has_outcomes
        and not (settings.journal_path and os.path.exists(settings.journal_path))
    ):
        return  # nothing to resume: a first run with --resume is just a run
    if has_outcomes and not resume and not overwrite:
        raise ConfigError(
            f"{path} already holds outcomes: pass --resume to continue that run (no line is "
            "sent twice), or --overwrite to start anew (every line is sent again)"
        )


@contextlib.asynccontextmanager
async def _maybe_emulator(settings: Settings, enabled: bool) -> AsyncIterator[tuple[Settings, str]]:
    """With --emulator: a local emulator, a fresh key and a default sender; else as given."""
    if not enabled:
        yield settings, ""
        return
    from dataclasses import replace

    from streamsend.emulator import EmulatorConfig, run_emulator
    from streamsend.emulator._testing import V1_LIST, V2_LIST

    key = "trk_" + secrets.token_hex(16)
    default = V1_LIST if settings.api_version == "v1" else V2_LIST
    sender = settings.sender or default
    lists = {sender, *settings.sender_rates}
    config = EmulatorConfig(
        api_keys=(key,),
        v1_lists=tuple(lists) if settings.api_version == "v1" else (V1_LIST,),
        v2_lists=tuple(lists) if settings.api_version == "v2" else (V2_LIST,),
    )
    async with run_emulator(config) as emulator:
        yield replace(settings, base_url=emulator.base_url, sender=sender), key


async def _run_send(
    given: Settings,
    inputs: list[str],
    api_key: str | None,
    resume_state: ResumeState | None,
    *,
    emulator: bool,
) -> int:
    from streamsend._logs import configure_logging, get_logger

    async with _maybe_emulator(given, emulator) as (settings, emulator_key):
        key = api_key or emulator_key
        configure_logging(level=settings.log_level, fmt=settings.log_format, secrets=(key,))
        # Bound once: the lazy proxy re-resolves the configuration on every call (~2 us), which
        # adds up for the per-request debug event even when debug is off.
        log = get_logger("streamsend").bind()
        journal_path = settings.journal_path
        if resume_state is not None:
            log.info(
                "resuming",
                **resume_state.counts(),
                next_request=resume_state.next_request,
                unreadable_records=resume_state.skipped_records,
            )
        fsync = settings.fsync == "request"
        if settings.outcomes == "-":
            sink = FileSink(sys.stdout.buffer, fsync=False)
        else:
            try:
                sink = FileSink.open_path(settings.outcomes, fsync=fsync)
            except OSError as exc:
                raise ConfigError(
                    f"can't open --outcomes {settings.outcomes}: {exc.strerror}"
                ) from None
        try:
            journal = Journal(journal_path, fsync=fsync) if journal_path else None
        except OSError as exc:
            if settings.outcomes != "-":
                sink.close()
            raise ConfigError(f"can't open the journal {journal_path}: {exc.strerror}") from None
        stats = RunStats()
        stats.input_bytes_total = total_input_bytes(inputs)
        log.info("start", config=settings.redacted(), inputs=inputs, emulator=emulator or None)
        pipeline = Pipeline(
            settings,
            api_key=key,
            sink=sink,
            journal=journal,
            resume=resume_state,
            stats=stats,
            log=log,
            source=read_inputs(inputs, max_line_bytes=settings.max_line_bytes),
        )
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, pipeline.request_stop)
        try:
            async with _observers(settings, stats, log):
                result = await pipeline.run()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
            if settings.outcomes != "-":
                sink.close()
            else:
                sys.stdout.buffer.flush()
            if journal is not None:
                journal.close()
        _report_summary(stats, log)
        return result.exit_code


@contextlib.asynccontextmanager
async def _observers(settings: Settings, stats: RunStats, log: Any) -> AsyncIterator[None]:
    """The metrics endpoint and the progress reporter, for the length of the run."""
    async with contextlib.AsyncExitStack() as stack:
        if settings.metrics_port is not None:
            from streamsend._metrics import serve_metrics

            url = await stack.enter_async_context(serve_metrics(stats, port=settings.metrics_port))
            log.info("metrics_listening", url=url)
        from streamsend._progress import report_progress

        progress = asyncio.create_task(
            report_progress(
                stats,
                interval=settings.progress_interval,
                live=sys.stderr.isatty(),
                stream=sys.stderr,
                log=log,
            )
        )
        try:
            yield
        finally:
            progress.cancel()
            await asyncio.gather(progress, return_exceptions=True)


def _report_summary(stats: RunStats, log: Any) -> None:
    from streamsend._progress import format_summary, summary_fields

    snapshot = stats.snapshot()
    log.info("summary", **summary_fields(snapshot))
    if sys.stderr.isatty():
        print(format_summary(snapshot), file=sys.stderr)
