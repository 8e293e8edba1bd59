"""Recall ranking on the real Postgres: BM25 weighting, speakers, neighbours, scopes (exact values)."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Sequence
from dataclasses import replace

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory import chain, history
from memory.budget import TokenCounter
from memory.lexical import BM25, Samples
from memory.recall import Fusion, RecallQuery, recall, text_leg
from memory.types import Memory, Message, StoredMessage
from tests.fakes import FakeEmbedder

LEXICAL = Fusion(vector_weight=0.0, text_weight=1.0, speaker_boost=0.0)


async def chat(
    sessions: async_sessionmaker[AsyncSession],
    counter: TokenCounter,
    user: int,
    lines: Sequence[tuple[str, str]],
    public_id: str = "c",
) -> list[StoredMessage]:
    """One branch of (speaker, text) turns: the first speaker is the user, the other the assistant."""
    first = lines[0][0]
    messages = [Message("user" if who == first else "assistant", said, who) for who, said in lines]
    async with sessions.begin() as s:
        row = await history.create_conversation(s, user_id=user, public_id=public_id)
        return await chain.append(
            s,
            user_id=user,
            conversation_id=row.id,
            parent_id=None,
            messages=messages,
            token_counts=[counter.count(m.content) for m in messages],
        )


def query(user: int, said: str, anchor: int | None, *, scope: str = "branch", k: int = 10) -> RecallQuery:
    return RecallQuery(user_id=user, text=said, embedding=None, scope=scope, anchor_id=anchor, k=k)  # type: ignore[arg-type]


def bm25(tf: int, df: int, n: int, length: int, avgdl: float) -> float:
    """Okapi BM25 of one term (k1 = 1.2, b = 0.75), written out independently of memory.lexical."""
    idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
    return idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * length / avgdl))


async def test_a_rare_word_outweighs_a_common_one_repeated(
    sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, user: int
) -> None:
    """ts_rank_cd (no IDF) ranked the coffee-coffee message first; BM25 ranks the one rare word first."""
    lines = [("Ann", f"Coffee again this morning, number {i}.") for i in range(8)]
    lines += [
        ("Ann", "Coffee, coffee, coffee: nothing but coffee today."),
        ("Bob", "My sister moved to Porto."),
    ]
    stored = await chat(sessions, counter, user, lines)
    async with sessions() as s:
        hits = await text_leg(s, query(user, "coffee in Porto?", stored[-1].id), BM25())
    porto, coffees = stored[-1], stored[-2]
    assert [h[0] for h in hits[:2]] == [porto.id, coffees.id]
    avgdl = sum(m.token_count for m in stored) / len(stored)
    assert hits[0][1] == approx(bm25(1, 1, 10, porto.token_count, avgdl))
    assert hits[1][1] == approx(bm25(4, 9, 10, coffees.token_count, avgdl))
    assert len(hits) == 10  # every message holds one of the words


async def test_wider_scopes_count_each_query_term_in_a_message_exactly(
    sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, user: int
) -> None:
    """The pool's messages are cut to the query's terms before their counts are read (memory/lexical.py):
    a term repeated among other words counts every time, words the query lacks count for nothing."""
    lines = [
        ("Ann", "Coffee, coffee, coffee: nothing but coffee today."),
        ("Bob", "My sister moved to Porto, lovely Porto."),
        ("Ann", "Tea in the garden."),
    ]
    stored = await chat(sessions, counter, user, lines)
    async with sessions() as s:
        hits = dict(await text_leg(s, query(user, "coffee in Porto?", None, scope="user"), BM25()))
    coffees, porto, _tea = stored  # tea shares no word with the query
    avgdl = sum(m.token_count for m in stored) / len(stored)
    assert hits == {
        coffees.id: approx(bm25(4, 1, 3, coffees.token_count, avgdl)),
        porto.id: approx(bm25(2, 1, 3, porto.token_count, avgdl)),
    }


def approx(value: float) -> object:
    import pytest

    return pytest.approx(value, rel=1e-9)


async def test_speaker_names_are_not_search_terms(
    sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, user: int
) -> None:
    """Names were indexed with every message and a question naming a speaker matched all of theirs;
    now neither the name column nor a speaker's name in the question is a lexical term."""
    stored = await chat(
        sessions,
        counter,
        user,
        [
            ("Dave", "I went fishing on Sunday."),
            ("Alice", "Haha Dave, you always say that."),
            ("Dave", "My dream is to sail around the world."),
            ("Alice", "Nice weather today."),
        ],
    )
    async with sessions() as s:
        hits = await text_leg(s, query(user, "What are Dave's dreams?", stored[-1].id), BM25())
        indexed = await s.scalar(text("SELECT search::text FROM message WHERE id = :i"), {"i": stored[0].id})
    assert [h[0] for h in hits] == [stored[2].id]
    assert indexed == "'fish':3 'sunday':5 'went':2"


