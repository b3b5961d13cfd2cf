"""The offline campaign check, `streamsend check`: what a send would do, without sending.

Every non-blank input line goes through the same `Validator` that `send` uses, so a line the check
calls valid is a line `send` would put in a request, and an invalid one gets the same code. One
NDJSON record per line says so, with the normalised recipient, the segment count and the encoding;
a `CheckSummary` adds up what the campaign would cost: segments, GSM-7 against UCS-2 bodies, and
recipients who would get more than one message.

Promises:
- Exactly one record per non-blank line, in input order. Blank and whitespace-only lines are
  skipped, as `send` skips them, but keep the line numbering.
- Memory grows with the number of distinct recipients (one set entry each), not with the input:
  tens of millions of lines are fine.
- Nothing touches the network.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import BinaryIO

import orjson

from streamsend._campaign import (
    INPUT_SETTINGS,
    SORTING_SETTINGS,
    Campaign,
    add_input_arguments,
    add_sorting_arguments,
)
from streamsend._config import load_settings
from streamsend._csv_source import CsvColumns
from streamsend._exceptions import ConfigError, InputError, StreamsendError
from streamsend._formats import InputFormat, precheck_inputs
from streamsend._models import Encoding, Message
from streamsend._pacing import (
    DEFAULT_RATE,
    DEFAULT_RATE_PER_MIN,
    UNLIMITED,
    format_rate,
    parse_rate,
)
from streamsend._source import DEFAULT_MAX_LINE_BYTES, read_inputs
from streamsend._types import ApiVersion, ExitCode
from streamsend._usage import OneLineParser, add_setting_arguments, setting_values
from streamsend._validate import Validator, sender_problem

#: Stands in for a missing `--from` under v1, where any non-empty ID is well-formed: the check
#: can say nothing about an ID it would have to ask the service about, so without one it checks
#: everything else rather than failing every line on `missing_from`.
V1_PLACEHOLDER_SENDER = "pn_check"

#: How many of the numbers that would get several messages the summary names.
_EXAMPLE_DUPLICATES = 5
#: How many lines of each example the summary names (its first message's, then the others').
_LINES_PER_DUPLICATE = 3
#: How many rendered bodies (with a template) the summary shows.
_SAMPLES = 3


@dataclass(frozen=True, slots=True)
class CheckSummary:
    """What a campaign amounts to. `invalid_by_code` maps each refusal code to its line count."""

    valid: int
    invalid_by_code: dict[str, int]
    segments: int  # of the valid messages: what sending them would cost
    gsm7: int  # valid messages encoded as GSM-7
    ucs2: int  # valid messages encoded as UCS-2
    duplicate_recipients: int  # numbers that would get more than one message
    duplicate_messages: int  # messages beyond the first to those numbers
    duplicate_examples: tuple[str, ...] = ()  # a few of those numbers, most messages first
    # For each example, where its messages are ("12" or "file.csv:12"; the first few).
    duplicate_lines: tuple[tuple[str, ...], ...] = ()
    sender_checked: bool = True  # False when v1 ran without --from (see V1_PLACEHOLDER_SENDER)
    inputs: tuple[str, ...] = field(default=())
    # The most valid messages any one sending number has: pacing is per sending number, so
    # this one sets how long the campaign takes.
    busiest_sender_messages: int = 0
    segment_spread: dict[int, int] = field(default_factory=dict)  # segments -> messages
    samples: tuple[str, ...] = ()  # the first few rendered bodies (with a template)
    held_back: dict[str, int] = field(default_factory=dict)  # suppressed/duplicate/expired lines

    @property
    def invalid(self) -> int:
        return sum(self.invalid_by_code.values())

    @property
    def lines(self) -> int:
        return self.valid + self.invalid + sum(self.held_back.values())

    def duration_at(self, rate_per_s: float | None) -> float | None:
        """Seconds the campaign takes paced at `rate_per_s` per sending number (None: unpaced)."""
        if rate_per_s is None:
            return None
        return self.busiest_sender_messages / rate_per_s

    def estimated_cost(self, price_per_segment: Decimal | int | str) -> Decimal:
        """The cost of sending the valid messages at `price_per_segment` per segment.

        Decimal, not float, because it is money: 3 segments at 0.0075 is 0.0225, exactly.
        """
        return Decimal(price_per_segment) * self.segments

    def to_dict(
        self, price_per_segment: Decimal | None = None, rate_per_s: float | None = None
    ) -> dict[str, object]:
        """The summary as JSON-ready fields (what `--summary-json` writes)."""
        record: dict[str, object] = {
            "lines": self.lines,
            "valid": self.valid,
            "invalid": self.invalid,
            "invalid_by_code": dict(sorted(self.invalid_by_code.items())),
            "segments": self.segments,
            "encoding": {Encoding.GSM7.value: self.gsm7, Encoding.UCS2.value: self.ucs2},
            "duplicate_recipients": self.duplicate_recipients,
            "duplicate_messages": self.duplicate_messages,
            "duplicate_examples": list(self.duplicate_examples),
            "duplicate_lines": [list(lines) for lines in self.duplicate_lines],
            "sender_checked": self.sender_checked,
            "rate": format_rate(rate_per_s),
            "estimated_seconds": self.duration_at(rate_per_s),
            "segment_spread": {str(k): v for k, v in sorted(self.segment_spread.items())},
            "samples": list(self.samples),
            "held_back": dict(sorted(self.held_back.items())),
        }
        if price_per_segment is not None:
            # A string keeps every digit; a JSON float would round 0.1 + 0.2 the float way.
            record["price_per_segment"] = str(price_per_segment)
            record["estimated_cost"] = str(self.estimated_cost(price_per_segment))
        return record


async def check_inputs(
    inputs: Sequence[str],
    *,
    api_version: ApiVersion,
    default_sender: str | None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    out: BinaryIO,
    input_format: InputFormat | None = None,
    columns: CsvColumns | None = None,
    campaign: Campaign | None = None,
) -> CheckSummary:
    """Validate every line of `inputs`, write one NDJSON record per non-blank line to `out`.

    Raises InputError when an input can't be opened or read (records for earlier lines are
    already written by then).
    """
    sender_checked = default_sender is not None or api_version != "v1"
    if default_sender is None and api_version == "v1":
        default_sender = V1_PLACEHOLDER_SENDER
    validator = Validator(api_version=api_version, default_sender=default_sender)

    valid = segments = gsm7 = 0
    invalid_by_code: dict[str, int] = {}
    # number -> where its first message is, as source index * 2**40 + line number: an int per
    # distinct recipient (the check's one per-recipient cost), yet duplicates can name lines.
    first_at: dict[str, int] = {}
    extra: dict[str, int] = {}  # number -> messages beyond its first
    again_at: dict[str, list[int]] = {}  # number -> where the first few extra messages are
    source_index: dict[str, int] = {}
    by_sender: dict[str, int] = {}
    too_long = f"the line is longer than {max_line_bytes} bytes"
    dumps = orjson.dumps

    spread: dict[int, int] = {}
    held_back: dict[str, int] = {}  # suppressed, duplicate, expired
    sorting = campaign if campaign is not None and campaign.sorts_out else None
    record: dict[str, object]
    samples: list[str] = []
    want_samples = columns is not None and columns.template is not None
    blocks = read_inputs(
        inputs, max_line_bytes=max_line_bytes, input_format=input_format, columns=columns
    )
    async for block in blocks:
        records: list[bytes] = []
        source = block.source
        refused = block.errors or {}
        for number, raw in enumerate(block.lines, block.first_line):
            if raw is None:
                code, error, ref_json = "line_too_long", too_long, b""
            elif not raw or raw.isspace():
                if number not in refused:
                    continue
                (code, error), ref_json = refused[number], b""
            else:
                result = validator.validate(source, number, raw)
                if isinstance(result, Message) and sorting is not None:
                    settled = sorting.sort_out([result], block)
                    sorting.expiry.forget([result])  # nothing is sent: no attempt checks it
                    if settled:
                        held = settled[0]
                        held_back[held.status.value] = held_back.get(held.status.value, 0) + 1
                        record = {
                            "line": number,
                            "source": source,
                            "status": held.status.value,
                            "code": held.code,
                            "error": held.error,
                            "to_msisdn": held.to_msisdn,
                        }
                        if held.duplicate_of is not None:
                            record["duplicate_of"] = held.duplicate_of
                        if held.ref_json:
                            record["ref"] = orjson.Fragment(held.ref_json)
                        records.append(dumps(record))
                        continue
                if isinstance(result, Message):
                    valid += 1
                    segments += result.segments
                    spread[result.segments] = spread.get(result.segments, 0) + 1
                    if want_samples and len(samples) < _SAMPLES:
                        samples.append(orjson.loads(raw)["body"])
                    if result.encoding is Encoding.GSM7:
                        gsm7 += 1
                    by_sender[result.sender] = by_sender.get(result.sender, 0) + 1
                    to = result.to
                    at = source_index.setdefault(source, len(source_index)) << 40 | number
                    if to in first_at:
                        extra[to] = extra.get(to, 0) + 1
                        later = again_at.setdefault(to, [])
                        if len(later) < _LINES_PER_DUPLICATE:
                            later.append(at)
                    else:
                        first_at[to] = at
                    record = {
                        "line": number,
                        "source": source,
                        "status": "valid",
                        "to_msisdn": to,
                        "segments": result.segments,
                        "encoding": result.encoding.value,
                    }
                    if result.ref_json:
                        record["ref"] = orjson.Fragment(result.ref_json)
                    records.append(dumps(record))
                    continue
                code, error, ref_json = (
                    result.code or "invalid",
                    result.error or "",
                    result.ref_json,
                )
            invalid_by_code[code] = invalid_by_code.get(code, 0) + 1
            record = {
                "line": number,
                "source": source,
                "status": "invalid",
                "code": code,
                "error": error,
            }
            if ref_json:
                record["ref"] = orjson.Fragment(ref_json)
            records.append(dumps(record))
        if records:
            # One write per block: a write per line would cost more than validating the line.
            records.append(b"")
            out.write(b"\n".join(records))

    examples = sorted(extra.items(), key=lambda item: (-item[1], item[0]))[:_EXAMPLE_DUPLICATES]
    names = list(source_index)

    def where(at: int) -> str:
        line = str(at & (1 << 40) - 1)
        return line if len(names) == 1 else f"{names[at >> 40]}:{line}"

    duplicate_lines = tuple(
        tuple(where(at) for at in (first_at[number], *again_at[number]))
        + (("…",) if count > _LINES_PER_DUPLICATE else ())
        for number, count in examples
    )
    return CheckSummary(
        valid=valid,
        invalid_by_code=invalid_by_code,
        segments=segments,
        gsm7=gsm7,
        ucs2=valid - gsm7,
        duplicate_recipients=len(extra),
        duplicate_messages=sum(extra.values()),
        duplicate_examples=tuple(number for number, _ in examples),
        duplicate_lines=duplicate_lines,
        sender_checked=sender_checked,
        inputs=tuple(inputs),
        busiest_sender_messages=max(by_sender.values(), default=0),
        segment_spread=spread,
        samples=tuple(samples),
        held_back=held_back,
    )


def format_check_summary(
    summary: CheckSummary,
    price_per_segment: Decimal | None = None,
    rate_per_s: float | None = DEFAULT_RATE_PER_MIN / 60,
) -> str:
    """The human summary `streamsend check` prints on stderr (no trailing newline)."""
    counts = f"{summary.valid:,} valid, {summary.invalid:,} invalid"
    lines = [f"checked {_count(summary.lines, 'line')}: {counts}"]
    if summary.held_back:
        lines.append(
            "  not sent: "
            + " · ".join(f"{status} {n:,}" for status, n in sorted(summary.held_back.items()))
        )
    if summary.invalid_by_code:
        by_code = sorted(summary.invalid_by_code.items(), key=lambda item: (-item[1], item[0]))
        lines.append("  invalid: " + " · ".join(f"{code} {n:,}" for code, n in by_code))
    lines.append(
        f"  segments: {summary.segments:,} "
        f"(gsm7 {_count(summary.gsm7, 'message')}, ucs2 {_count(summary.ucs2, 'message')})"
    )
    if summary.segment_spread:
        lines.append(
            "  segments per message: "
            + " · ".join(
                f"{n} × {_count(count, 'message')}"
                for n, count in sorted(summary.segment_spread.items())
            )
        )
    if summary.duplicate_recipients:
        lines.append(
            f"  duplicate recipients: {_count(summary.duplicate_recipients, 'number')} would get "
            f"{_count(summary.duplicate_messages, 'extra message')}, e.g. "
            + "; ".join(
                _duplicate_example(
                    number, summary.duplicate_lines[i] if summary.duplicate_lines else ()
                )
                for i, number in enumerate(summary.duplicate_examples)
            )
        )
    if price_per_segment is not None:
        cost = summary.estimated_cost(price_per_segment)
        lines.append(
            f"  estimated cost: {summary.segments:,} segments at {price_per_segment} = {cost}"
        )
    seconds = summary.duration_at(rate_per_s)
    if seconds is None:
        lines.append(
            f"  rate unlimited: not paced; the service drains {DEFAULT_RATE} per sending list "
            "and drops what waits in its queue over 30 min"
        )
    else:
        lines.append(
            f"  duration at {format_rate(rate_per_s)} per sending number: "
            f"{_duration(seconds)} ({_count(summary.busiest_sender_messages, 'message')} "
            "from the busiest)"
        )
    lines.extend(f"  sample: {sample!r}" for sample in summary.samples)
    if not summary.sender_checked:
        lines.append("  note: no --from given, so the sending number was not checked")
    return "\n".join(lines)


def _duplicate_example(number: str, where: tuple[str, ...]) -> str:
    return f"{number} on lines {', '.join(where)}" if where else number


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"about {seconds:.0f} s" if seconds >= 1 else "under a second"
    minutes = round(seconds / 60)
    hours, minutes = divmod(minutes, 60)
    return f"about {hours} h {minutes} min" if hours else f"about {minutes} min"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


_DESCRIPTION = """\
Validate a campaign without sending anything. Each non-blank line is checked exactly as
`streamsend send` would check it; one JSON record per line goes to --output:
  {"line", "source", "status": "valid"|"invalid", "code" and "error" (invalid),
   "to_msisdn" (normalised, valid), "segments", "encoding": "gsm7"|"ucs2" (valid), "ref"}
