"""Round trips to Postgres per turn (issue 15): every statement costs a round trip and CPU on both sides,
so recognising and storing a turn of a growing chat take as few as the data allows. Counted from libpq's
own trace of what each pooled connection sends (a simple query, or an extended-protocol Sync): BEGIN,
COMMIT, ROLLBACK and the pool's pings count, as they cost the same. Real Postgres, no timing involved."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from psycopg import pq
from sqlalchemy import event, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory import chain, history
from memory.archive import Incoming
from memory.budget import TokenCounter
from memory.db import make_engine, make_sessionmaker
from memory.models import MessageRow, SummaryRow
from memory.recall import Scope
from memory.service import MemoryConfig, MemoryService
from memory.summaries import SummaryJob, SummaryWorker
from memory.types import Annotation, Message, SessionKey, TurnRecord
from memory.workers import EmbeddingWorker
from tests.fakes import FakeEmbedder


class Trace:
    """Everything the engine's connections send, as libpq traces it; `sent()` the round trips since
    the last `clear()` (the statements, in order)."""

    def __init__(self, path: Path) -> None:
        self.path, self._offset = path, 0
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def attach(self, engine: Any) -> None:
        @event.listens_for(engine.sync_engine, "connect")
        def traced(dbapi_connection: Any, record: Any) -> None:
            pgconn = dbapi_connection.driver_connection.pgconn
            pgconn.trace(self.fd)
            pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

    def lines(self) -> list[str]:
        return self.path.read_text().splitlines()

    def clear(self) -> None:
        self._offset = len(self.lines())

    def sent(self) -> list[str]:
        """A round trip ends with a simple Query or with the Sync after Parse/Bind/Execute."""
        trips, statement = [], ""
        for line in self.lines()[self._offset :]:
            fields = line.split("\t")
            if len(fields) < 3 or fields[0] != "F":
                continue
            if fields[2] in ("Query", "Parse"):
                statement = fields[3].strip().strip('"') if len(fields) > 3 else ""
            if fields[2] in ("Query", "Sync"):
                trips.append(statement)
        return trips


Counted = tuple[async_sessionmaker[AsyncSession], Trace]


@pytest.fixture
def trace(tmp_path: Path) -> Iterator[Trace]:
    t = Trace(tmp_path / "libpq.trace")
    yield t
    os.close(t.fd)


@pytest.fixture
async def counted(pg_url: str, trace: Trace) -> AsyncIterator[Counted]:
    """Sessions on an engine whose connections trace what they send."""
    engine = make_engine(pg_url, pool_size=2)
    trace.attach(engine)
    yield make_sessionmaker(engine), trace
    await engine.dispose()


def record(reply: str, incoming: list[Message], newest: Annotation | None = None) -> TurnRecord:
    return TurnRecord(reply, "complete", "m", [], {}, incoming=tuple(incoming), newest=newest)


async def test_a_growing_chat_is_recognised_in_one_round_trip_and_stored_in_seven(
    counted: Counted, user: int, counter: TokenCounter
) -> None:
    """SillyTavern resends the chat every turn. Recognition took four statements (candidates, then
    grandchildren, the public id and the earlier-history walk, each a round trip) and storing a turn
    eleven (the reply went in its own INSERT, after a reuse check under a parent stored a moment before).
    Then each checkout cost a ping (`pool_pre_ping`), recognition's one read a BEGIN and a ROLLBACK
    too, and a user message read by the emotion step went in another INSERT than the reply (the ORM's
    bulk insert groups rows by the columns they set): four round trips to recognise, eleven to store.
    The conversation's UPDATE then went apart from the INSERT, and the ids were drawn apart from the
    reuse check: nine."""
    sessions, statements = counted
    memory = MemoryService(sessions, counter, FakeEmbedder(), MemoryConfig(deadline_s=30))
    session = SessionKey(user_id=user)
    chat = [Message("assistant", "*Mira waves from the gangway.*"), Message("user", "Where are the crates?")]
    recognised, stored = [], []
    for turn in range(4):
        statements.clear()
        thread = await memory.recognise(session, chat)
        recognised.append(len(statements.sent()))
        statements.clear()
        feeling = Annotation(0.5, "curiosity", 0.7, {"curiosity": 0.7})  # the user's, not the reply's
        await memory.store_turn(session, thread, record(f"Reply {turn}.", chat, feeling))
        stored.append(statements.sent())
        chat += [Message("assistant", f"Reply {turn}."), Message("user", f"And after {turn}?")]
    assert recognised[1:] == [1, 1, 1]  # the first turn of a new chat has no candidates to look further at
    # BEGIN, lock, stored already?, reuse check with the ids, INSERT (marking the conversation updated),
    # context, COMMIT
    assert [len(s) for s in stored[1:]] == [7, 7, 7]
    assert stored[-1][0].startswith("BEGIN") and stored[-1][-1] == "COMMIT"
    thread = await memory.recognise(session, chat)
    assert thread.kind == "turn" and [m.content for m in thread.new] == ["And after 3?"]
    async with sessions() as s:
        rows = (
            await s.execute(
                select(MessageRow.role, MessageRow.emotion_label, MessageRow.emotion_scores, MessageRow.meta)
                .where(MessageRow.user_id == user)
                .order_by(MessageRow.id)
            )
        ).all()
    assert [tuple(r) for r in rows[-2:]] == [
        ("user", "curiosity", {"curiosity": 0.7}, None),
        ("assistant", None, None, None),  # SQL NULLs, not JSON nulls
    ]


async def test_a_trimmed_chat_reads_the_earlier_history_from_the_window_it_holds(
    counted: Counted, user: int, counter: TokenCounter
) -> None:
    """Once the client trims its oldest messages, what it no longer sends is offered from stored history
    every turn: that walk (one more statement, every row made a message again) is read from the RAM
    window, which keeps the branch right above its tail too (the messages its tail lets go, and what a
    walk found), and only what the window does not hold is walked; the same messages either way. A
    `window_turns` tail holds up to `window_turns` more above it: here 4 + 4 of the 7 earlier messages."""
    sessions, statements = counted
    said = [Message("assistant", "*The storm wall looms.*"), Message("user", "Is anyone aboard?")]
    for turn in range(5):
        said += [Message("assistant", f"Maybe {turn}."), Message("user", f"Who, {turn}?")]
    # round trips of two recognitions: the conversation and the candidates, + the walk (+ the tail)
    cases = [(64, 1000, 2, 2), (4, 1000, 3, 3), (6, 1000, 2, 2), (4, 14, 2, 2), (64, 14, 2, 2)]
    cases += [(6, 1000, 4, 2)]  # restarted: the tail comes from Postgres, the walk fills what is above it
    for n, (window, tokens, *trips) in enumerate(cases):
        config = MemoryConfig(deadline_s=30, window_turns=window)
        memory = MemoryService(sessions, counter, FakeEmbedder(), config)
        session = SessionKey(user_id=user, conversation=f"trim-{window}-{tokens}-{n}")
        chat = said[:2]
        for turn in range(5):
            thread = await memory.recognise(session, chat)
            await memory.store_turn(session, thread, record(f"Maybe {turn}.", chat))
            chat = said[: 4 + 2 * turn]
        if n == len(cases) - 1:
            memory = MemoryService(sessions, counter, FakeEmbedder(), config)
        fits = [m.content for m in chat[:7]] if tokens >= 1000 else ["Maybe 2."]  # 3 tokens + 4 each
        for expected in trips:
            statements.clear()
            thread = await memory.recognise(session, chat[7:], earlier_tokens=tokens)
            assert len(statements.sent()) == expected, (window, tokens)
            assert [m.content for m in thread.earlier] == fits, (window, tokens)
            assert thread.first is not None and thread.first.content == chat[7].content
            assert [m.content for m in thread.new] == ["Who, 4?"]


async def test_a_pooled_connection_is_pinged_only_after_idling(pg_url: str, trace: Trace) -> None:
    """A connection that died in the pool is replaced before use once it idled `ping_idle_s`; one used
    a moment ago is not pinged, so its death fails one statement, after which the pool is renewed."""
    name = "anima-ping-test"
    for idle_s, survives in ((0.0, True), (3600.0, False)):
        engine = make_engine(pg_url, pool_size=1, ping_idle_s=idle_s, connect_args={"application_name": name})
        trace.attach(engine)
        sessions = make_sessionmaker(engine)
        async with sessions() as s:
            assert await s.scalar(text("SELECT 1")) == 1
        await kill_backends(pg_url, name)  # Postgres restarted, say
        trace.clear()
        try:
            async with sessions() as s:
                assert await s.scalar(text("SELECT 2")) == 2
            assert survives and trace.sent()[0] == ";"  # the ping, then a fresh connection's statements
        except OperationalError:
            assert not survives and ";" not in trace.sent()
            async with sessions() as s:  # the pool was renewed
                assert await s.scalar(text("SELECT 3")) == 3
        await engine.dispose()


async def kill_backends(pg_url: str, application_name: str) -> None:
    engine = make_engine(pg_url, pool_size=1, isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        await conn.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :name"),
            {"name": application_name},
        )
    await engine.dispose()


async def test_the_embedding_worker_embeds_a_stored_turn_in_two_round_trips(
    counted: Counted, user: int, counter: TokenCounter
) -> None:
    """The claim is one UPDATE in autocommit; the write is one statement that marks done, drops replaced
    vectors and inserts the new ones. It took eleven: a ping and BEGIN/COMMIT around the claim, a ping,
    then a separate DELETE and an empty release in the write; then five (BEGIN, done, the vectors'
    INSERT, COMMIT)."""
    sessions, trace = counted
    memory = MemoryService(sessions, counter, None, MemoryConfig(deadline_s=30))
    await EmbeddingWorker(sessions, FakeEmbedder(), chunker=lambda t: [t]).drain()  # earlier tests' rows
    chat = [Message("user", "Which crate holds the compass?")]
    session = SessionKey(user_id=user)
    await memory.store_turn(session, await memory.recognise(session, chat), record("The blue one.", chat))
    worker = EmbeddingWorker(sessions, FakeEmbedder(), chunker=lambda t: [t])
    trace.clear()
    assert await worker.step() >= 2
    sent = trace.sent()
    assert len(sent) == 2, sent  # the claim; the write (mark done, old vectors out, new in)
    assert "BEGIN" not in sent and "COMMIT" not in sent  # one statement is its own transaction


async def test_a_batch_is_annotated_in_one_statement(
    counted: Counted, user: int, counter: TokenCounter
) -> None:
    """Imported messages and replies are stored without the emotion step: the worker annotates a batch
    in one UPDATE (it took one per row), each row with exactly its own annotation."""
    sessions, trace = counted
    memory = MemoryService(sessions, counter, None, MemoryConfig(deadline_s=30))
    await EmbeddingWorker(sessions, FakeEmbedder(), chunker=lambda t: [t]).drain()  # earlier tests' rows
    texts = ["The storm took the mast.", "We rowed until dawn.", "Land, at last!"]
    await memory.archive.create(user, [Incoming("user", t) for t in texts])
    feel = {
        t: Annotation(0.1 * (i + 1), "joy" if i else None, 0.5 + i / 10, {"joy": i / 4})
        for i, t in enumerate(texts)
    }

    async def annotate(messages: Sequence[tuple[str, str]]) -> list[Annotation]:
        return [feel[content] for _, content in messages]

    worker = EmbeddingWorker(sessions, FakeEmbedder(), chunker=lambda t: [t], annotate=annotate)
    trace.clear()
    assert await worker.step() >= 3
    sent = trace.sent()
    assert len(sent) == 2, sent  # the claim; the write with the annotations
    async with sessions() as s:
        rows = (
            await s.execute(
                select(MessageRow.content, MessageRow.importance, MessageRow.emotion_label)
                .add_columns(MessageRow.emotion_confidence, MessageRow.emotion_scores, MessageRow.embedded)
                .where(MessageRow.user_id == user)
            )
        ).all()
    assert {r[0]: (Annotation(*r[1:5]), r[5]) for r in rows} == {t: (feel[t], True) for t in texts}


async def test_branch_recall_needs_no_transaction(counted: Counted, user: int, counter: TokenCounter) -> None:
    """Recall in the branch scope is one read: no BEGIN and ROLLBACK around it (it took three round
    trips, four with the ping). The wider scopes keep their transaction: their `set_config` holds
    for it only."""
    sessions, trace = counted
    chat = [Message("assistant", "*The hold smells of tar.*"), Message("user", "Where are the crates?")]
    scopes: tuple[tuple[Scope, bool], ...] = (("branch", False), ("user", True))
    for scope, transaction in scopes:
        memory = MemoryService(sessions, counter, FakeEmbedder(), MemoryConfig(deadline_s=30, scope=scope))
        session = SessionKey(user_id=user)
        thread = await memory.recognise(session, chat)
        await memory.store_turn(session, thread, record("Below deck.", chat))
        chat += [Message("assistant", "Below deck."), Message("user", "Which crates?")]
        thread = await memory.recognise(session, chat)
        trace.clear()
        found = await memory.recall(session, thread, "crates below deck")
        assert not found.degraded
        sent = trace.sent()
        assert sent[0].startswith("BEGIN") == transaction and (sent[-1] == "ROLLBACK") == transaction, sent
        assert transaction or len(sent) == 1, (
            sent
        )  # the fused statement (the chat is too short for summaries)


async def test_a_summary_step_reads_what_is_left_in_one_walk_back_to_the_last_summary(
    counted: Counted, user: int, counter: TokenCounter
) -> None:
    """Each cut of a growing chat asks for a summary up to the cut. The step read the branch's latest
    summary (a walk to the branch's root), then the whole branch (a second walk, every row made a
    message), in a transaction: four round trips that grew with the chat. Now one walk, back to the
    newest summarised message; the spans still follow each other, oldest first."""
    sessions, trace = counted
    async with sessions.begin() as s:
        conversation = await history.create_conversation(s, user_id=user, public_id="summed")
        said = [Message("user" if i % 2 else "assistant", f"Line {i}.") for i in range(20)]
        rows = await chain.append(
            s, user_id=user, conversation_id=conversation.id, parent_id=None, messages=said,
            token_counts=[3] * 20,
        )  # fmt: skip
    excerpts: list[str] = []

    async def summarize(model: str, prompt: str) -> str:
        excerpts.append(prompt)
        return f"Summary {len(excerpts)}."

    worker = SummaryWorker(sessions, counter, min_messages=8, max_span=8)
    job = SummaryJob(user, conversation.id, rows[-1].id, "m")
    trace.clear()
    assert await worker.step(job, summarize)
    assert len(trace.sent()) == 1 + 3  # the read; BEGIN, the summary's INSERT, COMMIT
    assert await worker.step(job, summarize)
    assert not await worker.step(job, summarize)  # four left: fewer than eight
    async with sessions() as s:
        spans = (
            await s.execute(
                select(SummaryRow.first_message_id, SummaryRow.last_message_id)
                .where(SummaryRow.conversation_id == conversation.id)
                .order_by(SummaryRow.id)
            )
        ).all()
    assert [tuple(r) for r in spans] == [(rows[0].id, rows[7].id), (rows[8].id, rows[15].id)]
    assert "Line 8." in excerpts[1] and "Line 7." not in excerpts[1]
