"""Knowing the user through Anima's HTTP API, on the real Postgres with the stub upstream: facts reach
the prompt after the system messages (current only, each once), the facts API (list, filter, search,
history, correct, edit, delete), profile, relationships moved by chats and set by the user, export,
erasure and isolation between keys."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.budget import TokenCounter
from memory.fact_worker import FactWorker
from memory.personas import PersonaRecords
from memory.service import MemoryConfig, MemoryService
from memory.users import Users, create_key
from personas.knowing import FACTS_PREAMBLE
from personas.store import PersonaStore
from proxy.backends.registry import Registry, build_backends
from proxy.knowledge import extractor
from proxy.main import create_app
from proxy.services import Services
from proxy.setting_groups import BackendSettings, MemorySettings, PersonaSettings, RouteSettings
from proxy.settings import Settings
from tests.conftest import make_settings
from tests.fakes import FakeEmbedder
from tests.openai_sdk import asgi_sdk
from tests.servers.openai_stub import StubState

URL = "http://anima"
MIRA = """
name: mira
display_name: Mira
description: A friendly barista.
relationship:
  - name: stranger
    behaviour: Be polite and a little reserved.
  - name: friend
    behaviour: Be warm and familiar; bring up what you know about the user.
    min_interactions: 2
"""


@dataclass
class Anima:
    transport: httpx.ASGITransport
    settings: Settings
    app: Any

    def client(self, key: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=self.transport, base_url=f"{URL}/v1", headers={"Authorization": f"Bearer {key}"}
        )

    async def say(self, key: str, text: str, conversation: str, persona: str = "mira") -> None:
        sdk = asgi_sdk(self.transport, f"{URL}/v1", key)
        await sdk.chat.completions.create(
            model="stub/echo",
            messages=[{"role": "system", "content": "Be kind."}, {"role": "user", "content": text}],
            extra_headers={"X-Anima-Conversation": conversation, "X-Anima-Persona": persona},
        )
        await self.app.state.pipeline.memory.settle()

    async def learn(self, *keys: str) -> int:
        """Read the unread messages of these keys' users now."""
        worker: FactWorker = self.app.state.facts
        users = [await self.app.state.users.identify(key) for key in keys]
        extract = extractor(self.app.state.pipeline, self.settings)
        return sum([await worker.drain(extract, user_id=user.id) for user in users])


@asynccontextmanager
async def running(
    sessions: async_sessionmaker[AsyncSession],
    counter: TokenCounter,
    folder: Path,
    backends: dict[str, BackendSettings],
    routes: list[RouteSettings],
    **memory: Any,
) -> AsyncIterator[Anima]:
    """Anima with memory and facts on; the background worker never finds a batch ready (the test
    reads batches itself with `learn()`), so what the upstream receives is up to the test."""
    (folder / "mira.yaml").write_text(MIRA)
    settings = make_settings(
        backends=backends,
        models=routes,
        memory=MemorySettings(
            enabled=True, facts_enabled=True, facts_min_user_messages=1000, facts_settle_s=1e9, **memory
        ),
        personas=PersonaSettings(folder=folder, examples=False, reload_s=0),
        retries=0,
    )
    services = Services(
        Registry(build_backends(backends), routes),
        counter,
        memory=MemoryService(sessions, counter, FakeEmbedder(), MemoryConfig(deadline_s=5)),
        users=Users(sessions),
        personas=PersonaStore(folder, examples=False, records=PersonaRecords(sessions), cache_ttl_s=0),
    )
    app = create_app(settings, services)
    async with app.router.lifespan_context(app):
        assert services.personas is not None
        await services.personas.reload()
        yield Anima(httpx.ASGITransport(app=app), settings, app)
    for backend in services.registry.backends.values():
        await backend.aclose()


