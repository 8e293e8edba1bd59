"""The lexical leg of recall: Okapi BM25 over Postgres full text, with IDF measured on the user's own data.

Postgres' `ts_rank_cd` has no inverse document frequency, so a word in every message (a name, "like",
"really") weighs as much as the one rare word that finds the evidence. Here Postgres does the matching
(the `english` configuration stems and drops stop words; speaker names are not indexed) and returns,
for each matching message, its length and how often each query term occurs in it; BM25 is summed here.
Statistics: in branch scope, the whole branch (exact, it is one chat's few thousand rows at most); in
wider scopes the user's newest `sample` messages (a bounded estimate: counting over 100k rows per query
would cost more than the deadline), and very common terms are left out of the candidate query so the
newest-first pool is not filled with messages that only share a common word.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from memory.models import TEXT_SEARCH_CONFIG

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_QUERY = f"to_tsquery('{TEXT_SEARCH_CONFIG}', :tsq)"
_LEXEMES = f"tsvector_to_array(to_tsvector('{TEXT_SEARCH_CONFIG}', :text))"
# the speakers' names as lexemes: a question naming a speaker is about who said it (recall's speaker
# rule), not about the messages that address them by name
_NAMES = f"tsvector_to_array(to_tsvector('{TEXT_SEARCH_CONFIG}', string_agg(d.name, ' ')))"

BRANCH_SQL = f"""
    WITH RECURSIVE docs AS (  -- the branch, walked once with what BM25 needs (no second scan)
        SELECT id, parent_id, search, token_count, name FROM message WHERE id = :anchor AND user_id = :user
        UNION ALL
        SELECT m.id, m.parent_id, m.search, m.token_count, m.name
        FROM message m JOIN docs b ON m.id = b.parent_id
    ), speakers AS (
        SELECT coalesce({_NAMES}, '{{}}') AS lexemes FROM (SELECT DISTINCT name FROM docs) d
    )
    SELECT d.id, d.token_count AS length, t.lexeme, cardinality(t.positions) AS tf,
           (SELECT count(*) FROM docs) AS n, (SELECT avg(token_count) FROM docs) AS avgdl
    FROM docs d, unnest(d.search) t, speakers s
    WHERE d.search @@ {_QUERY} AND t.lexeme = ANY({_LEXEMES}) AND t.lexeme <> ALL(s.lexemes)
"""

SAMPLE_SQL = f"""
    WITH sample AS (
        SELECT search, token_count, name FROM message WHERE user_id = :user ORDER BY id DESC LIMIT :sample
    ), speakers AS (
        SELECT coalesce({_NAMES}, '{{}}') AS lexemes FROM (SELECT DISTINCT name FROM sample) d
    )
    SELECT t.lexeme, count(*) AS df,
           (SELECT count(*) FROM sample) AS n, (SELECT avg(token_count) FROM sample) AS avgdl,
           bool_or(t.lexeme = ANY(s.lexemes)) AS speaker, {_LEXEMES} AS lexemes
    FROM sample s0, unnest(s0.search) t, speakers s
    WHERE s0.search @@ {_QUERY} AND t.lexeme = ANY({_LEXEMES})
    GROUP BY t.lexeme
"""

SCOPE_FILTER = {  # which conversations a wider scope covers (recall's vector leg uses it too)
    "persona": "(c.persona_id = :persona"
    " OR (:persona IS NULL AND c.character IS NOT DISTINCT FROM :character))",
    "user": "TRUE",
}


def pool_sql(scope: str) -> str:
    """The newest `:pool` messages in scope matching any of the (rarer) terms, with each term's count."""
    return f"""
        WITH pool AS (
            SELECT m.id, m.search, m.token_count FROM message m
            JOIN conversation c ON c.id = m.conversation_id
            WHERE m.user_id = :user AND m.search @@ CAST(:rare AS tsquery)
              AND c.end_user = :end_user AND {SCOPE_FILTER[scope]}
            ORDER BY m.id DESC LIMIT :pool
        )
        SELECT p.id, p.token_count AS length, t.lexeme, cardinality(t.positions) AS tf
        FROM pool p, unnest(p.search) t WHERE t.lexeme = ANY(CAST(:lexemes AS text[]))
    """


