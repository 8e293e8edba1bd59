"""Bad input always gets a 4xx OpenAI error (`{"error": {"message", "type", "param", "code"}}`), never a
500, and leaves the stored data as it was.

Both halves run on an app with memory on the real Postgres (FakeEmbedder, the stub upstream, emotion off):
Schemathesis generates valid and invalid requests for every operation of the app's own OpenAPI schema;
hand-written cases cover what a schema cannot describe (huge, deep or malformed bodies, odd paths).

The app runs in this event loop (httpx's ASGITransport, lifespan entered by hand), where the database pool
lives. Schemathesis's own ASGI client would run it in another loop, so Hypothesis runs in a worker thread
and sends each request back to this loop (`anyio.from_thread.run`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import Case, CheckFunction, GenerationMode
from schemathesis.checks import not_a_server_error, status_code_conformance
from schemathesis.core.result import Ok
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from emotion.service import EmotionService
from memory.budget import TokenCounter
from memory.personas import PersonaRecords
from memory.service import MemoryConfig, MemoryService
from memory.users import Users, create_key
from personas.client_card import CardIndex
from personas.store import PersonaStore
from proxy.backends.registry import Registry, build_backends
from proxy.main import create_app
from proxy.services import Services, emotion_config
from proxy.setting_groups import BackendSettings, MemorySettings, PersonaSettings, RouteSettings
from tests.conftest import make_settings
from tests.fakes import FakeEmbedder

URL = "http://anima"
EXAMPLES = 12  # per operation and generation mode: 24 requests for an operation that takes input
REQUEST_TIMEOUT_S = 10.0  # a hang fails the test instead of stalling it


def build(stub_url: str, sessions: async_sessionmaker[AsyncSession], folder: Path) -> FastAPI:
    backends = {"stub": BackendSettings(kind="openai", base_url=f"{stub_url}/v1", timeout_s=5.0)}
    routes = [
        RouteSettings(name="stub/echo", backend="stub", model="echo", context_window=8192),
        RouteSettings(name="stub/profile", backend="stub", model="profile-bad-first"),  # learn succeeds
    ]
    settings = make_settings(
        backends=backends,
        models=routes,
        memory=MemorySettings(enabled=True),
        personas=PersonaSettings(folder=folder, examples=False, reload_s=0, learn_model="stub/profile"),
        retries=0,
        sse_ping_s=0,
    )
    counter, embedder, records = TokenCounter(), FakeEmbedder(), PersonaRecords(sessions)
    services = Services(
        Registry(build_backends(backends), routes),
        counter,
        memory=MemoryService(sessions, counter, embedder, MemoryConfig(deadline_s=5)),
        emotion=EmotionService(None, emotion_config(settings)),  # what production builds with emotion off
        users=Users(sessions),
        personas=PersonaStore(folder, examples=False, records=records, cache_ttl_s=0),
        cards=CardIndex(records, embedder, counter),
    )
    return create_app(settings, services)


@dataclass
class Anima:
    transport: httpx.ASGITransport
    memory: MemoryService
    sessions: async_sessionmaker[AsyncSession]
    operations: dict[str, Any] = field(default_factory=dict)  # "POST /v1/chat/completions" -> APIOperation

    def client(self, key: str) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key}"}
        return httpx.AsyncClient(transport=self.transport, base_url=URL, headers=headers, timeout=None)

    async def settle(self) -> None:
        """Wait for the turns stored in the background and embed what is pending (both change rows)."""
        assert self.memory.embeddings is not None
        await self.memory.settle()
        await self.memory.embeddings.drain()  # skips rows the app's own worker has locked: see snapshot()


@pytest.fixture(scope="module")
async def anima(
    stub_url: str, sessions: async_sessionmaker[AsyncSession], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Anima]:
    app = build(stub_url, sessions, tmp_path_factory.mktemp("fuzz-personas"))
    async with app.router.lifespan_context(app):
        services: Services = app.state.services
        assert services.memory is not None and services.personas is not None
        await services.personas.reload()
        # raise_app_exceptions=False: a 500 is a response to check, not an exception in the test
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        anima = Anima(transport, services.memory, sessions)
        async with httpx.AsyncClient(transport=transport, base_url=URL) as client:
            schema = schemathesis.openapi.from_dict((await client.get("/openapi.json")).json())
        for result in schema.get_all_operations():
            assert isinstance(result, Ok), result.err()  # the schema FastAPI serves is valid OpenAPI
            anima.operations[result.ok().label] = result.ok()
        yield anima


async def new_key(sessions: async_sessionmaker[AsyncSession], name: str) -> tuple[int, str]:
    async with sessions.begin() as s:
        return await create_key(s, name)


# -- what every error must look like, and what must not change -------------------------------------------


def error_problem(content_type: str, body: bytes) -> str | None:
    """Why an error response is not an OpenAI error body; None when it is one."""
    if not content_type.startswith("application/json"):
        return f"content-type is {content_type!r}, not application/json"
    try:
        data = json.loads(body)
    except ValueError:
        return "the body is not JSON"
    if not isinstance(data, dict) or set(data) != {"error"} or not isinstance(data["error"], dict):
        return 'the body is not {"error": {...}}'
    error = data["error"]
    if set(error) != {"message", "type", "param", "code"}:
        return f"error has the keys {sorted(error)}, not message/type/param/code"
    if not isinstance(error["message"], str) or not error["message"] or not isinstance(error["type"], str):
        return "error.message and error.type must be non-empty strings"
    if not all(error[k] is None or isinstance(error[k], str) for k in ("param", "code")):
        return "error.param and error.code must be strings or null"
    return None


def openai_error_shape(ctx: Any, response: schemathesis.Response, case: Case[Any]) -> None:
    """Schemathesis check: every 4xx/5xx response is an OpenAI error body."""
    if response.status_code >= 400:
        problem = error_problem(response.headers.get("content-type", [""])[0], response.content)
        if problem is not None:
            raise AssertionError(f"not an OpenAI error body: {problem}")


def emotion_disabled(ctx: Any, response: schemathesis.Response, case: Case[Any]) -> None:
    """Schemathesis check: emotion is off here, so the emotion routes' 503 must say that."""
    code = json.loads(response.content)["error"]["code"]
    assert code == "emotion_disabled", f"503 with code {code!r}, not emotion_disabled"


