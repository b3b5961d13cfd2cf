"""The command line as a user meets it, in a subprocess: help, and every usage or config error
ending as one clear line on stderr with exit 2 and no traceback; `config show` never shows the key.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tests.conftest import clean_env

KEY = "trk_" + "Cl1Te5tK" * 4  # shaped like a real key: trk_ and 32 letters/digits
SCRIPT = Path(sys.executable).with_name("streamsend")
GOOD_LINE = b'{"to_msisdn": "+14155551234", "body": "hi"}\n'

Run = Callable[..., subprocess.CompletedProcess[str]]


def runner(prefix: Sequence[str], cwd: Path) -> Run:
    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*prefix, *args],
            capture_output=True,
            text=True,
            cwd=cwd,
            env=clean_env() if env is None else env,
            stdin=subprocess.DEVNULL,
            timeout=120,
            check=False,
        )

    return run


@pytest.fixture
def module(tmp_path: Path) -> Run:
    """Runs `python -m streamsend ...` in tmp_path."""
    return runner([sys.executable, "-m", "streamsend"], tmp_path)


@pytest.fixture(params=["module", "script"])
def streamsend(request: pytest.FixtureRequest, tmp_path: Path) -> Run:
    """Runs `python -m streamsend ...` or the `streamsend` console script, in tmp_path."""
    if request.param == "module":
        return runner([sys.executable, "-m", "streamsend"], tmp_path)
    return runner([str(SCRIPT)], tmp_path)


def assert_usage_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2, nothing on stdout, one line on stderr that contains every needle."""
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("streamsend")
    assert "error" in lines[0]
    for needle in needles:
        assert needle in lines[0]
    assert result.stdout == ""
    return lines[0]


def test_console_script_is_installed() -> None:
    """`pip install` put a `streamsend` console script beside the interpreter."""
    assert SCRIPT.exists()


# -- help ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        pytest.param(["--help"], ["send", "check", "emulator", "config"], id="top"),
        pytest.param(
            ["send", "--help"],
            ["--outcomes", "--rate", "--batch-size", "--linger-ms", "TRACKLY_API_KEY", "Exit"],
            id="send",
        ),
        pytest.param(["check", "--help"], ["usage:"], id="check"),
        pytest.param(["emulator", "--help"], ["--port", "--ledger"], id="emulator"),
        pytest.param(["config", "--help"], ["show"], id="config"),
        pytest.param(["config", "show", "--help"], ["--config"], id="config-show"),
    ],
)
def test_help(module: Run, args: list[str], needles: list[str]) -> None:
    """Each command's --help prints its usage to stdout and exits 0."""
    result = module(*args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")
    for needle in needles:
        assert needle in result.stdout
    assert "Traceback" not in result.stderr


# -- usage errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        pytest.param(["send", "--bogus"], ["--bogus"], id="unknown-flag"),
        pytest.param(["send", "--batch-size", "abc"], ["--batch-size", "abc"], id="not-a-number"),
        pytest.param(["send", "--api-version", "v9"], ["v9"], id="bad-choice"),
        pytest.param([], ["COMMAND"], id="no-command"),
        pytest.param(["frobnicate"], ["frobnicate"], id="unknown-command"),
        pytest.param(["config"], ["show"], id="config-without-show"),
    ],
)
def test_bad_flag_is_one_line(module: Run, args: list[str], needles: list[str]) -> None:
    """A bad flag or command is one clear line on stderr, exit 2, no usage dump, no traceback."""
    assert_usage_error(module(*args), *needles)


def test_console_script(streamsend: Run) -> None:
    """The console script and `python -m` behave alike: help, and a bad flag as one line."""
    result = streamsend("send", "--help")
    assert result.returncode == 0, result.stderr
    assert "--outcomes" in result.stdout
    assert_usage_error(streamsend("send", "--bogus"), "--bogus")