@dataclass(frozen=True, slots=True)
class BM25:
    k1: float = 1.2
    b: float = 0.75
    sample: int = 1000  # wider scopes: IDF measured on the user's newest messages
    pool: int = 400  # wider scopes: newest matching messages scored
    max_df: float = 0.2  # wider scopes: terms in more of the sample than this do not select candidates


@dataclass(frozen=True, slots=True)
class Stats:
    n: int
    avgdl: float
    df: dict[str, int]


def ts_query(query: str) -> str | None:
    """An OR-query of the words, for `to_tsquery` (which stems them and drops stop words)."""
    words = sorted({w.lower() for w in _WORD.findall(query) if len(w) > 1})
    return " | ".join(words[:32]) or None


def tsquery_literal(lexemes: Sequence[str]) -> str:
    """Already-normalised lexemes as tsquery input ('a' | 'b'), quoted so no lexeme is parsed as syntax."""
    quoted = ("'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'" for lexeme in lexemes)
    return " | ".join(quoted)


def idf(stats: Stats, lexeme: str) -> float:
    df = stats.df.get(lexeme, 0)
    return math.log(1 + (stats.n - df + 0.5) / (df + 0.5))


def score(rows: Sequence[Any], stats: Stats, params: BM25) -> dict[int, float]:
    """BM25 of each message in `rows` (id, length, lexeme, tf), summed over the query terms it holds."""
    scores: dict[int, float] = defaultdict(float)
    avgdl = max(stats.avgdl, 1.0)
    for row in rows:
        norm = params.k1 * (1 - params.b + params.b * max(row.length, 1) / avgdl)
        scores[row.id] += idf(stats, row.lexeme) * row.tf * (params.k1 + 1) / (row.tf + norm)
    return dict(scores)


async def search(
    session: AsyncSession,
    *,
    query: str,
    scope: str,
    params: dict[str, Any],
    bm25: BM25,
) -> list[tuple[int, float]]:
    """(message id, BM25 score) of the messages matching `query` in scope, best first."""
    tsq = ts_query(query)
    if tsq is None:
        return []
    if scope == "branch":
        rows = (await session.execute(text(BRANCH_SQL), params | {"tsq": tsq, "text": query})).all()
        if not rows:
            return []
        df: dict[str, int] = defaultdict(int)
        for row in rows:
            df[row.lexeme] += 1
        stats = Stats(n=rows[0].n, avgdl=float(rows[0].avgdl or 1.0), df=dict(df))
    else:
        sample = (
            await session.execute(
                text(SAMPLE_SQL), params | {"tsq": tsq, "text": query, "sample": bm25.sample}
            )
        ).all()
        speakers = {r.lexeme for r in sample if r.speaker}
        found = sample[0].lexemes if sample else await _lexemes(session, query)
        lexemes = [x for x in found if x not in speakers and len(x) > 1][:32]
        if not lexemes:
            return []
        stats = Stats(
            n=sample[0].n if sample else bm25.sample,
            avgdl=float(sample[0].avgdl or 1.0) if sample else 1.0,
            df={r.lexeme: r.df for r in sample},
        )
        rare = [x for x in lexemes if stats.df.get(x, 0) <= bm25.max_df * stats.n] or lexemes
        rows = (
            await session.execute(
                text(pool_sql(scope)),
                params | {"rare": tsquery_literal(rare), "lexemes": lexemes, "pool": bm25.pool},
            )
        ).all()
    scores = score(rows, stats, bm25)
    return sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)


async def _lexemes(session: AsyncSession, query: str) -> list[str]:
    found = await session.scalar(text(f"SELECT {_LEXEMES}"), {"text": query})
    return [x for x in (found or []) if len(x) > 1][:32]
