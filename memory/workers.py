"""The embedding worker: embeds stored messages off the request path, in batches.

Work is found from database state (messages with `embedded = false`), so a restart loses nothing.
A batch is claimed (`embed_claimed_at`, taken with `FOR UPDATE SKIP LOCKED` in a short transaction
that commits at once), embedded with no transaction open, then written only where the claim and the
content are still the ones embedded: no row lock is held while the encoder runs, several processes
share the work without embedding a row twice, and a claim left by a crashed worker expires.
What is embedded is the message's text (the chunks of a long one), exactly what recall compares with
the question: a "[date] Name:" prefix pulled the other speaker's turns. Speaker and date stay columns.

A vector the request path already computed (the recall query is the newest user message's text) is
stored with its message by `store_known`, in the transaction that stores the message: the worker
never sees that row, so no message is encoded twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from memory.db import autocommit
from memory.types import Annotation, StoredMessage

if TYPE_CHECKING:
    from memory.embedder import Embedder

log = logging.getLogger("anima.workers")

Annotate = Callable[[Sequence[tuple[str, str]]], Awaitable[list[Annotation]]]  # (role, text) -> annotation
CLAIM_LEASE_S = 300.0  # a claim older than this was left by a worker that died
SKIPPED_RETRY_S = 0.5  # rows skipped as locked are usually free again within a transaction's time

_CLAIMABLE = """NOT embedded AND (
            embed_claimed_at IS NULL
            OR embed_claimed_at < clock_timestamp() - make_interval(secs => :lease)
        )"""
# Claims a batch and says how many rows were claimable when it looked (`waiting`, up to n + 1; one row
# with only `waiting` when none was claimed): rows another transaction held locked (the fact worker
# marking them read, say) are skipped, and the worker must look again soon rather than sleep on them.
_CLAIM = text(
    f"""
    WITH pending AS (
        SELECT id FROM message WHERE {_CLAIMABLE} ORDER BY id LIMIT :n FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE message m SET embed_claimed_at = clock_timestamp() FROM pending WHERE m.id = pending.id
        RETURNING m.id, m.user_id, m.conversation_id, m.role, m.content, m.content_hash, m.importance,
                  m.embed_claimed_at
    )
    SELECT c.*, w.waiting
    FROM (SELECT count(*) AS waiting FROM (SELECT 1 FROM message WHERE {_CLAIMABLE} LIMIT :n + 1) x) w
    LEFT JOIN claimed c ON true
    """
)
_VECTORS = """
    INSERT INTO message_embedding (message_id, user_id, conversation_id, chunk, embedding)
    SELECT v.message_id, v.user_id, v.conversation_id, v.chunk, CAST(v.embedding AS vector)
    FROM unnest(CAST(:owners AS bigint[]), CAST(:users AS bigint[]), CAST(:conversations AS bigint[]),
                CAST(:chunks AS int[]), CAST(:vectors AS text[]))
        AS v(message_id, user_id, conversation_id, chunk, embedding)
    JOIN {written} w ON w.id = v.message_id
"""
# A batch's whole write in one autocommit statement (it took BEGIN, mark done, INSERT vectors, annotate,
# COMMIT): rows that still hold this claim and the content embedded are marked done with their
# annotation (imports and replies come without one), a re-embed's old vectors are dropped, the new ones
# inserted, and rows that lost their claim meanwhile are released. One statement is one transaction.
_WRITE = text(
    f"""
    WITH done AS (
        UPDATE message m SET embedded = true, embed_claimed_at = NULL,
            importance = CASE WHEN a.id IS NULL THEN m.importance ELSE a.importance END,
            emotion_label = CASE WHEN a.id IS NULL THEN m.emotion_label ELSE a.emotion_label END,
            emotion_confidence =
                CASE WHEN a.id IS NULL THEN m.emotion_confidence ELSE a.emotion_confidence END,
            emotion_scores = CASE WHEN a.id IS NULL THEN m.emotion_scores ELSE a.emotion_scores END
        FROM unnest(CAST(:ids AS bigint[]), CAST(:claims AS timestamptz[]), CAST(:hashes AS text[]))
            AS c(id, claimed, hash)
        LEFT JOIN jsonb_to_recordset(CAST(:annotations AS jsonb))
            AS a(id bigint, importance float8, emotion_label text, emotion_confidence float8,
                 emotion_scores jsonb) ON a.id = c.id
        WHERE m.id = c.id AND NOT m.embedded AND m.embed_claimed_at = c.claimed AND m.content_hash = c.hash
        RETURNING m.id
    ), replaced AS (
        DELETE FROM message_embedding e USING done WHERE e.message_id = done.id
    ), vectors AS ({_VECTORS.format(written="done")}
    ), released AS (
        UPDATE message SET embed_claimed_at = NULL
        WHERE id = ANY(CAST(:ids AS bigint[])) AND NOT embedded AND id NOT IN (SELECT id FROM done)
    )
    SELECT id FROM done
    """
)
# The request's own vectors, stored with their rows in the store's transaction (one statement).
_TAKE = text(
    f"""
    WITH taken AS (
        UPDATE message SET embedded = true, embed_claimed_at = NULL
        WHERE id = ANY(CAST(:ids AS bigint[])) AND NOT embedded
            AND (importance IS NOT NULL OR NOT :annotating)
        RETURNING id
    ), replaced AS (
        DELETE FROM message_embedding e USING taken WHERE e.message_id = taken.id
    ), vectors AS ({_VECTORS.format(written="taken")}
    )
    SELECT id FROM taken
    """
)
_RELEASE = text("UPDATE message SET embed_claimed_at = NULL WHERE id = ANY(:ids) AND NOT embedded")


async def store_known(
    session: AsyncSession,
    rows: Sequence[StoredMessage],
    known: Mapping[str, Sequence[float]],
    *,
    user_id: int,
    conversation_id: int,
    chunker: Callable[[str], list[str]],
    annotating: bool = False,
) -> set[int]:
    """Store the vectors the request already computed with the rows whose text they embed, in the
    caller's transaction; returns the ids embedded here. A vector counts only where the worker would
    embed exactly that text (one chunk: the text itself); rows already embedded keep theirs, and so
    do rows the worker still has to annotate (`annotating`: it annotates rows stored without importance)."""
    fits = {r.id: known[r.content] for r in rows if r.content in known and chunker(r.content) == [r.content]}
    if not fits:
        return set()
    owners = list(fits)
    params = {"ids": owners, "annotating": annotating, "owners": owners, "chunks": [0] * len(owners)}
    params |= {"users": [user_id] * len(owners), "conversations": [conversation_id] * len(owners)}
    params["vectors"] = [vector_text(fits[i]) for i in owners]
    return {int(i) for i in await session.scalars(_TAKE, params)}  # old vectors went with the UPDATE


def vector_text(vector: Sequence[float]) -> str:
    """pgvector's text form of a vector, as its own adapter writes it (`str` of each float: exact)."""
    return f"[{','.join([str(float(v)) for v in vector])}]"