def test_missing_api_key(module: Run, tmp_path: Path) -> None:
    """No TRACKLY_API_KEY and no key file: exit 2 saying where a key comes from."""
    (tmp_path / "in.ndjson").write_bytes(GOOD_LINE)
    assert_usage_error(module("send", "in.ndjson"), "TRACKLY_API_KEY")


def test_malformed_api_key_is_not_echoed(module: Run, tmp_path: Path) -> None:
    """A key of the wrong shape is refused (exit 2) without printing any of it."""
    (tmp_path / "in.ndjson").write_bytes(GOOD_LINE)
    bad = "trk_" + "Zz9" * 9
    result = module("send", "in.ndjson", env=clean_env(TRACKLY_API_KEY=bad))
    line = assert_usage_error(result, "TRACKLY_API_KEY")
    assert bad[4:12] not in line


@pytest.mark.parametrize(
    ("args", "env", "needles"),
    [
        pytest.param(["--batch-size", "5000"], {}, ["--batch-size", "out of range"], id="flag"),
        pytest.param(["--rate", "fast"], {}, ["rate", "fast"], id="flag-rate"),
        pytest.param(
            [], {"STREAMSEND_LINGER_MS": "soon"}, ["STREAMSEND_LINGER_MS", "soon"], id="env"
        ),
        pytest.param([], {"STREAMSEND_BATCHSIZE": "5"}, ["STREAMSEND_BATCHSIZE"], id="env-unknown"),
        pytest.param(["--from", " "], {}, ["sender", "non-empty"], id="blank-sender"),
        pytest.param(
            ["--api-version", "v2", "--from", "pn_abc"], {}, ["--from", "E.164"], id="v2-sender"
        ),
    ],
)
def test_bad_config_value(
    module: Run, tmp_path: Path, args: list[str], env: dict[str, str], needles: list[str]
) -> None:
    """A bad setting from a flag or the environment: exit 2, one line naming the key."""
    (tmp_path / "in.ndjson").write_bytes(GOOD_LINE)
    result = module("send", *args, "in.ndjson", env=clean_env(TRACKLY_API_KEY=KEY, **env))
    assert_usage_error(result, *needles)


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        pytest.param('concurrency = "many"\n', "concurrency", id="wrong-type"),
        pytest.param("batch_size = 1001\n", "batch_size", id="out-of-range"),
        pytest.param("rate = inf\n", "rate", id="infinite-rate"),
        pytest.param("lingr_ms = 5\n", "lingr_ms", id="unknown-key"),
    ],
)
def test_bad_config_file(module: Run, tmp_path: Path, toml: str, key: str) -> None:
    """A bad key in the --config file: exit 2, one line naming the key and the file."""
    (tmp_path / "in.ndjson").write_bytes(GOOD_LINE)
    (tmp_path / "bad.toml").write_text(toml, encoding="utf-8")
    result = module("send", "--config", "bad.toml", "in.ndjson", env=clean_env(TRACKLY_API_KEY=KEY))
    assert_usage_error(result, key, "bad.toml")


def test_existing_outcomes_need_resume(module: Run, tmp_path: Path) -> None:
    """An outcomes file that already holds outcomes is not appended to silently: exit 2 with the
    hint to --resume (or --overwrite), and the file is left as it was."""
    (tmp_path / "in.ndjson").write_bytes(GOOD_LINE)
    earlier = b'{"line":1,"source":"in.ndjson","status":"queued","attempts":1}\n'
    (tmp_path / "out.ndjson").write_bytes(earlier)
    result = module("send", "--emulator", "--outcomes", "out.ndjson", "in.ndjson")
    assert_usage_error(result, "out.ndjson", "--resume", "--overwrite")
    assert (tmp_path / "out.ndjson").read_bytes() == earlier


