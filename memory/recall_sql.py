"""Recall's SQL: the branch walk, the vector leg, the rank fusion and the candidates' details, as text
built once per shape (the lexical leg's CTEs are memory/lexical.py's). memory/recall.py decides which
shape a recall runs, with which parameters, and what it does with the rows.
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import TextClause, text

from memory import lexical
from memory.lexical import SCOPE_FILTER
from memory.types import Memory

HNSW_EF_SEARCH = 40  # pgvector's default hnsw.ef_search

# the branch, walked once for both legs (with what BM25 needs)
_DOCS = """
    docs AS (
        SELECT id, parent_id, search, token_count, name FROM message WHERE id = :anchor AND user_id = :user
        UNION ALL
        SELECT m.id, m.parent_id, m.search, m.token_count, m.name
        FROM message m JOIN docs b ON m.id = b.parent_id
    )
"""
# pgvector's iterative scan for the wider scopes' HNSW scan (the user filter must not starve the
# pool), applied for the transaction by the statement before the main one. Raising ef_search to the
# pool instead (one pass) cost as much and found less: bench/recall_quality.py's user scope lost
# 1.7 points of Recall@10, so ef_search stays pgvector's default.
HNSW_SETTINGS = "set_config('hnsw.iterative_scan', 'relaxed_order', true) AS iterative"

_FUSED = """
    , fused AS (SELECT id, sum(score) AS score FROM ({legs}) legs GROUP BY id)
    SELECT m.id, c.public_id, m.role, m.name, m.content, m.created_at, m.metadata,
           m.emotion_label, m.importance, m.token_count, m.parent_id, f.score
    FROM fused f JOIN message m ON m.id = f.id JOIN conversation c ON c.id = m.conversation_id
    WHERE m.user_id = :user
"""
# the wider scopes' lexical leg, run before the query's vector was needed: its ids, best first
_LEX_GIVEN = "lex AS (SELECT id, rank FROM unnest(CAST(:lex_ids AS bigint[])) WITH ORDINALITY AS l(id, rank))"
_VECTOR_RANK = "SELECT id, CAST(:vector_weight AS float8) / (:rrf_k + rank) AS score FROM vec"
_TEXT_RANK = "SELECT id, CAST(:text_weight AS float8) / (:rrf_k + rank) AS score FROM lex"

DETAILS = text(
    """
    SELECT m.id, c.public_id, m.role, m.name, m.content, m.created_at, m.metadata,
           m.emotion_label, m.importance, m.token_count, m.parent_id
    FROM message m JOIN conversation c ON c.id = m.conversation_id
    WHERE m.id = ANY(:ids) AND m.user_id = :user
    """
)
# each message's first child: the turn after a hit (its neighbour below)
CHILDREN = text(
    """
    SELECT DISTINCT ON (m.parent_id) m.parent_id, m.id FROM message m
    WHERE m.parent_id = ANY(:ids) AND m.user_id = :user ORDER BY m.parent_id, m.id
    """
)


def _vector_cte(scope: str) -> str:
    """Branch: an exact scan over the branch's rows. Wider scopes: an HNSW-ordered pool of candidates
    first (the ORDER BY must be the bare distance for the index to serve it), then scope filters and
    one row per message (long messages have several chunks); ranked, the nearest first."""
    if scope == "branch":  # OFFSET 0: distances before grouping (sorting the vectors themselves cost 10 ms)
        nearest = """
            SELECT id, min(distance) AS distance FROM (
                SELECT e.message_id AS id, e.embedding <=> q.v AS distance
                FROM message_embedding e JOIN docs d ON d.id = e.message_id, probe q
                WHERE e.user_id = :user AND NOT (e.message_id = ANY(:exclude)) OFFSET 0
            ) chunks GROUP BY id ORDER BY distance, id DESC LIMIT :n
        """
    else:
        nearest = f"""
            SELECT hits.id, min(hits.distance) AS distance FROM (
                SELECT e.message_id AS id, e.conversation_id, e.embedding <=> q.v AS distance
                FROM message_embedding e, probe q WHERE e.user_id = :user
                ORDER BY e.embedding <=> (SELECT v FROM probe) LIMIT :vec_pool
            ) hits JOIN conversation c ON c.id = hits.conversation_id
            WHERE c.end_user = :end_user AND {SCOPE_FILTER[scope]} AND NOT (hits.id = ANY(:exclude))
            GROUP BY hits.id ORDER BY distance, hits.id DESC LIMIT :n
        """
    return f"""
    probe AS MATERIALIZED (SELECT CAST(:q AS vector) AS v),  -- once: memory/lexical.py on generic plans
    vec AS (
        SELECT id, row_number() OVER (ORDER BY distance, id DESC) AS rank
        FROM ({nearest}) nearest WHERE 1 - distance >= :min_similarity
    )"""


@functools.cache
def statement(
    scope: str, *, vector: bool, lexical_leg: bool, fused: bool = True, given: bool = False
) -> TextClause:
    """Recall's statement with the legs asked for (the branch walk shared by both): the fused candidates
    with their details, or (not `fused`) the lexical leg's ids and scores, best first. `given`: the
    lexical leg's ids are a parameter, found by a statement before (`_LEX_GIVEN`)."""
    parts = [_DOCS] if scope == "branch" else []
    if vector:
        parts.append(_vector_cte(scope))
    if lexical_leg and given:
        parts.append(_LEX_GIVEN)
    elif lexical_leg:
        parts += [lexical.BRANCH_CTES if scope == "branch" else lexical.wide_ctes(scope), lexical.LEX_CTE]
    legs = [leg for leg, on in ((_VECTOR_RANK, vector), (_TEXT_RANK, lexical_leg)) if on]
    select = (
        _FUSED.format(legs=" UNION ALL ".join(legs)) if fused else " SELECT id, score FROM lex ORDER BY rank"
    )
    return text("WITH RECURSIVE " + ",".join(parts) + select)


def memory_of(r: Any, score: float) -> Memory:
    """A row of the fused statement or `DETAILS` (their columns in `Memory`'s order, the score aside) as
    a memory, read by position: a row's attributes by name cost ~10 µs a row, 1 ms of a recall's ~100
    candidates."""
    message_id, public_id, role, name, content, created, meta, emotion, importance, tokens, parent = r[:11]
    return Memory(
        message_id, public_id, role, name, content, score, created, meta, emotion, importance, tokens, parent
    )
