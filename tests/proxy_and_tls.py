"""Test kit for proxies and TLS: a forward proxy on loopback and a private CA with a server cert.

`ForwardProxy` is a real HTTP forward proxy, as corporate egress proxies are: `CONNECT host:port`
opens a tunnel (what clients do for https:// URLs), and an absolute-form request
(`POST http://host:port/path`, what clients do for http:// URLs through a proxy) is relayed to
its host. It records the request line of every connection it serves, so a test can check that
traffic really went through it.

`private_ca()` writes a CA certificate and a server certificate it signed (for 127.0.0.1 and
localhost), as a company's private PKI would issue them: nothing in the system trust store
knows that CA, so only a client told to trust it can verify the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class ForwardProxy:
    """A running forward proxy: its URL and the request line of each connection it served."""

    url: str = ""
    request_lines: list[str] = field(default_factory=list)

    @property
    def tunnels(self) -> list[str]:
        """The `CONNECT host:port` targets, one per tunnel opened."""
        return [line.split()[1] for line in self.request_lines if line.startswith("CONNECT ")]


@contextlib.asynccontextmanager
async def forward_proxy() -> AsyncIterator[ForwardProxy]:
    """A forward proxy on a free loopback port for the duration of the block."""
    proxy = ForwardProxy()
    relays: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        relays.add(task)
        try:
            await _serve_connection(proxy, reader, writer)
        finally:
            relays.discard(task)
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy.url = f"http://127.0.0.1:{port}"
    try:
        yield proxy
    finally:
        server.close()
        for task in list(relays):
            task.cancel()
        await asyncio.gather(*relays, return_exceptions=True)
        await server.wait_closed()


async def _serve_connection(
    proxy: ForwardProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    proxy.request_lines.append(request_line)
    method, target, _ = request_line.split(" ", 2)
    if method == "CONNECT":
        host, _, port = target.rpartition(":")
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
    else:
        # Absolute form: relay the request as it came (HTTP/1.1 servers must accept the
        # absolute form), then the rest of the connection both ways.
        authority = target.split("://", 1)[1].split("/", 1)[0]
        host, _, port = authority.rpartition(":")
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        upstream_writer.write(head)
    try:
        await asyncio.gather(
            _pipe(reader, upstream_writer), _pipe(upstream_reader, writer), return_exceptions=True
        )
    finally:
        upstream_writer.close()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    while chunk := await source.read(65536):
        sink.write(chunk)
        await sink.drain()
    if sink.can_write_eof():
        sink.write_eof()


@dataclass(frozen=True)
class PrivateCA:
    ca_cert: Path  # the CA a client must be told to trust (ca_bundle / SSL_CERT_FILE)
    server_cert: Path  # the emulator's certificate, signed by the CA
    server_key: Path


def private_ca(directory: Path) -> PrivateCA:
    """Write a CA and a server certificate for 127.0.0.1/localhost it signed, into `directory`."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "streamsend test private CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = PrivateCA(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    paths.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    paths.server_key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths
