"""Recognition logic without a database: request shapes and hash alignment."""

from __future__ import annotations

from memory.threads import Candidate, align, choose, content_hash, shape_of
from memory.types import Message

S, U, A = "system", "user", "assistant"


def msgs(*pairs: tuple[str, str]) -> list[Message]:
    return [Message(role, text) for role, text in pairs]


def test_shape_turn_ignores_post_history_system() -> None:
    shape = shape_of(msgs((S, "card"), (A, "hi"), (U, "hello"), (S, "post-history")))
    assert shape.kind == "turn"
    assert [m.content for m in shape.history] == ["hi", "hello"]


def test_shape_quiet_and_continue() -> None:
    assert shape_of(msgs((A, "hi"), (U, "q"), (A, "a"), (S, "summarise the chat"))).kind == "quiet"
    assert shape_of(msgs((U, "q"), (S, "post"), (A, "*grunts*"))).kind == "continue"
    assert shape_of(msgs((S, "only a system prompt"))).kind == "quiet"


def test_content_hash_ignores_outer_whitespace_not_role_or_name() -> None:
    assert content_hash(Message(U, " hi\n")) == content_hash(Message(U, "hi"))
    assert content_hash(Message(U, "hi")) != content_hash(Message(A, "hi"))
    assert content_hash(Message(U, "hi", "Ann")) != content_hash(Message(U, "hi", "Bob"))


def chain(
    conversation: int, start_id: int, texts: list[tuple[str, str]], parent: int | None = None
) -> list[Candidate]:
    out = []
    for offset, (role, text) in enumerate(texts):
        out.append(
            Candidate(start_id + offset, conversation, parent, content_hash(Message(role, text)), role)
        )
        parent = start_id + offset
    return out


def hashes(texts: list[tuple[str, str]]) -> list[str]:
    return [content_hash(Message(r, t)) for r, t in texts]


def test_align_finds_longest_run_from_the_first_message() -> None:
    stored = chain(1, 10, [(A, "g"), (U, "u1"), (A, "r1"), (U, "u2")])
    match = align(hashes([(A, "g"), (U, "u1"), (A, "r1"), (U, "new")]), stored)[1]
    assert (match.anchor_id, match.length, match.has_user) == (12, 3, True)


def test_align_handles_repeated_texts_by_position() -> None:
    stored = chain(1, 10, [(U, "ok"), (A, "sure"), (U, "ok"), (A, "sure")])
    match = align(hashes([(U, "ok"), (A, "sure"), (U, "ok"), (A, "sure"), (U, "more")]), stored)[1]
    assert (match.anchor_id, match.length) == (13, 4)


def test_choose_rejects_a_shared_greeting_unless_it_is_a_tip() -> None:
    stored = chain(1, 10, [(A, "g"), (U, "u1")])
    matches = align(hashes([(A, "g"), (U, "other")]), stored)
    assert choose(matches, tips=set(), preferred=set()) is None  # greeting only, and chat 1 went on
    assert choose(matches, tips={10}, preferred=set()) is not None  # greeting is chat 1's newest message


def test_choose_prefers_longer_match_then_character() -> None:
    one = chain(1, 10, [(A, "g"), (U, "u1")])
    two = chain(2, 20, [(A, "g"), (U, "u1")])
    matches = align(hashes([(A, "g"), (U, "u1")]), one + two)
    assert choose(matches, tips=set(), preferred={1}).conversation_id == 1  # type: ignore[union-attr]
    assert choose(matches, tips=set(), preferred=set()).conversation_id == 2  # type: ignore[union-attr]
