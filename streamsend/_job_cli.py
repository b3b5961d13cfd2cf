"""The scale-out commands: `enqueue`, `worker`, `collect` and `job status|purge`.

They share `send`'s flags by name (`enqueue` its input flags, `worker` its delivery flags), taken
from `send`'s own parser so that both always read the same (the command table in `_cli`, which
owns that parser, hands it in as `SendCommand`), and `--redis URL` (or STREAMSEND_REDIS, or
`redis` in the config file).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from streamsend._config import Settings, load_api_key, load_settings
from streamsend._exceptions import ConfigError
from streamsend._formats import precheck_inputs
from streamsend._types import ExitCode
from streamsend._usage import OneLineParser

if TYPE_CHECKING:
    from streamsend._redis_job import RedisJob


@dataclass(frozen=True, slots=True)
class SendCommand:
    """What these commands borrow from `send`'s command line (handed in by `_cli`)."""

    parser: Callable[[], argparse.ArgumentParser]
    check_inputs: Callable[[Sequence[str]], None]


#: `send` flags `enqueue` takes: what decides how a line is validated and encoded.
INPUT_FLAGS = (
    "config",
    "api_version",
    "sender",
    "max_line_bytes",
    "log_level",
    "log_format",
    # The campaign stage runs at enqueue time (workers never see what it holds back).
    "input_format",
    "to_column",
    "body_column",
    "ref_column",
    "template",
    "template_file",
    "suppress",
    "dedupe",
    "dedupe_window",
    "skip_sent",
)
#: `send` flags `worker` takes: how messages are delivered.
DELIVERY_FLAGS = (
    "config",
    "base_url",
    "batch_size",
    "concurrency",
    "max_concurrency",
    "rate",
    "timeout",
    "retries",
    "resend_unknown",
    "drain_timeout",
    "log_level",
    "log_format",
    "metrics_port",
    "give_up_after",
    "proxy",
    "ca_bundle",
)


def _parser(
    prog: str, description: str, send: SendCommand, flags: Sequence[str] = ("config",)
) -> OneLineParser:
    """A command's parser with `--redis`, and `send`'s flags named in `flags`, as `send` has
    them (help, type, choices)."""
    parser = OneLineParser(prog=prog, description=description)
    parser.add_argument("--redis", metavar="URL", help="redis://HOST:PORT (or STREAMSEND_REDIS)")
    for action in send.parser()._actions:  # argparse keeps its actions there
        if action.dest not in flags or not action.option_strings:
            continue
        kwargs: dict[str, object] = {"dest": action.dest, "help": action.help}
        if isinstance(action, argparse._StoreTrueAction):
            kwargs.update(action="store_true", default=action.default)
        else:
            kwargs.update(type=action.type, choices=action.choices, metavar=action.metavar)
        parser.add_argument(*action.option_strings, **kwargs)  # type: ignore[arg-type]
    return parser


def _settings(args: argparse.Namespace, flags: Sequence[str]) -> Settings:
    cli = {name: getattr(args, name, None) for name in flags if name != "config"}
    cli["redis"] = args.redis
    settings = load_settings(config_path=getattr(args, "config", None), cli=cli)
    if settings.redis is None:
        raise ConfigError("no Redis: pass --redis redis://HOST:PORT or set STREAMSEND_REDIS")
    return settings


@contextlib.asynccontextmanager
async def _job(settings: Settings, name: str) -> AsyncIterator[RedisJob]:
    from streamsend._redis_job import RedisJob, connect, ping

    assert settings.redis is not None
    client = connect(settings.redis)
    try:
        await ping(client, settings.redis)
        yield RedisJob(client, name)
    finally:
        await client.aclose()


def _logger(settings: Settings, key: str = "") -> object:
    from streamsend._logs import configure_logging, get_logger

    configure_logging(level=settings.log_level, fmt=settings.log_format, secrets=(key,))
    return get_logger("streamsend").bind()


def enqueue_main(argv: Sequence[str], send: SendCommand) -> int:
    """`streamsend enqueue INPUT... --job NAME`: validate, append to the job's streams."""
    parser = _parser(
        "streamsend enqueue",
        "Validate input lines (NDJSON, CSV, TSV) like `send` and append them to a job in Redis "
        "for workers to "
        "send; invalid lines get their outcome at once. Enqueueing the same input again adds "
        "nothing.",
        send,
        INPUT_FLAGS,
    )
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="NDJSON files; - is stdin")
    parser.add_argument("--job", required=True, help="the job's name")
    parser.add_argument(
        "--more",
        action="store_true",
        help="more inputs will follow: don't mark the job's input complete",
    )
    args = parser.parse_args(list(argv))
    settings = _settings(args, INPUT_FLAGS)
    inputs = args.inputs or ["-"]
    send.check_inputs(inputs)
    precheck_inputs(inputs, settings.input_format)
    if settings.sender is not None:
        from streamsend._validate import sender_problem

        problem = sender_problem(settings.api_version, settings.sender)
        if problem:
            raise ConfigError(f"--from: {problem}")

    async def run() -> int:
        from streamsend._campaign import Campaign
        from streamsend._enqueue import enqueue
        from streamsend._source import read_inputs

        log = _logger(settings)
        campaign = Campaign.load(settings)
        async with _job(settings, args.job) as job:
            source = read_inputs(
                inputs,
                max_line_bytes=settings.max_line_bytes,
                input_format=settings.input_format,
                columns=campaign.columns,
            )
            result = await enqueue(
                settings, job, source, complete=not args.more, log=log, campaign=campaign
            )
        print(
            f"job {args.job}: {result.added} lines enqueued, {result.invalid} not to be sent "
            f"(invalid, suppressed, duplicate, expired: outcomes written), {result.already} "
            "already enqueued before",
            file=sys.stderr,
        )
        return ExitCode.OK

    return asyncio.run(run())


