"""Recognising conversations on the real Postgres: every behaviour the memory issue lists."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.models import ConversationRow, MessageRow
from memory.service import MemoryService, TurnRecord
from memory.types import Message, SessionKey, Thread

S, U, A = "system", "user", "assistant"
CARD = Message(S, "You are Bob, a grumpy dwarven blacksmith.")
GREETING = Message(A, "*Bob looks up from the anvil.* What do you want?")


async def turn(memory: MemoryService, session: SessionKey, messages: list[Message], reply: str) -> Thread:
    thread = await memory.recognise(session, messages)
    await memory.store_turn(session, thread, TurnRecord(reply, "complete", "m", [], {}))
    return thread


async def count(sessions: async_sessionmaker[AsyncSession], user: int) -> tuple[int, int]:
    async with sessions() as s:
        conversations = await s.scalar(select(func.count()).where(ConversationRow.user_id == user))
        messages = await s.scalar(select(func.count()).where(MessageRow.user_id == user))
    return int(conversations or 0), int(messages or 0)


async def test_recognise_follow_up_continues_the_same_conversation(
    memory: MemoryService, user: int, sessions: async_sessionmaker[AsyncSession]
) -> None:
    key = SessionKey(user_id=user)
    first = await turn(memory, key, [CARD, GREETING, Message(U, "Fix my axe?")], "Aye.")
    assert first.created and first.kind == "turn" and first.anchor_id is None
    second = await turn(
        memory,
        key,
        [CARD, GREETING, Message(U, "Fix my axe?"), Message(A, "Aye."), Message(U, "How much?")],
        "Ten.",
    )
    assert (second.public_id, second.created, second.kind) == (first.public_id, False, "turn")
    assert [m.content for m in second.path] == [GREETING.content, "Fix my axe?", "Aye."]
    assert second.new == (Message(U, "How much?"),)
    assert await count(sessions, user) == (1, 5)


async def test_resending_the_same_history_stores_only_a_sibling_reply(
    memory: MemoryService, user: int, sessions: async_sessionmaker[AsyncSession]
) -> None:
    key = SessionKey(user_id=user)
    request = [CARD, GREETING, Message(U, "Hello")]
    await turn(memory, key, request, "Hi there.")
    regenerate = await turn(memory, key, request, "Greetings.")
    assert regenerate.kind == "regenerate" and regenerate.new == ()
    async with sessions() as s:
        replies = (
            await s.scalars(select(MessageRow).where(MessageRow.user_id == user, MessageRow.role == A))
        ).all()
    siblings = [r for r in replies if r.content in ("Hi there.", "Greetings.")]
    assert len(siblings) == 2 and siblings[0].parent_id == siblings[1].parent_id
    assert await count(sessions, user) == (1, 4)  # greeting, one user turn, two replies


async def test_trimmed_window_is_still_recognised(memory: MemoryService, user: int) -> None:
    key = SessionKey(user_id=user)
    chat: list[Message] = [GREETING]
    first: Thread | None = None
    for i in range(6):
        chat.append(Message(U, f"message {i}"))
        thread = await turn(memory, key, [CARD, *chat], f"reply {i}")
        first = first or thread
        chat.append(Message(A, f"reply {i}"))
    window = [*chat[-5:], Message(U, "message 6")]  # the client dropped the greeting and older turns
    thread = await memory.recognise(key, [CARD, *window])
    assert first is not None and thread.public_id == first.public_id
    assert thread.new == (Message(U, "message 6"),)
    assert len(thread.path) == 13  # the whole stored branch, including what the client dropped


async def test_editing_an_earlier_message_forks_a_branch(memory: MemoryService, user: int) -> None:
    key = SessionKey(user_id=user)
    base = [GREETING, Message(U, "I need a sword.")]
    await turn(memory, key, [CARD, *base], "Swords cost gold.")
    later = [*base, Message(A, "Swords cost gold."), Message(U, "I have gold.")]
    original = await turn(memory, key, [CARD, *later], "Then pay.")
    edited = [*base, Message(A, "Swords cost gold."), Message(U, "I have no gold.")]
    fork = await turn(memory, key, [CARD, *edited], "Then leave.")
    assert fork.public_id == original.public_id and fork.anchor_id == original.anchor_id
    assert fork.new == (Message(U, "I have no gold."),)
    follow = await memory.recognise(key, [CARD, *edited, Message(A, "Then leave."), Message(U, "Please?")])
    assert [m.content for m in follow.path][-2:] == ["I have no gold.", "Then leave."]  # the new branch


async def test_chats_sharing_a_greeting_stay_separate(memory: MemoryService, user: int) -> None:
    key = SessionKey(user_id=user)
    one = await turn(memory, key, [CARD, GREETING, Message(U, "Fix my axe.")], "Fine.")
    two = await turn(memory, key, [CARD, GREETING, Message(U, "Sell me a shield.")], "Gold first.")
    assert one.public_id != two.public_id and two.created


async def test_explicit_id_wins_and_thin_client_gets_stored_history(memory: MemoryService, user: int) -> None:
    key = SessionKey(user_id=user, conversation="my-chat")
    first = await turn(memory, key, [Message(U, "My name is Ada.")], "Nice to meet you, Ada.")
    assert first.public_id == "my-chat" and first.created
    second = await memory.recognise(key, [Message(U, "What is my name?")])
    assert second.public_id == "my-chat" and not second.created
    assert [m.content for m in second.path] == ["My name is Ada.", "Nice to meet you, Ada."]
    assert second.new == (Message(U, "What is my name?"),)


async def test_end_user_and_character_scope_recognition(memory: MemoryService, user: int) -> None:
    chat = [CARD, GREETING, Message(U, "Hello")]
    alice = await turn(memory, SessionKey(user_id=user, end_user="alice"), chat, "Hi Alice.")
    bob = await memory.recognise(SessionKey(user_id=user, end_user="bob"), [*chat, Message(A, "Hi Alice.")])
    assert bob.created and bob.public_id != alice.public_id
    smith = await turn(memory, SessionKey(user_id=user, character="Smith"), chat, "Yes?")
    baker = await turn(memory, SessionKey(user_id=user, character="Baker"), chat, "Bread?")
    again = await memory.recognise(SessionKey(user_id=user, character="Smith"), chat)
    assert again.public_id == smith.public_id != baker.public_id


async def test_quiet_prompts_are_not_stored(
    memory: MemoryService, user: int, sessions: async_sessionmaker[AsyncSession]
) -> None:
    key = SessionKey(user_id=user)
    chat = [GREETING, Message(U, "Hello"), Message(A, "Hi.")]
    await turn(memory, key, [CARD, *chat[:2]], "Hi.")
    before = await count(sessions, user)
    quiet = await turn(memory, key, [CARD, *chat, Message(S, "Summarise the chat so far.")], "A greeting.")
    assert quiet.kind == "quiet"
    impersonate = await turn(memory, key, [CARD, *chat, Message(S, "Write the user's next reply.")], "Bye.")
    assert impersonate.kind == "quiet"
    assert await count(sessions, user) == before


async def test_continue_extends_the_stored_reply_and_prefill_is_kept(
    memory: MemoryService, user: int, sessions: async_sessionmaker[AsyncSession]
) -> None:
    key = SessionKey(user_id=user)
    chat = [GREETING, Message(U, "Tell me a story.")]
    await turn(memory, key, [CARD, *chat], "Once upon a time")
    cont = await turn(memory, key, [CARD, *chat, Message(A, "Once upon a time")], ", a dwarf forged a ring.")
    assert cont.kind == "continue"
    prefill = await turn(memory, key, [CARD, *chat, Message(S, "post"), Message(A, "*Bob grunts*")], " Fine.")
    assert prefill.kind == "prefill" and prefill.public_id == cont.public_id
    async with sessions() as s:
        replies = (
            await s.scalars(
                select(MessageRow.content).where(MessageRow.user_id == user, MessageRow.role == A)
            )
        ).all()
    assert sorted(replies) == sorted(
        [GREETING.content, "Once upon a time , a dwarf forged a ring.", "*Bob grunts* Fine."]
    )  # a continue is joined with a space, as SillyTavern joins it (its `continue_postfix`)
    follow = await memory.recognise(
        key, [CARD, *chat, Message(A, "Once upon a time, a dwarf forged a ring."), Message(U, "More!")]
    )
    assert follow.public_id == cont.public_id and follow.kind == "turn"


async def test_world_info_and_group_cards_do_not_break_recognition(memory: MemoryService, user: int) -> None:
    key = SessionKey(user_id=user)
    chat = [GREETING, Message(U, "Who is here?")]
    first = await turn(memory, key, [CARD, Message(S, "World: it rains."), *chat], "Just us.")
    chat += [Message(A, "Just us."), Message(U, "And now?")]
    second = await memory.recognise(key, [Message(S, "You are Alice, a baker."), *chat])
    assert second.public_id == first.public_id and second.kind == "turn"


async def test_another_user_never_matches(
    memory: MemoryService, user: int, sessions: async_sessionmaker[AsyncSession]
) -> None:
    chat = [CARD, GREETING, Message(U, "Secret plan")]
    mine = await turn(memory, SessionKey(user_id=user, conversation="shared-name"), chat, "Noted.")
    from memory.users import create_key

    async with sessions.begin() as s:
        other, _ = await create_key(s, "other")
    theirs = await memory.recognise(SessionKey(user_id=other), [*chat, Message(A, "Noted.")])
    assert theirs.created and theirs.path == ()
    named = await memory.recognise(SessionKey(user_id=other, conversation="shared-name"), chat)
    assert named.created and named.public_id == mine.public_id == "shared-name"  # a name, not the same chat


async def test_a_system_only_request_stores_nothing(
    memory: MemoryService, user: int, sessions: async_sessionmaker[AsyncSession]
) -> None:
    key = SessionKey(user_id=user)
    thread = await turn(memory, key, [Message(S, "Reply with OK if you can read this.")], "OK")
    assert thread.kind == "quiet"
    assert await count(sessions, user) == (0, 0)
