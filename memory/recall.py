"""Hybrid recall: pgvector similarity and BM25 full text, fused by weighted reciprocal rank.

Dense and lexical retrieval find different evidence, so both run and their ranks are fused; the
weights were chosen on bench/recall_quality.py (long two-speaker chats, see docs/benchmarks.md). The
lexical leg (memory/lexical.py) weighs terms by IDF, so names and common words do not dominate. A
message whose speaker the query names gets a small boost (who said it matters for "What did Dave ...?").
The best hits can bring their neighbouring turns (the answer to a question is often the next turn).
Scope is this chat's branch (an exact scan over its rows), chats with this persona, or all of the
user's chats (HNSW with pgvector's iterative scan so the user filter does not starve the result).
The query's embedding may still be running (in a thread) when recall starts: the wider scopes' lexical
leg, which does not need it, then runs meanwhile as a statement of its own. The statements' SQL is
memory/recall_sql.py's; this module chooses which one runs and ranks what it returns.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from memory import lexical, recall_sql
from memory.lexical import BM25
from memory.types import Memory

Scope = Literal["branch", "persona", "user"]
Boost = Callable[[Memory], float]
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
# a name used to address someone ("Aria, do you remember...", "..., Aria?") says who is asked, not
# whose words are wanted: the speaker rule ignores it
_VOCATIVE = re.compile(
    r"^\W*(?:(?:hey|hi|hello|dear|oh)\s+)?[^\W\d_]+(?:\s+[^\W\d_]+)?\s*[,!]|,\s*[^\W\d_]+\s*[.!?]*\s*$",
    re.IGNORECASE,
)


def needs_transaction(scope: Scope) -> bool:
    """Whether recall in `scope` must run in a transaction: the wider scopes' `set_config` holds for
    the transaction only. The branch scope's reads need none (issue 15: BEGIN and ROLLBACK are two of
    a turn's round trips)."""
    return scope != "branch"


@dataclass(frozen=True, slots=True)
class RecallQuery:
    user_id: int
    text: str
    embedding: Sequence[float] | Awaitable[Sequence[float] | None] | None  # may still be computed
    scope: Scope
    anchor_id: int | None
    persona_id: int | None = None
    character: str | None = None
    end_user: str = ""
    exclude: Sequence[int] = ()
    k: int = 40


@dataclass(frozen=True, slots=True)
class Fusion:
    """Weighted reciprocal-rank fusion of the two legs, plus the speaker and neighbour rules.

    Chosen on bench/recall_quality.py (docs/benchmarks.md has every variant tried): dense 2 : BM25 1
    with the speaker rule found the most evidence in the top 10; the speaker rule is worth +28 points
    of Recall@10 there (questions name whose fact they ask about, and both speakers share words);
    neighbours and a lower similarity floor changed nothing measurable, so they are off."""

    vector_weight: float = 2.0
    text_weight: float = 1.0
    rrf_k: int = 60
    min_similarity: float = 0.1
    speaker_boost: float = 1.0  # added, in units of 1/rrf_k (a first rank), when the query names the speaker
    neighbours: int = 0  # the best this many hits bring their previous and next turns
    neighbour_factor: float = 0.5  # a neighbour's score: its hit's score times this
    bm25: BM25 = field(default_factory=BM25)


def _params(query: RecallQuery) -> dict[str, Any]:
    n = max(query.k + 10, 30)  # per leg: fusion reorders, the cut to k keeps the best
    return {
        "user": query.user_id,
        "anchor": query.anchor_id,
        "persona": query.persona_id,
        "character": query.character,
        "end_user": query.end_user,
        "exclude": list(query.exclude),
        "n": n,
        "vec_pool": max(recall_sql.HNSW_EF_SEARCH, n),  # beyond ef_search, pgvector's iterative scan goes on
    }


async def _lexical_params(
    session: AsyncSession, query: RecallQuery, bm25: BM25, params: dict[str, Any], settings: str
) -> dict[str, Any] | None:
    """The lexical leg's parameters (None: no term to match). Wider scopes read the statistics first,
    in one statement that also applies `settings`."""
    if query.scope == "branch":
        return lexical.branch_params(query.text, bm25)
    if lexical.ts_query(query.text) is None:
        return None
    return await lexical.wide_params(session, query.text, params, bm25, settings)


async def text_leg(session: AsyncSession, query: RecallQuery, bm25: BM25) -> list[tuple[int, float]]:
    """(message id, BM25) of the messages sharing words with the query, best first (for tests, benches)."""
    params = _params(query)
    found = await _lexical_params(session, query, bm25, params, "")
    if found is None or (query.scope == "branch" and query.anchor_id is None):
        return []
    statement = recall_sql.statement(query.scope, vector=False, lexical_leg=True, fused=False)
    return [(r.id, r.score) for r in (await session.execute(statement, params | found)).all()]


