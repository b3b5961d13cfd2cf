"""A campaign as people have them: what turns input records into messages and which of them go.

`Campaign.load(settings)` reads the campaign options once (the template, the CSV columns) and
is what the source (`columns`) and the pipeline use. The command-line flags for them are
declared here too, once, for `send` and `check` alike.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from streamsend._config import Settings
from streamsend._csv_source import CsvColumns
from streamsend._exceptions import ConfigError
from streamsend._models import Outcome, Status
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


@dataclass(frozen=True, slots=True)
class Campaign:
    """The campaign options of one run, read and checked once."""

    columns: CsvColumns
    template: Template | None = None

    @classmethod
    def load(cls, settings: Settings) -> Campaign:
        """Read the template; ConfigError naming the flag when something is wrong."""
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
        return cls(columns=columns, template=template)


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


__all__ = ["INPUT_SETTINGS", "Campaign", "add_input_arguments", "source_refusals"]
