"""What every `streamsend` subcommand's command line has in common.

A usage error is one line on stderr and exit 2: `send`'s full usage is fifteen lines, which
buries the one that says what was wrong. `send`, `check`, `demo` and `emulator` all parse with
`OneLineParser` (subparsers inherit it): no abbreviated flags (`--fr` is not `--from`: an
abbreviation that means one flag today can mean another when a flag is added), and an unknown
flag gets the nearest real one suggested.

`add_setting_arguments` declares the flags `send`, `check` and `config show` share, once, so the
commands read the same settings the same way (flags > STREAMSEND_* > --config > defaults).
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Sequence
from typing import Any, NoReturn

from streamsend._types import ExitCode


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line naming the fix (`--help`), exit 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        hint = self._suggestion(message)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}{hint} (see {self.prog} --help)\n")

    def _suggestion(self, message: str) -> str:
        if not message.startswith("unrecognized arguments:"):
            return ""
        known = [flag for flag in self._option_string_actions if flag.startswith("--")]
        for word in message.split(":", 1)[1].split():
            flag = word.split("=", 1)[0]
            if not flag.startswith("-"):
                continue
            close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
            prefixed = [k for k in known if k.startswith(flag)] if len(flag) > 2 else []
            nearest = close or prefixed
            if nearest:
                return f"; did you mean {nearest[0]}?"
        return ""


#: The flags of settings more than one command reads: dest → (flag, add_argument options).
_SETTING_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "config": (
        "--config",
        {
            "metavar": "TOML",
            "help": "a config file (see configs/; default: the file STREAMSEND_CONFIG names, "
            "else none)",
        },
    ),
    "api_version": (
        "--api-version",
        {"choices": ("v1", "v2"), "help": "bulk API version (default v1)"},
    ),
    "sender": (
        "--from",
        {
            "metavar": "SENDER",
            "help": "sending list: v1 from_phone_number_id, v2 list_number (E.164); a line's "
            "own from_phone_number_id / list_number overrides it (default: none, each line "
            "names its own)",
        },
    ),
    "max_line_bytes": (
        "--max-line-bytes",
        {"type": int, "metavar": "N", "help": "longer lines are invalid (default 65536)"},
    ),
}


def add_setting_arguments(parser: argparse.ArgumentParser, *names: str) -> None:
    """Add the shared setting flags `names` (keys of the settings: "api_version", ...)."""
    for name in names:
        flag, options = _SETTING_FLAGS[name]
        parser.add_argument(flag, dest=name, **options)


def setting_values(args: argparse.Namespace, names: Sequence[str]) -> dict[str, object]:
    """The settings given as flags (None: not given), for `load_settings(cli=...)`."""
    return {name: getattr(args, name, None) for name in names if name != "config"}
