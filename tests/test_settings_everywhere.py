"""One set of settings everywhere, and the command line's manners.

`check` reads the same flags, STREAMSEND_* variables and config file as `send`; `config show`
prints TOML that loads back, with each value's origin; errors name the exact variable or key;
the CLI has --version, shows defaults, takes no abbreviations and suggests the flag meant.
Subprocess runs, as a user types them.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from streamsend._check import _parser as check_parser
from streamsend._cli import _send_parser
from streamsend._config import Settings, load_settings, resolve_settings
from streamsend._exceptions import ConfigError
from streamsend.emulator._command import build_parser as emulator_parser
from streamsend.testing import API_KEY
from tests.conftest import clean_env, emulator_subprocess

KEY = API_KEY


def streamsend(
    *args: str, cwd: Path, input_bytes: bytes = b"", **env: str
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "streamsend", *args],
        input=input_bytes,
        capture_output=True,
        cwd=cwd,
        env=clean_env(**env),
        timeout=60,
        check=False,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


V2_LINE_WITHOUT_SENDER = b'{"to_msisdn": "+14155550100", "body": "hi"}\n'


# -- check reads what send reads ------------------------------------------------------------------


def test_check_honours_streamsend_api_version(tmp_path: Path) -> None:
    """STREAMSEND_API_VERSION=v2 makes `check` validate as v2: a line with no list_number
    and no --from is `missing_from` (under v1 the same line checks valid)."""
    (tmp_path / "in.ndjson").write_bytes(V2_LINE_WITHOUT_SENDER)
    v1 = streamsend("check", "in.ndjson", cwd=tmp_path)
    v2 = streamsend("check", "in.ndjson", cwd=tmp_path, STREAMSEND_API_VERSION="v2")
    assert v1.returncode == 0, v1.stderr
    assert v2.returncode == 1, v2.stderr
    assert orjson.loads(v2.stdout)["code"] == "missing_from"


def test_check_reads_config_and_streamsend_config(tmp_path: Path) -> None:
    """`check --config FILE` and STREAMSEND_CONFIG=FILE both apply the file (here its v2 and
    sender): the same file `send` would read."""
    (tmp_path / "in.ndjson").write_bytes(V2_LINE_WITHOUT_SENDER)
    (tmp_path / "v2.toml").write_text('api_version = "v2"\nsender = "+18005551000"\n')
    by_flag = streamsend("check", "in.ndjson", "--config", "v2.toml", cwd=tmp_path)
    by_env = streamsend("check", "in.ndjson", cwd=tmp_path, STREAMSEND_CONFIG="v2.toml")
    for result in (by_flag, by_env):
        assert result.returncode == 0, result.stderr
        assert orjson.loads(result.stdout)["status"] == "valid"
    (tmp_path / "bad.toml").write_text('api_version = "v3"\n')
    bad = streamsend("check", "in.ndjson", "--config", "bad.toml", cwd=tmp_path)
    assert bad.returncode == 2
    assert "api_version in bad.toml" in bad.stderr


def test_streamsend_config_names_the_config_file() -> None:
    """STREAMSEND_CONFIG is the config file's path, not an unknown key; --config wins over it."""
    repo = Path(__file__).resolve().parent.parent / "configs"
    env = {"STREAMSEND_CONFIG": str(repo / "emulator.toml")}
    from_env = load_settings(env=env)
    assert from_env == load_settings(config_path=str(repo / "emulator.toml"), env={})
    assert from_env != Settings()
    assert load_settings(config_path=str(repo / "default.toml"), env=env) == Settings()


# -- errors name what to fix ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ('concurrency = "4"', "concurrency in f.toml: expected a whole number, got the string"),
        ('resend_unknown = "yes"', "resend_unknown in f.toml: expected true or false"),
    ],
)
def test_toml_wrong_types_are_refused(tmp_path: Path, toml: str, needle: str) -> None:
    """In a TOML file a number or boolean must be one: a quoted "4" is a mistake named with
    its key and file (the environment, where everything is text, may still say "4")."""
    (tmp_path / "f.toml").write_text(toml + "\n")
    with pytest.raises(
        ConfigError, match=re.escape(needle.replace("f.toml", str(tmp_path / "f.toml")))
    ):
        load_settings(config_path=str(tmp_path / "f.toml"), env={})
    key, value = toml.split(" = ")
    key, value = key.upper(), value.strip('"')
    assert load_settings(env={f"STREAMSEND_{key}": value}) != Settings()


