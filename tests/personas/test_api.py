"""Personas through Anima's HTTP API on the real Postgres, with the real OpenAI SDK: the API and its
versions, selection precedence, the persona in the prompt the backend sees, client character cards,
the folder's hot reload, and learning a persona from messages (malformed JSON first).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai.types.chat import ChatCompletionMessageParam
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.budget import TokenCounter
from memory.embedder import Embedder
from memory.models import ConversationRow, MessageRow, PersonaRef, TurnContext
from memory.persona_models import PersonaChunk
from memory.personas import PersonaRecords
from memory.service import MemoryConfig, MemoryService
from memory.users import Users, create_key
from personas.client_card import EXCERPT_HEADER, CardIndex
from personas.store import PersonaStore
from proxy.backends.registry import Registry, build_backends
from proxy.main import create_app
from proxy.services import Services
from proxy.setting_groups import BackendSettings, MemorySettings, PersonaSettings, RouteSettings
from tests.conftest import make_settings
from tests.openai_sdk import asgi_sdk
from tests.polling import until
from tests.servers.openai_stub import StubState

URL = "http://anima"
FIXTURES = Path(__file__).parent.parent / "fixtures" / "sillytavern"
TRANSPORTS: dict[str, httpx.ASGITransport] = {}


def build(
    stub_url: str,
    sessions: async_sessionmaker[AsyncSession],
    counter: TokenCounter,
    embedder: Embedder,
    folder: Path,
    **persona_settings: Any,
) -> Any:
    backends = {"stub": BackendSettings(kind="openai", base_url=f"{stub_url}/v1")}
    routes = [
        RouteSettings(name="stub/echo", backend="stub", model="echo", context_window=8192),
        RouteSettings(name="stub/small", backend="stub", model="echo", context_window=1024),
        RouteSettings(name="stub/sage", backend="stub", model="echo", persona="sage"),
        RouteSettings(name="stub/profile", backend="stub", model="profile-bad-first"),
        RouteSettings(name="stub/never", backend="stub", model="profile-never"),
    ]
    settings = make_settings(
        backends=backends,
        models=routes,
        memory=MemorySettings(enabled=True),
        personas=PersonaSettings(folder=folder, reload_s=0, **persona_settings),
        retries=0,
    )
    memory = MemoryService(sessions, counter, embedder, MemoryConfig(deadline_s=5))
    records = PersonaRecords(sessions)
    services = Services(
        Registry(build_backends(backends), routes),
        counter,
        memory=memory,
        users=Users(sessions),
        personas=PersonaStore(folder, examples=True, records=records, cache_ttl_s=0),
        cards=CardIndex(records, embedder, counter),
    )
    return create_app(settings, services), services


@asynccontextmanager
async def running(application: Any, services: Services) -> AsyncIterator[str]:
    assert services.personas is not None
    await services.personas.reload()
    async with application.router.lifespan_context(application):
        TRANSPORTS[URL] = httpx.ASGITransport(app=application)
        yield URL


@pytest.fixture
async def app(
    stub_url: str,
    sessions: async_sessionmaker[AsyncSession],
    counter: TokenCounter,
    embedder: Embedder,
    tmp_path: Path,
) -> AsyncIterator[Services]:
    application, services = build(stub_url, sessions, counter, embedder, tmp_path)
    async with running(application, services):
        yield services


@pytest.fixture
async def key(sessions: async_sessionmaker[AsyncSession]) -> str:
    async with sessions.begin() as s:
        _, value = await create_key(s, "persona-test")
    return value


def api(key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=TRANSPORTS[URL], base_url=f"{URL}/v1", headers={"Authorization": f"Bearer {key}"}
    )


async def chat(key: str, messages: list[ChatCompletionMessageParam], **kwargs: Any) -> Mapping[str, str]:
    client = asgi_sdk(TRANSPORTS[URL], f"{URL}/v1", key)
    raw = await client.chat.completions.with_raw_response.create(
        model=kwargs.pop("model", "stub/echo"), messages=messages, **kwargs
    )
    raw.parse()
    headers: Mapping[str, str] = raw.headers  # `**kwargs` leaves `stream` open: mypy sees `raw` as Any
    return headers


def sent(stub: StubState) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = stub.last_chat()["messages"]
    return messages


HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi there"}]


# -- the API -------------------------------------------------------------------------------------------


async def test_put_validates_naming_the_field_and_versions_only_changes(app: Services, key: str) -> None:
    async with api(key) as client:
        bad = await client.put("/personas/nova", json={"traits": {"humor": 1.5}})
        assert bad.status_code == 400
        error = bad.json()["error"]
        assert error["param"] == "traits.humor" and "less than or equal to 1" in error["message"]
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_persona"
        unknown = await client.put("/personas/nova", json={"traits": {"charm": 0.5}})
        assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "traits.charm"
        mismatch = await client.put("/personas/nova", json={"name": "other"})
        assert mismatch.status_code == 400 and mismatch.json()["error"]["param"] == "name"
        bad_name = await client.put("/personas/no%20spaces", json={})
        assert bad_name.status_code == 400 and bad_name.json()["error"]["param"] == "name"

        body = {"description": "A navigator.", "traits": {"humor": 0.5}}
        created = await client.put("/personas/nova", json=body)
        assert created.status_code == 201 and created.json()["version"] == 1
        again = await client.put("/personas/nova", json=body)
        assert again.status_code == 200 and again.json()["version"] == 1  # same content, same version
        stale = await client.put("/personas/nova", json={**body, "style": "terse", "version": 0})
        assert stale.status_code == 409 and stale.json()["error"]["param"] == "version"

        patched = await client.patch(
            "/personas/nova", json={"trait": "humor", "action": "increase", "intensity": 0.3}
        )
        assert patched.status_code == 200
        assert patched.json()["version"] == 2 and patched.json()["persona"]["traits"]["humor"] == 0.8
        down = await client.patch("/personas/nova", json={"trait": "humor", "action": "decrease"})
        assert down.json()["persona"]["traits"]["humor"] == 0.7 and down.json()["note"] == "decrease humor"
        capped = await client.patch(
            "/personas/nova", json={"trait": "empathy", "action": "set", "intensity": 1}
        )
        assert capped.json()["persona"]["traits"]["empathy"] == 1.0
        extra = await client.patch(
            "/personas/nova", json={"trait": "curious", "action": "set", "intensity": 0.9}
        )
        assert extra.json()["persona"]["extra_traits"] == {"curious": 0.9}
        missing = await client.patch("/personas/nova", json={"trait": "grumpy", "action": "increase"})
        assert missing.status_code == 400 and missing.json()["error"]["param"] == "trait"
        wrong = await client.patch("/personas/nova", json={"trait": "humor", "action": "double"})
        assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "action"

        versions = (await client.get("/personas/nova/versions")).json()["data"]
        assert [v["version"] for v in versions] == [1, 2, 3, 4, 5]
        assert [v["persona"]["traits"]["humor"] for v in versions[:3]] == [0.5, 0.8, 0.7]

        listed = {p["name"]: p for p in (await client.get("/personas")).json()["data"]}
        assert {"aria", "sage", "rex", "nova"} <= set(listed)
        assert listed["nova"]["shared"] is False and listed["aria"]["shared"] is True

        assert (await client.delete("/personas/nova")).json()["deleted"] is True
        gone = await client.get("/personas/nova")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "persona_not_found"
        shared = await client.delete("/personas/aria")
        assert shared.status_code == 409 and "personas folder" in shared.json()["error"]["message"]


async def test_a_users_persona_is_private_and_a_patched_shared_one_becomes_a_copy(
    app: Services, key: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with sessions.begin() as s:
        _, other = await create_key(s, "someone-else")
    async with api(key) as mine, api(other) as theirs:
        await mine.put("/personas/secret", json={"description": "Mine."})
        assert (await theirs.get("/personas/secret")).status_code == 404
        patched = await mine.patch(
            "/personas/aria", json={"trait": "humor", "action": "set", "intensity": 0.1}
        )
        assert patched.json()["shared"] is False and patched.json()["persona"]["traits"]["humor"] == 0.1
        assert (await theirs.get("/personas/aria")).json()["persona"]["traits"]["humor"] != 0.1
        assert (await theirs.get("/personas/aria")).json()["shared"] is True


# -- choosing one, and the prompt ----------------------------------------------------------------------


async def test_selection_precedence_header_alias_route_default(
    app: Services, key: str, stub: StubState
) -> None:
    headers = await chat(key, HI, model="aria@stub/sage", extra_headers={"X-Anima-Persona": "rex"})
    assert sent(stub)[0]["content"].startswith("You are Coach Rex.")  # header beats the alias
    assert headers["x-anima-persona"].startswith("rex;v=")
    await chat(key, HI, model="aria@stub/sage")
    assert sent(stub)[0]["content"].startswith("You are Aria.")  # alias beats the route default
    await chat(key, HI, model="stub/sage")
    assert sent(stub)[0]["content"].startswith("You are Sage.")  # the route's default persona
    plain = await chat(key, HI, model="stub/echo")
    assert sent(stub)[0] == {"role": "user", "content": "Hi there"}  # none configured: none sent
    again = await chat(key, HI, model="aria@stub/echo")
    assert again["x-anima-conversation"] != plain["x-anima-conversation"] != headers["x-anima-conversation"]
    assert stub.last_chat()["model"] == "echo"

    async with api(key) as client:
        ids = [m["id"] for m in (await client.get("/models")).json()["data"]]
        assert "aria@stub/echo" in ids and "sage@stub/small" in ids and "stub/echo" in ids
        missing = await client.post(
            "/chat/completions",
            json={"model": "stub/echo", "messages": HI},
            headers={"X-Anima-Persona": "nobody"},
        )
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "X-Anima-Persona"
        alias = await client.post("/chat/completions", json={"model": "nobody@stub/echo", "messages": HI})
        assert alias.status_code == 404 and alias.json()["error"]["code"] == "persona_not_found"
        route = await client.post("/chat/completions", json={"model": "aria@nowhere/x", "messages": HI})
        assert route.status_code == 404 and route.json()["error"]["code"] == "model_not_found"


async def test_global_default_persona_applies_when_nothing_else_does(
    stub_url: str,
    sessions: async_sessionmaker[AsyncSession],
    counter: TokenCounter,
    embedder: Embedder,
    tmp_path: Path,
    key: str,
    stub: StubState,
) -> None:
    application, services = build(stub_url, sessions, counter, embedder, tmp_path, default="rex")
    async with running(application, services):
        await chat(key, HI, model="stub/echo")
        assert sent(stub)[0]["content"].startswith("You are Coach Rex.")
        await chat(key, HI, model="stub/sage")  # a route's default beats the global one
        assert sent(stub)[0]["content"].startswith("You are Sage.")


async def test_trait_patch_shows_in_the_next_turns_prompt_and_the_reply_records_the_version(
    app: Services, key: str, stub: StubState, sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with api(key) as client:
        await client.put("/personas/juno", json={"description": "A pilot.", "traits": {"humor": 0.5}})
        first = await chat(key, HI, model="juno@stub/echo")
        assert "Joke" not in sent(stub)[0]["content"]
        await client.patch("/personas/juno", json={"trait": "humor", "action": "increase", "intensity": 0.4})
        messages: list[ChatCompletionMessageParam] = [
            *HI,
            {"role": "assistant", "content": "Hello from the stub!"},
            {"role": "user", "content": "More"},
        ]
        second = await chat(key, messages, model="juno@stub/echo")
    assert "Joke often" in sent(stub)[0]["content"] and "0.9" not in sent(stub)[0]["content"]
    assert first["x-anima-persona"] == "juno;v=1" and second["x-anima-persona"] == "juno;v=2"
    assert first["x-anima-conversation"] == second["x-anima-conversation"]
    await app.memory.settle()  # type: ignore[union-attr]
    async with sessions() as s:
        replies = (
            await s.scalars(
                select(MessageRow.meta)
                .join(ConversationRow, ConversationRow.id == MessageRow.conversation_id)
                .where(
                    ConversationRow.public_id == second["x-anima-conversation"],
                    MessageRow.role == "assistant",
                )
                .order_by(MessageRow.id)
            )
        ).all()
        contexts = (
            await s.scalars(
                select(TurnContext.persona)
                .join(ConversationRow, ConversationRow.id == TurnContext.conversation_id)
                .where(ConversationRow.public_id == second["x-anima-conversation"])
                .order_by(TurnContext.id)
            )
        ).all()
        persona_id = await s.scalar(
            select(ConversationRow.persona_id).where(
                ConversationRow.public_id == second["x-anima-conversation"]
            )
        )
        juno = await s.scalar(select(PersonaRef.id).where(PersonaRef.name == "juno"))
    assert [m["persona"] for m in replies] == [{"name": "juno", "version": 1}, {"name": "juno", "version": 2}]
    assert list(contexts) == [{"name": "juno", "version": 1}, {"name": "juno", "version": 2}]
    assert persona_id == juno
    async with api(key) as client:
        inspected = (await client.get(f"/conversations/{second['x-anima-conversation']}/context")).json()
    assert inspected["persona"] == {"name": "juno", "version": 2}
    assert (
        inspected["messages"][0]["content"].startswith("You are juno.")
        and "Joke often" in inspected["messages"][0]["content"]
    )


async def test_persona_merges_with_the_clients_system_prompt_without_duplicates(
    app: Services, key: str, stub: StubState
) -> None:
    assert app.personas is not None
    aria = await app.personas.require(None, "aria")
    description = aria.persona.description
    client_system = f"{description}\n\nAlways answer in French."
    await chat(key, [{"role": "system", "content": client_system}, *HI], model="aria@stub/echo")
    outgoing = sent(stub)
    text = "\n".join(m["content"] for m in outgoing if m["role"] == "system")
    assert text.count(description) == 1 and "Always answer in French." in text
    assert outgoing[0]["content"].startswith("You are Aria.") and outgoing[-1]["content"] == "Hi there"


async def test_persona_emotion_opt_out_comes_from_the_persona(app: Services, key: str) -> None:
    async with api(key) as client:
        created = await client.put("/personas/stoic", json={"description": "Unmoved.", "emotion": False})
    assert created.json()["persona"]["emotion"] is False
    assert app.personas is not None
    resolved = await app.personas.get(None, "aria")
    assert resolved is not None and resolved.persona.emotion is True


# -- the client's own character card -------------------------------------------------------------------


def big_card() -> str:
    filler = [
        f"Bob remembers the harbour of town number {i}: its boats, its gulls, its fish market at dawn."
        for i in range(40)
    ]
    secret = "Bob's younger sister is named Clarabelle; she lives in Reykjavik and paints lighthouses."
    return "\n\n".join(
        ["Bob's personality: gruff, loyal, a retired sailor.", *filler[:20], secret, *filler[20:]]
    )


async def test_an_oversized_client_card_is_stored_chunked_and_recalled_piecewise(
    app: Services,
    key: str,
    stub: StubState,
    sessions: async_sessionmaker[AsyncSession],
    counter: TokenCounter,
) -> None:
    card = big_card()
    # far over the persona share of a 1024-token window (~160), within that of an 8192 one (~1300)
    assert 500 < counter.count(card) < 1300
    question: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": card},
        {"role": "user", "content": "What is your sister's name?"},
    ]
    headers = await chat(key, question, model="stub/small", extra_headers={"X-ST-Char": "Bob"})
    system = sent(stub)[0]["content"]
    assert system.startswith(EXCERPT_HEADER.format(title="Bob"))
    assert "Clarabelle" in system and "Bob's personality" in system  # relevant piece + the opening
    assert "town number 35" not in system and len(system) < len(card) / 3
    assert headers["x-anima-persona"] == "card-bob;v=1"

    other: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": card},
        {"role": "user", "content": "Tell me about the fish market of town number 35"},
    ]
    await chat(key, other, model="stub/small", extra_headers={"X-ST-Char": "Bob"})
    assert "town number 35" in sent(stub)[0]["content"] and "Clarabelle" not in sent(stub)[0]["content"]

    await chat(key, question, model="stub/echo", extra_headers={"X-ST-Char": "Bob"})  # fits: sent whole
    assert sent(stub)[0]["content"] == card

    await app.memory.settle()  # type: ignore[union-attr]
    async with sessions() as s:
        ref = await s.scalar(
            select(PersonaRef).where(PersonaRef.name == "card-bob", PersonaRef.user_id.is_not(None))
        )
        assert ref is not None and ref.source == "card" and ref.version == 1
        chunks = (await s.scalars(select(PersonaChunk).where(PersonaChunk.persona_id == ref.id))).all()
        conversation = await s.scalar(
            select(ConversationRow).where(ConversationRow.public_id == headers["x-anima-conversation"])
        )
    assert len(chunks) > 10 and all(c.embedding is not None for c in chunks)
    assert "".join(c.content for c in chunks).count("Clarabelle") == 1
    assert conversation is not None and conversation.persona_id == ref.id


async def test_a_captured_sillytavern_request_carries_a_card_that_is_stored(
    app: Services, key: str, stub: StubState, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """A real SillyTavern 1.19 request (main prompt, description, examples, greeting named "Bob")."""
    captured = json.loads((FIXTURES / "st119-requests-postproc.jsonl").read_text().splitlines()[0])["json"]
    system = [m for m in captured["messages"] if m["role"] == "system"]
    headers = await chat(key, captured["messages"], model="stub/echo")
    assert headers["x-anima-persona"] == "card-bob;v=1"
    forwarded = [m for m in sent(stub) if m["role"] == "system"]
    assert [m["content"] for m in forwarded] == [m["content"] for m in system]  # it fits: unchanged
    await app.memory.settle()  # type: ignore[union-attr]
    async with sessions() as s:
        ref = await s.scalar(
            select(PersonaRef)
            .join(PersonaChunk, PersonaChunk.persona_id == PersonaRef.id)
            .where(PersonaRef.name == "card-bob")
            .order_by(PersonaRef.id.desc())
            .limit(1)
        )
        assert ref is not None and ref.source == "card"
        chunks = (
            await s.scalars(select(PersonaChunk.content).where(PersonaChunk.persona_id == ref.id))
        ).all()
    assert "grumpy dwarven blacksmith" in "\n".join(chunks)


async def test_short_system_prompts_are_not_cards(
    app: Services, key: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    headers = await chat(key, [{"role": "system", "content": "You are a helpful assistant."}, *HI])
    assert "x-anima-persona" not in headers


# -- the folder ----------------------------------------------------------------------------------------


async def test_folder_reload_adds_changes_and_reports_a_bad_file_naming_the_field(
    app: Services, key: str, tmp_path: Path, stub: StubState, sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with sessions.begin() as s:
        _, admin = await create_key(s, "persona-admin", admin=True)
    (tmp_path / "pip.yaml").write_text("name: pip\ndescription: A tiny robot.\ntraits:\n  humor: 0.9\n")
    async with api(key) as client:
        denied = await client.post("/personas/reload")
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "permission_denied"
    async with api(admin) as client:
        report = (await client.post("/personas/reload")).json()
        assert "pip" in report["changed"] and report["errors"] == {}
        await chat(key, HI, model="pip@stub/echo")
        assert "A tiny robot." in sent(stub)[0]["content"]

        (tmp_path / "pip.yaml").write_text("name: pip\ndescription: A tiny robot.\ntraits:\n  humor: 7\n")
        (tmp_path / "zed.yaml").write_text("name: zed\ndescription: Zed.\n")
        report = (await client.post("/personas/reload")).json()
        assert report["errors"] == {
            "pip.yaml": "pip.yaml: traits.humor: Input should be less than or equal to 1"
        }
        assert "zed" in report["changed"] and "pip" in report["loaded"]  # the last good pip stays
        assert (await client.get("/personas/pip")).json()["persona"]["traits"]["humor"] == 0.9
        assert (await client.get("/personas")).json()["errors"] == report["errors"]


async def test_folder_is_watched(
    stub_url: str,
    sessions: async_sessionmaker[AsyncSession],
    counter: TokenCounter,
    embedder: Embedder,
    tmp_path: Path,
    key: str,
) -> None:
    application, services = build(stub_url, sessions, counter, embedder, tmp_path)
    assert services.personas is not None
    async with running(application, services):
        watcher = asyncio.create_task(services.personas.watch(0.05))
        try:
            store = services.personas
            (tmp_path / "wren.yaml").write_text("description: A wren.\n")
            await until(lambda: "wren" in store.shared, "the folder watcher did not pick it up")
            (tmp_path / "wren.yaml").write_text("description: A changed wren.\n")
            await until(
                lambda: store.shared["wren"].persona.description == "A changed wren.",
                "the folder watcher did not pick up the change",
            )
            assert store.shared["wren"].version == 2
        finally:
            watcher.cancel()


# -- learning ------------------------------------------------------------------------------------------

BAKER = [
    "omg the sourdough finally rose!!! 🍞🍞",
    "walked Biscuit before sunrise, he stole a croissant lol",
    "ugh no coffee yet, don't talk to me",
    "new rye recipe tomorrow, who wants to taste?",
]


async def test_learning_retries_malformed_json_and_stores_a_new_version(
    app: Services, key: str, stub: StubState
) -> None:
    async with api(key) as client:
        learned = await client.post(
            "/personas/mira/learn", json={"messages": BAKER, "model": "stub/profile", "display_name": "Mira"}
        )
        assert learned.status_code == 201, learned.text
        body = learned.json()
        assert body["source"] == "learned" and body["version"] == 1 and body["messages_used"] == 4
        traits = body["persona"]["traits"]
        assert traits["humor"] == 0.9 and traits["formality"] == 0.1  # 0-100 scale repaired
        assert (
            body["persona"]["extra_traits"] == {"playful": 0.8} and body["persona"]["display_name"] == "Mira"
        )
        assert body["persona"]["interests"] == ["sourdough", "dogs"]
    prompts = [r["messages"][0]["content"] for r in stub.requests]
    assert len(prompts) == 3 and "could not be used" not in prompts[0]
    assert "not closed" in prompts[1] and "traits: Field required" in prompts[2]
    assert stub.requests[0]["response_format"]["type"] == "json_schema"
    assert all("sourdough finally rose" in p for p in prompts)

    async with api(key) as client:
        failed = await client.post("/personas/mira/learn", json={"messages": BAKER, "model": "stub/never"})
        assert failed.status_code == 502 and "valid profile" in failed.json()["error"]["message"]
        assert (await client.get("/personas/mira")).json()["version"] == 1  # nothing stored
        none = await client.post("/personas/mira/learn", json={"model": "stub/never"})
        assert none.status_code == 400
        both = await client.post("/personas/mira/learn", json={"messages": BAKER, "conversation_id": "x"})
        assert both.status_code == 400
        unknown = await client.post("/personas/mira/learn", json={"conversation_id": "nope"})
        assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "conversation_id"


async def test_learning_from_a_stored_conversation(app: Services, key: str, stub: StubState) -> None:
    headers = await chat(key, [{"role": "user", "content": BAKER[0]}])
    await app.memory.settle()  # type: ignore[union-attr]
    stub.requests.clear()
    async with api(key) as client:
        learned = await client.post(
            "/personas/mira2/learn",
            json={"conversation_id": headers["x-anima-conversation"], "model": "stub/profile"},
        )
    assert learned.status_code == 201 and learned.json()["messages_used"] == 1
    assert "sourdough finally rose" in stub.requests[0]["messages"][0]["content"]
    assert "Hello from the stub" not in stub.requests[0]["messages"][0]["content"]  # only the user's side


async def test_the_model_list_stays_short(app: Services, key: str, stub: StubState) -> None:
    """Issue 11 item 8: every persona x every model was listed, auto-created card personas included."""
    card: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "Bob's personality: gruff.\n" + "He forges axes. " * 60},
        *HI,
    ]
    await chat(key, card, model="stub/echo", extra_headers={"X-ST-Char": "Bob"})
    await app.memory.settle()  # type: ignore[union-attr]
    async with api(key) as client:
        ids = [m["id"] for m in (await client.get("/models")).json()["data"]]
    assert "stub/reason" in ids and "aria@stub/echo" in ids  # discovered models, aliases for routed ones
    assert "aria@stub/reason" not in ids  # no aliases for everything a backend lists
    assert not [i for i in ids if i.startswith("card-")]  # the client's own cards are not pickable
