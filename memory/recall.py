"""Hybrid recall: pgvector similarity and Postgres full-text rank, fused by weighted reciprocal rank.

Dense and lexical retrieval find different evidence (on a public long-conversation benchmark their
merged top-10s held far more than either), so both run and their ranks are fused. Scope is this
chat's branch (an exact scan over its few hundred rows), chats with this persona, or all of the
user's chats (HNSW with pgvector's iterative scan so the user filter does not starve the result).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from memory.models import TEXT_SEARCH_CONFIG
from memory.types import Memory

Scope = Literal["branch", "persona", "user"]
Boost = Callable[[Memory], float]
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
HNSW_EF_SEARCH = 40  # pgvector's default hnsw.ef_search
TEXT_POOL = 500  # newest full-text matches ranked in the wider scopes

_BRANCH = """
    WITH RECURSIVE branch AS (
        SELECT id, parent_id FROM message WHERE id = :anchor AND user_id = :user
        UNION ALL
        SELECT m.id, m.parent_id FROM message m JOIN branch b ON m.id = b.parent_id
    )
"""
_CONVERSATION_FILTER = {
    "persona": "(c.persona_id = :persona"
    " OR (:persona IS NULL AND c.character IS NOT DISTINCT FROM :character))",
    "user": "TRUE",
}


@dataclass(frozen=True, slots=True)
class RecallQuery:
    user_id: int
    text: str
    embedding: Sequence[float] | None
    scope: Scope
    anchor_id: int | None
    persona_id: int | None = None
    character: str | None = None
    end_user: str = ""
    exclude: Sequence[int] = ()
    k: int = 8


@dataclass(frozen=True, slots=True)
class Fusion:
    """Weighted reciprocal-rank fusion; 2:1 for dense won Recall@1 on bench/memory_quality.py."""

    vector_weight: float = 2.0
    text_weight: float = 1.0
    rrf_k: int = 60
    min_similarity: float = 0.2


def ts_query(query: str) -> str | None:
    """An OR-query of the words (an AND of every word of a sentence would rarely match)."""
    words = sorted({w.lower() for w in _WORD.findall(query) if len(w) > 1})
    return " | ".join(words[:32]) or None


def _vector_sql(scope: Scope) -> str:
    """Branch: an exact scan over the branch's rows. Wider scopes: an HNSW-ordered pool of candidates
    first (the ORDER BY must be the bare distance for the index to serve it), then scope filters and
    one row per message (long messages have several chunks)."""
    if scope == "branch":
        return f"""{_BRANCH}
            SELECT e.message_id AS id, min(e.embedding <=> CAST(:q AS vector)) AS distance
            FROM message_embedding e JOIN branch b ON b.id = e.message_id
            WHERE e.user_id = :user AND NOT (e.message_id = ANY(:exclude))
            GROUP BY e.message_id ORDER BY distance LIMIT :n
        """
    conversation_filter = _CONVERSATION_FILTER[scope]
    return f"""
        SELECT hits.id, min(hits.distance) AS distance FROM (
            SELECT e.message_id AS id, e.conversation_id, e.embedding <=> CAST(:q AS vector) AS distance
            FROM message_embedding e WHERE e.user_id = :user
            ORDER BY e.embedding <=> CAST(:q AS vector) LIMIT :pool
        ) hits JOIN conversation c ON c.id = hits.conversation_id
        WHERE c.end_user = :end_user AND {conversation_filter} AND NOT (hits.id = ANY(:exclude))
        GROUP BY hits.id ORDER BY distance LIMIT :n
    """


def _text_sql(scope: Scope) -> str:
    """Full-text rank. Wider scopes rank only the newest `:text_pool` matches: a common word can match
    most of a user's rows, and ranking them all costs far more than the deadline (143 ms at 100k)."""
    tsquery = f"to_tsquery('{TEXT_SEARCH_CONFIG}', :tsq)"
    if scope == "branch":
        return f"""{_BRANCH}
            SELECT m.id, ts_rank_cd(m.search, q) AS rank
            FROM message m JOIN branch b ON b.id = m.id, {tsquery} q
            WHERE m.user_id = :user AND m.search @@ q AND NOT (m.id = ANY(:exclude))
            ORDER BY rank DESC, m.id DESC LIMIT :n
        """
    return f"""
        SELECT m.id, ts_rank_cd(m.search, {tsquery}) AS rank FROM (
            SELECT m.id, m.search, m.conversation_id FROM message m
            WHERE m.user_id = :user AND m.search @@ {tsquery}
            ORDER BY m.id DESC LIMIT :text_pool
        ) m JOIN conversation c ON c.id = m.conversation_id
        WHERE c.end_user = :end_user AND {_CONVERSATION_FILTER[scope]} AND NOT (m.id = ANY(:exclude))
        ORDER BY rank DESC, m.id DESC LIMIT :n
    """