async def test_the_speaker_a_question_names_comes_first(
    sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, user: int
) -> None:
    stored = await chat(
        sessions,
        counter,
        user,
        [
            ("Dave", "Alice, my dream is to sail around the world."),
            ("Alice", "Dave, my dream is to open a bakery in a small seaside town."),
            ("Dave", "That is a lovely dream."),
        ],
    )
    alice_question = query(user, "What is Alice's dream?", stored[-1].id)
    async with sessions() as s:
        plain = await recall(s, alice_question, LEXICAL)
        spoken = await recall(s, alice_question, Fusion(vector_weight=0.0, speaker_boost=1.0))
    # without the rule the short line wins on length; with it, Alice's own dream is first
    assert [m.message_id for m in plain] == [stored[2].id, stored[0].id, stored[1].id]
    assert [m.message_id for m in spoken] == [stored[1].id, stored[2].id, stored[0].id]
    assert spoken[0].score == approx(1 / 63 + 1 / 60)
    assert (spoken[0].name, spoken[0].token_count) == ("Alice", stored[1].token_count)
    # a name used to address someone says who is asked, not whose words are wanted
    for addressed in ("Alice, what was my dream again?", "What was my dream again, Alice?"):
        async with sessions() as s:
            found = await recall(
                s, query(user, addressed, stored[-1].id), Fusion(vector_weight=0.0, speaker_boost=1.0)
            )
        assert [m.message_id for m in found] == [stored[2].id, stored[0].id, stored[1].id]


async def test_neighbours_follow_their_hit(
    sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, user: int
) -> None:
    """The answer to a question is often the next turn, which shares no word with what is asked."""
    stored = await chat(
        sessions,
        counter,
        user,
        [
            ("Ann", "Nice weather."),
            ("Ann", "Have you ever been to Peru?"),
            ("Bob", "Yes! Two weeks in Cusco back in college."),
            ("Ann", "Cool."),
        ],
    )
    peru = query(user, "Has Bob been to Peru?", stored[-1].id)
    async with sessions() as s:
        alone = await recall(s, peru, LEXICAL)
        with_next = await recall(s, peru, Fusion(vector_weight=0.0, speaker_boost=0.0, neighbours=1))
    assert [m.message_id for m in alone] == [stored[1].id]
    assert [m.message_id for m in with_next] == [stored[1].id, stored[2].id, stored[0].id]  # newer first
    assert [m.score for m in with_next] == [approx(1 / 61), approx(0.5 / 61), approx(0.5 / 61)]


async def test_excluded_messages_count_for_idf_but_are_not_returned(
    sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, user: int
) -> None:
    stored = await chat(
        sessions,
        counter,
        user,
        [("Ann", "Porto was lovely."), ("Bob", "Porto again?"), ("Ann", "Yes, Porto.")],
    )
    q = RecallQuery(user, "Porto", None, "branch", stored[-1].id, exclude=[stored[-1].id])
    async with sessions() as s:
        hits = await text_leg(s, q, BM25())
    avgdl = sum(m.token_count for m in stored) / 3
    assert [h[0] for h in hits] == [stored[1].id, stored[0].id]
    assert hits[0][1] == approx(bm25(1, 3, 3, stored[1].token_count, avgdl))


async def test_user_scope_ranks_across_chats_with_idf_from_the_users_messages(
    sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, user: int
) -> None:
    one = await chat(sessions, counter, user, [("Ann", "The garden is full of tomatoes.")], "one")
    two = await chat(
        sessions,
        counter,
        user,
        [("Ann", "Garden work all day."), ("Bob", "The garden again, and the tomatoes?")],
        "two",
    )
    stored = one + two
    async with sessions() as s:
        hits = await text_leg(s, query(user, "tomatoes in the garden", None, scope="user"), BM25())
    avgdl = sum(m.token_count for m in stored) / 3

    def both(m: StoredMessage) -> float:
        return bm25(1, 3, 3, m.token_count, avgdl) + bm25(1, 2, 3, m.token_count, avgdl)

    expected = {
        one[0].id: both(one[0]),
        two[1].id: both(two[1]),
        two[0].id: bm25(1, 3, 3, two[0].token_count, avgdl),
    }
    assert [h[0] for h in hits] == sorted(expected, key=lambda i: expected[i], reverse=True)
    assert [h[1] for h in hits] == [approx(expected[h[0]]) for h in hits]


