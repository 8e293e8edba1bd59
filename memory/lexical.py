"""The lexical leg of recall: Okapi BM25 over Postgres full text, with IDF measured on the user's own data.

Postgres' `ts_rank_cd` has no inverse document frequency, so a word in every message (a name, "like",
"really") weighs as much as the one rare word that finds the evidence. Here Postgres does the matching
(the `english` configuration stems and drops stop words; speaker names are not indexed) and the BM25
sum, as common table expressions that memory/recall.py puts into its one statement per recall (each
round trip to Postgres costs more than the scoring itself on a busy machine).
Statistics: in branch scope, the whole branch (exact, it is one chat's few thousand rows at most); in
wider scopes the user's newest `sample` messages (a bounded estimate: counting over 100k rows per query
would cost more than the deadline), read by `wide_terms` in the statement before the main one, and very
common terms are left out of the candidate query so the newest-first pool is not filled with messages
that only share a common word.
"""

from __future__ import annotations

import re
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

SCOPE_FILTER = {  # which conversations a wider scope covers (recall's vector leg uses it too)
    "persona": "(c.persona_id = :persona"
    " OR (:persona IS NULL AND c.character IS NOT DISTINCT FROM :character))",
    "user": "TRUE",
}

# branch scope: `docs` (the branch, walked once by recall for both legs) gives the terms' counts too
BRANCH_CTES = f"""
    speakers AS (SELECT coalesce({_NAMES}, '{{}}') AS lexemes FROM (SELECT DISTINCT name FROM docs) d),
    hits AS (
        SELECT d.id, d.token_count AS length, t.lexeme, cardinality(t.positions) AS tf
        FROM docs d, unnest(d.search) t, speakers s
        WHERE d.search @@ {_QUERY} AND t.lexeme = ANY({_LEXEMES}) AND t.lexeme <> ALL(s.lexemes)
    ),
    df AS (SELECT lexeme, count(*)::float8 AS df FROM hits GROUP BY lexeme),
    corpus AS (SELECT count(*)::float8 AS n, coalesce(avg(token_count), 1)::float8 AS avgdl FROM docs)
"""

# wider scopes: the statistics come from `wide_terms` as parameters
WIDE_TERMS = f"""
    WITH sample AS (
        SELECT search, token_count, name FROM message WHERE user_id = :user ORDER BY id DESC LIMIT :sample
    ), speakers AS (
        SELECT coalesce({_NAMES}, '{{}}') AS lexemes FROM (SELECT DISTINCT name FROM sample) d
    ), df AS (
        SELECT t.lexeme, count(*) AS df FROM sample s, unnest(s.search) t
        WHERE s.search @@ {_QUERY} AND t.lexeme = ANY({_LEXEMES}) GROUP BY t.lexeme
    )
    SELECT {_LEXEMES} AS lexemes, (SELECT lexemes FROM speakers) AS speakers,
           (SELECT count(*) FROM sample) AS n, (SELECT avg(token_count) FROM sample) AS avgdl,
           ARRAY(SELECT lexeme FROM df ORDER BY lexeme) AS df_lexemes,
           ARRAY(SELECT df FROM df ORDER BY lexeme) AS df_counts
"""


def wide_ctes(scope: str) -> str:
    """The newest `:bm25_pool` messages in scope matching any of the (rarer) terms, with each term's count."""
    return f"""
    hits AS (
        SELECT p.id, p.token_count AS length, t.lexeme, cardinality(t.positions) AS tf
        FROM (
            SELECT m.id, m.search, m.token_count FROM message m
            JOIN conversation c ON c.id = m.conversation_id
            WHERE m.user_id = :user AND m.search @@ CAST(:rare AS tsquery)
              AND c.end_user = :end_user AND {SCOPE_FILTER[scope]}
            ORDER BY m.id DESC LIMIT :bm25_pool
        ) p, unnest(p.search) t WHERE t.lexeme = ANY(CAST(:lexemes AS text[]))
    ),
    df AS (SELECT * FROM unnest(CAST(:df_lexemes AS text[]), CAST(:df_counts AS float8[])) AS df(lexeme, df)),
    corpus AS (SELECT CAST(:corpus_n AS float8) AS n, CAST(:avgdl AS float8) AS avgdl)
"""


# BM25 of each hit summed over its terms, ranked (ties: the newer first), the excluded left out after
# they counted for the statistics
LEX_CTE = """
    lex AS (
        SELECT id, score, row_number() OVER (ORDER BY score DESC, id DESC) AS rank FROM (
            SELECT h.id, sum(
                ln(1 + (c.n - coalesce(f.df, 0) + 0.5) / (coalesce(f.df, 0) + 0.5)) * h.tf * (:k1 + 1)
                / (h.tf + :k1 * (1 - :b + :b * greatest(h.length, 1) / greatest(c.avgdl, 1)))
            ) AS score
            FROM hits h LEFT JOIN df f ON f.lexeme = h.lexeme, corpus c
            WHERE NOT (h.id = ANY(:exclude))
            GROUP BY h.id ORDER BY score DESC, h.id DESC LIMIT :n
        ) scored
    )
"""


@dataclass(frozen=True, slots=True)
class BM25:
    k1: float = 1.2
    b: float = 0.75
    sample: int = 1000  # wider scopes: IDF measured on the user's newest messages
    pool: int = 400  # wider scopes: newest matching messages scored
    max_df: float = 0.2  # wider scopes: terms in more of the sample than this do not select candidates


def ts_query(query: str) -> str | None:
    """An OR-query of the words, for `to_tsquery` (which stems them and drops stop words)."""
    words = sorted({w.lower() for w in _WORD.findall(query) if len(w) > 1})
    return " | ".join(words[:32]) or None


def tsquery_literal(lexemes: Sequence[str]) -> str:
    """Already-normalised lexemes as tsquery input ('a' | 'b'), quoted so no lexeme is parsed as syntax."""
    quoted = ("'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'" for lexeme in lexemes)
    return " | ".join(quoted)


def branch_params(query: str, bm25: BM25) -> dict[str, Any] | None:
    """What BRANCH_CTES and LEX_CTE need, or None when the query has no word to match."""
    tsq = ts_query(query)
    return None if tsq is None else {"tsq": tsq, "text": query, "k1": float(bm25.k1), "b": float(bm25.b)}


async def wide_params(
    session: AsyncSession, query: str, params: dict[str, Any], bm25: BM25, settings: str = ""
) -> dict[str, Any] | None:
    """The statistics `wide_ctes` needs, measured on the user's newest messages (one statement, which
    also applies `settings`, recall's `set_config` calls for the vector leg), or None with no term."""
    tsq = ts_query(query)
    if tsq is None:
        return None
    sql = WIDE_TERMS + (f", {settings}" if settings else "")
    row = (
        await session.execute(text(sql), params | {"tsq": tsq, "text": query, "sample": bm25.sample})
    ).one()
    speakers = set(row.speakers or ())
    lexemes = [x for x in row.lexemes or () if x not in speakers and len(x) > 1][:32]
    if not lexemes:
        return None
    df = dict(zip(row.df_lexemes, row.df_counts, strict=True))
    n = int(row.n) or bm25.sample
    rare = [x for x in lexemes if df.get(x, 0) <= bm25.max_df * n] or lexemes
    return {
        "rare": tsquery_literal(rare),
        "lexemes": lexemes,
        "df_lexemes": list(df),
        "df_counts": [float(c) for c in df.values()],
        "corpus_n": float(n),
        "avgdl": float(row.avgdl or 1.0),
        "bm25_pool": bm25.pool,
        "k1": float(bm25.k1),
        "b": float(bm25.b),
    }
