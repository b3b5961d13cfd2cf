"""What every `streamsend` subcommand's command line has in common.

A usage error is one line on stderr and exit 2: `send`'s full usage is fifteen lines, which
buries the one that says what was wrong. `send`, `check`, `demo` and `emulator` all parse with
`OneLineParser` (subparsers inherit it).
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from streamsend._types import ExitCode


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line naming the fix (`--help`), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
