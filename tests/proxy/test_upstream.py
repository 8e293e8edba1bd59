"""The OpenAI-compatible backend's HTTP client (proxy/backends/upstream.py, aiohttp): what httpx gave
for free and the adapter must keep: the backend's key on every call, one kept-alive connection for
consecutive replies, a connect that never completes reported as the backend being unreachable, and
the pool closed with the backend, an environment proxy honoured."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import httpx
import openai
import psutil
import pytest
from openai.types.chat import ChatCompletionMessageParam
from pydantic import SecretStr

from proxy.backends.openai_compat import OpenAICompatBackend
from proxy.backends.upstream import env_proxy
from proxy.main import create_app
from proxy.setting_groups import BackendSettings, RouteSettings
from tests.conftest import make_settings
from tests.servers.openai_stub import StubState, stub_app
from tests.servers.runner import serving

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
KEY = "sk-upstream-secret"


@pytest.fixture(scope="module")
def keyed_url(stub_url: str) -> Iterator[str]:
    """Anima in front of the stub with the backend's own API key, unknown routes relayed to it."""
    settings = make_settings(
        backends={"stub": BackendSettings(kind="openai", base_url=f"{stub_url}/v1", api_key=SecretStr(KEY))},
        models=[RouteSettings(name="stub/echo", backend="stub", model="echo")],
        passthrough="stub",
        retries=0,
    )
    with serving(create_app(settings)) as url:
        yield url


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="the-client's-key", max_retries=0)


def test_the_backend_key_goes_with_every_kind_of_call(keyed_url: str, stub: StubState) -> None:
    client = sdk(keyed_url)
    client.chat.completions.create(model="stub/echo", messages=HELLO)
    list(client.chat.completions.create(model="stub/echo", messages=HELLO, stream=True))
    client.embeddings.create(model="stub/echo", input=["a", "b"])
    client.completions.create(model="stub/echo", prompt="Once upon")
    client.moderations.create(input="hello")  # the catch-all relay
    assert [h.get("authorization") for h in stub.headers] == [f"Bearer {KEY}"] * 5


def test_consecutive_replies_reuse_one_connection(keyed_url: str, stub: StubState) -> None:
    client = sdk(keyed_url)
    for stream in (True, False, True):
        if stream:
            assert list(client.chat.completions.create(model="stub/echo", messages=HELLO, stream=True))
        else:
            assert client.chat.completions.create(model="stub/echo", messages=HELLO).choices
    assert len(stub.peers) == 3 and len(set(stub.peers)) == 1  # keep-alive: one client port


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A port whose listener never accepts and whose accept queue is full: the kernel drops every
    further SYN, so a connect there hangs until the client gives up (a backend host that is down
    behind a firewall looks the same)."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(3):  # one fills the queue; the others make sure
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
        yield port


@pytest.mark.parametrize("stream", [False, True])
def test_a_connect_that_never_completes_is_502_unreachable(stream: bool) -> None:
    with unanswered_port() as port:
        backend = BackendSettings(
            kind="openai", base_url=f"http://127.0.0.1:{port}/v1", connect_timeout_s=0.5, timeout_s=60
        )
        settings = make_settings(
            backends={"down": backend},
            models=[RouteSettings(name="down/x", backend="down", model="x")],
            retries=0,
        )
        with serving(create_app(settings)) as url:
            body = {"model": "down/x", "messages": HELLO, "stream": stream}
            resp = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 502
    error = resp.json()["error"]
    assert error["code"] == "backend_unavailable"
    assert error["message"] == "backend 'down' is unreachable: connect timed out"


def connections_to(port: int) -> int:
    """This process's open TCP connections to `port` (client sockets only: the server's have it local)."""
    return sum(1 for c in psutil.Process().net_connections("tcp") if c.raddr and c.raddr.port == port)


async def test_closing_the_backend_closes_its_pooled_connections() -> None:
    with serving(stub_app(StubState())) as url:
        port = int(url.rsplit(":", 1)[1])
        backend = OpenAICompatBackend.from_settings(
            "stub", BackendSettings(kind="openai", base_url=f"{url}/v1")
        )
        assert await backend.models() == ["echo", "reason", "slow", "numbered"]
        assert connections_to(port) == 1  # kept alive in the pool
        await backend.aclose()
        assert connections_to(port) == 0


def test_an_environment_proxy_is_used_as_httpx_used_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    assert env_proxy("https://api.example.com/v1") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert env_proxy("https://api.example.com/v1") == "http://proxy.internal:3128"
    assert env_proxy("http://127.0.0.1:8080/v1") is None  # HTTPS_PROXY is for https URLs only
    monkeypatch.setenv("NO_PROXY", "example.com")
    assert env_proxy("https://api.example.com/v1") is None