_DETAILS = text(
    """
    SELECT m.id, c.public_id, m.role, m.name, m.content, m.created_at, m.metadata,
           m.emotion_label, m.importance
    FROM message m JOIN conversation c ON c.id = m.conversation_id
    WHERE m.id = ANY(:ids) AND m.user_id = :user
    """
)


async def recall(
    session: AsyncSession,
    query: RecallQuery,
    fusion: Fusion,
    boost: Boost | Awaitable[Boost | None] | None = None,
) -> list[Memory]:
    """The `k` best memories for `query`, best first.

    `boost` may still be pending (the emotion step runs while these queries do): it is awaited only
    once the candidates are fetched, and applied to all of them before the cut to `k`.
    """
    if query.k <= 0 or (query.scope == "branch" and query.anchor_id is None):
        return []
    params = {
        "user": query.user_id,
        "anchor": query.anchor_id,
        "persona": query.persona_id,
        "character": query.character,
        "end_user": query.end_user,
        "exclude": list(query.exclude),
        "n": query.k * 4,
        "pool": max(HNSW_EF_SEARCH, query.k * 5),  # beyond ef_search, pgvector scans the graph again
        "text_pool": TEXT_POOL,
    }
    scores: dict[int, float] = {}
    if query.embedding is not None and fusion.vector_weight > 0:
        if query.scope != "branch":
            await session.execute(text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
        vector = "[" + ",".join(f"{x:.6f}" for x in query.embedding) + "]"
        rows = (await session.execute(text(_vector_sql(query.scope)), params | {"q": vector})).all()
        hits = [r.id for r in rows if 1 - r.distance >= fusion.min_similarity]
        for rank, message_id in enumerate(hits):
            scores[message_id] = scores.get(message_id, 0.0) + fusion.vector_weight / (
                fusion.rrf_k + rank + 1
            )
    tsq = ts_query(query.text)
    if tsq is not None and fusion.text_weight > 0:
        rows = (await session.execute(text(_text_sql(query.scope)), params | {"tsq": tsq})).all()
        for rank, row in enumerate(rows):
            scores[row.id] = scores.get(row.id, 0.0) + fusion.text_weight / (fusion.rrf_k + rank + 1)
    if not scores:
        return []
    return await _ranked(session, query, scores, boost)


async def _ranked(
    session: AsyncSession,
    query: RecallQuery,
    scores: dict[int, float],
    boost: Boost | Awaitable[Boost | None] | None,
) -> list[Memory]:
    rows = (await session.execute(_DETAILS, {"ids": list(scores), "user": query.user_id})).all()
    memories = [
        Memory(
            message_id=r.id,
            conversation_id=r.public_id,
            role=r.role,
            name=r.name,
            content=r.content,
            score=scores[r.id],
            created_at=r.created_at,
            metadata=r.metadata,
            emotion_label=r.emotion_label,
            importance=r.importance,
        )
        for r in rows
    ]
    if inspect.isawaitable(boost):
        boost = await boost
    if boost is not None:  # the emotion step's hook: same feeling, weighted by importance
        memories = [_rescored(m, m.score + boost(m)) for m in memories]
    memories.sort(key=lambda m: (m.score, m.created_at, m.message_id), reverse=True)  # recency breaks ties
    return memories[: query.k]


def _rescored(memory: Memory, score: float) -> Memory:
    return replace(memory, score=score)
