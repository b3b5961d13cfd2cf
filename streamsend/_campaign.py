"""A campaign as people have them: what turns input records into messages and which of them go.

`Campaign.load(settings)` reads the campaign options once (the template, the CSV columns, the
opt-out list, earlier runs' outcomes) and is what the source (`columns`), the pipeline
(`sort_out`) and the attempt loop (`expiry`) use. The command-line flags for them are declared
here too, once, for `send` and `check` alike.

`sort_out` settles, for each validated message, whether it goes, in this order:
suppressed (on the opt-out list) → duplicate (sent before, by --skip-sent; or a copy of an
earlier line, by --dedupe) → expired (its moment passed already) → sent. With no opt-out list,
no --skip-sent and --dedupe off, the pipeline skips it entirely (`sorts_out` is False), except
for lines that carry a `send_before`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from streamsend._columns import Columns, drop, recipient_numbers
from streamsend._config import Settings
from streamsend._csv_source import CsvColumns
from streamsend._dedupe import Dedupe, load_sent_recipients
from streamsend._exceptions import ConfigError
from streamsend._expiry import Expiry
from streamsend._models import Message, Outcome, Status, outcome_of
from streamsend._suppress import NumberSet, Suppression, load_suppression
from streamsend._template import Template, load_template
from streamsend._types import LineBlock

#: The settings the input flags set (for `_cli_values`-style collection).
INPUT_SETTINGS = (
    "input_format",
    "to_column",
    "body_column",
    "ref_column",
    "template",
    "template_file",
)


def add_input_arguments(p: argparse.ArgumentParser) -> None:
    """The flags that say how input records become messages (send and check)."""
    p.add_argument(
        "--format",
        dest="input_format",
        choices=("ndjson", "csv", "tsv"),
        help="input format (default: by extension - .csv, .tsv, .ndjson, under .gz/.zst - "
        "else by the first line); gzip and zstd are read by extension or magic bytes",
    )
    p.add_argument(
        "--to-column",
        metavar="NAME",
        help="CSV/TSV: the recipient column (default to_msisdn, then to, then phone)",
    )
    p.add_argument("--body-column", metavar="NAME", help="CSV/TSV: the body column (default body)")
    p.add_argument(
        "--ref-column", metavar="NAME", help="CSV/TSV: the column echoed as `ref` (default ref)"
    )
    p.add_argument(
        "--template",
        metavar="TEXT",
        help="the body, from each record's fields: 'Hi {first_name}, your code is {code}' "
        "({{ and }} are literal braces; a missing or empty field makes the line invalid; "
        "default: none, each record's own body)",
    )
    p.add_argument(
        "--template-file", metavar="PATH", help="read the template from a file (default: none)"
    )


#: The settings the sorting-out flags set.
SORTING_SETTINGS = ("suppress", "dedupe", "dedupe_window", "skip_sent", "expire_after")


def add_sorting_arguments(p: argparse.ArgumentParser) -> None:
    """The flags that say which messages go (send and check)."""
    p.add_argument(
        "--suppress",
        action="append",
        metavar="FILE",
        help="opt-out list: numbers never to text (one per line, or CSV/NDJSON with a phone "
        "column; gzip/zstd too); those lines end `suppressed`. Repeat for more files "
        "(default: none)",
    )
    p.add_argument(
        "--dedupe",
        choices=("message", "recipient", "off"),
        help="message (default): the same message to the same recipient again in this run is "
        "`duplicate`; recipient: one message per recipient; off: send every line",
    )
    p.add_argument(
        "--dedupe-window",
        type=int,
        metavar="N",
        help="distinct messages --dedupe remembers at least (default 262144; about 120 bytes "
        "of memory each, at most twice that many)",
    )
    p.add_argument(
        "--skip-sent",
        action="append",
        metavar="OUTCOMES",
        help="recipients `queued` in this earlier run's outcomes file are `duplicate` (repeat "
        "for more files; default: none)",
    )
    p.add_argument(
        "--expire-after",
        metavar="DURATION",
        help="a line not sent within this long of being read (e.g. 2h, 90m) is `expired`, as "
        "is one past its own `send_before` (RFC 3339; default: no limit)",
    )


@dataclass(frozen=True, slots=True)
class Campaign:
    """The campaign options of one run, read and checked once."""

    columns: CsvColumns
    template: Template | None = None
    suppression: Suppression | None = None
    sent_before: NumberSet | None = None  # --skip-sent: recipients queued by earlier runs
    dedupe: Dedupe | None = None
    expiry: Expiry = field(default_factory=lambda: Expiry(expire_after=None))

    @classmethod
    def load(cls, settings: Settings, *, clock: Callable[[], float] = time.time) -> Campaign:
        """Read the template and the files; ConfigError naming the flag when one is wrong."""
        try:
            template = load_template(settings.template, settings.template_file)
        except ValueError as exc:
            flag = "--template-file" if settings.template_file else "--template"
            raise ConfigError(f"{flag}: {exc}") from None
        columns = CsvColumns(
            api_version=settings.api_version,
            to_column=settings.to_column,
            body_column=settings.body_column,
            ref_column=settings.ref_column,
            template=template,
        )
        return cls(
            columns=columns,
            template=template,
            suppression=load_suppression(settings.suppress) if settings.suppress else None,
            sent_before=load_sent_recipients(settings.skip_sent) if settings.skip_sent else None,
            dedupe=None
            if settings.dedupe == "off"
            else Dedupe(settings.dedupe, window=settings.dedupe_window),
            expiry=Expiry(expire_after=settings.expire_after, clock=clock),
        )

    @property
    def sorts_out(self) -> bool:
        """Whether any message could be held back other than by its own `send_before`."""
        return (
            self.suppression is not None
            or self.sent_before is not None
            or self.dedupe is not None
            or self.expiry.expire_after is not None
        )

    def sort_out(self, messages: list[Message] | Columns, block: LineBlock) -> list[Outcome]:
        """Take the messages that don't go out of `messages` (in place); return their
        outcomes."""
        settled: list[Outcome] = []
        if self.suppression is not None:
            settled += _take_listed(messages, self.suppression.numbers, _suppressed)
        if self.sent_before is not None:
            settled += _take_listed(messages, self.sent_before, _sent_before)
        if self.dedupe is not None:
            settled += self.dedupe.sort_out(messages)
        if block.deadlines or self.expiry.expire_after is not None:
            settled += self.expiry.sort_out(messages, block)
        return settled

    def remember(self, messages: Sequence[Message]) -> None:
        """Messages an earlier run settled (on --resume): copies of them are still duplicates."""
        if self.dedupe is not None and messages:
            listed = self.suppression.numbers if self.suppression is not None else None
            # A suppressed line never reached --dedupe in the earlier run either.
            kept = [m for m in messages if listed is None or m.to not in listed]
            self.dedupe.remember(kept)


def _take_listed(
    messages: list[Message] | Columns,
    numbers: NumberSet,
    outcome: Callable[[Message], Outcome],
) -> list[Outcome]:
    has = numbers.has_digits
    listed = [i for i, number in enumerate(recipient_numbers(messages)) if has(number)]
    if not listed:
        return []
    outcomes = [outcome(messages[i]) for i in listed]
    drop(messages, set(listed))
    return outcomes


def _suppressed(m: Message) -> Outcome:
    return outcome_of(
        m, Status.SUPPRESSED, "opted_out", "the recipient is on the opt-out list (--suppress)"
    )


def _sent_before(m: Message) -> Outcome:
    return outcome_of(
        m,
        Status.DUPLICATE,
        "sent_before",
        "an earlier run queued a message to this recipient (--skip-sent)",
    )


def source_refusals(block: LineBlock, lines: Sequence[int] | None = None) -> list[Outcome]:
    """`invalid` outcomes for the lines the source refused itself (all, or those in `lines`)."""
    errors = block.errors
    if not errors:
        return []
    return [
        Outcome(block.source, line, Status.INVALID, code, error)
        for line, (code, error) in sorted(errors.items())
        if lines is None or line in lines
    ]


__all__ = [
    "INPUT_SETTINGS",
    "SORTING_SETTINGS",
    "Campaign",
    "add_input_arguments",
    "add_sorting_arguments",
    "source_refusals",
]
