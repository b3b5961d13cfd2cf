"""aiohttp, the HTTP client, imported without loading the system's CA store twice.

When it is imported, aiohttp.connector builds two default TLS contexts (a verified and an
unverified one), and each loads the system's trusted CAs: 0.1 to 0.2 s of CPU on this project's
machines, the largest single cost of a `send`'s start-up. Yet a run over http:// (the emulator,
a local gateway) uses no TLS at all, and an https:// run brings its own context
(`_dispatch.tls_context`). So the import runs with the CA loading deferred: the two contexts
load their CAs only when a run could use them (`load_deferred_cas`; an https:// proxy is the one
case in which aiohttp falls back on its own). Until then, a connection that used one would fail
verification: it could never go unverified.

Every streamsend module that needs aiohttp imports it from here, so this import is the first.
"""

from __future__ import annotations

import ssl

_deferred: list[ssl.SSLContext] = []
_load_cas = ssl.SSLContext.set_default_verify_paths


def _defer(context: ssl.SSLContext) -> None:
    _deferred.append(context)


ssl.SSLContext.set_default_verify_paths = _defer  # type: ignore[method-assign,assignment]
try:
    import aiohttp  # (imported while the CA loading is deferred)
finally:
    ssl.SSLContext.set_default_verify_paths = _load_cas  # type: ignore[method-assign]


def load_deferred_cas() -> None:
    """Give aiohttp's own TLS contexts the system's CAs (before a run that may use them)."""
    while _deferred:
        _load_cas(_deferred.pop())


__all__ = ["aiohttp", "load_deferred_cas"]
