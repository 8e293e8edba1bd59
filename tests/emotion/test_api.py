"""Emotion in the request flow, with the real detector and the real Postgres: stored per message, the
emotional-context block in the prompt, the recall boost, the mood trajectory, the analyze API, opt-out
and logs that never carry emotion data."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from emotion.detector import MiniLMEmotionDetector
from emotion.service import EmotionConfig, EmotionService
from memory.archive import Incoming
from memory.budget import TokenCounter
from memory.db import make_engine
from memory.personas import PersonaRecords
from memory.recall import Fusion, RecallQuery, recall
from memory.service import MemoryConfig, MemoryService
from memory.users import Users, create_key
from personas.store import PersonaStore
from proxy.backends.registry import Registry, build_backends
from proxy.main import create_app
from proxy.services import Services
from proxy.setting_groups import BackendSettings, EmotionSettings, MemorySettings, RouteSettings
from tests.conftest import make_settings
from tests.fakes import FakeEmbedder
from tests.memory.test_api import api, running, say
from tests.servers.openai_stub import StubState
from tests.servers.runner import serving

SAD = "My grandmother passed away last night and I can't stop crying."
NEUTRAL = "What is the capital of Australia?"
BLOCK = "Emotional context:"


def build(
    stub_url: str,
    sessions: async_sessionmaker[AsyncSession],
    counter: TokenCounter,
    detector: MiniLMEmotionDetector,
    **emotion: Any,
) -> tuple[Any, MemoryService]:
    backends = {"stub": BackendSettings(kind="openai", base_url=f"{stub_url}/v1")}
    routes = [RouteSettings(name="stub/echo", backend="stub", model="echo", context_window=8192)]
    settings = make_settings(
        backends=backends, models=routes, memory=MemorySettings(), emotion=EmotionSettings(), retries=0
    )
    feelings = EmotionService(detector, EmotionConfig(deadline_s=5, **emotion))
    service = MemoryService(
        sessions, counter, FakeEmbedder(), MemoryConfig(deadline_s=5), annotate=feelings.annotate
    )
    services = Services(
        Registry(build_backends(backends), routes),
        counter,
        memory=service,
        emotion=feelings,
        users=Users(sessions),
        personas=PersonaStore(None, examples=False, records=PersonaRecords(sessions), cache_ttl_s=0),
    )
    return create_app(settings, services), service


@pytest.fixture
async def app(
    stub_url: str,
    sessions: async_sessionmaker[AsyncSession],
    counter: TokenCounter,
    detector: MiniLMEmotionDetector,
) -> AsyncIterator[tuple[str, MemoryService]]:
    application, service = build(stub_url, sessions, counter, detector)
    async with running(application) as url:
        yield url, service


@pytest.fixture
async def key(sessions: async_sessionmaker[AsyncSession]) -> str:
    async with sessions.begin() as s:
        _, value = await create_key(s, "emotion-test")
    return value


def sent_text(stub: StubState) -> str:
    return "\n".join(m["content"] for m in stub.last_chat()["messages"])


async def test_sad_message_gets_the_block_and_is_stored_with_its_emotion(
    app: tuple[str, MemoryService], key: str, stub: StubState, caplog: pytest.LogCaptureFixture
) -> None:
    url, service = app
    caplog.set_level(logging.DEBUG)
    headers = await say(url, key, [{"role": "user", "content": SAD}])
    prompt = sent_text(stub)
    assert BLOCK in prompt and "sad" in prompt.split(BLOCK, 1)[1]
    assert prompt.rstrip().endswith(SAD)  # the block sits before the newest message, not after
    await service.settle()
    conversation = headers["x-anima-conversation"]
    async with api(url, key) as client:
        messages = (await client.get(f"/conversations/{conversation}/messages")).json()["data"]
    assert messages[0]["role"] == "user" and messages[0]["emotion"] == "sadness"
    assert messages[0]["importance"] > 0.4
    assert "sadness" not in caplog.text and "crying" not in caplog.text  # no emotion data in logs


async def test_neutral_message_gets_no_block(
    app: tuple[str, MemoryService], key: str, stub: StubState
) -> None:
    url, service = app
    await say(url, key, [{"role": "user", "content": NEUTRAL}])
    assert BLOCK not in sent_text(stub)
    await service.settle()


async def test_mood_trajectory_smooths_over_turns(
    app: tuple[str, MemoryService], key: str, stub: StubState
) -> None:
    url, service = app
    history: list[ChatCompletionMessageParam] = []
    lines = [SAD, "I miss her so much, I feel so sad and lonely.", "Thanks, that actually made me smile :)"]
    for line in lines:
        history.append({"role": "user", "content": line})
        headers = await say(url, key, history, extra_headers={"X-Anima-Conversation": "grief"})
        history.append({"role": "assistant", "content": "Hello from the stub!"})
        await service.settle()
    assert headers["x-anima-conversation"] == "grief"
    async with api(url, key) as client:
        body = (await client.get("/conversations/grief/emotions")).json()
        missing = await client.get("/conversations/nope/emotions")
    turns = body["data"]
    assert [t["label"] for t in turns] == ["sadness", "sadness", "joy"]
    assert turns[-1]["mood"]["label"] == "sadness"  # one brighter message does not swing the mood
    assert all(0 < t["confidence"] <= 1 for t in turns)
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "conversation_id"


async def test_analyze_answers_and_validates(app: tuple[str, MemoryService], key: str) -> None:
    url, _ = app
    async with api(url, key) as client:
        one = await client.post("/emotions/analyze", json={"text": "I am not happy at all."})  # negated joy
        many = await client.post("/emotions/analyze", json={"texts": [SAD, NEUTRAL]})
        bad = {
            "empty": await client.post("/emotions/analyze", json={"text": ""}),
            "blank": await client.post("/emotions/analyze", json={"texts": ["ok", "   "]}),
            "too_many": await client.post("/emotions/analyze", json={"texts": ["hi"] * 257}),
            "neither": await client.post("/emotions/analyze", json={}),
            "both": await client.post("/emotions/analyze", json={"text": "a", "texts": ["b"]}),
            "wrong_type": await client.post("/emotions/analyze", json={"texts": "hi"}),
        }
    assert one.status_code == 200
    (result,) = one.json()["data"]
    assert result["label"] in ("sadness", "anger")  # displeasure: GoEmotions' disapproval is anger
    assert set(result) >= {"confidence", "uncertain", "scores", "importance"}
    assert [r["label"] for r in many.json()["data"]] == ["sadness", "neutral"]
    for name, response in bad.items():
        assert response.status_code == 400, name
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}, name
    assert bad["too_many"].json()["error"]["param"] == "texts"


async def test_emotion_can_be_switched_off_per_persona(
    stub_url: str,
    sessions: async_sessionmaker[AsyncSession],
    counter: TokenCounter,
    detector: MiniLMEmotionDetector,
    key: str,
    stub: StubState,
) -> None:
    application, service = build(
        stub_url, sessions, counter, detector, disabled_personas=frozenset({"stoic"})
    )
    async with running(application) as url:
        headers = await say(
            url, key, [{"role": "user", "content": SAD}], extra_headers={"x-st-char": "Stoic"}
        )
        assert BLOCK not in sent_text(stub)
        await service.settle()
        async with api(url, key) as client:
            conversation = headers["x-anima-conversation"]
            stored = (await client.get(f"/conversations/{conversation}/messages")).json()["data"]
    assert stored[0]["emotion"] is None and stored[0]["importance"] is not None


async def test_a_persona_can_opt_out_of_emotion(
    app: tuple[str, MemoryService], key: str, stub: StubState
) -> None:
    url, service = app
    async with api(url, key) as client:
        await client.put("/personas/calm", json={"description": "Unmoved.", "emotion": False})
        await client.put("/personas/warm", json={"description": "Moved."})
    calm = await say(url, key, [{"role": "user", "content": SAD}], extra_headers={"x-anima-persona": "calm"})
    assert BLOCK not in sent_text(stub)
    warm = await say(  # another chat (the same first message would continue the first one)
        url,
        key,
        [{"role": "user", "content": f"{SAD} I miss her."}],
        extra_headers={"x-anima-persona": "warm"},
    )
    assert BLOCK in sent_text(stub)
    await service.settle()
    async with api(url, key) as client:
        stored = {
            name: (await client.get(f"/conversations/{h['x-anima-conversation']}/messages")).json()["data"][0]
            for name, h in (("calm", calm), ("warm", warm))
        }
    assert stored["calm"]["emotion"] is None and stored["warm"]["emotion"] == "sadness"


async def test_boost_lifts_memories_felt_the_same_way(
    sessions: async_sessionmaker[AsyncSession],
    counter: TokenCounter,
    detector: MiniLMEmotionDetector,
    user: int,
) -> None:
    """Two stored memories match the query equally well in text; the one stored with the current
    emotion (and high importance) moves to the top only when the boost is on."""
    memory = MemoryService(sessions, counter, FakeEmbedder(), MemoryConfig(deadline_s=5))
    await memory.archive.create(
        user,
        [
            Incoming("user", "the exam results came in today"),
            Incoming("user", "the exam results came in today and I failed"),
        ],
    )
    await memory.embeddings.drain()  # type: ignore[union-attr]
    async with sessions.begin() as s:
        rows = (
            await s.execute(text("SELECT id FROM message WHERE user_id = :u ORDER BY id"), {"u": user})
        ).scalars()
        plain, sad = list(rows)
        await s.execute(
            text("UPDATE message SET emotion_label = 'sadness', importance = 0.9 WHERE id = :i"), {"i": sad}
        )
        await s.execute(
            text("UPDATE message SET emotion_label = 'joy', importance = 0.9 WHERE id = :i"), {"i": plain}
        )
    feelings = EmotionService(detector, EmotionConfig())
    (now,) = await detector.detect(["I feel so sad about the exam results today"])
    assert now.label == "sadness"
    query = RecallQuery(
        user_id=user,
        text="exam results today",
        embedding=(await FakeEmbedder().embed(["exam results today"]))[0],
        scope="user",
        anchor_id=None,
    )
    async with sessions() as s:
        unboosted = await recall(s, query, Fusion())
        boosted = await recall(s, query, Fusion(), feelings.boost(now))
    assert unboosted[0].message_id == plain  # closer in words
    assert boosted[0].message_id == sad
    assert boosted[0].score - unboosted[1].score == pytest.approx(0.9 / 61)


def test_without_memory_the_block_goes_in_as_a_system_message(
    stub_url: str, stub: StubState, emotion_cache: Path, tmp_path: Path
) -> None:
    """Settings → lifespan → the detector opened from the shared model cache; memory off, emotion on."""
    settings = make_settings(
        backends={"stub": BackendSettings(kind="openai", base_url=f"{stub_url}/v1")},
        models=[RouteSettings(name="stub/echo", backend="stub", model="echo")],
        emotion=EmotionSettings(),
        data_dir=tmp_path,
    )
    with serving(create_app(settings)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        client.chat.completions.create(model="stub/echo", messages=[{"role": "user", "content": SAD}])
        sad = stub.last_chat()["messages"]
        client.chat.completions.create(model="stub/echo", messages=[{"role": "user", "content": NEUTRAL}])
        neutral = stub.last_chat()["messages"]
        health = httpx.get(f"{url}/health").json()
    assert [m["role"] for m in sad] == ["system", "user"] and sad[0]["content"].startswith(BLOCK)
    assert [m["role"] for m in neutral] == ["user"]
    assert health["emotion"] == {"status": "ok", "failures": 0}


async def test_database_errors_do_not_carry_stored_text_or_emotions(pg_url: str) -> None:
    """A failed store is logged with its exception; the statement's parameters must not be in it."""
    engine = make_engine(pg_url, pool_size=1)
    try:
        with pytest.raises(DBAPIError) as info:
            async with engine.connect() as conn:
                await conn.execute(text("INSERT INTO nowhere VALUES (:label)"), {"label": "sadness: grief"})
    finally:
        await engine.dispose()
    assert "nowhere" in str(info.value) and "grief" not in str(info.value)
