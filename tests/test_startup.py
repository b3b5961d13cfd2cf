"""Start-up: each command imports only what it uses.

`streamsend --help` used to cost ~0.6 s of CPU because every command imported aiohttp's client
(and its SSL set-up), the pipeline, prometheus and the emulator. These tests run a command in a
fresh interpreter and check which modules it had loaded when it returned: behaviour, not timing
(the benchmarks' `startup` scenario measures the time).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import streamsend
from tests.conftest import API_KEY, V1_LIST, clean_env, emulator_subprocess

#: Runs `streamsend._cli.main(argv)` in a fresh interpreter (as the console script does), then
#: writes the loaded modules (top-level packages; streamsend's own in full), and how many garbage
#: collections ran during `main`, to the file named first.
_PROBE = """
import gc, sys
from streamsend._cli import main
collections = []
gc.callbacks.append(lambda phase, info: phase == "start" and collections.append(info))
try:
    code = main(sys.argv[2:])
except SystemExit as exit:  # --help ends by raising it
    code = exit.code or 0
names = sorted(
    {m if m.startswith(("streamsend", "importlib")) else m.split(".")[0] for m in sys.modules}
)
import json  # (only now: whether the command loaded it is in the report)
with open(sys.argv[1], "w") as out:
    json.dump({"exit_code": int(code), "modules": names, "collections": len(collections)}, out)