# -- config show --------------------------------------------------------------------------------


def test_config_show_is_toml_that_loads_back_with_origins(tmp_path: Path) -> None:
    """`config show` prints TOML which, saved and passed to --config, gives the very same
    settings; each value says where it came from (default, file:line, the variable, the
    flag); rates are as written and per-sender rates are the `[rates]` table."""
    (tmp_path / "prod.toml").write_text(
        '# production\nconcurrency = 4\nrate = "17000/min"\n\n[rates]\n"pn_b" = "6000/min"\n'
    )
    result = streamsend(
        *("config", "show", "--config", "prod.toml", "--retries", "3"),
        cwd=tmp_path,
        STREAMSEND_API_VERSION="v2",
        TRACKLY_API_KEY=KEY,
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout
    lines = {line.split("=")[0].strip(): line for line in text.splitlines() if "=" in line}
    assert lines["concurrency"].endswith("# prod.toml:2")
    assert lines["rate"].startswith('rate = "17000/min"')
    assert lines["api_version"].endswith("# STREAMSEND_API_VERSION")
    assert lines["retries"].endswith("# --retries")
    assert lines["batch_size"].endswith("# default")
    assert '[rates]  # prod.toml:5\n"pn_b" = "6000/min"' in text
    assert "sender_rates" not in text
    assert KEY not in text

    (tmp_path / "shown.toml").write_text(text)
    expected, _ = resolve_settings(
        config_path=str(tmp_path / "prod.toml"),
        env={"STREAMSEND_API_VERSION": "v2"},
        cli={"retries": 3},
    )
    assert load_settings(config_path=str(tmp_path / "shown.toml"), env={}) == expected
    assert tomllib.loads(text)["rates"] == {"pn_b": "6000/min"}


def test_config_show_validates_the_key_as_send_does(tmp_path: Path) -> None:
    """A key `send` would refuse (`bogus`) makes `config show` exit 2 with send's message;
    no key at all is shown as not set (exit 0)."""
    bogus = streamsend("config", "show", cwd=tmp_path, TRACKLY_API_KEY="bogus")
    send = streamsend("send", "--from", "pn_a", cwd=tmp_path, TRACKLY_API_KEY="bogus")
    assert bogus.returncode == send.returncode == 2
    assert bogus.stderr.splitlines()[-1] == send.stderr.splitlines()[-1]
    assert "not shaped like a Trackly key" in bogus.stderr
    missing = streamsend("config", "show", cwd=tmp_path)
    assert missing.returncode == 0, missing.stderr
    assert "# api_key: not usable: no API key" in missing.stdout


# -- command-line manners -------------------------------------------------------------------------


def test_version(tmp_path: Path) -> None:
    """`streamsend --version` prints the installed version and exits 0."""
    result = streamsend("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert re.fullmatch(r"streamsend \d+\.\d+\.\d+\S*\n", result.stdout)


@pytest.mark.parametrize(
    "parser",
    [_send_parser, check_parser, emulator_parser],
    ids=["send (and config show)", "check", "emulator"],
)
def test_every_flag_shows_its_default(parser: Callable[[], argparse.ArgumentParser]) -> None:
    """Every flag of `send`, `check` and `emulator` that takes a value says its default in
    --help (store-true switches are off unless given)."""
    for action in parser()._actions:
        if not action.option_strings or action.nargs == 0:
            continue
        assert action.help is not None
        assert "default" in action.help, action.option_strings


@pytest.mark.parametrize(
    ("typed", "meant"), [("--fr", "--from"), ("--rat", "--rate"), ("--concurency", "--concurrency")]
)
def test_no_abbreviations_and_a_suggestion(tmp_path: Path, typed: str, meant: str) -> None:
    """A shortened or mistyped flag is refused (no abbreviations), naming the subcommand's
    --help and suggesting the nearest real flag."""
    result = streamsend("send", typed, "5", cwd=tmp_path, TRACKLY_API_KEY=KEY)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert f"did you mean {meant}?" in result.stderr
    assert "(see streamsend send --help)" in result.stderr


def test_outcomes_to_dev_null_writes_no_journal_and_says_so(tmp_path: Path) -> None:
    """`--outcomes /dev/null` keeps no journal (no /dev/null.journal is attempted) and the run
    warns that it can't be resumed and what --resume would need."""
    assert Settings(outcomes="/dev/null").journal_path is None
    assert Settings(outcomes=str(tmp_path / "o.ndjson")).journal_path == str(
        tmp_path / "o.ndjson.journal"
    )
    (tmp_path / "in.ndjson").write_bytes(V2_LINE_WITHOUT_SENDER)
    result = streamsend(
        *("send", "--emulator", "in.ndjson", "--outcomes", "/dev/null", "--log-format", "json"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    events = [orjson.loads(line) for line in result.stderr.splitlines()]
    warning = next(e for e in events if e["event"] == "no_journal")
    assert "--resume needs --outcomes PATH to a regular file" in warning["hint"]
    assert not Path("/dev/null.journal").exists()


def test_metrics_host_is_where_metrics_listen(tmp_path: Path) -> None:
    """`--metrics-host` (metrics_host) picks the address the metrics endpoint binds."""
    (tmp_path / "in.ndjson").write_bytes(V2_LINE_WITHOUT_SENDER)
    result = streamsend(
        *("send", "--emulator", "in.ndjson", "--outcomes", "o.ndjson", "--log-format", "json"),
        *("--metrics-port", "0", "--metrics-host", "127.0.0.2"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    events = [orjson.loads(line) for line in result.stderr.splitlines()]
    url = next(e["url"] for e in events if e["event"] == "metrics_listening")
    assert url.startswith("http://127.0.0.2:")


def test_emulator_exits_promptly_on_sigterm_with_a_slow_request_in_flight(
    tmp_path: Path,
) -> None:
    """SIGTERM stops the emulator at once, exit 0, although a request it holds would take
    another 30 s (a latency fault): that connection is closed unanswered. The bound, 5 s,
    is far below the 30 s a wait for the request would take."""
    import http.client

    with emulator_subprocess(tmp_path, "--latency-ms", "30000") as emu:
        host, port = emu.base_url.split("//")[1].split("/")[0].split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        connection.request(
            "POST",
            "/api/v1/messages/bulk",
            body=orjson.dumps({"from_phone_number_id": "pn_abc123def456", "messages": []}),
            headers={"X-Api-Key": API_KEY, "Content-Type": "application/json"},
        )
        deadline = time.monotonic() + 10
        while orjson.loads(_stats(host, port))["in_flight"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        emu.process.send_signal(signal.SIGTERM)
        assert emu.process.wait(timeout=5) == 0
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            connection.getresponse()


def _stats(host: str, port: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(f"http://{host}:{port}/_emulator/stats", timeout=10) as answer:
        body: bytes = answer.read()
    return body


def test_check_wording(tmp_path: Path) -> None:
    """`check` says "1 line" (not "1 lines"), calls an empty body empty, names the lines of a
    duplicate recipient, and hints at the country code a national number lacks."""
    (tmp_path / "in.ndjson").write_bytes(
        b'{"to_msisdn": "+14155550100", "body": "a"}\n'
        b'{"to_msisdn": "(415) 555-0199", "body": "b"}\n'
        b'{"to_msisdn": "+14155550101", "body": ""}\n'
        b'{"to_msisdn": "+14155550100", "body": "c"}\n'
    )
    result = streamsend("check", "in.ndjson", "--from", "pn_a", cwd=tmp_path)
    assert result.returncode == 1
    records = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert "for the US or Canada write +14155550199" in records[1]["error"]
    assert records[2]["error"].startswith("`body` is empty")
    assert "checked 4 lines: 2 valid, 2 invalid" in result.stderr
    assert "+14155550100 on lines 1, 4" in result.stderr
    (tmp_path / "one.ndjson").write_bytes(b'{"to_msisdn": "+14155550100", "body": "a"}\n')
    one = streamsend("check", "one.ndjson", "--from", "pn_a", cwd=tmp_path)
    assert "checked 1 line: 1 valid, 0 invalid" in one.stderr
