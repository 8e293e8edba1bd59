"""SillyTavern's flows through Anima's HTTP API on the real Postgres (issue 11): the model never sees less
than the client sent, and every turn is stored once, whatever the client's presentation settings.

Each test is one bug the issue reports, replayed as the request sequence SillyTavern sends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai.types.chat import (
    ChatCompletionAssistantMessageParam,
    ChatCompletionMessageParam,
    ChatCompletionSystemMessageParam,
    ChatCompletionUserMessageParam,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.budget import TokenCounter
from memory.service import MemoryService
from tests.memory.test_api import api, build, running, say
from tests.servers.openai_stub import StubState

REPLY = "Hello from the stub!"
CARD: ChatCompletionSystemMessageParam = {
    "role": "system",
    "content": "Write Seraphina's next reply in a fictional chat between Seraphina and You.",
}
GREETING: ChatCompletionAssistantMessageParam = {
    "role": "assistant",
    "content": "*Seraphina looks up.* Welcome, traveller.",
}
CONTINUE = "[Continue your last message without repeating its original content.]"


@pytest.fixture
async def app(
    stub_url: str, sessions: async_sessionmaker[AsyncSession], counter: TokenCounter
) -> AsyncIterator[tuple[str, MemoryService]]:
    application, service = build(stub_url, sessions, counter)
    async with running(application) as url:
        yield url, service


@pytest.fixture
async def key(sessions: async_sessionmaker[AsyncSession]) -> str:
    from memory.users import create_key

    async with sessions.begin() as s:
        _, value = await create_key(s, "flows")
    return value


def user(text: str) -> ChatCompletionUserMessageParam:
    return {"role": "user", "content": text}


def bot(text: str, name: str | None = None) -> ChatCompletionAssistantMessageParam:
    message: ChatCompletionAssistantMessageParam = {"role": "assistant", "content": text}
    if name is not None:
        message["name"] = name
    return message


async def stored(url: str, key: str) -> list[list[dict[str, Any]]]:
    """Every conversation of this key, each as its stored messages (all branches), oldest first."""
    async with api(url, key) as client:
        conversations = (await client.get("/conversations")).json()["data"]
        out = []
        for conversation in sorted(conversations, key=lambda c: c["created_at"]):
            page = await client.get(f"/conversations/{conversation['id']}/messages", params={"limit": 1000})
            out.append(page.json()["data"])
    return out


async def stream(url: str, key: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> str:
    """A streaming request as SillyTavern makes it; the SSE body as text."""
    async with api(url, key) as client:
        response = await client.post("/chat/completions", json=body | {"stream": True}, headers=headers or {})
        return response.text


async def test_forty_turn_chat_that_fits_reaches_the_backend_verbatim(
    app: tuple[str, MemoryService], key: str, stub: StubState
) -> None:
    """Item 1: history was capped at 24 stored messages whatever the context; summaries fired needlessly."""
    url, service = app
    chat: list[ChatCompletionMessageParam] = [GREETING]
    for turn in range(40):
        chat.append(user(f"Turn {turn}: tell me about the mountain pass number {turn}."))
        await say(url, key, [CARD, *chat])
        await service.settle()
        chat.append(bot(REPLY))
    sent = [{"role": m["role"], "content": m["content"]} for m in stub.last_chat()["messages"]]
    assert sent == [CARD, *chat[:-1]]  # every message the client sent, in order, nothing added or lost
    assert service.summaries.queue.empty() and service.summaries.written == 0
    (conversation,) = await stored(url, key)
    assert len(conversation) == 81  # greeting + 40 turns, each stored once


async def test_a_reply_shown_with_a_name_or_prefix_is_not_stored_again(
    app: tuple[str, MemoryService], key: str
) -> None:
    """Item 2: SillyTavern sends the reply back with `name` or as "Seraphina: ..." (group chats)."""
    url, service = app
    await say(url, key, [CARD, GREETING, user("Hi")])
    await service.settle()
    await say(url, key, [CARD, GREETING, user("Hi"), bot(REPLY, name="Seraphina"), user("How are you?")])
    await service.settle()
    prefixed: list[ChatCompletionMessageParam] = [
        CARD,
        GREETING,
        user("Hi"),
        bot(f"Seraphina: {REPLY}"),
        user("How are you?"),
    ]
    await say(url, key, [*prefixed, bot(f"Seraphina: {REPLY}"), user("Good.")])
    await service.settle()
    (conversation,) = await stored(url, key)
    assert [m["role"] for m in conversation] == [
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    ids = [m["id"] for m in conversation]
    assert [m["parent_id"] for m in conversation] == [None, *ids[:-1]]  # one branch, no sibling copies


async def test_a_group_members_turn_is_stored_with_its_speaker(
    app: tuple[str, MemoryService], key: str
) -> None:
    """Item 3: the later speaker's request ends with an assistant message and a group nudge."""
    url, service = app
    nudge: ChatCompletionSystemMessageParam = {
        "role": "system",
        "content": "[Write the next reply only as Alice.]",
    }
    await say(url, key, [CARD, GREETING, user("Hello both"), nudge])
    await service.settle()
    bob_nudge: ChatCompletionSystemMessageParam = {
        "role": "system",
        "content": "[Write the next reply only as Bob.]",
    }
    await say(url, key, [CARD, GREETING, user("Hello both"), bot(f"Alice: {REPLY}"), bob_nudge])
    await service.settle()
    (conversation,) = await stored(url, key)
    assert [(m["role"], m["name"]) for m in conversation[2:]] == [
        ("assistant", "Alice"),
        ("assistant", "Bob"),
    ]
    assert conversation[3]["parent_id"] == conversation[2]["id"]