def test_resume_and_overwrite_contradict(module: Run, tmp_path: Path) -> None:
    """--resume with --overwrite is refused: exit 2."""
    (tmp_path / "in.ndjson").write_bytes(GOOD_LINE)
    result = module(
        "send", "--emulator", "--resume", "--overwrite", "--outcomes", "o.ndjson", "in.ndjson"
    )
    assert_usage_error(result, "--resume", "--overwrite")


@pytest.mark.parametrize(
    "inputs",
    [
        pytest.param(["missing.ndjson"], id="missing"),
        pytest.param(["in.ndjson", "missing.ndjson"], id="missing-after-a-good-one"),
        pytest.param(["in.ndjson", "."], id="directory"),
    ],
)
def test_unreadable_input_is_refused_before_sending(
    module: Run, tmp_path: Path, inputs: Sequence[str]
) -> None:
    """An input that can't be read is exit 2 before any line is sent: no outcome is written,
    even for the inputs before it."""
    (tmp_path / "in.ndjson").write_bytes(GOOD_LINE)
    result = module("send", "--emulator", "--outcomes", "out.ndjson", *inputs)
    assert_usage_error(result, "can't open input", inputs[-1])
    outcomes = tmp_path / "out.ndjson"
    assert not outcomes.exists() or outcomes.read_bytes() == b""


@pytest.mark.parametrize("flag", ["--outcomes", "--journal"])
def test_unwritable_outcomes_or_journal(module: Run, tmp_path: Path, flag: str) -> None:
    """An outcomes or journal path in a directory that doesn't exist: exit 2, one line naming
    the path, no traceback."""
    (tmp_path / "in.ndjson").write_bytes(GOOD_LINE)
    paths = {"--outcomes": "out.ndjson", "--journal": "out.journal"}
    paths[flag] = "no-such-dir/file"
    args = ["--outcomes", paths["--outcomes"], "--journal", paths["--journal"], "in.ndjson"]
    result = module("send", "--emulator", *args)
    assert_usage_error(result, "no-such-dir/file")


def test_duplicate_input_is_refused(module: Run, tmp_path: Path) -> None:
    """The same input twice would make two lines one outcome: exit 2."""
    (tmp_path / "in.ndjson").write_bytes(GOOD_LINE)
    assert_usage_error(module("send", "--emulator", "in.ndjson", "in.ndjson"), "in.ndjson")


# -- config show ---------------------------------------------------------------------------------


def test_config_show_redacts_the_key(streamsend: Run) -> None:
    """`config show` says a key is set and where from, and never prints it."""
    result = streamsend(
        "config", "show", env=clean_env(TRACKLY_API_KEY=KEY, STREAMSEND_RETRIES="7")
    )
    assert result.returncode == 0, result.stderr
    assert KEY not in result.stdout + result.stderr
    assert KEY[4:] not in result.stdout + result.stderr
    assert "# api_key: from TRACKLY_API_KEY (trk_***" in result.stdout
    assert tomllib.loads(result.stdout)["retries"] == 7


def test_config_show_with_key_file(module: Run, tmp_path: Path) -> None:
    """With the key in a file, `config show` names the file's use, not its content."""
    (tmp_path / "trackly.key").write_text(KEY, encoding="utf-8")
    (tmp_path / "prod.toml").write_text(
        'api_key_file = "trackly.key"\nrate = "17000/min"\n', encoding="utf-8"
    )
    result = module("config", "show", "--config", "prod.toml")
    assert result.returncode == 0, result.stderr
    assert KEY[4:] not in result.stdout + result.stderr
    assert "# api_key: from api_key_file trackly.key" in result.stdout
    assert tomllib.loads(result.stdout)["rate"] == "17000/min"


def test_config_show_bad_file(module: Run, tmp_path: Path) -> None:
    """`config show` reports a bad file like `send` does: exit 2, one line."""
    (tmp_path / "bad.toml").write_text("timeout = -1\n", encoding="utf-8")
    assert_usage_error(module("config", "show", "--config", "bad.toml"), "timeout", "bad.toml")