@pytest.fixture
async def anima(
    stub_url: str, sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, tmp_path: Path
) -> AsyncIterator[Anima]:
    backends = {"stub": BackendSettings(kind="openai", base_url=f"{stub_url}/v1")}
    routes = [
        RouteSettings(name="stub/echo", backend="stub", model="echo", context_window=8192),
        RouteSettings(name="stub/facts", backend="stub", model="facts-valid"),
    ]
    async with running(sessions, counter, tmp_path, backends, routes, facts_model="stub/facts") as anima:
        yield anima


async def new_key(sessions: async_sessionmaker[AsyncSession], name: str) -> str:
    async with sessions.begin() as s:
        return (await create_key(s, name))[1]


def chats(stub: StubState) -> list[dict[str, Any]]:
    """What the upstream received for chat turns (not extraction calls)."""
    return [r for r in stub.requests if r["model"] == "echo"]


def facts_block(request: dict[str, Any]) -> str | None:
    """The system message right after the client's system messages, if it is the knowledge block."""
    messages = request["messages"]
    found = [m["content"] for m in messages if m["role"] == "system" and FACTS_PREAMBLE in m["content"]]
    return found[0] if found else None


async def test_facts_reach_the_prompt_after_the_system_messages_current_only(
    anima: Anima, sessions: async_sessionmaker[AsyncSession], stub: StubState
) -> None:
    key = await new_key(sessions, "facts-prompt")
    await anima.say(key, "Hi! My name is Anna and I live in Paris.", "c1")
    assert facts_block(chats(stub)[-1]) is None  # nothing known yet
    assert await anima.learn(key) == 2
    await anima.say(key, "What's new?", "c1")
    first = chats(stub)[-1]["messages"]
    assert [m["role"] for m in first[:4]] == ["system", "system", "system", "user"]
    assert "Mira" in first[0]["content"] and first[1]["content"] == "Be kind."  # then what Mira knows
    block = first[2]["content"]
    assert block.startswith("Your relationship with the user: stranger.")
    assert '"The user\'s name is Anna."' in block and '"The user lives in Paris."' in block
    await anima.say(key, "And another thing.", "c1")
    assert chats(stub)[-1]["messages"][:3] == first[:3]  # unchanged facts: the prefix stays the same
    async with anima.client(key) as api:
        created = await api.post(
            "/users/me/facts",
            json={
                "kind": "location",
                "attribute": "Home City",
                "value": "Berlin",
                "statement": "The user lives in Berlin.",
            },
        )
    assert created.status_code == 201 and created.json()["origin"] == "correction"
    await anima.learn(key)  # the two turns above: 2 more interactions
    await anima.say(key, "Hello again.", "c1")
    block = chats(stub)[-1]["messages"][2]["content"]
    assert "Berlin" in block and "Paris" not in block and block.count("Anna") == 1
    assert block.startswith("Your relationship with the user: friend. Be warm and familiar")