def worker_main(argv: Sequence[str], send: SendCommand) -> int:
    """`streamsend worker --job NAME`: send a job's lines, alongside any other workers."""
    parser = _parser(
        "streamsend worker",
        "Send a job's lines from Redis through the Trackly API, alongside any number of other "
        "workers: one rate per sending number across all of them, exactly one outcome per "
        "line. Ends when the job is complete (exit 0) or on SIGTERM (drains, exit 130).",
        send,
        DELIVERY_FLAGS,
    )
    parser.add_argument("--job", required=True, help="the job's name")
    parser.add_argument(
        "--lease",
        default="10s",
        help="how long a silent worker keeps its entries before others take them (default 10s)",
    )
    args = parser.parse_args(list(argv))
    settings = _settings(args, DELIVERY_FLAGS)
    from streamsend._config import parse_duration

    try:
        lease = parse_duration(args.lease)
    except ValueError as exc:
        raise ConfigError(f"--lease: {exc}") from None
    if not 0.5 <= lease <= 3600:
        raise ConfigError("--lease: must be between 0.5s and 1h")
    api_key = load_api_key(settings)

    async def run() -> int:
        from streamsend._run import observe_run, report_summary
        from streamsend._stats import RunStats
        from streamsend._worker import Worker, WorkerOptions

        log = _logger(settings, api_key)
        stats = RunStats()
        async with _job(settings, args.job) as job:
            worker = Worker(
                settings,
                job,
                api_key=api_key,
                log=log,
                stats=stats,
                options=WorkerOptions(lease=lease),
            )
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, worker.request_stop)
            try:
                async with observe_run(settings, stats, log):
                    code = await worker.run()
            finally:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(signum)
        report_summary(stats, log, settings)
        return code

    return asyncio.run(run())


def collect_main(argv: Sequence[str], send: SendCommand) -> int:
    """`streamsend collect --job NAME --outcomes PATH [--follow]`."""
    parser = _parser(
        "streamsend collect",
        "Write a job's outcomes (the NDJSON `send` writes) to a file. Exit codes as `send`'s "
        "once the job is complete; 75 when it isn't (without --follow).",
        send,
    )
    parser.add_argument("--job", required=True, help="the job's name")
    parser.add_argument("--outcomes", required=True, metavar="PATH", help="- for stdout")
    parser.add_argument(
        "--follow", action="store_true", help="wait until the job is complete, writing as it goes"
    )
    args = parser.parse_args(list(argv))
    settings = _settings(args, ())

    async def run() -> int:
        from streamsend._collect import collect

        async with _job(settings, args.job) as job:
            await job.api_version()  # a clear error for a job that doesn't exist
            if args.outcomes == "-":
                result = await collect(job, sys.stdout.buffer, follow=args.follow)
            else:
                try:
                    out = open(args.outcomes, "wb")  # noqa: SIM115, ASYNC230 - closed below
                except OSError as exc:
                    raise ConfigError(
                        f"can't open --outcomes {args.outcomes}: {exc.strerror}"
                    ) from None
                with out:
                    result = await collect(job, out, follow=args.follow)
        counts = result.counts
        summary = ", ".join(f"{s} {n}" for s, n in sorted(counts.by_status.items()))
        print(f"job {args.job}: {result.lines} outcomes written ({summary})", file=sys.stderr)
        if not counts.complete:
            state = "input still open" if not counts.input_complete else "input complete"
            print(f"job {args.job}: {counts.pending} lines pending ({state})", file=sys.stderr)
        return result.exit_code

    return asyncio.run(run())


def job_main(argv: Sequence[str], send: SendCommand) -> int:
    """`streamsend job status NAME` / `streamsend job purge NAME`."""
    parser = OneLineParser(prog="streamsend job", description="Inspect or delete a job.")
    sub = parser.add_subparsers(dest="job_command", required=True, metavar="status|purge")
    for name, text in (
        ("status", "lines enqueued, done by status, pending, the workers"),
        ("purge", "delete every key of the job"),
    ):
        command = sub.add_parser(name, help=text)
        command.add_argument("name", metavar="NAME")
        command.add_argument("--redis", metavar="URL", help="redis://HOST:PORT")
        command.add_argument("--config", metavar="TOML")
    args = parser.parse_args(list(argv))
    settings = _settings(args, ())

    async def run() -> int:
        from streamsend._collect import job_status

        async with _job(settings, args.name) as job:
            if args.job_command == "purge":
                deleted = await job.purge()
                print(f"job {args.name}: {deleted} keys deleted", file=sys.stderr)
                return ExitCode.OK
            await job.api_version()
            status = await job_status(job)
        sys.stdout.buffer.write(orjson.dumps(status, option=orjson.OPT_INDENT_2) + b"\n")
        return ExitCode.OK

    return asyncio.run(run())
