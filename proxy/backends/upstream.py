"""The HTTP client of the OpenAI-compatible backend: one aiohttp session per backend (a keep-alive
pool), and aiohttp's exception classes for proxy/backends/base.py's error mapping.

aiohttp rather than httpx: its C HTTP parser and shorter request path cost a fifth of httpx's CPU
per streamed reply (bench/upstream_client.py), and httpx/httpcore was ≈55% of a plain streamed turn
(issue 15). The session is opened on first use, inside the event loop that uses it: backends are built
before the server's loop runs (proxy/early.py builds them on another thread), and an aiohttp session
belongs to one loop.
"""

from __future__ import annotations

import urllib.parse
import urllib.request
from collections.abc import Mapping

import aiohttp
import httpx
from yarl import URL

from proxy.backends.base import TransportErrors

_KEEPALIVE_S = 5.0  # httpx's keep-alive expiry
_NO_CONTENT_TYPE = ("Content-Type",)
AIOHTTP = TransportErrors(aiohttp.ConnectionTimeoutError, aiohttp.ServerTimeoutError, aiohttp.ClientError)


class Upstream:
    """Where a backend lives, how long to wait for it, and the session that talks to it."""

    def __init__(self, base_url: str, *, api_key: str | None, timeout_s: float, connect_timeout_s: float):
        self.base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # `sock_read` is the longest wait for the next bytes (from the request sent to the last byte);
        # `sock_connect` one TCP connect; `connect` also covers waiting for a free pooled connection.
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=timeout_s + connect_timeout_s,
            sock_connect=connect_timeout_s,
            sock_read=timeout_s,
        )
        self._proxy = env_proxy(self.base)
        self._session: aiohttp.ClientSession | None = None
        self.errors = AIOHTTP

    def url(self, path: str) -> URL:
        """`path` (with its query, if any) under the base URL (parse the fixed ones once, and keep them)."""
        return URL(self.base + path)

    async def request(
        self, method: str, url: URL, body: bytes | None, headers: Mapping[str, str]
    ) -> aiohttp.ClientResponse:
        """The response, its body still to read: `async with` it, or release it when done. Redirects
        are not followed (as with httpx) and cookies not kept (a model server needs none, and one
        caller's would go with the next); no header is added but aiohttp's Accept, Accept-Encoding
        and User-Agent (no Content-Type unless `headers` has one)."""
        return await self.session().request(
            method,
            url,
            data=body,
            headers=headers,
            allow_redirects=False,
            skip_auto_headers=None if "content-type" in headers else _NO_CONTENT_TYPE,
        )

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # TLS trusts what httpx trusted (certifi's roots, or SSL_CERT_FILE / SSL_CERT_DIR), not
            # only the system's: some Pythons (macOS installers) come with no system roots at all.
            tls = httpx.create_ssl_context() if self.base.startswith("https:") else True
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=200, keepalive_timeout=_KEEPALIVE_S, ssl=tls),
                cookie_jar=aiohttp.DummyCookieJar(),
                proxy=self._proxy,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def env_proxy(url: str) -> str | None:
    """The proxy HTTP_PROXY / HTTPS_PROXY / ALL_PROXY names for `url`, unless NO_PROXY exempts its
    host: what httpx's `trust_env` did, decided once (aiohttp's reads the environment and ~/.netrc on
    a worker thread at every request)."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy is None or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy
