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
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace

from streamsend._campaign import Campaign
from streamsend._config import Settings
from streamsend._exceptions import ConfigError
from streamsend._fingerprint import InputFingerprints
from streamsend._journal import FileJournal, ResumeState
from streamsend._outcomes import FileSink
from streamsend._pacing import (
    DEFAULT_RATE,
    DEFAULT_RATE_PER_MIN,
    SERVICE_STALE_AFTER_S,
    format_rate,
)
from streamsend._pipeline import Pipeline, RunResult
from streamsend._source import read_inputs, total_input_bytes
from streamsend._stats import RunStats, StatsSnapshot
from streamsend._types import ExitCode, LineSource, Logger, OutcomeSink, RateLimiter

#: What `--rate unlimited` risks, said at the start of such a run.
UNPACED_HINT = (
    f"--rate unlimited: the service sends {DEFAULT_RATE} per sending list (its default) and "
    f"drops what waits in its queue over {SERVICE_STALE_AFTER_S // 60} min, so it holds about "
    f"{DEFAULT_RATE_PER_MIN * SERVICE_STALE_AFTER_S // 60:,} messages per list; past that, "
    "messages are lost while the outcomes say queued"
)


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
    campaign: Campaign | None = None,
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
        stdin_unproved = (
            resume_state is not None
            and "-" in resume_state.sources
            and "-" not in resume_state.inputs
        )
        if stdin_unproved:
            # Without a fingerprint nothing proves the replayed stream is the one whose line
            # numbers the outcomes name: a restarted producer would be misread.
            raise ConfigError(
                "--resume: the earlier run's journal has no fingerprint of stdin (an older "
                "streamsend wrote it), so the replayed stream can't be checked: pass "
                "--overwrite to start anew, or resume with a file"
            )
        fingerprints = (
            None
            if journal is None
            else InputFingerprints(
                record=journal.record_input,
                expected=resume_state.inputs if resume_state is not None else None,
            )
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
            campaign=campaign,
            fingerprints=fingerprints,
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
    emulator_send_rate_per_min: float | None = None,
    command: Sequence[str] | None = None,
    stats: RunStats | None = None,
) -> ExitCode:
    """A command-line run: `open_run` plus the emulator (when asked), logging, SIGINT/SIGTERM
    as a graceful drain (twice: stop at once), progress, metrics and the final summary.

    `command`: the run's `streamsend send` arguments, from which a run cut short gets the exact
    command that resumes it. `stats`: where to count (the demo reads them afterwards)."""
    from streamsend._logs import configure_logging, get_logger

    async with _maybe_emulator(given, emulator, emulator_send_rate_per_min) as (
        settings,
        emulator_key,
    ):
        key = api_key or emulator_key
        configure_logging(level=settings.log_level, fmt=settings.log_format, secrets=(key,))
        # Bound once: the lazy proxy re-resolves the configuration on every call (~2 us), which
        # adds up for the per-request debug event even when debug is off.
        log = get_logger("streamsend").bind()
        stats = stats if stats is not None else RunStats()
        stats.input_bytes_total = total_input_bytes(inputs)
        loading = time.monotonic()
        campaign = Campaign.load(settings)
        if campaign.suppression is not None or campaign.sent_before is not None:
            log.info(
                "campaign_lists_loaded",
                suppressed_numbers=len(campaign.suppression.numbers) if campaign.suppression else 0,
                unreadable_suppress_entries=campaign.suppression.unreadable
                if campaign.suppression
                else 0,
                sent_recipients=len(campaign.sent_before) if campaign.sent_before else 0,
                seconds=round(time.monotonic() - loading, 2),
            )
        source = read_inputs(
            inputs,
            max_line_bytes=settings.max_line_bytes,
            input_format=settings.input_format,
            columns=campaign.columns,
        )
        async with open_run(
            settings,
            api_key=key,
            source=source,
            resume=resume,
            overwrite=overwrite,
            stats=stats,
            log=log,
            campaign=campaign,
        ) as run:
            # One line with what an operator checks before walking away; the whole effective
            # configuration is a debug event (and `streamsend config show`).
            log.info("start", **_start_fields(settings, inputs, emulator=emulator))
            log.debug("config", **settings.redacted())
            if settings.outcomes != "-" and settings.journal_path is None:
                log.warning(
                    "no_journal",
                    outcomes=settings.outcomes,
                    hint="the outcomes don't go to a regular file, so no journal is kept "
                    "beside them and this run can't be resumed; --resume needs --outcomes "
                    "PATH to a regular file (its journal is PATH.journal)",
                )
            if settings.rate is None:
                log.warning("unpaced", hint=UNPACED_HINT)
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, run.pipeline.request_stop)
            try:
                async with observe_run(settings, stats, log):
                    result = await run.pipeline.run()
            except BrokenPipeError:
                if settings.outcomes != "-":
                    raise
                _outcomes_reader_went_away(stats)
                return ExitCode.INTERNAL
            finally:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(signum)
        report_summary(
            stats, log, settings, left_over=lambda s: _left_over(s, settings, result, command)
        )
        return result.exit_code


