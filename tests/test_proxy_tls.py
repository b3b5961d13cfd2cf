"""Reaching the service as curl would: through a forward proxy, trusting a private CA.

End to end: a real forward proxy on loopback (tests/proxy_and_tls.py, handling CONNECT) in front
of an HTTPS emulator whose certificate a private CA signed; the proxy's record shows whether the
requests went through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import orjson
import pytest

from streamsend import Client, Settings, Status
from streamsend._config import load_settings
from streamsend._dispatch import proxy_for
from streamsend._exceptions import ConfigError
from streamsend.emulator import EmulatorConfig, EmulatorConfigError, run_emulator
from streamsend.testing import API_KEY, V1_LIST, EmulatorFactory
from tests.conftest import clean_env, run_streamsend
from tests.proxy_and_tls import PrivateCA, forward_proxy, private_ca

URL = "https://api.example.com:8443/api"


@pytest.mark.parametrize(
    ("url", "setting", "env", "expected"),
    [
        (URL, None, {}, None),
        (URL, None, {"HTTPS_PROXY": "http://p:3128"}, "http://p:3128"),
        (
            URL,
            None,
            {"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:2"},
            "http://lower:1",
        ),
        (URL, None, {"HTTPS_PROXY": "p:3128"}, "http://p:3128"),
        (URL, None, {"HTTP_PROXY": "http://p:3128"}, None),
        (URL, None, {"ALL_PROXY": "http://all:1"}, "http://all:1"),
        ("http://api.example.com/api", None, {"HTTP_PROXY": "http://h:1"}, "http://h:1"),
        ("http://api.example.com/api", None, {"HTTPS_PROXY": "http://s:1"}, None),
        (URL, "http://setting:1", {"HTTPS_PROXY": "http://env:2"}, "http://setting:1"),
        (URL, "", {"HTTPS_PROXY": "http://env:2"}, None),
        (URL, None, {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "example.com"}, None),
        (URL, None, {"HTTPS_PROXY": "http://p:1", "no_proxy": ".example.com"}, None),
        (URL, None, {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "other.com,*"}, None),
        (URL, None, {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "ample.com"}, "http://p:1"),
        (
            URL,
            None,
            {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "api.example.com:9999"},
            "http://p:1",
        ),
        (URL, None, {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "api.example.com:8443"}, None),
        (URL, "http://setting:1", {"NO_PROXY": "api.example.com"}, None),
        (
            "https://10.1.2.3/api",
            None,
            {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "10.0.0.0/8"},
            None,
        ),
        ("https://[::1]:8443/api", None, {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "::1"}, None),
    ],
)
def test_proxy_for_follows_curls_rules(
    url: str, setting: str | None, env: Mapping[str, str], expected: str | None
) -> None:
    """The scheme picks HTTPS_PROXY or HTTP_PROXY (lower case first, ALL_PROXY as fallback), the
    `proxy` setting overrides them ("" = none), and NO_PROXY exempts hosts, domain suffixes (not
    bare substrings), host:port, networks and `*`."""
    assert proxy_for(url, setting, env) == expected


def _lines(count: int) -> bytes:
    return b"".join(
        orjson.dumps({"to_msisdn": f"+1415555{n:04d}", "body": f"hi {n}"}) + b"\n"
        for n in range(count)
    )


async def _send_via_cli(
    tmp_path: Path, base_url: str, *flags: str, **env: str
) -> tuple[int, list[dict[str, object]], bytes]:
    campaign = tmp_path / "campaign.ndjson"
    campaign.write_bytes(_lines(5))
    outcomes = tmp_path / "outcomes.ndjson"
    outcomes.unlink(missing_ok=True)
    code, _, stderr = await run_streamsend(
        [
            "send", str(campaign), "--base-url", base_url, "--from", V1_LIST,
            "--outcomes", str(outcomes), "--fsync", "off", "--linger-ms", "5", *flags,
        ],
        env=clean_env(TRACKLY_API_KEY=API_KEY, **env),
        timeout_s=60,
    )  # fmt: skip
    return code, [orjson.loads(line) for line in outcomes.read_bytes().splitlines()], stderr


@pytest.fixture
def ca(tmp_path: Path) -> PrivateCA:
    return private_ca(tmp_path)


async def test_send_goes_through_https_proxy_to_a_private_ca_server(
    emulator: EmulatorFactory, ca: PrivateCA, tmp_path: Path
) -> None:
    """`HTTPS_PROXY=... streamsend send --ca-bundle CA` tunnels every request through the proxy
    (CONNECT to the service's host:port) and verifies the server against the private CA."""
    emu = await emulator(tls_cert=ca.server_cert, tls_key=ca.server_key)
    assert emu.base_url.startswith("https://")
    async with forward_proxy() as proxy:
        code, outcomes, stderr = await _send_via_cli(
            tmp_path, emu.base_url, "--ca-bundle", str(ca.ca_cert), HTTPS_PROXY=proxy.url
        )
    assert code == 0, stderr.decode()
    assert [o["status"] for o in outcomes] == ["queued"] * 5
    assert proxy.tunnels
    assert set(proxy.tunnels) == {f"127.0.0.1:{emu.port}"}
    assert emu.stats()["messages_queued"] == 5


async def test_without_the_private_ca_tls_verification_fails(
    emulator: EmulatorFactory, ca: PrivateCA, tmp_path: Path
) -> None:
    """The CA is not trusted by default: the same run without --ca-bundle sends nothing (the
    lines are `failed`, certainly not accepted), so verification is really on."""
    emu = await emulator(tls_cert=ca.server_cert, tls_key=ca.server_key)
    code, outcomes, _ = await _send_via_cli(tmp_path, emu.base_url, "--retries", "0")
    assert code == 1
    assert {o["status"] for o in outcomes} == {"failed"}
    assert emu.stats()["messages_queued"] == 0


async def test_ssl_cert_file_still_works(
    emulator: EmulatorFactory, ca: PrivateCA, tmp_path: Path
) -> None:
    """SSL_CERT_FILE naming the CA (OpenSSL's own variable) is honoured without --ca-bundle."""
    emu = await emulator(tls_cert=ca.server_cert, tls_key=ca.server_key)
    code, outcomes, stderr = await _send_via_cli(
        tmp_path, emu.base_url, SSL_CERT_FILE=str(ca.ca_cert)
    )
    assert code == 0, stderr.decode()
    assert [o["status"] for o in outcomes] == ["queued"] * 5


async def test_library_honours_no_proxy_and_the_proxy_setting(
    emulator: EmulatorFactory, ca: PrivateCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through `Client`: NO_PROXY exempts the service's host (the proxy sees nothing), and the
    `proxy` setting sends through a proxy although the environment names none."""
    emu = await emulator(tls_cert=ca.server_cert, tls_key=ca.server_key)
    settings = Settings(
        base_url=emu.base_url, sender=V1_LIST, linger_ms=5.0, ca_bundle=str(ca.ca_cert)
    )
    message = {"to_msisdn": "+14155550100", "body": "hi"}
    async with forward_proxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
        async with Client(settings, api_key=API_KEY) as client:
            await client.send(message)
        assert [o.status for o in client.results] == [Status.QUEUED]
        assert proxy.request_lines == []

        monkeypatch.delenv("HTTPS_PROXY")
        monkeypatch.delenv("NO_PROXY")
        through = Settings(
            base_url=emu.base_url, sender=V1_LIST, linger_ms=5.0,
            ca_bundle=str(ca.ca_cert), proxy=proxy.url,
        )  # fmt: skip
        async with Client(through, api_key=API_KEY) as client:
            await client.send(message)
        assert [o.status for o in client.results] == [Status.QUEUED]
        assert proxy.tunnels == [f"127.0.0.1:{emu.port}"]


async def test_plain_http_goes_through_http_proxy(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """HTTP_PROXY carries http:// requests (absolute-form requests relayed by the proxy)."""
    emu = await emulator()
    async with forward_proxy() as proxy:
        code, outcomes, stderr = await _send_via_cli(tmp_path, emu.base_url, HTTP_PROXY=proxy.url)
    assert code == 0, stderr.decode()
    assert [o["status"] for o in outcomes] == ["queued"] * 5
    assert proxy.request_lines
    assert all(f"http://127.0.0.1:{emu.port}/api/" in line for line in proxy.request_lines)


async def test_unreadable_ca_bundle_is_one_line_exit_2(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """A ca_bundle that can't be read is a config error naming it, not a traceback."""
    code, _, stderr = await _send_via_cli(
        tmp_path, "https://127.0.0.1:9/api", "--ca-bundle", str(tmp_path / "missing.pem")
    )
    assert code == 2
    text = stderr.decode()
    assert "ca_bundle" in text
    assert "missing.pem" in text
    assert "Traceback" not in text


def test_proxy_setting_is_checked() -> None:
    """`proxy = "none"` means direct (whatever HTTPS_PROXY says); a bare host:port is kept (an
    http proxy, as curl reads it); another scheme is refused naming the key."""
    assert load_settings(env={"STREAMSEND_PROXY": "none"}).proxy == ""
    assert load_settings(cli={"proxy": "proxy:3128"}).proxy == "proxy:3128"
    with pytest.raises(ConfigError, match="--proxy"):
        load_settings(cli={"proxy": "socks5://proxy:1080"})


async def test_emulator_needs_both_tls_cert_and_key(ca: PrivateCA) -> None:
    """The emulator serves HTTPS only with a certificate and its key; one alone is refused."""
    with pytest.raises(EmulatorConfigError, match="tls_cert and tls_key"):
        async with run_emulator(EmulatorConfig(api_keys=(API_KEY,), tls_cert=ca.server_cert)):
            pass