async def test_continue_extends_the_stored_reply_in_both_modes(
    app: tuple[str, MemoryService], key: str
) -> None:
    """Item 4: the default continue (a trailing nudge) was quiet; with prefill on, the inserted space
    made the prefix differ and a sibling was stored."""
    url, service = app
    await say(url, key, [CARD, GREETING, user("Tell me a story")])
    await service.settle()
    await say(
        url,
        key,
        [CARD, GREETING, user("Tell me a story"), bot(REPLY), {"role": "system", "content": CONTINUE}],
    )
    await service.settle()
    (conversation,) = await stored(url, key)
    assert (
        len(conversation) == 3 and conversation[2]["content"] == f"{REPLY} {REPLY}"
    )  # ST joins with a space
    await say(url, key, [CARD, GREETING, user("Tell me a story"), bot(f"{REPLY} {REPLY} ")])  # prefill mode
    await service.settle()
    (conversation,) = await stored(url, key)
    assert len(conversation) == 3 and conversation[2]["content"] == f"{REPLY} {REPLY} {REPLY}"
    chat: list[ChatCompletionMessageParam] = [
        CARD,
        GREETING,
        user("Tell me a story"),
        bot(f"{REPLY} {REPLY} {REPLY}"),
        user("And the"),
    ]
    await say(url, key, [*chat, {"role": "system", "content": CONTINUE}])  # continue of the user's line
    await service.settle()
    (conversation,) = await stored(url, key)
    assert [(m["role"], m["content"]) for m in conversation[3:]] == [("user", f"And the {REPLY}")]


async def test_after_stop_the_clients_shorter_copy_reconciles_the_stored_reply(
    app: tuple[str, MemoryService], key: str
) -> None:
    """Item 5: the partial streamed was stored; SillyTavern kept less, trimmed, and it became a sibling."""
    url, service = app
    body = {"model": "stub/die", "messages": [CARD, GREETING, user("Go on")]}
    await stream(url, key, body)
    await service.settle()
    (conversation,) = await stored(url, key)
    assert (conversation[-1]["content"], conversation[-1]["status"]) == ("Hello from the", "partial")
    await say(url, key, [CARD, GREETING, user("Go on"), bot("Hello from"), user("And then?")])
    await service.settle()
    (conversation,) = await stored(url, key)
    assert [m["content"] for m in conversation] == [
        GREETING["content"],
        "Go on",
        "Hello from",
        "And then?",
        REPLY,
    ]
    assert [m["parent_id"] for m in conversation[1:]] == [m["id"] for m in conversation[:-1]]


