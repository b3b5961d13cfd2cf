"""Configuration: precedence, one error per bad key naming the key and its source, rates and
durations, and the API key (from the environment or a key file, never echoed).
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from streamsend._config import (
    DEFAULT_BASE_URL,
    Settings,
    load_api_key,
    load_settings,
    parse_duration,
)
from streamsend._exceptions import ConfigError
from streamsend._pacing import format_rate, parse_rate

REPO = Path(__file__).resolve().parent.parent
KEY = "trk_" + "Q7w8E9r0" * 4  # trk_ and 32 letters/digits: shaped like a real key


def write_toml(tmp_path: Path, text: str, name: str = "streamsend.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# -- precedence ------------------------------------------------------------------------------


def test_defaults_without_any_source() -> None:
    """No file, no environment, no flags: the documented defaults."""
    settings = load_settings(env={})
    assert settings == Settings()
    assert settings.base_url == DEFAULT_BASE_URL
    assert (settings.batch_size, settings.linger_ms) == (1000, 250.0)
    # Paced by default, at the service's own default send rate per sending list.
    assert settings.rate == pytest.approx(17000 / 60)
    assert settings.journal_path is None  # outcomes to stdout: no journal by default


def test_precedence_cli_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    """Each key takes the highest source that sets it: flags, STREAMSEND_*, file, defaults."""
    config = write_toml(
        tmp_path,
        'batch_size = 100\nconcurrency = 3\nlinger_ms = 50\nrate = "600/min"\nsender = "pn_file"\n',
    )
    env = {
        "STREAMSEND_BATCH_SIZE": "200",
        "STREAMSEND_CONCURRENCY": "4",
        "STREAMSEND_RATE": "300/s",
        "UNRELATED": "x",
    }
    cli: dict[str, object] = {"batch_size": 300, "sender": None}  # None: flag not given
    settings = load_settings(config_path=config, env=env, cli=cli)
    assert settings.batch_size == 300  # flag
    assert settings.concurrency == 4  # environment over file
    assert settings.rate == 300.0  # environment over file
    assert settings.linger_ms == 50.0  # file over default
    assert settings.sender == "pn_file"  # an absent flag doesn't override
    assert settings.timeout == Settings().timeout  # default


def test_env_uses_the_real_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit mapping, STREAMSEND_* variables come from os.environ."""
    monkeypatch.setenv("STREAMSEND_RETRIES", "9")
    assert load_settings().retries == 9


def test_aliases_from_and_rates(tmp_path: Path) -> None:
    """`from` is `sender` and a `[rates]` table is `sender_rates`, in files and the environment."""
    config = write_toml(tmp_path, 'from = "pn_x"\n[rates]\npn_a = "60/min"\npn_b = "2/s"\n')
    settings = load_settings(config_path=config, env={})
    assert settings.sender == "pn_x"
    assert settings.sender_rates == {"pn_a": 1.0, "pn_b": 2.0}
    assert settings.rate_for("pn_a") == 1.0
    assert settings.rate_for("pn_other") == pytest.approx(17000 / 60)  # the default rate
    assert load_settings(env={"STREAMSEND_FROM": "pn_env"}).sender == "pn_env"


@pytest.mark.parametrize("name", ["default.toml", "production.toml", "emulator.toml"])
def test_shipped_configs_load(name: str) -> None:
    """The example configs in configs/ are valid (the emulator's own table is skipped)."""
    settings = load_settings(config_path=str(REPO / "configs" / name), env={})
    assert settings.api_version == "v1"


def test_default_toml_is_the_defaults() -> None:
    """configs/default.toml spells out exactly the built-in defaults."""
    assert load_settings(config_path=str(REPO / "configs" / "default.toml"), env={}) == Settings()


def test_journal_beside_outcomes_file() -> None:
    """With an outcomes file and no journal given, the journal goes beside it."""
    assert Settings(outcomes="out.ndjson").journal_path == "out.ndjson.journal"
    assert Settings(outcomes="out.ndjson", journal="j").journal_path == "j"


# -- errors name the key and where it came from ------------------------------------------------


def test_unknown_key_in_file_names_key_and_file(tmp_path: Path) -> None:
    """A typo in a file is an error naming the key and the file, not silently ignored."""
    config = write_toml(tmp_path, "batch_sise = 10\n", name="typo.toml")
    with pytest.raises(ConfigError) as caught:
        load_settings(config_path=config, env={})
    message = str(caught.value)
    assert "'batch_sise'" in message
    assert config in message
    assert "batch_size" in message  # the known keys are listed


