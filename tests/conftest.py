"""Shared fixtures: a scripted OpenAI-compatible upstream and Anima in front of it, both on real HTTP;
the real embedded Postgres+pgvector (one per session; each test makes its own user, so tests never see
each other's rows and can assert exact values)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from emotion.detector import MiniLMEmotionDetector
from emotion.detector import graph_name as emotion_graph_name
from memory import model_cache
from memory.budget import TokenCounter
from memory.db import make_engine, make_sessionmaker, upgrade_schema
from memory.embedded_pg import EmbeddedPostgres
from memory.embedder import Embedder, load_embedder
from memory.users import create_key
from proxy.backends.llamacpp import default_model_path
from proxy.main import create_app
from proxy.setting_groups import (
    BackendSettings,
    EmotionSettings,
    MemorySettings,
    PersonaSettings,
    RouteSettings,
)
from proxy.settings import Settings
from tests.servers.openai_stub import StubState, stub_app
from tests.servers.runner import serving

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class PersonaFolders:
    """A fresh, empty personas folder for each app a test builds, all inside one directory that the
    session removes at its end (they used to stay in $TMPDIR, one per app). Not under pytest's basetemp:
    other pytest sessions on the machine tidy that (see test_a_first_start_is_quiet)."""

    def __init__(self) -> None:
        self._root: tempfile.TemporaryDirectory[str] | None = None

    def new(self) -> Path:
        if self._root is None:
            self._root = tempfile.TemporaryDirectory(prefix="anima-personas-")
        return Path(tempfile.mkdtemp(prefix="personas-", dir=self._root.name))

    def remove(self) -> None:
        if self._root is not None:
            self._root.cleanup()
            self._root = None


persona_folders = PersonaFolders()


@pytest.fixture(scope="session", autouse=True)
def _remove_persona_folders() -> Iterator[None]:
    """Set up before, so torn down after, every other session fixture (the apps using the folders)."""
    yield
    persona_folders.remove()


def make_settings(**values: Any) -> Settings:
    """Settings for a test: only what the test says, never a developer's .env. Memory is off unless
    the test turns it on (the proxy tests check the wire format; tests/memory checks memory); so is
    fact extraction (its worker calls the upstream in the background) and emotion, and personas come
    only from a fresh folder (no shipped examples)."""
    values.setdefault("memory", MemorySettings(enabled=False))
    if "facts_enabled" not in values["memory"].model_fields_set:  # a background model caller: opt-in
        values["memory"] = values["memory"].model_copy(update={"facts_enabled": False})
    values.setdefault("emotion", EmotionSettings(enabled=False))
    values.setdefault(
        "personas",
        PersonaSettings(examples=False, reload_s=0, folder=persona_folders.new()),
    )
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def stub_state() -> StubState:
    return StubState()


@pytest.fixture(scope="session")
def stub_url(stub_state: StubState) -> Iterator[str]:
    with serving(stub_app(stub_state)) as url:
        yield url


@pytest.fixture
def stub(stub_state: StubState) -> StubState:
    """The upstream's record, emptied for this test."""
    stub_state.requests.clear()
    stub_state.headers.clear()
    stub_state.calls.clear()
    stub_state.outcomes.clear()
    stub_state.received.clear()
    stub_state.peers.clear()
    return stub_state


def stub_routes() -> list[RouteSettings]:
    return [
        RouteSettings(name="stub/echo", backend="stub", model="echo"),
        RouteSettings(name="mock-model-1", backend="stub", model="echo"),
        RouteSettings(name="broken", backend="stub", model="fail-500", fallbacks=["stub/echo"]),
        RouteSettings(name="dead/model", backend="dead", model="x", fallbacks=[]),
    ]


@pytest.fixture(scope="session")
def anima_url(stub_url: str) -> Iterator[str]:
    """Anima routing to the stub (`stub/...`) and to a port nobody listens on (`dead/...`)."""
    settings = make_settings(
        backends={
            "stub": BackendSettings(kind="openai", base_url=f"{stub_url}/v1", timeout_s=1.0),
            "dead": BackendSettings(kind="openai", base_url=f"http://127.0.0.1:{closed_port()}/v1"),
        },
        models=stub_routes(),
        retries=2,
        retry_backoff_s=0,
        sse_ping_s=0,
    )
    with serving(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = EmbeddedPostgres(tmp_path_factory.mktemp("anima-data"))
    url = server.start()
    upgrade_schema(url)
    yield url
    server.stop()


@pytest.fixture(scope="session")
async def sessions(pg_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(pg_url, pool_size=4)
    yield make_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture(scope="session")
def counter() -> TokenCounter:
    return TokenCounter()


@pytest.fixture
async def user(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions.begin() as s:
        user_id, _ = await create_key(s, "test-user")
    return user_id


@pytest.fixture(scope="session")
def detector() -> MiniLMEmotionDetector:
    """The real emotion detector, opened from the shared model cache `make test` fills at install
    (`anima models build`; built there once if missing), as `anima serve` opens it."""
    return MiniLMEmotionDetector.load()


@pytest.fixture(scope="session")
def emotion_cache(detector: MiniLMEmotionDetector) -> Path:
    """The folder holding the emotion detector's graph in the shared model cache."""
    found = model_cache.find(emotion_graph_name())
    assert found is not None
    return found.parent


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The real recall embedder (all-MiniLM-L6-v2 through ONNX) from the shared model cache."""
    return load_embedder()


@pytest.fixture(scope="session")
def llama_server() -> Iterator[str]:
    """A real `python -m llama_cpp.server` running the SmolLM2 GGUF."""
    port = closed_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(default_model_path())]
    command += ["--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, "llama_cpp.server exited"
            try:
                if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)
