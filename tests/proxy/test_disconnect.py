"""A client that leaves before the first byte: the upstream request and everything the turn started
ahead (issue 15: the encoder pass, the card, the facts run alongside recognition and recall) are
cancelled, not left running for nobody; the embedding worker yields to a turn being prepared."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import anyio
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from emotion.detector import MiniLMEmotionDetector
from emotion.service import EmotionConfig, EmotionService
from memory.budget import TokenCounter
from memory.db import make_engine, make_sessionmaker
from memory.foreground import Foreground
from memory.service import MemoryConfig, MemoryService
from memory.types import Message, SessionKey, TurnRecord
from proxy.backends.registry import Registry, build_backends
from proxy.main import create_app
from proxy.pipeline import ChatPipeline
from proxy.prepared import PreparedChat
from proxy.protocol import ChatCompletionRequest
from proxy.setting_groups import BackendSettings, RouteSettings
from tests.conftest import closed_port, make_settings
from tests.emotion.test_api import build
from tests.fakes import FakeEmbedder
from tests.memory.test_api import running
from tests.polling import until
from tests.servers.openai_stub import StubState
from tests.servers.runner import serving

CARD = "You are Mira, a lighthouse keeper on a cold northern island. " * 12


@pytest.fixture(scope="module")
def patient_url(stub_url: str) -> Iterator[str]:
    """Anima in front of the stub with a backend timeout far beyond any test: only the client's going
    away can end a request the stub keeps waiting."""
    settings = make_settings(
        backends={"stub": BackendSettings(kind="openai", base_url=f"{stub_url}/v1", timeout_s=600)},
        models=[RouteSettings(name="stub/late", backend="stub", model="late")],
        retries=0,
        sse_ping_s=0,
    )
    with serving(create_app(settings)) as url:
        yield url


@pytest.mark.parametrize("stream", [True, False])
async def test_a_client_gone_before_the_first_byte_cancels_the_upstream_request(
    patient_url: str, stub: StubState, stream: bool
) -> None:
    body = {"model": "stub/late", "messages": [{"role": "user", "content": "Hi"}], "stream": stream}
    async with httpx.AsyncClient(timeout=600) as http:
        asking = asyncio.ensure_future(http.post(f"{patient_url}/v1/chat/completions", json=body))
        await until(lambda: stub.requests, "the request reached the backend")
        asking.cancel()  # the client leaves while the model has not sent a byte
        await asyncio.wait({asking})
    await until(lambda: stub.outcomes, "the upstream request ended")
    assert stub.outcomes == ["cancelled"]


@pytest.fixture
async def pipeline(
    stub_url: str,
    sessions: async_sessionmaker[AsyncSession],
    counter: TokenCounter,
    detector: MiniLMEmotionDetector,
) -> AsyncIterator[ChatPipeline]:
    application, _ = build(stub_url, sessions, counter, detector)
    async with running(application):
        yield application.state.pipeline


def body(n: int) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {
            "model": "stub/echo",
            "messages": [
                {"role": "system", "content": CARD},
                {"role": "assistant", "name": "Mira", "content": "The lamp is lit. Who climbs my stairs?"},
                {"role": "user", "content": f"It is only me, with the {n}th letter from the mainland."},
            ],
        }
    )


async def cancelled_after(pipeline: ChatPipeline, user: int, n: int, delay_s: float) -> int | None:
    """A memory-on `prepare()` whose client leaves `delay_s` after it starts, cancelled as
    `cancel_on_disconnect` cancels it (None: it finished first). Returns how many tasks it had
    started; asserts that none of them is left running for nobody."""
    before = asyncio.all_tasks()
    session = SessionKey(user, conversation=f"leaving-{n}")
    scope = anyio.CancelScope()

    async def prepare() -> PreparedChat | None:
        with scope:
            return await pipeline.prepare(body(n), session)
        return None

    preparing = asyncio.ensure_future(prepare())
    await asyncio.wait({preparing}, timeout=delay_s)
    started = asyncio.all_tasks() - before - {preparing}
    scope.cancel()
    chat = await preparing
    if chat is not None:  # it had finished (or was past its last await)
        await chat.deltas.aclose()  # type: ignore[attr-defined]
        return None
    await asyncio.sleep(0)  # the done-callbacks of what it cancelled
    started |= asyncio.all_tasks() - before - {preparing}
    running = [t for t in started if not t.done() and not t.cancelling()]
    assert running == [], f"cancelled after {delay_s * 1000:.0f} ms, still running: {running}"
    async with asyncio.timeout(30):  # what was cancelled ends (a thread finishes its pass first)
        await asyncio.gather(*started, return_exceptions=True)
    return len(started)


async def test_a_turn_cancelled_anywhere_leaves_no_task_running(pipeline: ChatPipeline, user: int) -> None:
    """The client leaves at every point of a memory-on turn's preparation in turn (recognition, the
    encoder pass, recall, the card, the upstream request): nothing the turn started keeps running."""
    landed, finished, n, delay_s = 0, 0, 0, 0.0
    while finished < 3 and n < 400:
        n += 1
        started = await cancelled_after(pipeline, user, n, delay_s)
        finished = finished + 1 if started is None else 0
        landed += bool(started)
        delay_s += 0.002
    assert landed >= 3  # cancellations landed while started work was pending


async def test_memory_down_during_the_overlapped_step_still_answers(
    stub_url: str, counter: TokenCounter, detector: MiniLMEmotionDetector, user: int
) -> None:
    """Recognition fails (a database nobody listens on) while the encoder pass runs: the turn is
    answered from the client's messages, marked degraded, and nothing it started keeps running."""
    engine = make_engine(f"postgresql+psycopg://anima@127.0.0.1:{closed_port()}/anima")
    memory = MemoryService(make_sessionmaker(engine), counter, FakeEmbedder(), MemoryConfig())
    backends = build_backends({"stub": BackendSettings(kind="openai", base_url=f"{stub_url}/v1")})
    routes = [RouteSettings(name="stub/echo", backend="stub", model="echo", context_window=8192)]
    emotion = EmotionService(detector, EmotionConfig(deadline_s=5))
    pipeline = ChatPipeline(Registry(backends, routes), counter, memory=memory, emotion=emotion)
    before = asyncio.all_tasks()
    try:
        chat = await pipeline.prepare(body(1), SessionKey(user, conversation="down-1"))
        text = "".join([d.text async for d in chat.deltas])
    finally:
        for backend in backends.values():
            await backend.aclose()
        await engine.dispose()
    assert text and chat.memory_status == "degraded" and chat.memory is not None and chat.memory.unstored
    await asyncio.sleep(0)
    assert [t for t in asyncio.all_tasks() - before if not t.done() and not t.cancelling()] == []


async def test_the_embedding_worker_waits_for_a_turn_being_prepared(
    sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, user: int
) -> None:
    """A store that lands while a turn is being prepared wakes the worker once that turn is upstream;
    with turns always in preparation, after `defer_s` at the latest, once however many stores."""
    memory = MemoryService(sessions, counter, FakeEmbedder(), MemoryConfig())  # its worker not running
    assert memory.embeddings is not None
    wake = memory.embeddings.wake
    session = SessionKey(user, conversation="yield-1")
    thread = await memory.recognise(session, [Message("user", "Good evening.")])
    with memory.foreground.turn():
        await memory.store_turn(session, thread, TurnRecord("Evening!", "complete", "m", [], {}))
        assert not wake.is_set()
    assert wake.is_set()
    busy, woken = Foreground(defer_s=0.05), []
    with busy.turn():
        busy.after(lambda: woken.append(1))
        busy.after(lambda: woken.append(2))
        await until(lambda: woken, "the deferred work ran while a turn was still being prepared")
        assert busy.preparing == 1
    assert woken == [1, 2]