Snapshot = dict[str, tuple[int, int | None, str | None]]
SNAPSHOT = text(
    """
    SELECT 'conversation', count(*), max(id), md5(string_agg(t::text, '|' ORDER BY id))
      FROM conversation t WHERE user_id = :user
    UNION ALL SELECT 'message', count(*), max(id), md5(string_agg(t::text, '|' ORDER BY id))
      FROM message t WHERE user_id = :user
    UNION ALL SELECT 'turn_context', count(*), max(id), md5(string_agg(t::text, '|' ORDER BY id))
      FROM turn_context t WHERE user_id = :user
    UNION ALL SELECT 'persona', count(*), max(id), md5(string_agg(t::text, '|' ORDER BY id))
      FROM persona t WHERE user_id = :user OR user_id IS NULL
    UNION ALL SELECT 'persona_version', count(*), max(id), md5(string_agg(t::text, '|' ORDER BY id))
      FROM persona_version t
      WHERE persona_id IN (SELECT id FROM persona WHERE user_id = :user OR user_id IS NULL)
    UNION ALL SELECT 'pending', count(*), NULL, NULL FROM message WHERE user_id = :user AND NOT embedded
    """
)


async def snapshot(anima: Anima, user: int) -> Snapshot:
    """Row count, max id and a digest of every row, per table, of this user (and of the shared personas)."""
    with anyio.fail_after(REQUEST_TIMEOUT_S):
        while True:  # until the embedding worker has finished with this user's messages (it sets `embedded`)
            await anima.settle()
            async with anima.sessions() as s:
                rows = (await s.execute(SNAPSHOT, {"user": user})).all()
            found = {name: (count, top, digest) for name, count, top, digest in rows}
            if found.pop("pending")[0] == 0:
                return found
            await anyio.sleep(0.01)


# -- 1. Schemathesis: every operation, valid and invalid data --------------------------------------------