async def test_both_legs_fused_by_weighted_reciprocal_rank(
    sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, user: int
) -> None:
    stored = await chat(
        sessions, counter, user, [("Ann", "violin lessons on monday"), ("Bob", "the cello sounds warm")]
    )
    async with sessions.begin() as s:
        for m in stored:
            vector = (await FakeEmbedder().embed([m.content]))[0]
            await s.execute(
                text(
                    "INSERT INTO message_embedding (message_id, user_id, conversation_id, chunk, embedding)"
                    " SELECT id, user_id, conversation_id, 0, :v FROM message WHERE id = :i"
                ),
                {"v": str(vector), "i": m.id},
            )
    said = "cello"
    q = RecallQuery(user, said, (await FakeEmbedder().embed([said]))[0], "branch", stored[-1].id)
    async with sessions() as s:
        found = await recall(s, q, Fusion(vector_weight=2.0, text_weight=1.0, speaker_boost=0.0))
    assert [m.message_id for m in found] == [stored[1].id]  # the violin line is below min_similarity
    assert found[0].score == approx(2 / 61 + 1 / 61)


async def embedded_chat(
    sessions: async_sessionmaker[AsyncSession],
    counter: TokenCounter,
    user: int,
    lines: Sequence[tuple[str, str]],
) -> list[StoredMessage]:
    """A chat whose messages are embedded (by the fake embedder: the same text, the same vector)."""
    stored = await chat(sessions, counter, user, lines)
    async with sessions.begin() as s:
        for m in stored:
            await s.execute(
                text(
                    "INSERT INTO message_embedding (message_id, user_id, conversation_id, chunk, embedding)"
                    " SELECT id, user_id, conversation_id, 0, :v FROM message WHERE id = :i"
                ),
                {"v": str((await FakeEmbedder().embed([m.content]))[0]), "i": m.id},
            )
    return stored


async def test_one_round_trip_per_recall_in_branch_scope_two_in_wider_scopes(
    sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, user: int
) -> None:
    """On a busy machine each statement's round trip cost more than its work: the old code made three
    per recall in branch scope (vector leg, lexical leg, details) and five in user scope. Now both legs,
    the fusion and the details are one statement (the wider scopes read their BM25 terms first; while
    the query is still embedded they run the lexical leg on its own too: the next test)."""
    stored = await embedded_chat(
        sessions, counter, user, [("Ann", "violin lessons on monday"), ("Bob", "the cello sounds warm")]
    )
    vector = (await FakeEmbedder().embed(["cello"]))[0]
    fusion = Fusion(speaker_boost=0.0)
    async with sessions() as s:  # the wider scopes' term statistics are read once, then kept
        await recall(s, RecallQuery(user, "cello", vector, "user", None), fusion)
    seen: list[str] = []
    done: asyncio.Future[list[float] | None] = asyncio.get_running_loop().create_future()
    done.set_result(vector)  # a vector computed in advance, as the chat path's often is
    scopes = (("branch", 1), ("user", 2), ("persona", 2))
    for (scope, round_trips), given in itertools.product(scopes, (vector, done)):
        seen.clear()
        async with sessions() as s:
            connection = (await s.connection()).sync_connection
            event.listen(connection, "before_cursor_execute", lambda *call: seen.append(call[2]))
            q = RecallQuery(user, "cello", given, scope, stored[-1].id)  # type: ignore[arg-type]
            found = await recall(s, q, fusion)
        assert len(seen) == round_trips, scope
        assert [m.message_id for m in found] == [stored[1].id]
        assert (found[0].score, found[0].content) == (approx(2 / 61 + 1 / 61), "the cello sounds warm")


async def awaited(vector: asyncio.Future[list[float] | None], asked: asyncio.Event) -> list[float] | None:
    """`vector`, once it is there; `asked` is set when recall starts waiting for it."""
    asked.set()
    return await vector


async def test_the_wider_scopes_run_their_lexical_leg_while_the_query_is_embedded(
    sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, user: int
) -> None:
    """The query's embedding (~5 ms, in a thread) held up the BM25 leg, which does not use it: now the
    wider scopes read the terms and run that leg while the vector is pending, then fuse it with the
    vector leg. Same memories and scores as with the vector given at once; branch scope just waits."""
    stored = await embedded_chat(
        sessions, counter, user, [("Ann", "violin lessons on monday"), ("Bob", "the cello sounds warm")]
    )
    vector = (await FakeEmbedder().embed(["cello"]))[0]
    fusion = Fusion(speaker_boost=0.0)
    seen: list[str] = []
    for scope, before in (("user", 2), ("persona", 2), ("branch", 0)):
        q = RecallQuery(user, "cello", vector, scope, stored[-1].id)  # type: ignore[arg-type]
        async with sessions() as s:
            given = await recall(s, q, fusion)
        pending: asyncio.Future[list[float] | None] = asyncio.get_running_loop().create_future()
        asked = asyncio.Event()
        seen.clear()
        async with sessions() as s:
            connection = (await s.connection()).sync_connection
            event.listen(connection, "before_cursor_execute", lambda *call: seen.append(call[2]))
            task = asyncio.create_task(recall(s, replace(q, embedding=awaited(pending, asked)), fusion))
            waiting = asyncio.create_task(asked.wait())
            await asyncio.wait((task, waiting), timeout=60, return_when=asyncio.FIRST_COMPLETED)
            assert asked.is_set() and len(seen) == before, scope  # what ran before the vector was needed
            assert all("<=>" not in statement for statement in seen)
            pending.set_result(vector)
            found = await task
        assert len(seen) == before + 1  # then the vector leg, fused with what the lexical leg found
        assert [(m.message_id, m.score) for m in found] == [(m.message_id, m.score) for m in given]
        assert [m.message_id for m in found] == [stored[1].id]
        nothing: asyncio.Future[list[float] | None] = asyncio.get_running_loop().create_future()
        nothing.set_result(None)  # no embedder: the lexical leg alone, whether split or not
        async with sessions() as s:
            lexical_only = await recall(s, replace(q, embedding=awaited(nothing, asyncio.Event())), fusion)
        assert [(m.message_id, m.score) for m in lexical_only] == [(stored[1].id, approx(1 / 61))]


