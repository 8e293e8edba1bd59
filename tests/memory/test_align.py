"""Recognition logic without a database: turn kinds, presentation-blind hashes, alignment with edits."""

from __future__ import annotations

from memory.threads import Candidate, align, choose, classify, content_hash, named_by_prefix, same_or_trimmed
from memory.types import Message

S, U, A = "system", "user", "assistant"
CONTINUE = "[Continue your last message without repeating its original content.]"
IMPERSONATE = (
    "[Write your next reply from the point of view of Alice, using the chat history so far as a guideline"
    " for the writing style of Alice. Don't write as Bob or system. Don't describe actions of Bob.]"
)


def msgs(*pairs: tuple[str, str]) -> list[Message]:
    return [Message(role, text) for role, text in pairs]


def test_classify_turn_ignores_post_history_system() -> None:
    shape = classify(msgs((S, "card"), (A, "hi"), (U, "hello"), (S, "post-history")))
    assert shape.kind == "turn"
    assert [m.content for m in shape.history] == ["hi", "hello"]


def test_classify_quiet_and_continue_prefill() -> None:
    assert classify(msgs((A, "hi"), (U, "q"), (A, "a"), (S, "summarise the chat"))).kind == "quiet"
    assert classify(msgs((U, "q"), (S, "post"), (A, "*grunts*"))).kind == "continue"
    assert classify(msgs((S, "only a system prompt"))).kind == "quiet"
    quiet = msgs((A, "hi"), (U, "q"), (S, "[Pause your roleplay. Summarize the most important facts.]"))
    assert classify(quiet).kind == "quiet"  # a quiet prompt after the user's line is still not a turn


def test_classify_reads_what_a_trailing_instruction_asks() -> None:
    """Issue 11 items 3 and 4: a continue nudge and a group nudge after an assistant message are turns
    whose reply is stored, not quiet prompts."""
    assert classify(msgs((U, "q"), (A, "a partial"), (S, CONTINUE))).kind == "continue"
    group = classify(msgs((U, "hi all"), (A, "Alice: hello"), (S, "[Write the next reply only as Bob.]")))
    assert (group.kind, group.speaker) == ("turn", "Bob")
    assert classify(msgs((U, "q"), (A, "a"), (S, IMPERSONATE))).kind == "impersonate"
    assert classify(msgs((A, "g"), (U, "q"), (S, IMPERSONATE))).kind == "impersonate"


def test_content_hash_ignores_presentation_not_role() -> None:
    """Issue 11 item 2: a name field, a "Name: " prefix and whitespace do not make another message."""
    plain = content_hash(Message(A, "*She smiles.* Welcome  back."))
    assert content_hash(Message(A, "*She smiles.* Welcome back.", "Seraphina")) == plain
    assert content_hash(Message(A, "Seraphina: *She smiles.* Welcome back.")) == plain
    assert content_hash(Message(A, " *She smiles.*\nWelcome back. ")) == plain
    assert content_hash(Message(U, "*She smiles.* Welcome back.")) != plain
    assert content_hash(Message(U, "hi", "Ann")) == content_hash(Message(U, "hi", "Bob"))


def test_same_or_trimmed_accepts_what_the_client_kept_after_stop() -> None:
    """Issue 11 item 5: the client keeps less than was streamed, and trims the leading space."""
    assert same_or_trimmed("tok0 tok1", " tok0 tok1 tok2 tok3")
    assert not same_or_trimmed("tok0 tok9", " tok0 tok1 tok2 tok3")
    assert not same_or_trimmed("", "anything")


def chain(
    conversation: int, start_id: int, texts: list[tuple[str, str]], parent: int | None = None
) -> list[Candidate]:
    out: list[Candidate] = []
    previous: Candidate | None = None
    for offset, (role, text) in enumerate(texts):
        candidate = Candidate(
            start_id + offset,
            conversation,
            parent,
            content_hash(Message(role, text)),
            role,
            previous.role if previous else None,
            previous.parent_id if previous else None,
        )
        out.append(candidate)
        previous, parent = candidate, start_id + offset
    return out


def hashes(texts: list[tuple[str, str]]) -> list[str]:
    return [content_hash(Message(r, t)) for r, t in texts]


def roles(texts: list[tuple[str, str]]) -> list[str]:
    return [r for r, _ in texts]


def aligned(request: list[tuple[str, str]], stored: list[Candidate]) -> dict[int, object]:
    return align(hashes(request), roles(request), stored)  # type: ignore[return-value]


def test_align_finds_longest_run_from_the_first_message() -> None:
    stored = chain(1, 10, [(A, "g"), (U, "u1"), (A, "r1"), (U, "u2")])
    request = [(A, "g"), (U, "u1"), (A, "r1"), (U, "new")]
    match = align(hashes(request), roles(request), stored)[1]
    assert (match.anchor_id, match.length, match.has_user, match.ids) == (12, 3, True, (10, 11, 12))


def test_align_handles_repeated_texts_by_position() -> None:
    stored = chain(1, 10, [(U, "ok"), (A, "sure"), (U, "ok"), (A, "sure")])
    request = [(U, "ok"), (A, "sure"), (U, "ok"), (A, "sure"), (U, "more")]
    match = align(hashes(request), roles(request), stored)[1]
    assert (match.anchor_id, match.length) == (13, 4)