class EmbeddingWorker:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        embedder: Embedder,
        *,
        chunker: Callable[[str], list[str]],
        batch: int = 64,
        idle_s: float = 30.0,
        annotate: Annotate | None = None,
    ) -> None:
        self._sessions, self._embedder, self._chunk = sessions, embedder, chunker
        self._batch, self._idle_s, self._annotate = batch, idle_s, annotate
        self._claims = autocommit(sessions)  # a claim is one UPDATE: no BEGIN and COMMIT round trips
        self.wake = asyncio.Event()  # set when this process stores messages to embed
        self._backlog = asyncio.Event()  # set while full batches are claimed: the second loop joins in
        self._encoder = asyncio.Lock()  # one batch encodes at a time; the other loop does its database work
        self.failures = 0
        self.skipped = False  # the last claim left locked rows behind: look again after SKIPPED_RETRY_S

    async def step(self) -> int:
        """Claim, embed and write one batch; returns how many messages it claimed. `skipped` says
        whether claimable rows were left behind because another transaction held them locked."""
        async with self._claims() as session:
            found = (await session.execute(_CLAIM, {"n": self._batch, "lease": CLAIM_LEASE_S})).all()
        rows = [r for r in found if r.id is not None]
        self.skipped = len(rows) < self._batch and bool(found) and found[0].waiting > len(rows)
        if not rows:
            return 0
        try:
            await self._embed_and_write(rows)
        except BaseException:
            with contextlib.suppress(Exception):  # let another try have them now, not after the lease
                async with self._sessions.begin() as session:
                    await session.execute(_RELEASE, {"ids": [r.id for r in rows]})
            raise
        return len(rows)

    async def _embed_and_write(self, rows: Sequence[Any]) -> None:
        texts: list[str] = []
        owners: list[tuple[int, int, int, int]] = []  # message, user, conversation, chunk
        for row in rows:
            for i, chunk in enumerate(self._chunk(row.content) or [""]):
                texts.append(chunk)
                owners.append((row.id, row.user_id, row.conversation_id, i))
        # imports and replies are stored without the emotion step: importance (and emotion) come here
        missing = [r for r in rows if r.importance is None] if self._annotate is not None else []
        annotations: list[Annotation] = []
        async with self._encoder:
            vectors = await self._embedder.embed(texts)  # one encoder pass per chunk, batched
            if self._annotate is not None and missing:
                annotations = await self._annotate([(r.role, r.content) for r in missing])
        annotated = [{"id": r.id} | a.columns() for r, a in zip(missing, annotations, strict=True)]
        params = {
            "ids": [r.id for r in rows],
            "claims": [r.embed_claimed_at for r in rows],
            "hashes": [r.content_hash for r in rows],
            "annotations": json.dumps(annotated),
            "owners": [m for m, _, _, _ in owners],
            "users": [u for _, u, _, _ in owners],
            "conversations": [c for _, _, c, _ in owners],
            "chunks": [i for _, _, _, i in owners],
            "vectors": [vector_text(v) for v in vectors],
        }
        async with self._claims() as session:  # one statement: its own transaction
            await session.execute(_WRITE, params)

    async def run(self) -> None:
        """Until cancelled: two loops, so one batch's claim and write overlap the next one's encoding.
        The first wakes when this process stores messages (or after `idle_s`, for what no wake
        announced: another process's leftovers, an expired claim, a failed batch); the second joins it
        only while full batches are claimed, so a turn's one or two messages cost one claim, not an
        empty second one."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._loop(self.wake, self._idle_s))
            group.create_task(self._loop(self._backlog, None))

    async def _loop(self, woken: asyncio.Event, idle_s: float | None) -> None:
        """Claim batches while they come back full, then sleep until `woken` is set (or `idle_s`)."""
        while True:
            woken.clear()  # before the claim: a store committed during this batch wakes the next
            try:
                claimed = await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be restarting: back off, never die
                self.failures += 1
                log.warning("embedding batch failed: %s", exc)
                claimed = 0
            if claimed >= self._batch:
                self._backlog.set()
                continue
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that lands as the
            # event fires, and this loop would then never stop (seen as a hung shutdown).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SKIPPED_RETRY_S if self.skipped else idle_s):
                    await woken.wait()

    async def drain(self) -> None:
        """Embed everything pending now (tests, imports), with the same overlap as `run`."""

        async def loop() -> None:
            while await self.step():
                pass

        await asyncio.gather(loop(), loop())
