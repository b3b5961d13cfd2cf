"""The README's shell examples, run as written (against the emulator where they would send).

Every `streamsend ...` line of the README's sh blocks in "Sending", plus the `check` and
`config show` examples of the text, run in a directory holding a small `campaign.ndjson`, with
the key and STREAMSEND_BASE_URL in the environment (the README's own way of pointing a run
elsewhere): each must succeed. `producer | ...` is fed the campaign on stdin.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from streamsend.testing import API_KEY
from tests.conftest import clean_env, emulator_subprocess, write_numbered_input

README = Path(__file__).resolve().parent.parent / "README.md"
SCRIPT = Path(sys.executable).with_name("streamsend")


def sending_commands() -> list[str]:
    """The `streamsend` command lines of the "Sending" section's sh block, comments removed."""
    section = README.read_text(encoding="utf-8").split("\n## Sending\n", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None
    commands = []
    for line in block[1].splitlines():
        command = line.split("  #", 1)[0].strip()
        if "streamsend " in command:
            commands.append(command)
    return commands


def text_commands() -> list[str]:
    """`streamsend check ...` and `streamsend config show ...` examples quoted in the text."""
    text = README.read_text(encoding="utf-8")
    return re.findall(r"`(streamsend (?:check \S+\.ndjson|config show)[^`]*)`", text)


def test_the_readme_has_the_examples_this_test_runs() -> None:
    """The extraction finds the examples (so a rewording can't silently empty this test)."""
    assert len(sending_commands()) == 3
    examples = text_commands()
    assert any(c.startswith("streamsend check campaign.ndjson") for c in examples)
    assert any(c.startswith("streamsend config show") for c in examples)


@pytest.mark.parametrize("index", range(3))
def test_sending_examples_run_as_written(tmp_path: Path, index: int) -> None:
    """Each command of the README's "Sending" block sends the campaign (exit 0, one outcome
    per line)."""
    command = sending_commands()[index]
    write_numbered_input(tmp_path / "campaign.ndjson", 3)
    stdin = b""
    if command.startswith("producer | "):
        command = command.removeprefix("producer | ")
        stdin = (tmp_path / "campaign.ndjson").read_bytes()
    argv = shlex.split(command)
    assert argv[0] == "streamsend"
    with emulator_subprocess(tmp_path) as emu:
        done = subprocess.run(
            [str(SCRIPT), *argv[1:]],
            input=stdin,
            capture_output=True,
            cwd=tmp_path,
            env=clean_env(TRACKLY_API_KEY=API_KEY, STREAMSEND_BASE_URL=emu.base_url),
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    outcomes = tmp_path / "outcomes.ndjson"
    written = outcomes.read_bytes() if outcomes.exists() else done.stdout
    assert len(written.splitlines()) == 3


def test_check_and_config_show_examples_run_as_written(tmp_path: Path) -> None:
    """The `check` and `config show` examples of the text run (exit 0) on a clean campaign."""
    write_numbered_input(tmp_path / "campaign.ndjson", 3)
    for command in text_commands():
        argv = shlex.split(command.replace("[--config FILE] [SEND FLAGS]", ""))
        done = subprocess.run(
            [str(SCRIPT), *argv[1:]],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            cwd=tmp_path,
            env=clean_env(TRACKLY_API_KEY=API_KEY, STREAMSEND_FROM="pn_abc123def456"),
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, (command, done.stderr.decode()[-2000:])