def operations() -> list[Any]:
    """Every operation of the app's OpenAPI schema (building the app object starts nothing), with valid
    data, and with invalid data where the schema can describe some (a plain string path has none; with
    emotion off, the emotion routes answer 503 before they look at the data)."""
    paths = create_app(make_settings(personas=PersonaSettings(examples=False))).openapi()["paths"]
    found = []
    for path, methods in paths.items():
        for method, spec in methods.items():
            label = f"{method.upper()} {path}"
            modes = [GenerationMode.POSITIVE]
            typed = [p for p in spec.get("parameters", []) if p["schema"].get("type") != "string"]
            if ("requestBody" in spec or typed) and "emotion" not in path:
                modes.append(GenerationMode.NEGATIVE)
            found += [pytest.param(label, mode, id=f"{label}-{mode.value}") for mode in modes]
    return sorted(found, key=lambda p: str(p.id))


def transport_request(case: Case[Any], key: str) -> httpx.Request:
    """The case as an httpx request (Schemathesis serialises for `requests`)."""
    kwargs = case.as_transport_kwargs(base_url=URL, headers={"Authorization": f"Bearer {key}"})
    headers = {
        k: v for k, v in kwargs["headers"].items() if k.lower() not in ("connection", "accept-encoding")
    }
    content = kwargs.get("data")
    if "json" in kwargs:
        content = json.dumps(kwargs["json"]).encode()
    assert content is None or isinstance(content, bytes | str), f"unexpected request data: {content!r}"
    return httpx.Request(
        kwargs["method"], kwargs["url"], params=kwargs.get("params"), headers=headers, content=content
    )


async def send_case(anima: Anima, case: Case[Any], key: str, user: int, last: list[Snapshot]) -> None:
    """Send one case and check it. A request that can write (not GET) must leave the stored data as it
    was when it gets a 4xx; `last` holds the data seen after the previous such 4xx (nothing has run
    since), so most requests cost one snapshot, not two."""
    writes = case.method.upper() != "GET"
    before = (last.pop() if last else await snapshot(anima, user)) if writes else None
    with anyio.fail_after(REQUEST_TIMEOUT_S):
        async with anima.client(key) as client:
            response = await client.send(transport_request(case, key))
    checks: list[CheckFunction] = [not_a_server_error, openai_error_shape, status_code_conformance]
    if "emotion" in case.operation.path and response.status_code == 503:
        checks = [openai_error_shape, emotion_disabled, status_code_conformance]
    case.validate_response(response, checks=checks)
    if writes and 400 <= response.status_code < 500:
        after = await snapshot(anima, user)
        assert after == before, f"a {response.status_code} changed the stored data"
        last.append(after)


@pytest.mark.parametrize(("label", "mode"), operations())
async def test_fuzzed_operation_answers_without_5xx_and_with_openai_errors(
    anima: Anima, label: str, mode: GenerationMode
) -> None:
    user, key = await new_key(anima.sessions, f"fuzz {label}")
    last: list[Snapshot] = []

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: the first failing request is reported
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(case=anima.operations[label].as_strategy(generation_mode=mode))
    def fuzz(case: Case[Any]) -> None:
        anyio.from_thread.run(send_case, anima, case, key, user, last)

    await anyio.to_thread.run_sync(fuzz)


async def test_fuzz_covers_every_operation_the_app_serves(anima: Anima) -> None:
    """The parametrisation (from an app built at collection) matches the schema the tested app serves."""
    fuzzed = {p.values[0] for p in operations()}
    assert fuzzed == set(anima.operations)
    assert {"POST /v1/chat/completions", "PATCH /v1/personas/{name}", "GET /health"} <= fuzzed


# -- 2. By hand: what a schema cannot describe -----------------------------------------------------------

CHAT = "/v1/chat/completions"
IMPORT = "/v1/conversations"
SEARCH = "/v1/memory/search"
SEEDLING = "/v1/personas/seedling"


def chat(**fields: Any) -> bytes:
    return json.dumps({"model": "stub/echo", "messages": said()} | fields).encode()


def chat_with(raw: bytes) -> bytes:
    """A valid chat body with `raw` (JSON that json.dumps cannot write) added at the end."""
    return chat()[:-1] + b", " + raw + b"}"


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


def said(content: Any = "hi", **fields: Any) -> list[dict[str, Any]]:
    """One user message."""
    return [{"role": "user", "content": content} | fields]