async def test_the_wider_scopes_scan_the_graph_iteratively_also_without_a_lexical_leg(
    sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, user: int
) -> None:
    """pgvector's iterative HNSW scan (so the user filter does not starve the pool) is set by the
    statement that reads the BM25 terms; a question with no word skips that one and must still set it,
    for this transaction only."""
    stored = await embedded_chat(sessions, counter, user, [("Ann", "violin lessons on monday")])
    vector = (await FakeEmbedder().embed(["violin lessons on monday"]))[0]
    async with sessions() as s:
        found = await recall(s, RecallQuery(user, "?!", vector, "user", None, k=40), Fusion())
        setting = await s.scalar(text("SELECT current_setting('hnsw.iterative_scan')"))
        assert setting == "relaxed_order"
    async with sessions() as s:
        assert await s.scalar(text("SELECT current_setting('hnsw.iterative_scan', true)")) in ("off", None)
    assert [m.message_id for m in found] == [stored[0].id]


async def test_wider_scopes_keep_their_idf_statistics_and_refresh_them_in_the_background(
    sessions: async_sessionmaker[AsyncSession], counter: TokenCounter, user: int
) -> None:
    """Counting terms over the user's newest messages cost part of every recall: now the counts are
    kept and, once older than `max_age`, served while a background read replaces them. New messages
    are found at once all the same (only their share in the IDF waits for the refresh)."""
    samples = Samples(max_age=3600.0)
    fusion = Fusion(vector_weight=0.0, speaker_boost=0.0, bm25=BM25(samples=samples))
    one = await chat(sessions, counter, user, [("Ann", "Porto was lovely."), ("Ann", "Rain all day.")], "one")
    q = query(user, "Porto", None, scope="user")
    async with sessions() as s:
        first = await recall(s, q, fusion)
    two = await chat(sessions, counter, user, [("Bob", "Porto again, Porto!")], "two")
    async with sessions() as s:
        kept = await recall(s, q, fusion)
    idf_then = math.log(1 + (2 - 1 + 0.5) / (1 + 0.5))  # n = 2 messages, Porto in 1
    assert [m.message_id for m in first] == [one[0].id]
    assert [m.message_id for m in kept] == [two[0].id, one[0].id]  # the new message is found at once
    assert text_score(kept, one[0].id) == approx(1 / 62)
    async with sessions() as s:
        lexical_only = await text_leg(s, q, fusion.bm25)
    avgdl = (one[0].token_count + one[1].token_count) / 2
    assert dict(lexical_only)[one[0].id] == approx(idf_then * bm25_tf(1, one[0].token_count, avgdl))

    samples.max_age = 0.0  # stale: served once more while the refresh runs
    async with sessions() as s:
        stale = await text_leg(s, q, fusion.bm25)
    assert dict(stale)[one[0].id] == approx(idf_then * bm25_tf(1, one[0].token_count, avgdl))
    for _ in range(1200):  # poll for the background read (up to a minute on a busy machine)
        await asyncio.sleep(0.05)
        if not samples._refreshing:
            break
    samples.max_age = 3600.0
    async with sessions() as s:
        fresh = await text_leg(s, q, fusion.bm25)
    avgdl3 = sum(m.token_count for m in (*one, *two)) / 3
    assert dict(fresh)[one[0].id] == approx(bm25(1, 2, 3, one[0].token_count, avgdl3))


def bm25_tf(tf: int, length: int, avgdl: float) -> float:
    """BM25's term-frequency part (k1 = 1.2, b = 0.75), to multiply by an IDF."""
    return tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * length / avgdl))


def text_score(found: Sequence[Memory], message_id: int) -> float:
    return next(m.score for m in found if m.message_id == message_id)