def test_align_runs_through_an_edited_message() -> None:
    """Issue 11 item 6: an edited greeting (or an earlier line) is the same chat, revised, not a copy."""
    stored = chain(1, 10, [(A, "g"), (U, "u1"), (A, "r1"), (U, "u2"), (A, "r2")])
    # the greeting is not a candidate (its text changed); u1's parent is the stored greeting
    candidates = [c for c in stored if c.id != 10]
    request = [(A, "edited greeting"), (U, "u1"), (A, "r1"), (U, "u2"), (A, "r2"), (U, "u3")]
    match = align(hashes(request), roles(request), candidates)[1]
    assert (match.anchor_id, match.length, match.ids, match.edited) == (14, 5, (10, 11, 12, 13, 14), (0,))
    middle = [c for c in stored if c.id != 12]
    request = [(A, "g"), (U, "u1"), (A, "r1 edited"), (U, "u2"), (A, "r2")]
    match = align(hashes(request), roles(request), middle)[1]
    assert (match.anchor_id, match.ids, match.edited) == (14, (10, 11, 12, 13, 14), (2,))


def test_align_never_changes_a_role_through_an_edit() -> None:
    stored = chain(1, 10, [(A, "g"), (U, "u1"), (A, "r1")])
    candidates = [c for c in stored if c.id != 10]
    request = [(U, "a user line where the greeting was"), (U, "u1"), (A, "r1")]
    assert align(hashes(request), roles(request), candidates) == {}


def test_choose_rejects_a_shared_greeting_unless_it_is_a_tip() -> None:
    stored = chain(1, 10, [(A, "g"), (U, "u1")])
    request = [(A, "g"), (U, "other")]
    matches = align(hashes(request), roles(request), stored)
    assert choose(matches, tips=set(), grown=set(), preferred=set()) is None  # greeting only, chat went on
    assert choose(matches, tips={10}, grown=set(), preferred=set()) is not None  # greeting is the newest


def test_choose_starts_a_new_chat_that_only_shares_an_old_chats_opening() -> None:
    """Issue 11 item 6: greeting and first line equal to an old chat's that went on: a new conversation."""
    stored = chain(1, 10, [(A, "Hi!"), (U, "Hi!"), (A, "r1"), (U, "u2")])
    request = [(A, "Hi!"), (U, "Hi!")]
    matches = align(hashes(request), roles(request), stored)
    assert choose(matches, tips=set(), grown={11}, preferred=set()) is None
    assert choose(matches, tips=set(), grown=set(), preferred=set()) is not None  # a swipe of the first reply


def test_choose_prefers_longer_match_then_character() -> None:
    one = chain(1, 10, [(A, "g"), (U, "u1"), (A, "r1")])
    two = chain(2, 20, [(A, "g"), (U, "u1"), (A, "r1")])
    request = [(A, "g"), (U, "u1"), (A, "r1")]
    matches = align(hashes(request), roles(request), one + two)
    assert choose(matches, tips=set(), grown=set(), preferred={1}).conversation_id == 1  # type: ignore[union-attr]
    assert choose(matches, tips=set(), grown=set(), preferred=set()).conversation_id == 2  # type: ignore[union-attr]


def test_only_a_name_like_prefix_is_presentation() -> None:
    """Numbered lines ("Turn 3:", "12:30") keep their prefix: they are content, not a speaker's name."""
    assert content_hash(Message(U, "Turn 1: blah")) != content_hash(Message(U, "Turn 0: blah"))
    assert content_hash(Message(U, "12:30: lunch")) != content_hash(Message(U, "13:30: lunch"))
    assert content_hash(Message(A, "Mary Jane: hi")) == content_hash(Message(A, "hi"))


def test_a_group_reply_is_named_by_its_prefix() -> None:
    """Issue 11 item 3: SillyTavern sends a group chat's replies as "Name: text" without a `name`."""
    assert named_by_prefix(Message(A, "Ivy: *Ivy looks up.* Hi.")).name == "Ivy"
    assert named_by_prefix(Message(A, "Reply 12: words")).name is None  # not a name
    assert named_by_prefix(Message(U, "Ann: hi")).name is None  # only replies are named
    assert named_by_prefix(Message(A, "Jon: hi", "Jon")) == Message(A, "Jon: hi", "Jon")


def test_align_prefers_the_exact_run_to_an_edit_as_long() -> None:
    """The SIGKILL fault run's duplicate: a reply text repeats (u1 -> r -> u2 -> r) and the client forked
    after the first r. Read as an edit of u2, the newer run is as long; the exact one must win, or u2
    is rewritten into a copy of u1."""
    stored = chain(1, 10, [(U, "u1"), (A, "r"), (U, "u2"), (A, "r")])
    request = [(U, "u1"), (A, "r"), (U, "u3")]
    match = align(hashes(request), roles(request), stored)[1]
    assert (match.anchor_id, match.ids, match.edited) == (11, (10, 11), ())