async def _candidates(session: AsyncSession, query: RecallQuery, fusion: Fusion) -> list[Memory]:
    """Both legs, fused by weighted reciprocal rank, with the messages' details: one statement in branch
    scope; the wider scopes read the question's BM25 terms first. While the query's embedding is still
    computed (in a thread: ~5 ms of a recall) they run their lexical leg too, then fuse its ids with the
    vector leg (an extra statement: with the vector already there, the lexical leg stays in the fused one)."""
    params = _params(query) | {"rrf_k": fusion.rrf_k, "text_weight": fusion.text_weight}
    wide = query.scope != "branch"
    found, settings = None, recall_sql.HNSW_SETTINGS if wide else ""
    if fusion.text_weight > 0:
        found = await _lexical_params(session, query, fusion.bm25, params, settings)
        if lexical.ts_query(query.text) is not None:
            settings = ""  # the wider scopes' statistics statement applied them
    params |= found or {}
    split = wide and found is not None and _pending(query.embedding)
    if split:
        lex = recall_sql.statement(query.scope, vector=False, lexical_leg=True, fused=False)
        params["lex_ids"] = [r.id for r in await session.execute(lex, params)]
    embedding = await query.embedding if isinstance(query.embedding, Awaitable) else query.embedding
    vector = fusion.vector_weight > 0 and embedding is not None
    if vector:
        params |= {
            "q": "[" + ",".join(map("{:.6f}".format, embedding or ())) + "]",
            "min_similarity": fusion.min_similarity,
            "vector_weight": fusion.vector_weight,
        }
        if settings:
            await session.execute(text("SELECT " + settings))
    elif found is None:
        return []
    statement = recall_sql.statement(query.scope, vector=vector, lexical_leg=found is not None, given=split)
    rows = (await session.execute(statement, params)).all()
    return [recall_sql.memory_of(r, r[-1]) for r in rows]  # the score comes last


def _pending(embedding: object) -> bool:
    """Whether the query's vector is still being computed (a finished future's is there)."""
    done = isinstance(embedding, asyncio.Future) and embedding.done()
    return isinstance(embedding, Awaitable) and not done


def fuse(legs: Sequence[tuple[float, Sequence[tuple[int, float]]]], rrf_k: int) -> dict[int, float]:
    """Weighted reciprocal-rank fusion, as recall's statement does it: each leg adds weight / (rrf_k + rank)
    (the benches replay it on their own legs)."""
    scores: dict[int, float] = {}
    for weight, hits in legs:
        if weight <= 0:
            continue
        for rank, (message_id, _) in enumerate(hits):
            scores[message_id] = scores.get(message_id, 0.0) + weight / (rrf_k + rank + 1)
    return scores


async def recall(
    session: AsyncSession,
    query: RecallQuery,
    fusion: Fusion,
    boost: Boost | Awaitable[Boost | None] | None = None,
) -> list[Memory]:
    """Up to `k` memories for `query`, best first (neighbouring turns included where configured).

    `boost` may still be pending (the emotion step runs while these queries do): it is awaited only
    once the candidates are fetched, and applied to all of them before the cut to `k`.
    """
    if query.k <= 0 or (query.scope == "branch" and query.anchor_id is None):
        return []
    memories = await _candidates(session, query, fusion)
    if not memories:
        return []
    if inspect.isawaitable(boost):
        boost = await boost
    named = {w.lower() for w in _WORD.findall(_VOCATIVE.sub(" ", query.text))}
    rescored = []
    for m in memories:
        extra = boost(m) if boost is not None else 0.0  # the emotion step's hook
        if fusion.speaker_boost and _names_speaker(m.name, named):
            extra += fusion.speaker_boost / fusion.rrf_k
        rescored.append(replace(m, score=m.score + extra) if extra else m)
    rescored.sort(key=lambda m: (m.score, m.created_at, m.message_id), reverse=True)  # recency breaks ties
    best = rescored[: query.k]
    if fusion.neighbours > 0:
        best = await _with_neighbours(session, query, fusion, best)
    return best


def _names_speaker(name: str | None, words: set[str]) -> bool:
    """The query names this speaker: every word of their name is one of its words."""
    parts = [w.lower() for w in _WORD.findall(name or "")]
    return bool(parts) and all(p in words for p in parts)


async def _details(session: AsyncSession, user_id: int, scores: dict[int, float]) -> list[Memory]:
    rows = (await session.execute(recall_sql.DETAILS, {"ids": list(scores), "user": user_id})).all()
    return [recall_sql.memory_of(r, scores[r.id]) for r in rows]


async def _with_neighbours(
    session: AsyncSession, query: RecallQuery, fusion: Fusion, best: list[Memory]
) -> list[Memory]:
    """The previous and next turn of each of the best hits, scored just below it (the cut to `k`
    keeps the best; excluded and already-chosen messages are not added twice)."""
    top = best[: fusion.neighbours]
    have = {m.message_id for m in best} | set(query.exclude)
    children = (
        await session.execute(
            recall_sql.CHILDREN, {"ids": [m.message_id for m in top], "user": query.user_id}
        )
    ).all()
    next_of = {r.parent_id: r.id for r in children}
    wanted: dict[int, float] = {}
    for m in top:
        for neighbour in (m.parent_id, next_of.get(m.message_id)):
            if neighbour is not None and neighbour not in have and neighbour not in wanted:
                wanted[neighbour] = m.score * fusion.neighbour_factor
    if not wanted:
        return best
    added = await _details(session, query.user_id, wanted)
    merged = sorted([*best, *added], key=lambda m: (m.score, m.created_at, m.message_id), reverse=True)
    return merged[: query.k]