def conversation(**fields: Any) -> bytes:
    """A body for the memory API's import (and append): one message, unless `fields` says otherwise."""
    return body({"messages": said()} | fields)


@dataclass(frozen=True)
class Bad:
    """A bad request and the 4xx it must get (None: any 4xx).
    `content` is bytes, or a function making them (big bodies are built only when their test runs)."""

    id: str
    method: str
    path: str
    expect: int | None
    content: bytes | Callable[[], bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def param(self) -> Any:
        return pytest.param(self, id=self.id)


APPEND = "/v1/conversations/seed/messages"
LEARN = f"{SEEDLING}/learn"
BAD = [
    # sizes, depth and encoding (413 from the size limits; 400 from validation)
    Bad("chat-5mb-content", "POST", CHAT, 413, lambda: chat(messages=said("x" * 5_000_000))),
    Bad("chat-9mb-body", "POST", CHAT, 413, lambda: chat(messages=said("y" * 1000) * 9000)),
    Bad("chat-100k-messages", "POST", CHAT, 413, lambda: chat(messages=said() * 100_000)),
    Bad("chat-300-char-model", "POST", CHAT, 404, chat(model="m" * 300)),
    Bad("chat-10k-open-brackets", "POST", CHAT, 400, b"[" * 10_000),
    Bad("chat-10k-nested-lists", "POST", CHAT, 400, chat_with(b'"x": ' + b"[" * 10_000 + b"]" * 10_000)),
    Bad("chat-invalid-utf8", "POST", CHAT, 400, chat()[:-4] + b'\xff\xfe"}]}'),
    Bad("chat-lone-surrogate", "POST", CHAT, 400, chat(messages=said("\ud800"))),
    Bad("import-lone-surrogate", "POST", IMPORT, 400, conversation(messages=said("\ud800"))),
    Bad("import-100001-messages", "POST", IMPORT, 400, lambda: conversation(messages=said() * 100_001)),
    Bad("persona-5mb-description", "PUT", SEEDLING, 400, lambda: body({"description": "d" * 5_000_000})),
    # wrong JSON types, values and shapes
    Bad("chat-messages-as-string", "POST", CHAT, 400, chat(messages="hi")),
    Bad("chat-content-as-number", "POST", CHAT, 400, chat(messages=said(42))),
    Bad("chat-role-null", "POST", CHAT, 400, chat(messages=said(role=None))),
    Bad("chat-temperature-hot", "POST", CHAT, 400, chat(temperature="hot")),
    Bad("chat-unknown-role", "POST", CHAT, 400, chat(messages=said(role="wizard"))),
    Bad("chat-empty-messages", "POST", CHAT, 400, chat(messages=[])),
    Bad("chat-non-json", "POST", CHAT, 400, b"model=stub/echo&messages=hi"),
    Bad("chat-json-list", "POST", CHAT, 400, body([json.loads(chat())])),
    # a JSON body labelled text/plain or as a form is read as JSON, as OpenAI does (test_dropin.py)
    Bad("chat-duplicate-keys", "POST", CHAT, 400, chat_with(b'"messages": "the last one wins"')),
    Bad("chat-nan-temperature", "POST", CHAT, 400, chat_with(b'"temperature": NaN')),
    Bad("chat-infinity-max-tokens", "POST", CHAT, 400, chat_with(b'"max_tokens": Infinity')),
    Bad("chat-minus-infinity-seed", "POST", CHAT, 400, chat_with(b'"seed": -Infinity')),
    Bad("chat-nul-in-model", "POST", CHAT, 400, chat(model="nope\x00")),
    Bad("search-nul-in-query", "POST", SEARCH, 400, body({"query": "a\x00b"})),
    Bad("chat-control-chars-in-model", "POST", CHAT, 404, chat(model="\x01\x1b[31mnope\x7f")),
    Bad("chat-nul-in-persona-header", "POST", CHAT, 400, chat(), {"X-Anima-Persona": "a\x00b"}),
    Bad("import-unknown-role", "POST", IMPORT, 400, conversation(messages=said(role="wizard"))),
    Bad("import-empty-messages", "POST", IMPORT, 400, conversation(messages=[])),
    Bad("import-json-list", "POST", IMPORT, 400, body([json.loads(conversation())])),
    Bad("import-nul-in-id", "POST", IMPORT, 400, conversation(id="a\x00b")),
    Bad("import-bad-created-at", "POST", IMPORT, 400, conversation(messages=said(created_at="yesterday"))),
    Bad("import-nul-in-content", "POST", IMPORT, 400, conversation(messages=said("a\x00b"))),
    Bad("import-nul-in-title", "POST", IMPORT, 400, conversation(title="a\x00b")),
    Bad(
        "import-nul-in-metadata",
        "POST",
        IMPORT,
        None,
        conversation(messages=said(metadata={"k": "\x00"})),
    ),
    Bad(
        "import-nan-in-metadata",
        "POST",
        IMPORT,
        400,
        conversation()[:-3] + b', "metadata": {"k": NaN}}]}',
    ),
    Bad("append-nul-in-content", "POST", APPEND, 400, conversation(messages=said("\x00"))),
    Bad("list-limit-zero", "GET", "/v1/conversations?limit=0", 400),
    Bad("list-limit-word", "GET", "/v1/conversations?limit=many", 400),
    Bad("list-offset-negative", "GET", "/v1/conversations?offset=-1", 400),
    Bad("list-offset-beyond-int64", "GET", "/v1/conversations?offset=9223372036854775808", 400),
    Bad("messages-offset-beyond-int64", "GET", f"{APPEND}?offset=99999999999999999999", 400),
    Bad("context-turn-zero", "GET", "/v1/conversations/seed/context?turn=0", 400),
    Bad(
        "context-turn-beyond-int64",
        "GET",
        "/v1/conversations/seed/context?turn=99999999999999999999",
        400,
    ),
    Bad("search-empty-query", "POST", SEARCH, 400, body({"query": ""})),
    Bad("search-k-zero", "POST", SEARCH, 400, body({"query": "x", "k": 0})),
    Bad("search-unknown-conversation", "POST", SEARCH, 404, body({"query": "x", "conversation_id": "nope"})),
    Bad(
        "search-nul-in-conversation-id",
        "POST",
        SEARCH,
        None,
        body({"query": "x", "conversation_id": "\x00"}),
    ),
    Bad("persona-body-list", "PUT", SEEDLING, 400, b"[]"),
    Bad("persona-trait-too-high", "PUT", SEEDLING, 400, body({"traits": {"humor": 1.5}})),
    Bad("persona-trait-nan", "PUT", SEEDLING, 400, b'{"traits": {"humor": NaN}}'),
    Bad("persona-version-string", "PUT", SEEDLING, 400, body({"version": "1"})),
    Bad("persona-nul-in-description", "PUT", SEEDLING, 400, body({"description": "a\x00b"})),
    Bad("persona-patch-bad-body", "PATCH", SEEDLING, 400, body({"trait": 5})),
    Bad("persona-learn-no-source", "POST", LEARN, 400, b"{}"),
    Bad("persona-learn-empty-message", "POST", LEARN, 400, body({"messages": [""]})),
    Bad("persona-learn-unknown-conversation", "POST", LEARN, 404, body({"conversation_id": "nope"})),
    Bad("persona-learn-nul-conversation-id", "POST", LEARN, 400, body({"conversation_id": "\x00"})),
    # unknown ids and odd paths
    Bad("append-unknown-conversation", "POST", "/v1/conversations/nope/messages", 404, conversation()),
    Bad("get-unknown-conversation", "GET", "/v1/conversations/nope", 404),
    Bad("messages-unknown-conversation", "GET", "/v1/conversations/nope/messages", 404),
    Bad("context-unknown-conversation", "GET", "/v1/conversations/nope/context", 404),
    Bad("delete-unknown-conversation", "DELETE", "/v1/conversations/nope", 404),
    Bad("get-nul-conversation-id", "GET", "/v1/conversations/a%00b", 400),
    Bad("delete-nul-conversation-id", "DELETE", "/v1/conversations/a%00b", 400),
    Bad("persona-delete-unknown", "DELETE", "/v1/personas/nope", 404),
    Bad("persona-get-nul-name", "GET", "/v1/personas/a%00b", 400),
    Bad("persona-put-nul-name", "PUT", "/v1/personas/a%00b", 400, b"{}"),
    Bad("persona-put-dot-dot-name", "PUT", "/v1/personas/%2e%2e", 400, b"{}"),
    Bad("persona-put-encoded-slash-name", "PUT", "/v1/personas/..%2Fevil", 404, b"{}"),
    Bad("path-encoded-dot-dot", "GET", "/v1/conversations/%2e%2e/%2e%2e/health", 404),
    Bad("path-encoded-slash", "GET", "/v1/conversations/..%2F..%2Fhealth", 404),
    Bad("path-encoded-slash-delete", "DELETE", "/v1/conversations/seed%2F..%2Fseed", 404),
]


@dataclass(frozen=True)
class Owner:
    user: int
    key: str


@pytest.fixture(scope="module")
async def owner(anima: Anima) -> Owner:
    """A key with a conversation, a chat turn and a persona: stored data the bad requests must not touch."""
    user, key = await new_key(anima.sessions, "fuzz-by-hand")
    seed = conversation(id="seed", messages=[*said(), {"role": "assistant", "content": "Hello!"}])
    assert (await send(anima, key, "POST", IMPORT, seed)).status_code == 201
    answered = await send(anima, key, "POST", CHAT, chat(), **{"X-Anima-Conversation": "seed"})
    assert answered.status_code == 200, answered.text
    assert (await send(anima, key, "PUT", SEEDLING, body({"description": "A seed."}))).status_code == 201
    return Owner(user, key)


async def send(
    anima: Anima, key: str, method: str, path: str, content: bytes | None, **headers: str
) -> httpx.Response:
    if content is not None:
        headers = {"Content-Type": "application/json"} | headers
    with anyio.fail_after(REQUEST_TIMEOUT_S):
        async with anima.client(key) as client:
            return await client.request(method, path, content=content, headers=headers)


@pytest.mark.parametrize("bad", [b.param() for b in BAD])
async def test_bad_request_is_a_4xx_openai_error_and_changes_nothing(
    anima: Anima, owner: Owner, bad: Bad
) -> None:
    before = await snapshot(anima, owner.user)
    content = bad.content() if callable(bad.content) else bad.content
    response = await send(anima, owner.key, bad.method, bad.path, content, **bad.headers)
    problem = error_problem(response.headers.get("content-type", ""), response.content)
    assert problem is None, f"{response.status_code}: {problem}: {response.text[:300]}"
    assert 400 <= response.status_code < 500, f"{response.status_code}: {response.text[:300]}"
    assert response.status_code == (bad.expect or response.status_code), response.text[:300]
    assert await snapshot(anima, owner.user) == before


ODD_BUT_VALID = [
    pytest.param("POST", CHAT, chat(messages=said("")), 200, id="chat-empty-content"),
    pytest.param("POST", CHAT, chat_with(b'"model": "stub/echo"'), 200, id="chat-duplicate-keys-last-valid"),
    pytest.param("POST", CHAT, chat(messages=said("\x01\x1b[1m\x7f\u2028")), 200, id="chat-control-chars"),
    pytest.param("POST", IMPORT, conversation(messages=said("")), 201, id="import-empty-content"),
]


@pytest.mark.parametrize(("method", "path", "content", "status"), ODD_BUT_VALID)
async def test_odd_but_valid_request_is_answered(
    anima: Anima, owner: Owner, method: str, path: str, content: bytes, status: int
) -> None:
    """Valid JSON and valid OpenAI: OpenAI takes empty content too; of duplicate keys the last one wins."""
    response = await send(anima, owner.key, method, path, content)
    assert response.status_code == status, response.text[:300]


async def test_chat_message_with_nul_is_refused_or_remembered(anima: Anima, owner: Owner) -> None:
    nul = chat(messages=said("a\x00b"))
    answered = await send(anima, owner.key, "POST", CHAT, nul, **{"X-Anima-Conversation": "nul"})
    await anima.settle()
    stored = await send(anima, owner.key, "GET", "/v1/conversations/nul/messages", None)
    assert 400 <= answered.status_code < 500 or stored.status_code == 200, "answered 200, then lost the turn"