def test_unknown_key_in_environment() -> None:
    """An unknown STREAMSEND_* variable is an error naming the variable itself."""
    with pytest.raises(ConfigError, match=r"STREAMSEND_BOGUS in the environment"):
        load_settings(env={"STREAMSEND_BOGUS": "1"})


def test_unknown_key_on_command_line() -> None:
    """A programming slip in the CLI mapping is caught the same way."""
    with pytest.raises(ConfigError, match=r"'nope'.*command line"):
        load_settings(env={}, cli={"nope": 1})


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        pytest.param('batch_size = "many"', "batch_size", id="int-from-text"),
        pytest.param("batch_size = 10.5", "batch_size", id="int-from-float"),
        pytest.param("batch_size = true", "batch_size", id="int-from-bool"),
        pytest.param("linger_ms = [1]", "linger_ms", id="float-from-list"),
        pytest.param("timeout = true", "timeout", id="float-from-bool"),
        pytest.param('timeout = "soon"', "timeout", id="duration-text"),
        pytest.param('api_version = "v3"', "api_version", id="choice"),
        pytest.param('fsync = "always"', "fsync", id="fsync-choice"),
        pytest.param('base_url = "ftp://example.com"', "base_url", id="url-scheme"),
        pytest.param('sender = ""', "sender", id="empty-text"),
        pytest.param("sender = 5", "sender", id="text-from-int"),
        pytest.param('resend_unknown = "maybe"', "resend_unknown", id="bool-text"),
        pytest.param('rate = "fast"', "rate", id="rate-text"),
        pytest.param("rate = true", "rate", id="rate-bool"),
        pytest.param("rates = 5", "rates", id="rates-not-table"),
        pytest.param('rates = {pn_a = "none"}', "rates", id="rates-entry-unset"),
    ],
)
def test_wrong_type_names_the_key(tmp_path: Path, toml: str, key: str) -> None:
    """A value of the wrong type or form is an error that names the key and the file."""
    config = write_toml(tmp_path, toml + "\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config_path=config, env={})
    assert str(caught.value).startswith(f"{key} in {config}: ")


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        pytest.param("batch_size = 0", "batch_size", id="batch-size-0"),
        pytest.param("batch_size = 1001", "batch_size", id="batch-size-1001"),
        pytest.param("concurrency = 0", "concurrency", id="concurrency-0"),
        pytest.param("linger_ms = -1", "linger_ms", id="linger-negative"),
        pytest.param("linger_ms = 60001", "linger_ms", id="linger-over-a-minute"),
        pytest.param("timeout = 0", "timeout", id="timeout-0"),
        pytest.param("timeout = inf", "timeout", id="timeout-inf"),
        pytest.param("timeout = nan", "timeout", id="timeout-nan"),
        pytest.param("max_line_bytes = 10", "max_line_bytes", id="line-limit-tiny"),
        pytest.param("metrics_port = 70000", "metrics_port", id="port"),
        pytest.param("rate = 0", "rate", id="rate-zero"),
        pytest.param("rate = -5", "rate", id="rate-negative"),
        pytest.param("rate = inf", "rate", id="rate-inf"),
        pytest.param("rate = nan", "rate", id="rate-nan"),
        pytest.param('rate = "0/min"', "rate", id="rate-zero-text"),
        pytest.param("rates = {pn_a = inf}", "rates", id="sender-rate-inf"),
    ],
)
def test_out_of_range_names_the_key(tmp_path: Path, toml: str, key: str) -> None:
    """A value outside its range (or not finite) is an error that names the key and the file."""
    config = write_toml(tmp_path, toml + "\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config_path=config, env={})
    assert str(caught.value).startswith(f"{key} in {config}: ")


def test_env_value_error_names_key_and_environment() -> None:
    """A bad environment value names the variable exactly as it is set."""
    with pytest.raises(ConfigError, match=r"^STREAMSEND_BATCH_SIZE: "):
        load_settings(env={"STREAMSEND_BATCH_SIZE": "lots"})


def test_cli_value_error_names_key_and_command_line() -> None:
    """A bad flag value names the key and says it came from the command line."""
    with pytest.raises(ConfigError, match=r"^--concurrency: .*range"):
        load_settings(env={}, cli={"concurrency": 1000})


def test_backoff_cap_below_base() -> None:
    """A backoff cap below its base can't be honoured: refused, naming both."""
    with pytest.raises(ConfigError, match=r"backoff_cap.*backoff_base"):
        load_settings(env={"STREAMSEND_BACKOFF_BASE": "10", "STREAMSEND_BACKOFF_CAP": "1"})


def test_missing_config_file(tmp_path: Path) -> None:
    """A config file that can't be read is a ConfigError naming it."""
    missing = str(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match=re.escape(missing)):
        load_settings(config_path=missing, env={})


def test_invalid_toml(tmp_path: Path) -> None:
    """A file that isn't TOML is a ConfigError naming it."""
    config = write_toml(tmp_path, "batch_size = = 3\n")
    with pytest.raises(ConfigError, match=re.escape(config) + ".*not valid TOML"):
        load_settings(config_path=config, env={})


# -- values: rates, durations, booleans --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        ("17000/min", 17000 / 60),
        ("300/s", 300.0),
        ("2.5/s", 2.5),
        (".5/s", 0.5),
        (" 60 / minute ", 1.0),
        ("7200/h", 2.0),
        ("10/sec", 10.0),
        ("3600/hour", 1.0),
    ],
)
def test_parse_rate(text: str, per_second: float) -> None:
    """Rates are messages per second; a bare number is per second."""
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize(
    "text",
    ["", "fast", "-5/s", "0/s", "17000/fortnight", "1e3", "/s", "9" * 400 + "/s", "unlimited"],
)
def test_parse_rate_refuses(text: str) -> None:
    """Anything else is refused with a ValueError (the caller names the key)."""
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)