async def test_a_failed_non_streaming_request_stores_no_reply(
    app: tuple[str, MemoryService], key: str
) -> None:
    """Item 5: a non-streaming request that failed mid-way stored a partial reply the user never saw."""
    url, service = app
    async with api(url, key) as client:
        response = await client.post(
            "/chat/completions", json={"model": "stub/die", "messages": [user("Hi")]}
        )
    assert response.status_code >= 500 or "error" in response.text
    await service.settle()
    conversations = await stored(url, key)
    assert all(m["role"] != "assistant" for c in conversations for m in c)


async def test_a_new_chat_that_opens_like_an_old_one_is_a_new_conversation(
    app: tuple[str, MemoryService], key: str
) -> None:
    """Item 6: the same greeting and first line merged a new chat into the old one."""
    url, service = app
    first = await say(url, key, [CARD, GREETING, user("Hi!")])
    await service.settle()
    await say(url, key, [CARD, GREETING, user("Hi!"), bot(REPLY), user("Tell me more")])
    await service.settle()
    second = await say(url, key, [CARD, GREETING, user("Hi!")])
    await service.settle()
    assert second["x-anima-conversation"] != first["x-anima-conversation"]
    named = await say(
        url, key, [CARD, GREETING, user("Hi!"), bot(REPLY)], extra_headers={"X-ST-Char": "Seraphina"}
    )
    assert named["x-anima-conversation"] not in (
        first["x-anima-conversation"],
        second["x-anima-conversation"],
    )


async def test_editing_the_greeting_revises_it_in_the_same_conversation(
    app: tuple[str, MemoryService], key: str
) -> None:
    """Item 6: an edited greeting made a new conversation with a full copy, a user message stored as
    an assistant one."""
    url, service = app
    first = await say(
        url,
        key,
        [
            CARD,
            GREETING,
            user("Hi"),
        ],
    )
    await service.settle()
    await say(url, key, [CARD, GREETING, user("Hi"), bot(REPLY), user("Where am I?")])
    await service.settle()
    edited = bot("*Seraphina smiles warmly.* Welcome home.")
    later = await say(
        url, key, [CARD, edited, user("Hi"), bot(REPLY), user("Where am I?"), bot(REPLY), user("Thanks")]
    )
    await service.settle()
    assert later["x-anima-conversation"] == first["x-anima-conversation"]
    (conversation,) = await stored(url, key)
    assert [(m["role"], m["content"]) for m in conversation] == [
        ("assistant", edited["content"]),
        ("user", "Hi"),
        ("assistant", REPLY),
        ("user", "Where am I?"),
        ("assistant", REPLY),
        ("user", "Thanks"),
        ("assistant", REPLY),
    ]
    assert conversation[0]["metadata"]["revisions"] == [GREETING["content"]]


async def test_a_thin_client_gets_the_whole_stored_history_that_fits(
    app: tuple[str, MemoryService], key: str, stub: StubState
) -> None:
    """Item 1: with an explicit id, a client that sent 43 messages had 25 forwarded."""
    url, service = app
    headers = {"X-Anima-Conversation": "thin-client"}
    chat: list[ChatCompletionMessageParam] = []
    for turn in range(22):
        chat.append(user(f"Message {turn} about the lighthouse keeper."))
        await say(url, key, list(chat), extra_headers=headers)
        await service.settle()
        chat.append(bot(REPLY))
    await say(url, key, [user("And the last one?")], extra_headers=headers)
    sent = [{"role": m["role"], "content": m["content"]} for m in stub.last_chat()["messages"]]
    assert sent == [*chat, user("And the last one?")]


async def test_summaries_can_be_turned_off(
    stub_url: str,
    sessions: async_sessionmaker[AsyncSession],
    counter: TokenCounter,
    key: str,
    stub: StubState,
) -> None:
    """Item 1: summary calls run on the user's own (possibly paid) model: they can be turned off."""
    application, service = build(stub_url, sessions, counter, summaries=False)
    async with running(application) as url:
        headers = {"X-Anima-Conversation": "no-summaries"}
        for turn in range(30):
            body = [user(f"Line {turn}: " + "words " * 30)]
            await say(url, key, body, model="stub/small", extra_headers=headers)
        await service.settle()
    assert service.summaries.queue.empty() and service.summaries.written == 0
    assert not [r for r in stub.requests if r["messages"][0]["content"].startswith("Summarise this excerpt")]
