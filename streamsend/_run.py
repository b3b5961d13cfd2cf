"""Assembling a run: the one place a send's parts are opened, wired together and closed.

`open_run()` takes settings and a line source and opens the rest (the outcome sink unless one is
given, the journal, the resume state) around a `Pipeline`; the library (`Client`) uses it as it
is. `send_campaign()` adds what a command-line run has around it (the built-in emulator when
asked, logging, signals, progress, metrics, the summary); `streamsend send` and `streamsend demo`
both run through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace

from streamsend._config import Settings
from streamsend._exceptions import ConfigError
from streamsend._journal import FileJournal, ResumeState
from streamsend._outcomes import FileSink
from streamsend._pipeline import Pipeline
from streamsend._source import read_inputs, total_input_bytes
from streamsend._stats import RunStats
from streamsend._types import ExitCode, LineSource, Logger, OutcomeSink, RateLimiter


@dataclass(frozen=True, slots=True)
class Run:
    """An assembled run: call `await run.pipeline.run()`."""

    settings: Settings
    pipeline: Pipeline
    stats: RunStats
    resume: ResumeState | None


@contextlib.asynccontextmanager
async def open_run(
    settings: Settings,
    *,
    api_key: str,
    source: LineSource,
    sink: OutcomeSink | None = None,
    resume: bool = False,
    overwrite: bool = False,
    limiter: RateLimiter | None = None,
    stats: RunStats | None = None,
    log: Logger = None,
) -> AsyncIterator[Run]:
    """Open a run's outcome sink (`settings.outcomes` unless `sink` is given), its journal and
    resume state, wire the pipeline, and close what was opened when the block ends.

    Without `resume` or `overwrite`, an outcomes file that already holds outcomes is refused: a
    plain rerun would otherwise text everyone twice.
    """
    _prepare_files(settings, resume=resume, overwrite=overwrite, own_sink=sink is None)
    journal_path = settings.journal_path
    fsync = settings.fsync == "request"
    async with contextlib.AsyncExitStack() as stack:
        if sink is None:
            sink = _open_sink(settings, fsync=fsync)
            stack.callback(sink.close)
        journal = None
        if journal_path is not None:
            try:
                journal = FileJournal(
                    journal_path,
                    fsync=fsync,
                    outcomes_path=None if settings.outcomes == "-" else settings.outcomes,
                )
            except OSError as exc:
                raise ConfigError(
                    f"can't open the journal {journal_path}: {exc.strerror}"
                ) from None
            stack.callback(journal.close)
        resume_state = (
            journal.resume_state(resend_unknown=settings.resend_unknown)
            if resume and journal is not None
            else None
        )
        if resume_state is not None and log is not None:
            log.info(
                "resuming",
                **resume_state.counts(),
                next_request=resume_state.next_request,
                unreadable_records=resume_state.skipped_records,
            )
        stats = stats if stats is not None else RunStats()
        pipeline = Pipeline(
            settings,
            api_key=api_key,
            source=source,
            sink=sink,
            journal=journal,
            resume=resume_state,
            limiter=limiter,
            stats=stats,
            log=log,
        )
        yield Run(settings, pipeline, stats, resume_state)


def _open_sink(settings: Settings, *, fsync: bool) -> FileSink:
    if settings.outcomes == "-":
        return FileSink(sys.stdout.buffer, fsync=False, owns_file=False)
    try:
        return FileSink.open_path(settings.outcomes, fsync=fsync)
    except OSError as exc:
        raise ConfigError(f"can't open --outcomes {settings.outcomes}: {exc.strerror}") from None


def _prepare_files(settings: Settings, *, resume: bool, overwrite: bool, own_sink: bool) -> None:
    """Refuse what can't be resumed or would resend, and empty the files --overwrite names."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; pick one")
    path = settings.outcomes
    if path == "-":
        if resume:
            raise ConfigError("--resume needs --outcomes PATH: the outcomes of the earlier run")
        return
    has_outcomes = os.path.exists(path) and os.path.getsize(path) > 0
    if own_sink and has_outcomes and not resume and not overwrite:
        raise ConfigError(
            f"{path} already holds outcomes: pass --resume to continue that run (no line is "
            "sent twice), or --overwrite to start anew (every line is sent again)"
        )
    if overwrite:
        for written in (path, settings.journal_path):
            if written and os.path.exists(written):
                os.truncate(written, 0)


async def send_campaign(
    given: Settings,
    inputs: Sequence[str],
    *,
    api_key: str | None,
    resume: bool = False,
    overwrite: bool = False,
    emulator: bool = False,
) -> ExitCode:
    """A command-line run: `open_run` plus the emulator (when asked), logging, SIGINT/SIGTERM
    as a graceful drain (twice: stop at once), progress, metrics and the final summary."""
    from streamsend._logs import configure_logging, get_logger

    async with _maybe_emulator(given, emulator) as (settings, emulator_key):
        key = api_key or emulator_key
        configure_logging(level=settings.log_level, fmt=settings.log_format, secrets=(key,))
        # Bound once: the lazy proxy re-resolves the configuration on every call (~2 us), which
        # adds up for the per-request debug event even when debug is off.
        log = get_logger("streamsend").bind()
        stats = RunStats()
        stats.input_bytes_total = total_input_bytes(inputs)
        source = read_inputs(inputs, max_line_bytes=settings.max_line_bytes)
        async with open_run(
            settings,
            api_key=key,
            source=source,
            resume=resume,
            overwrite=overwrite,
            stats=stats,
            log=log,
        ) as run:
            log.info(
                "start", config=settings.redacted(), inputs=list(inputs), emulator=emulator or None
            )
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, run.pipeline.request_stop)
            try:
                async with observe_run(settings, stats, log):
                    result = await run.pipeline.run()
            finally:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(signum)
        report_summary(stats, log)
        return result.exit_code


@contextlib.asynccontextmanager
async def _maybe_emulator(settings: Settings, enabled: bool) -> AsyncIterator[tuple[Settings, str]]:
    """With --emulator: a local emulator, a fresh key and a default sender; else as given."""
    if not enabled:
        yield settings, ""
        return
    from streamsend.emulator import DEFAULT_V1_LIST, DEFAULT_V2_LIST, EmulatorConfig, run_emulator

    key = "trk_" + secrets.token_hex(16)
    v1 = settings.api_version == "v1"
    sender = settings.sender or (DEFAULT_V1_LIST if v1 else DEFAULT_V2_LIST)
    lists = (sender, *settings.sender_rates)
    config = EmulatorConfig(
        api_keys=(key,),
        v1_lists=lists if v1 else (DEFAULT_V1_LIST,),
        v2_lists=(DEFAULT_V2_LIST,) if v1 else lists,
    )
    async with run_emulator(config) as running:
        yield replace(settings, base_url=running.base_url, sender=sender), key


@contextlib.asynccontextmanager
async def observe_run(settings: Settings, stats: RunStats, log: Logger) -> AsyncIterator[None]:
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


def report_summary(stats: RunStats, log: Logger) -> None:
    from streamsend._progress import format_summary, summary_fields

    snapshot = stats.snapshot()
    log.info("summary", **summary_fields(snapshot))
    if sys.stderr.isatty():
        print(format_summary(snapshot), file=sys.stderr)