A summary goes to stderr: invalid lines by code, total segments, GSM-7 vs UCS-2 messages,
recipients who would get more than one message, how long sending takes at --rate, and the
cost with --price-per-segment.

Sending number: with --from, it is checked as send would check it. Without it, v1 lines are
checked for everything but the sender (any from_phone_number_id is well-formed, and only the
service knows whether one exists); v2 lines must then carry their own list_number, and a
missing or malformed one is reported (missing_from, invalid_list_number), because v2 needs it
on every message.

Exit status: 0 every line is valid, 1 some lines are invalid, 2 bad usage or unreadable input.
"""


def _price(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of 0 or more, got {text!r}")
    return value


def _rate(text: str) -> float | None:
    if text == UNLIMITED:
        return None
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="streamsend check",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        default=["-"],
        metavar="INPUT",
        help="NDJSON, CSV or TSV files (gzip/zstd too) to check; '-' or none reads stdin",
    )
    add_input_arguments(parser)
    add_sorting_arguments(parser)
    # The same flags, STREAMSEND_* variables and config file as `send`: a campaign checked
    # for v2 in the config is checked as v2.
    add_setting_arguments(parser, "config", "api_version", "sender", "max_line_bytes")
    parser.add_argument(
        "--price-per-segment",
        type=_price,
        metavar="PRICE",
        help="price of one SMS segment, to estimate the campaign's cost (e.g. 0.0075; "
        "default: none, no cost)",
    )
    parser.add_argument(
        "--rate",
        type=_rate,
        default=DEFAULT_RATE_PER_MIN / 60,
        metavar="RATE",
        help=f"the send rate per sending number, as for send (default {DEFAULT_RATE}; "
        "unlimited): how long the campaign takes",
    )
    parser.add_argument(
        "--output",
        metavar="PATH",
        default="-",
        help="where the per-line records go (default: stdout)",
    )
    parser.add_argument(
        "--summary-json",
        metavar="PATH",
        help="also write the summary as one JSON object to PATH (default: none)",
    )
    return parser


def check_main(argv: list[str]) -> int:
    """`streamsend check` (argv without the program and subcommand names); returns the exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    try:
        summary = _run_check(args)
    except StreamsendError as exc:
        print(f"streamsend check: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python's exit-time flush of
        # stdout from raising again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.NOT_ALL_QUEUED
    # 1, as for `send`: the campaign would not be queued whole.
    # Suppressed and duplicate lines are deliberate non-sends; an expired one should have gone.
    fine = summary.invalid == 0 and not summary.held_back.get("expired")
    return ExitCode.OK if fine else ExitCode.NOT_ALL_QUEUED


def _run_check(args: argparse.Namespace) -> CheckSummary:
    settings = load_settings(
        config_path=args.config,
        cli={
            **setting_values(args, ("api_version", "sender", "max_line_bytes")),
            **{name: getattr(args, name) for name in (*INPUT_SETTINGS, *SORTING_SETTINGS)},
        },
    )
    if settings.sender is not None:
        problem = sender_problem(settings.api_version, settings.sender)
        if problem is not None:
            raise ConfigError(f"--from: {problem}")
    # Find unreadable inputs and unwritable outputs before writing anything, so a typo in the
    # last of ten file names doesn't leave nine files' records behind next to an error.
    for path in args.inputs:
        if path == "-":
            continue
        if not os.path.exists(path):
            raise InputError(f"can't open input {path!r}: no such file")
        if os.path.isdir(path) or not os.access(path, os.R_OK):
            raise InputError(f"can't open input {path!r}: not a readable file")
    precheck_inputs(args.inputs, settings.input_format)
    # The same campaign options and defaults as `send` (the flags' checks name the flag).
    campaign = Campaign.load(settings)
    columns = campaign.columns
    with ExitStack() as stack:
        out = (
            sys.stdout.buffer
            if args.output == "-"
            else _open_output(stack, args.output, "--output")
        )
        summary_file = (
            None
            if args.summary_json is None
            else _open_output(stack, args.summary_json, "--summary-json")
        )
        summary = asyncio.run(
            check_inputs(
                args.inputs,
                api_version=settings.api_version,
                default_sender=settings.sender,
                max_line_bytes=settings.max_line_bytes,
                out=out,
                input_format=settings.input_format,
                columns=columns,
                campaign=campaign,
            )
        )
        out.flush()
        print(format_check_summary(summary, args.price_per_segment, args.rate), file=sys.stderr)
        if summary_file is not None:
            record = summary.to_dict(args.price_per_segment, args.rate)
            summary_file.write(orjson.dumps(record) + b"\n")
    return summary


def _open_output(stack: ExitStack, path: str, option: str) -> BinaryIO:
    try:
        return stack.enter_context(open(path, "wb"))
    except OSError as exc:
        raise ConfigError(f"can't write {option} {path!r}: {exc.strerror}") from exc


__all__ = [
    "V1_PLACEHOLDER_SENDER",
    "CheckSummary",
    "check_inputs",
    "check_main",
    "format_check_summary",
]
