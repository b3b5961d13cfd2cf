"""`streamsend emulator` as a command: help, startup line, signals, bad input, config file."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from streamsend.emulator import EmulatorConfig, EmulatorConfigError, emulator_main
from streamsend.emulator._command import build_parser, config_from_args, load_config_file
from streamsend.emulator._config import check_config
from streamsend.testing import API_KEY, V1_LIST, V2_LIST

REPO = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"^streamsend emulator listening on http://127\.0\.0\.1:(\d+)/api$")


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`python -m streamsend.emulator` with these flags, stderr captured as text."""
    return subprocess.Popen(
        [sys.executable, "-m", "streamsend.emulator", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def served() -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A subprocess emulator on a free port, and that port (read from its startup line)."""
    process = start("--port", "0", "--api-key", API_KEY, "--list", V1_LIST, "--v2-list", V2_LIST)
    try:
        assert process.stderr is not None
        line = process.stderr.readline().rstrip("\n")
        match = LISTENING.match(line)
        assert match, line
        yield process, int(match.group(1))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def send_one(port: int, key: str = API_KEY) -> int:
    """POST one valid v1 message with the stdlib client (no event loop needed); the status."""
    import urllib.error
    import urllib.request

    body = orjson.dumps(
        {"from_phone_number_id": V1_LIST, "messages": [{"to_msisdn": "+14155551234", "body": "x"}]}
    )
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/messages/bulk",
        data=body,
        headers={"X-Api-Key": key, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_help_describes_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    """--help prints usage under the command's name with every flag, and returns 0."""
    assert emulator_main(["--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: streamsend emulator")
    for flag in (
        "--api-key",
        "--list",
        "--v2-list",
        "--ledger",
        "--config",
        "--send-rate",
        "--stale-after",
        "--seed",
        "--error-5xx",
        "--rate-429",
        "--retry-after",
        "--latency-ms",
        "--latency-spread-ms",
        "--drop-before",
        "--drop-after",
        "--hang",
        "--truncated-body",
        "--fault-list",
    ):
        assert flag in text


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_startup_line_serving_and_clean_stop(
    served: tuple[subprocess.Popen[str], int], signum: signal.Signals
) -> None:
    """It prints exactly one line once listening, serves, and stops with exit 0 on a signal."""
    process, port = served
    assert send_one(port) == 201
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert stderr == ""  # nothing after the startup line: no traceback, no key


def test_api_key_from_the_environment() -> None:
    """Without --api-key the key comes from TRACKLY_API_KEY, and it is never printed."""
    process = start("--port", "0", "--list", V1_LIST, env={"TRACKLY_API_KEY": API_KEY})
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        match = LISTENING.match(line.rstrip("\n"))
        assert match, line
        port = int(match.group(1))
        assert send_one(port) == 201
        assert send_one(port, key="trk_" + "0" * 32) == 401
    finally:
        process.terminate()
        _, rest = process.communicate(timeout=10)
    assert API_KEY not in line + rest
    assert process.returncode == 0


def test_bad_flag_is_one_line_and_exit_2() -> None:
    """An unknown flag ends with exit 2 and a single error line on stderr, no traceback."""
    process = start("--port", "0", "--api-key", API_KEY, "--bogus")
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 2
    assert stderr.count("\n") == 1
    assert stderr.startswith("streamsend emulator: error:")
    assert "--bogus" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("argv", "mentions"),
    [
        (["--error-5xx", "1.5"], "error_5xx"),
        (["--error-5xx", "0.6", "--hang", "0.6"], "add up"),
        (["--stale-after", "soon"], "soon"),
        (["--send-rate", "fast"], "fast"),
        (["--port", "70000"], "port"),
        (["--v2-list", "18005551000"], "E.164"),
        (["--list-rate", "pn_unknown=60/min"], "pn_unknown"),
        (["--send-rate", "600"], "600/min or 600/s"),
        (["--list-rate", "pn_abc123def456=60"], "60/min or 60/s"),
        (["--ledger", "/nonexistent-dir/ledger.ndjson"], "ledger"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], mentions: str
) -> None:
    """Unusable values end with exit 2 and one line naming the setting, before serving."""
    assert emulator_main(["--port", "0", "--api-key", API_KEY, *argv]) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1
    assert stderr.startswith("streamsend emulator: error:")
    assert mentions in stderr
    assert "listening" not in stderr


def test_no_api_key_at_all_is_an_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no --api-key, none in the config and no TRACKLY_API_KEY, it refuses to start."""
    monkeypatch.delenv("TRACKLY_API_KEY", raising=False)
    assert emulator_main(["--port", "0"]) == 2
    assert "API key" in capsys.readouterr().err


def test_example_config_file_is_valid() -> None:
    """configs/emulator.toml loads and describes a usable emulator (given a key)."""
    config = load_config_file(REPO / "configs" / "emulator.toml", EmulatorConfig(api_keys=("k",)))
    check_config(config)
    assert config.v1_lists == (V1_LIST,)
    assert config.stale_after_s == 1800.0


def test_config_file_then_flags(tmp_path: Path) -> None:
    """Settings come from the TOML file, and flags win over it."""
    path = tmp_path / "emulator.toml"
    path.write_text(
        'api_keys = ["from-file"]\nsend_rate_per_min = "300/s"\nstale_after_s = 2\n'
        'v1_lists = ["pn_a"]\n[faults]\nseed = 9\nhang = 0.25\nlists = ["pn_a"]\n'
    )
    args = build_parser().parse_args(
        ["--config", str(path), "--stale-after", "1m", "--hang", "0.5", "--list", "pn_b"]
    )
    config = config_from_args(args, environ={"TRACKLY_API_KEY": "from-env"})
    assert config.api_keys == ("from-file",)
    assert config.send_rate_per_min == 18_000.0
    assert config.stale_after_s == 60.0
    assert config.v1_lists == ("pn_b",)
    assert (config.faults.seed, config.faults.hang, config.faults.lists) == (9, 0.5, ("pn_a",))


@pytest.mark.parametrize(
    ("text", "mentions"),
    [
        ("colour = 'blue'\n", "'colour'"),
        ("[faults]\nerror_500 = 0.1\n", "'faults.error_500'"),
        ("port = 'eighty'\n", "port"),
        ("v1_lists = 'pn_a'\n", "v1_lists"),
        ("port = \n", "not valid TOML"),
    ],
)
def test_bad_config_file_names_the_file_and_key(tmp_path: Path, text: str, mentions: str) -> None:
    """A config file with an unknown key or a wrong type is refused, naming file and key."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(EmulatorConfigError) as raised:
        load_config_file(path, EmulatorConfig())
    assert str(path) in str(raised.value)
    assert mentions in str(raised.value)


def test_missing_config_file_is_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A --config path that can't be read ends with exit 2 and one line naming it."""
    missing = tmp_path / "missing.toml"
    assert emulator_main(["--config", str(missing), "--api-key", API_KEY]) == 2
    stderr = capsys.readouterr().err
    assert str(missing) in stderr
    assert stderr.count("\n") == 1


def test_port_in_use_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    """When the port is taken, it says so in one line and exits 1 (not a usage error)."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert emulator_main(["--port", str(port), "--api-key", API_KEY]) == 1
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1
    assert f"cannot listen on 127.0.0.1:{port}" in stderr
