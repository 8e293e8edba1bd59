"""Hybrid recall: pgvector similarity and Postgres full-text rank, fused by weighted reciprocal rank.

Dense and lexical retrieval find different evidence (on a public long-conversation benchmark their
merged top-10s held far more than either), so both run and their ranks are fused. Scope is this
chat's branch (an exact scan over its few hundred rows), chats with this persona, or all of the
user's chats (HNSW with pgvector's iterative scan so the user filter does not starve the result).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from memory.models import TEXT_SEARCH_CONFIG
from memory.types import Memory

Scope = Literal["branch", "persona", "user"]
Boost = Callable[[Memory], float]
_WORD = re.compile(r"[^\W_]+", re.UNICODE)

_BRANCH = """
    WITH RECURSIVE branch AS (
        SELECT id, parent_id FROM message WHERE id = :anchor AND user_id = :user
        UNION ALL
        SELECT m.id, m.parent_id FROM message m JOIN branch b ON m.id = b.parent_id
    )
"""
_SCOPE_FILTER = {
    "branch": "m.id IN (SELECT id FROM branch)",
    "persona": "m.conversation_id IN (SELECT id FROM conversation WHERE user_id = :user AND "
    "(persona_id = :persona OR (:persona IS NULL AND character IS NOT DISTINCT FROM :character)))",
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
    vector_weight: float = 1.0
    text_weight: float = 1.0
    rrf_k: int = 60
    min_similarity: float = 0.2


def ts_query(query: str) -> str | None:
    """An OR-query of the words (an AND of every word of a sentence would rarely match)."""
    words = sorted({w.lower() for w in _WORD.findall(query) if len(w) > 1})
    return " | ".join(words[:32]) or None


def _vector_sql(scope: Scope) -> str:
    prefix = _BRANCH if scope == "branch" else ""
    return f"""{prefix}
        SELECT e.message_id AS id, min(e.embedding <=> CAST(:q AS vector)) AS distance
        FROM message_embedding e JOIN message m ON m.id = e.message_id
        JOIN conversation c ON c.id = m.conversation_id
        WHERE e.user_id = :user AND c.end_user = :end_user AND {_SCOPE_FILTER[scope]}
          AND NOT (e.message_id = ANY(:exclude))
        GROUP BY e.message_id ORDER BY distance LIMIT :n
    """


def _text_sql(scope: Scope) -> str:
    prefix = _BRANCH if scope == "branch" else ""
    return f"""{prefix}
        SELECT m.id, ts_rank_cd(m.search, q) AS rank
        FROM message m JOIN conversation c ON c.id = m.conversation_id,
             to_tsquery('{TEXT_SEARCH_CONFIG}', :tsq) q
        WHERE m.user_id = :user AND c.end_user = :end_user AND m.search @@ q AND {_SCOPE_FILTER[scope]}
          AND NOT (m.id = ANY(:exclude))
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
    session: AsyncSession, query: RecallQuery, fusion: Fusion, boost: Boost | None = None
) -> list[Memory]:
    """The `k` best memories for `query`, best first."""
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
    session: AsyncSession, query: RecallQuery, scores: dict[int, float], boost: Boost | None
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
    if boost is not None:  # the emotion step's hook: same feeling, weighted by importance
        memories = [_rescored(m, m.score + boost(m)) for m in memories]
    memories.sort(key=lambda m: (m.score, m.created_at, m.message_id), reverse=True)  # recency breaks ties
    return memories[: query.k]


def _rescored(memory: Memory, score: float) -> Memory:
    return replace(memory, score=score)