def test_rate_from_each_source(tmp_path: Path) -> None:
    """The same rate reads alike as a TOML string, an env value and a flag; `unlimited` is the
    one spelling of "no pacing", in each of them."""
    assert load_settings(config_path=write_toml(tmp_path, 'rate = "17000/min"'), env={}).rate == (
        pytest.approx(17000 / 60)
    )
    assert load_settings(env={"STREAMSEND_RATE": "300/s"}).rate == 300.0
    assert load_settings(env={}, cli={"rate": "60/min"}).rate == 1.0
    assert load_settings(env={"STREAMSEND_RATE": "unlimited"}).rate is None
    assert load_settings(env={}, cli={"rate": "unlimited"}).rate is None
    unlimited = write_toml(tmp_path, 'rate = "unlimited"')
    assert load_settings(config_path=unlimited, env={}).rate is None


@pytest.mark.parametrize("text", ["600", "17000", " 2.5 "])
def test_a_bare_number_is_refused_with_the_fix(text: str) -> None:
    """A rate without its unit is ambiguous (600/s? 600/min?): refused, naming both fixes."""
    number = text.strip()
    with pytest.raises(ValueError, match=f"{number}/min or {number}/s"):
        parse_rate(text)
    with pytest.raises(ConfigError, match=f"--rate: .*{number}/min or {number}/s"):
        load_settings(env={}, cli={"rate": text})


@pytest.mark.parametrize("toml", ["rate = 300", "rate = 2.5", "[rates]\npn_a = 600"])
def test_a_toml_number_is_refused_with_the_fix(tmp_path: Path, toml: str) -> None:
    """TOML numbers carry no unit either: refused, naming the file and the string to write."""
    with pytest.raises(ConfigError, match=r"has no unit: write a string like \"\d"):
        load_settings(config_path=write_toml(tmp_path, toml), env={})