def _outcomes_reader_went_away(stats: RunStats) -> None:
    """Outcomes went to stdout and its reader went away: say what was sent, and the advice that
    is possible (there is no journal to --resume from)."""
    # Later flushes of the outcomes go nowhere instead of raising again on the way out.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    queued = stats.by_status.get("queued", 0)
    print(
        "streamsend: error: the reader of the outcomes on stdout went away (broken pipe); by "
        f"then the service had accepted at least {queued:,} messages. Outcomes on stdout have "
        "no journal, so this run can't be resumed: send the rest from an input without the "
        "lines already sent, and pass --outcomes PATH to make a run resumable",
        file=sys.stderr,
    )


def _start_fields(
    settings: Settings, inputs: Sequence[str], *, emulator: bool
) -> dict[str, object]:
    senders = [settings.sender] if settings.sender else []
    senders += [s for s in settings.sender_rates if s not in senders]
    rates = {s: format_rate(r) for s, r in settings.sender_rates.items()}
    fields: dict[str, object] = {
        "target": "built-in emulator" if emulator else settings.base_url,
        "api": settings.api_version,
        "sender": ", ".join(senders) or "from each line",
        "rate": format_rate(settings.rate),
        "input": ", ".join("stdin" if i == "-" else i for i in inputs),
        "outcomes": "stdout" if settings.outcomes == "-" else settings.outcomes,
    }
    if rates:
        fields["rates"] = rates
    if settings.proxy:
        fields["proxy"] = settings.proxy
    return fields


@contextlib.asynccontextmanager
async def _maybe_emulator(
    settings: Settings, enabled: bool, send_rate_per_min: float | None = None
) -> AsyncIterator[tuple[Settings, str]]:
    """With --emulator: a local emulator (sending each list at `send_rate_per_min`, or the
    service's default), a fresh key and a default sender; else as given."""
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
        send_rate_per_min=send_rate_per_min or DEFAULT_RATE_PER_MIN,
    )
    async with run_emulator(config) as running:
        yield replace(settings, base_url=running.base_url, sender=sender), key


@contextlib.asynccontextmanager
async def observe_run(settings: Settings, stats: RunStats, log: Logger) -> AsyncIterator[None]:
    """The metrics endpoint and the progress reporter, for the length of the run."""
    async with contextlib.AsyncExitStack() as stack:
        if settings.metrics_port is not None:
            from streamsend._metrics import serve_metrics

            url = await stack.enter_async_context(
                serve_metrics(stats, host=settings.metrics_host, port=settings.metrics_port)
            )
            log.info("metrics_listening", url=url)
        from streamsend._progress import ProgressEstimator, report_progress

        progress = asyncio.create_task(
            report_progress(
                stats,
                interval=settings.progress_interval,
                live=sys.stderr.isatty(),
                stream=sys.stderr,
                log=log,
                estimator=ProgressEstimator(paced_rate=_paced_rate(settings)),
            )
        )
        try:
            yield
        finally:
            progress.cancel()
            await asyncio.gather(progress, return_exceptions=True)


def _paced_rate(settings: Settings) -> Callable[[StatsSnapshot], float | None]:
    """Messages per second the pacing allows over the senders in use; None if one is unpaced."""

    def paced(s: StatsSnapshot) -> float | None:
        senders = [x for x in s.by_sender if x] or ([settings.sender] if settings.sender else [])
        rates = [settings.rate_for(sender) for sender in senders]
        if not rates or None in rates:
            return None
        return sum(r for r in rates if r is not None)

    return paced


def report_summary(
    stats: RunStats,
    log: Logger,
    settings: Settings,
    *,
    left_over: Callable[[StatsSnapshot], tuple[str, dict[str, object]] | None] | None = None,
) -> None:
    """The summary, once: in words for a person at a terminal, else as a `summary` event;
    `left_over` adds what a run cut short left undone (text, fields)."""
    from streamsend._progress import format_summary, summary_fields

    snapshot = stats.snapshot()
    left = left_over(snapshot) if left_over is not None else None
    human = sys.stderr.isatty() and settings.log_format != "json"
    if human:
        text = format_summary(snapshot)
        if left is not None:
            text += "\n" + left[0]
        print(text, file=sys.stderr)
    else:
        fields = summary_fields(snapshot)
        if left is not None:
            fields.update(left[1])
        log.info("summary", **fields)


def _left_over(
    s: StatsSnapshot, settings: Settings, result: RunResult, command: Sequence[str] | None
) -> tuple[str, dict[str, object]] | None:
    """For a run cut short: how many lines have no outcome, and the command that sends them."""
    if not (result.interrupted or result.aborted):
        return None
    pending = max(s.lines_read - s.outcomes, 0)
    read_whole = s.input_bytes_total is not None and s.input_bytes_read >= s.input_bytes_total
    unread = "" if read_whole else ", and the input was not read to its end"
    how = "interrupted" if result.interrupted else "stopped by the service's answer"
    text = f"  {how}: {pending:,} lines read have no outcome{unread}."
    fields: dict[str, object] = {"lines_without_outcome": pending, "input_read_whole": read_whole}
    if settings.outcomes == "-":
        text += (
            " They can't be resumed: the outcomes went to stdout, with no journal; "
            "pass --outcomes PATH to make a run resumable."
        )
        return text, fields
    resume = resume_command(command or ())
    text += f" To send them (and nothing twice): {resume}"
    fields["resume_command"] = resume
    return text, fields


def resume_command(send_args: Sequence[str]) -> str:
    """`streamsend send ARGS --resume`, from a run's own arguments (without --overwrite, which
    would send everything again), quoted for a POSIX shell."""
    import shlex

    args = [a for a in send_args if a != "--overwrite"]
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join(["streamsend", "send", *args])
