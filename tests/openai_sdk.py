"""The real OpenAI SDK talking to an in-process Anima over httpx's ASGITransport (no socket)."""

from __future__ import annotations

from typing import Any

import httpx
import openai


def asgi_sdk(transport: httpx.AsyncBaseTransport, base_url: str, key: str) -> openai.AsyncOpenAI:
    """An SDK client without retries, so a test sees the proxy's first answer.

    openai>=3 types `http_client` as an httpx2 client but still accepts a legacy httpx one at run time;
    openai 1.x types it as httpx. The ASGI transports the tests share are httpx's, so the client is
    handed over as `Any`: one line that type-checks against both SDK generations.
    """
    http: Any = httpx.AsyncClient(transport=transport)
    return openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, http_client=http)