def test_format_rate_reads_back() -> None:
    """`format_rate` writes what `parse_rate` reads (and `unlimited` for no rate)."""
    for text in ("17000/min", "300/s", "100/min", "2.5/s"):
        assert format_rate(parse_rate(text)) == text
    assert format_rate(None) == "unlimited"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("250ms", 0.25), ("5m", 300.0), ("1h", 3600.0), ("12", 12.0), ("1.5s", 1.5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    """Durations take s, ms, m, h or bare seconds."""
    assert parse_duration(text) == pytest.approx(seconds)


def test_durations_in_settings() -> None:
    """Duration keys take units from any source; linger_ms stays in milliseconds."""
    settings = load_settings(
        env={"STREAMSEND_TIMEOUT": "250ms", "STREAMSEND_DRAIN_TIMEOUT": "2m"},
        cli={"linger_ms": "1s"},
    )
    assert settings.timeout == pytest.approx(0.25)
    assert settings.drain_timeout == 120.0
    assert settings.linger_ms == 1000.0
    assert load_settings(env={"STREAMSEND_LINGER_MS": "40"}).linger_ms == 40.0


@pytest.mark.parametrize(("text", "value"), [("yes", True), ("1", True), ("off", False)])
def test_booleans_from_the_environment(text: str, value: bool) -> None:
    """Booleans from the environment accept the usual spellings."""
    assert load_settings(env={"STREAMSEND_RESEND_UNKNOWN": text}).resend_unknown is value


def test_redacted_settings_have_no_secret() -> None:
    """The settings shown by `config show` and the start log hold no API key field at all."""
    shown = Settings(sender="pn_x", sender_rates={"pn_a": 1.0}).redacted()
    assert "api_key" not in shown
    assert shown["sender_rates"] == {"pn_a": 1.0}
    assert shown["sender"] == "pn_x"
    assert set(shown) == {f.name for f in fields(Settings)}


# -- the API key -------------------------------------------------------------------------------


def test_api_key_from_environment() -> None:
    """TRACKLY_API_KEY is the key (surrounding whitespace dropped)."""
    assert load_api_key(Settings(), env={"TRACKLY_API_KEY": f" {KEY}\n"}) == KEY


def test_api_key_from_key_file(tmp_path: Path) -> None:
    """Without TRACKLY_API_KEY, the file named by api_key_file holds the key."""
    key_file = tmp_path / "trackly.key"
    key_file.write_text(KEY + "\n", encoding="utf-8")
    config = write_toml(tmp_path, f"api_key_file = {str(key_file)!r}\n")
    settings = load_settings(config_path=config, env={})
    assert load_api_key(settings, env={}) == KEY


def test_environment_key_wins_over_key_file(tmp_path: Path) -> None:
    """TRACKLY_API_KEY is used even when a key file is configured."""
    key_file = tmp_path / "trackly.key"
    key_file.write_text("trk_" + "F" * 32, encoding="utf-8")
    settings = Settings(api_key_file=str(key_file))
    assert load_api_key(settings, env={"TRACKLY_API_KEY": KEY}) == KEY


def test_no_api_key() -> None:
    """No key anywhere: an error that says where a key can come from."""
    with pytest.raises(ConfigError, match="TRACKLY_API_KEY"):
        load_api_key(Settings(), env={})


def test_unreadable_key_file(tmp_path: Path) -> None:
    """A key file that can't be read is an error naming the file."""
    missing = str(tmp_path / "nope.key")
    with pytest.raises(ConfigError, match=re.escape(missing)):
        load_api_key(Settings(api_key_file=missing), env={})


@pytest.mark.parametrize(
    "bad_key",
    [
        pytest.param("trk_" + "Z9" * 15 + "!", id="bad-character"),
        pytest.param("trk_" + "Z9y8" * 7, id="too-short"),
        pytest.param("sk_live_" + "Z9y8" * 8, id="other-vendor"),
        pytest.param("Z9y8X7w6" * 4, id="no-prefix"),
        pytest.param(KEY + KEY[4:], id="pasted-twice"),
    ],
)
@pytest.mark.parametrize("where", ["env", "file"])
def test_malformed_key_is_never_echoed(tmp_path: Path, bad_key: str, where: str) -> None:
    """A key of the wrong shape is refused, and no part of it appears in the error."""
    if where == "env":
        settings, env = Settings(), {"TRACKLY_API_KEY": bad_key}
    else:
        key_file = tmp_path / "trackly.key"
        key_file.write_text(bad_key, encoding="utf-8")
        settings, env = Settings(api_key_file=str(key_file)), {}
    with pytest.raises(ConfigError) as caught:
        load_api_key(settings, env=env)
    error = caught.value
    texts = [str(error), repr(error), str(error.__cause__), str(error.__context__)]
    secret_part = bad_key.removeprefix("trk_").removeprefix("sk_live_")[:8]
    for text in texts:
        assert secret_part not in text
    assert "not shaped like a Trackly key" in str(error)