"""

HEAVY = {"aiohttp", "prometheus_client", "streamsend.emulator", "structlog", "streamsend._pipeline"}


def _loaded_by(tmp_path: Path, *argv: str) -> set[str]:
    return set(_probe(tmp_path, *argv)["modules"])


def _probe(tmp_path: Path, *argv: str) -> dict[str, Any]:
    report = tmp_path / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(report), *argv],
        env=clean_env(TRACKLY_API_KEY=API_KEY),
        capture_output=True,
        timeout=60,
        check=False,  # the exit code is in the report, and checked with the modules
    )
    assert report.exists(), done.stderr.decode()
    result = json.loads(report.read_text())
    assert result["exit_code"] == 0, done.stderr.decode()
    return result  # type: ignore[no-any-return]


def test_importing_the_cli_loads_nothing_heavy() -> None:
    """`import streamsend._cli` (what the console script does first) loads neither aiohttp nor
    prometheus, structlog, the pipeline or the emulator, nor any public name of the package."""
    code = (
        "import json, sys, streamsend._cli\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} | "
        "{m for m in sys.modules if m.startswith('streamsend')})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=clean_env(), capture_output=True, timeout=60, check=True
    )
    loaded = set(json.loads(done.stdout))
    assert "streamsend._cli" in loaded
    assert not loaded & HEAVY, loaded & HEAVY


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["send", "--help"], ["config", "show"], ["check", "INPUT"]],
    ids=["help", "send-help", "config-show", "check"],
)
def test_commands_that_send_nothing_load_no_http_client(tmp_path: Path, argv: list[str]) -> None:
    """`--help`, `send --help`, `config show` and `check` never load aiohttp, prometheus,
    structlog, the pipeline or the emulator."""
    if "INPUT" in argv:
        source = tmp_path / "in.ndjson"
        source.write_bytes(b'{"to_msisdn": "+14155550100", "body": "hi"}\n')
        argv = [str(source) if arg == "INPUT" else arg for arg in argv]
    loaded = _loaded_by(tmp_path, *argv)
    assert not loaded & HEAVY, loaded & HEAVY


def test_help_loads_no_event_loop(tmp_path: Path) -> None:
    """`streamsend --help` doesn't load asyncio, the rate limiter's library, the campaign stage,
    the validator or package metadata (each tens of ms of CPU, measured with -X importtime),
    nor the settings and the JSON module they bring (~10 ms)."""
    loaded = _loaded_by(tmp_path, "--help")
    lazy = {
        "asyncio",
        "aiolimiter",
        "streamsend._campaign",
        "streamsend._validate",
        "streamsend._config",
        "json",
    }
    assert not loaded & lazy, loaded & lazy
    assert "importlib.metadata" not in loaded


def test_toml_parser_loads_only_for_a_config_file(tmp_path: Path) -> None:
    """Without a config file (no --config, no STREAMSEND_CONFIG), neither `--help` nor the
    settings `send` resolves load tomllib; with one, it is read as before."""
    assert "tomllib" not in _loaded_by(tmp_path, "--help")
    assert "tomllib" not in _loaded_by(tmp_path, "config", "show")
    config = tmp_path / "streamsend.toml"
    config.write_text("retries = 7\n")
    assert "tomllib" in _loaded_by(tmp_path, "config", "show", "--config", str(config))


def test_send_loads_metrics_only_when_asked(tmp_path: Path) -> None:
    """A plain `send` over http:// loads aiohttp but not prometheus or the emulator; with
    --metrics-port it loads prometheus; with --emulator, the emulator."""
    source = tmp_path / "in.ndjson"
    source.write_bytes(b'{"to_msisdn": "+14155550100", "body": "hi"}\n')
    with emulator_subprocess(tmp_path) as emulator:
        common = ["send", str(source), "--base-url", emulator.base_url, "--from", V1_LIST]
        plain = _loaded_by(tmp_path, *common, "--outcomes", str(tmp_path / "a.ndjson"))
        metrics = _loaded_by(
            tmp_path, *common, "--outcomes", str(tmp_path / "b.ndjson"), "--metrics-port", "0"
        )
    assert "aiohttp" in plain
    assert "tomllib" not in plain  # no config file
    assert "prometheus_client" not in plain
    assert "streamsend.emulator" not in plain
    assert "prometheus_client" in metrics
    rehearsal = _loaded_by(
        tmp_path, "send", str(source), "--emulator", "--outcomes", str(tmp_path / "c.ndjson")
    )
    assert "streamsend.emulator" in rehearsal


def test_send_runs_no_garbage_collection_over_its_imports(tmp_path: Path) -> None:
    """`send` raises the collector's thresholds before it imports the campaign stage, aiohttp
    and structlog, so no collection walks the objects they create (the default thresholds ran
    about 80 over them) until they are frozen; a one-line run runs none at all."""
    source = tmp_path / "in.ndjson"
    source.write_bytes(b'{"to_msisdn": "+14155550100", "body": "hi"}\n')
    with emulator_subprocess(tmp_path) as emulator:
        argv = ["send", str(source), "--base-url", emulator.base_url, "--from", V1_LIST]
        result = _probe(tmp_path, *argv, "--outcomes", str(tmp_path / "out.ndjson"))
    assert "aiohttp" in result["modules"]
    assert result["collections"] == 0


def test_aiohttp_loads_no_ca_store_until_a_run_could_use_it() -> None:
    """Importing the dispatcher imports aiohttp without its two default TLS contexts loading
    the system's CAs (each 0.1 to 0.2 s of CPU); `load_deferred_cas` loads them, once."""
    code = (
        "import json, ssl\n"
        "calls = []\n"
        "real = ssl.SSLContext.set_default_verify_paths\n"
        "def counting(self):\n"
        "    calls.append(self)\n"
        "    return real(self)\n"
        "ssl.SSLContext.set_default_verify_paths = counting\n"
        "import streamsend._dispatch, streamsend._http as http, aiohttp.connector as c\n"
        "before = len(calls)\n"
        "http.load_deferred_cas()\n"
        "http.load_deferred_cas()\n"
        "loaded = c._SSL_CONTEXT_VERIFIED.cert_store_stats()['x509_ca']\n"
        "print(json.dumps([before, len(calls), loaded > 0]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=clean_env(), capture_output=True, timeout=60, check=True
    )
    before, after, loaded = json.loads(done.stdout)
    assert before == 0
    assert after == 2  # the verified and the unverified context, each once
    assert loaded  # the system store has CAs, and now aiohttp's context holds them


def test_lazy_exports_match_the_type_checking_imports() -> None:
    """Every public name is imported lazily from the module the `TYPE_CHECKING` block (what
    type checkers see) names, and nothing is exported that the block doesn't import."""
    tree = ast.parse(Path(streamsend.__file__).read_text())
    typed: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("streamsend"):
            assert node.module is not None
            typed.update({alias.name: node.module for alias in node.names})
    assert typed == streamsend._EXPORTS
    assert sorted(typed) == streamsend.__all__