async def test_facts_api_lists_filters_searches_edits_and_deletes(
    anima: Anima, sessions: async_sessionmaker[AsyncSession], stub: StubState
) -> None:
    key = await new_key(sessions, "facts-api")
    await anima.say(key, "My name is Bo. My sister Cleo is a pilot.", "c2")
    await anima.learn(key)
    async with anima.client(key) as api:
        listed = (await api.get("/users/me/facts")).json()["data"]
        assert sorted(f["statement"] for f in listed) == [
            "The user's name is Bo.",
            "The user's sister Cleo is a pilot.",
        ]
        assert all(
            f["persona"] == "mira" and f["conversation_id"] == "c2" and len(f["sources"]) == 1 for f in listed
        )
        people = (await api.get("/users/me/facts", params={"subject": "other"})).json()["data"]
        assert [(f["name"], f["value"]) for f in people] == [("Cleo", "pilot")]
        assert len((await api.get("/users/me/facts", params={"q": "pilot"})).json()["data"]) == 1
        assert (await api.get("/users/me/facts", params={"persona": "nobody"})).status_code == 404
        assert (await api.get("/users/me/facts", params={"conversation_id": "c2"})).json()["data"] != []
        edited = (
            await api.patch(
                f"/users/me/facts/{people[0]['id']}",
                json={"value": "doctor", "statement": "Cleo is a doctor."},
            )
        ).json()
        assert edited["value"] == "doctor" and edited["origin"] == "correction"
        assert (await api.patch(f"/users/me/facts/{people[0]['id']}", json={"value": "x"})).status_code == 409
        history = (await api.get("/users/me/facts", params={"history": "true", "subject": "other"})).json()[
            "data"
        ]
        assert [(f["value"], f["current"]) for f in history] == [("doctor", True), ("pilot", False)]
        profile = (await api.get("/users/me/profile")).json()
        assert profile["summary"] == "The user's name is Bo." and profile["people"][0]["name"] == "Cleo"
        assert (await api.delete(f"/users/me/facts/{edited['id']}")).json()["versions"] == 2
        assert (await api.get(f"/users/me/facts/{edited['id']}")).status_code == 404
        bad = await api.post(
            "/users/me/facts", json={"subject": "other", "attribute": "a", "value": "b", "statement": "abc"}
        )
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "name"


async def test_relationships_listed_and_settable(
    anima: Anima, sessions: async_sessionmaker[AsyncSession], stub: StubState
) -> None:
    key = await new_key(sessions, "facts-rel")
    await anima.say(key, "Hello there.", "c3")
    await anima.learn(key)
    async with anima.client(key) as api:
        [rel] = (await api.get("/users/me/relationships")).json()["data"]
        assert (rel["persona"], rel["stage"], rel["interactions"], rel["set_by_user"]) == (
            "mira",
            "stranger",
            1,
            False,
        )
        assert rel["stages"] == ["stranger", "friend"]
        put = await api.put("/users/me/relationships/mira", json={"stage": "friend"})
        assert put.json()["stage"] == "friend" and put.json()["set_by_user"] is True
        assert (await api.put("/users/me/relationships/mira", json={"stage": "lover"})).status_code == 400
        assert (await api.put("/users/me/relationships/nobody", json={"stage": "friend"})).status_code == 404
    await anima.say(key, "Hi!", "c3")
    assert chats(stub)[-1]["messages"][2]["content"].startswith("Your relationship with the user: friend.")
    async with anima.client(key) as api:
        back = (await api.put("/users/me/relationships/mira", json={"stage": None})).json()
    assert back["stage"] == "stranger" and back["set_by_user"] is False


async def test_facts_are_per_key_exported_and_erased(
    anima: Anima, sessions: async_sessionmaker[AsyncSession], stub: StubState
) -> None:
    alice, bob = await new_key(sessions, "facts-alice"), await new_key(sessions, "facts-bob")
    await anima.say(alice, "My name is Alice.", "same-id")
    await anima.say(bob, "My name is Bob.", "same-id")
    await anima.learn(alice, bob)
    async with anima.client(alice) as a, anima.client(bob) as b:
        [mine] = (await a.get("/users/me/facts")).json()["data"]
        [theirs] = (await b.get("/users/me/facts")).json()["data"]
        assert (mine["value"], theirs["value"]) == ("Alice", "Bob")
        assert (await b.get(f"/users/me/facts/{mine['id']}")).status_code == 404
        assert (await b.delete(f"/users/me/facts/{mine['id']}")).status_code == 404
        exported = (await a.get("/users/me/export")).json()
        assert [f["value"] for f in exported["facts"]] == ["Alice"]
        assert exported["relationships"][0]["persona"] == "mira"
        assert (await a.delete("/users/me")).status_code == 200
        assert (await b.get("/users/me/facts")).json()["data"] != []
    await anima.say(bob, "Hi again.", "same-id")
    assert "Alice" not in str(chats(stub)[-1]["messages"])
