"""`/v1/embeddings` (a backend's and the built-in MiniLM), `/v1/completions` and the configurable
passthrough of other `/v1/*` routes, through the official SDK against Anima on uvicorn."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from memory.embedder import Embedder
from proxy.main import create_app
from proxy.setting_groups import BackendSettings
from tests.conftest import make_settings, stub_routes
from tests.servers.openai_stub import REPLY, StubState, vector_of
from tests.servers.runner import serving

MINILM = "anima/all-minilm-l6-v2"


@pytest.fixture(scope="module")
def relay_url(stub_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Anima with `passthrough = "stub"` and a data dir of its own (the built-in embedder's cache)."""
    settings = make_settings(
        backends={
            "stub": BackendSettings(kind="openai", base_url=f"{stub_url}/v1", timeout_s=5.0),
            "local": BackendSettings(kind="embedded"),
        },
        models=[r for r in stub_routes() if r.backend == "stub"],
        passthrough="stub",
        data_dir=tmp_path_factory.mktemp("anima-relay"),
        retries=0,
        sse_ping_s=0,
    )
    with serving(create_app(settings)) as url:
        yield url


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="test", max_retries=0)


def test_backend_embeddings_through_the_sdk_default_base64(anima_url: str, stub: StubState) -> None:
    result = client(anima_url).embeddings.create(model="stub/echo", input=["alpha", "beta gamma"])
    assert [d.index for d in result.data] == [0, 1]
    assert result.data[0].embedding == pytest.approx(vector_of("alpha"), abs=1e-6)
    assert result.data[1].embedding == pytest.approx(vector_of("beta gamma"), abs=1e-6)
    assert result.model == "stub/echo"
    assert result.usage.prompt_tokens == 4
    assert stub.requests[0] == {"model": "echo", "input": ["alpha", "beta gamma"], "encoding_format": "float"}


def test_backend_embeddings_float_and_dimensions_raw(anima_url: str, stub: StubState) -> None:
    body = {"model": "stub/echo", "input": "alpha", "encoding_format": "float", "dimensions": 4}
    answer = httpx.post(f"{anima_url}/v1/embeddings", json=body, timeout=30).json()
    assert answer["object"] == "list"
    assert answer["data"] == [{"object": "embedding", "index": 0, "embedding": vector_of("alpha", 4)}]
    assert stub.requests[0]["dimensions"] == 4


def test_base64_embeddings_are_little_endian_float32(anima_url: str, stub: StubState) -> None:
    body = {"model": "stub/echo", "input": ["alpha"], "encoding_format": "base64"}
    encoded = httpx.post(f"{anima_url}/v1/embeddings", json=body, timeout=30).json()["data"][0]["embedding"]
    raw = base64.b64decode(encoded)
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(vector_of("alpha"), abs=1e-6)


def test_backend_embedding_errors_and_bad_input(anima_url: str, stub: StubState) -> None:
    sdk = client(anima_url)
    with pytest.raises(openai.NotFoundError):
        sdk.embeddings.create(model="nope/never", input="x")
    with pytest.raises(openai.BadRequestError) as info:
        sdk.embeddings.create(model="stub/echo", input=[])
    assert info.value.body["param"] == "input"  # type: ignore[index]


def test_builtin_minilm_matches_memorys_embedder(relay_url: str, embedder: Embedder) -> None:
    import asyncio

    texts = ["The cat sat on the mat.", "Quarterly revenue grew by 4%."]
    result = client(relay_url).embeddings.create(model=MINILM, input=texts)
    expected = asyncio.run(embedder.embed(texts))
    assert [len(d.embedding) for d in result.data] == [384, 384]
    for got, want in zip(result.data, expected, strict=True):
        assert got.embedding == pytest.approx(want, abs=1e-5)
        assert math.sqrt(sum(x * x for x in got.embedding)) == pytest.approx(1.0, abs=1e-4)
    assert result.usage.prompt_tokens > 0
    with pytest.raises(openai.BadRequestError) as info:
        client(relay_url).embeddings.create(model=MINILM, input="x", dimensions=128)
    assert "384" in info.value.message


def test_embedded_backend_cannot_embed_is_a_clear_400(relay_url: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(relay_url).embeddings.create(model="local/smollm2", input="x")
    assert info.value.code == "unsupported_parameter"
    assert "'local'" in info.value.message and "smollm2" in info.value.message


def test_legacy_completions_pass_through(anima_url: str, stub: StubState) -> None:
    sdk = client(anima_url)
    completion = sdk.completions.create(model="stub/echo", prompt="Once upon", max_tokens=5, echo=False)
    assert completion.choices[0].text == "".join(REPLY)
    assert completion.object == "text_completion"
    assert stub.requests[0] == {"model": "echo", "prompt": "Once upon", "max_tokens": 5, "echo": False}
    pieces = [c.choices[0].text for c in sdk.completions.create(model="stub/echo", prompt="x", stream=True)]
    assert pieces == list(REPLY)


def test_legacy_completions_errors(anima_url: str, relay_url: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(relay_url).completions.create(model="local/smollm2", prompt="x")
    assert info.value.code == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError) as upstream:
        client(anima_url).completions.create(model="stub/bad-400", prompt="x")
    assert "stub" in upstream.value.message


def test_unknown_routes_are_forwarded_when_configured(relay_url: str, stub: StubState) -> None:
    result = client(relay_url).moderations.create(input="hello")
    assert result.results[0].flagged is False
    assert stub.requests[0] == {"input": "hello"}
    assert "authorization" not in stub.headers[0]  # the backend's credentials (none here), not the client's


def test_unknown_routes_without_passthrough_are_a_clear_404(anima_url: str) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(anima_url).moderations.create(input="hello")
    assert "ANIMA_PASSTHROUGH" in info.value.message
    assert httpx.get(f"{anima_url}/v1/chat/completions", timeout=30).status_code == 405


def test_passthrough_must_name_an_openai_backend(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="passthrough"):
        make_settings(backends={"local": BackendSettings(kind="embedded")}, passthrough="local")
