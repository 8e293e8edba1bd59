"""The lexical leg of recall: Okapi BM25 over Postgres full text, with IDF measured on the user's own data.

Postgres' `ts_rank_cd` has no inverse document frequency, so a word in every message (a name, "like",
"really") weighs as much as the one rare word that finds the evidence. Here Postgres does the matching
(the `english` configuration stems and drops stop words; speaker names are not indexed) and the BM25
sum, as common table expressions that memory/recall_sql.py puts into its one statement per recall (each
round trip to Postgres costs more than the scoring itself on a busy machine).
Statistics: in branch scope, the whole branch (exact, it is one chat's few thousand rows at most); in
wider scopes the user's newest `sample` messages (a bounded estimate: counting over 100k rows per query
would cost more than the deadline), kept per user by `Samples` and refreshed in the background. Very
common terms are left out of the candidate query there, so the newest-first pool is not filled with
messages that only share a common word.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from memory.models import TEXT_SEARCH_CONFIG

log = logging.getLogger(__name__)

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_QUERY = f"to_tsquery('{TEXT_SEARCH_CONFIG}', :tsq)"
_LEXEMES = f"tsvector_to_array(to_tsvector('{TEXT_SEARCH_CONFIG}', :text))"
# the speakers' names as lexemes: a question naming a speaker is about who said it (recall's speaker
# rule), not about the messages that address them by name
_NAMES = f"tsvector_to_array(to_tsvector('{TEXT_SEARCH_CONFIG}', string_agg(d.name, ' ')))"

# Generic plans: psycopg prepares a statement it has run five times on a connection, and after five more runs
# Postgres may switch to a generic plan, which no longer folds expressions of the parameters into
# constants: `to_tsvector(:text)` or `CAST(:q AS vector)` in a WHERE clause is then computed per row
# (recall took 10x longer, ~100 ms, at 100k stored messages). Such values are computed once, in a
# one-row CTE, instead, MATERIALIZED (Postgres inlines a CTE used once), as are the statistics (else
# re-aggregated for each hit). The rare terms' tsquery stays inline: a custom plan sees how rare they are.
SCOPE_FILTER = {  # which conversations a wider scope covers (recall's vector leg uses it too)
    "persona": "(c.persona_id = :persona"
    " OR (:persona IS NULL AND c.character IS NOT DISTINCT FROM :character))",
    "user": "TRUE",
}

# A message's tsvector cut to the query's lexemes (stored vectors are all weight D: marked A, then kept),
# so `unnest` builds a row (with its positions array) for each query term the message has, not for
# each of its words (the same terms and counts): 0.4-0.6 ms less backend CPU per recall on the bench's
# one-line messages, 10.8 -> 3.4 ms for a pool of 400 replies of ~100 lexemes (docs/benchmarks.md).
_ONLY = "ts_filter(setweight({vector}, 'A', q.lexemes), '{{a}}')"

# branch scope: `docs` (the branch, walked once by recall for both legs) gives the terms' counts too
BRANCH_CTES = f"""
    speakers AS MATERIALIZED (
        SELECT coalesce({_NAMES}, '{{}}') AS lexemes FROM (SELECT DISTINCT name FROM docs) d
    ),
    terms AS MATERIALIZED (SELECT {_QUERY} AS tsq, {_LEXEMES} AS lexemes),  -- once (generic plans, above)
    hits AS (
        SELECT d.id, d.token_count AS length, t.lexeme, cardinality(t.positions) AS tf
        FROM docs d, terms q, unnest({_ONLY.format(vector="d.search")}) t, speakers s
        WHERE d.search @@ q.tsq AND t.lexeme <> ALL(s.lexemes)
    ),
    df AS MATERIALIZED (SELECT lexeme, count(*)::float8 AS df FROM hits GROUP BY lexeme),
    corpus AS MATERIALIZED (
        SELECT count(*)::float8 AS n, coalesce(avg(token_count), 1)::float8 AS avgdl FROM docs
    )
"""

# wider scopes: the statistics come from `Samples` as parameters
SAMPLE = text(
    f"""
    WITH sample AS (
        SELECT search, token_count, name FROM message WHERE user_id = :user ORDER BY id DESC LIMIT :sample
    ), df AS (SELECT t.lexeme, count(*) AS df FROM sample s, unnest(s.search) t GROUP BY t.lexeme)
    SELECT (SELECT count(*) FROM sample) AS n, (SELECT avg(token_count) FROM sample) AS avgdl,
           (SELECT coalesce({_NAMES}, '{{}}') FROM (SELECT DISTINCT name FROM sample) d) AS speakers,
           (SELECT coalesce(array_agg(lexeme ORDER BY lexeme), '{{}}') FROM df) AS lexemes,
           (SELECT coalesce(array_agg(df ORDER BY lexeme), '{{}}') FROM df) AS counts
"""
)


def wide_ctes(scope: str) -> str:
    """The newest `:bm25_pool` messages in scope matching any of the (rarer) terms, with each term's count."""
    return f"""
    terms AS MATERIALIZED (SELECT CAST(:lexemes AS text[]) AS lexemes),  -- once (generic plans, above)
    hits AS MATERIALIZED (  -- else its join to `df` is rebuilt for every pool row
        SELECT p.id, p.token_count AS length, t.lexeme, cardinality(t.positions) AS tf
        FROM (
            SELECT m.id, m.search, m.token_count FROM message m
            JOIN conversation c ON c.id = m.conversation_id
            WHERE m.user_id = :user AND m.search @@ CAST(:rare AS tsquery)
              AND c.end_user = :end_user AND {SCOPE_FILTER[scope]}
            ORDER BY m.id DESC LIMIT :bm25_pool
        ) p, terms q, unnest({_ONLY.format(vector="p.search")}) t
    ),
    df AS MATERIALIZED (
        SELECT * FROM unnest(CAST(:df_lexemes AS text[]), CAST(:df_counts AS float8[])) AS df(lexeme, df)
    ),
    corpus AS MATERIALIZED (SELECT CAST(:corpus_n AS float8) AS n, CAST(:avgdl AS float8) AS avgdl)
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
class Sample:
    """Term counts of a user's newest messages: the wider scopes' IDF."""

    n: int
    avgdl: float
    df: dict[str, int]
    speakers: frozenset[str]  # the speakers' names as lexemes
    taken: float  # time.monotonic()


class Samples:
    """The wider scopes' statistics per user: read once, then refreshed in the background when older
    than `max_age` seconds. Counting terms over the user's newest thousand messages cost ~2 ms of every
    recall (several times that on a busy machine), and IDF over a thousand messages barely moves in a
    minute. New messages are found at once all the same: matching and scoring read the live rows."""

    def __init__(self, max_age: float = 60.0, users: int = 1000) -> None:
        self.max_age = max_age
        self._users = users
        self._samples: OrderedDict[int, Sample] = OrderedDict()  # LRU
        self._refreshing: dict[int, asyncio.Task[None]] = {}

    async def get(self, session: AsyncSession, user_id: int, size: int) -> Sample:
        found = self._samples.get(user_id)
        if found is None:
            found = await _read_sample(session, user_id, size)
            self._keep(user_id, found)
        elif time.monotonic() - found.taken > self.max_age and user_id not in self._refreshing:
            task = asyncio.create_task(self._refresh(session.bind, user_id, size))
            self._refreshing[user_id] = task
        self._samples.move_to_end(user_id)
        return found

    def _keep(self, user_id: int, sample: Sample) -> None:
        self._samples[user_id] = sample
        while len(self._samples) > self._users:
            self._samples.popitem(last=False)

    async def _refresh(self, bind: Any, user_id: int, size: int) -> None:
        try:
            async with AsyncSession(bind) as session:
                self._keep(user_id, await _read_sample(session, user_id, size))
        except Exception as exc:  # the stale sample serves until the next try
            log.info("recall: refreshing user %s's term statistics failed: %s", user_id, exc)
        finally:
            self._refreshing.pop(user_id, None)


async def _read_sample(session: AsyncSession, user_id: int, size: int) -> Sample:
    row = (await session.execute(SAMPLE, {"user": user_id, "sample": size})).one()
    return Sample(
        n=int(row.n),
        avgdl=float(row.avgdl or 1.0),
        df=dict(zip(row.lexemes, row.counts, strict=True)),
        speakers=frozenset(row.speakers),
        taken=time.monotonic(),
    )


@dataclass(frozen=True, slots=True)
class BM25:
    k1: float = 1.2
    b: float = 0.75
    sample: int = 1000  # wider scopes: IDF measured on the user's newest messages
    pool: int = 400  # wider scopes: newest matching messages scored
    max_df: float = 0.2  # wider scopes: terms in more of the sample than this do not select candidates
    samples: Samples = field(default_factory=Samples, compare=False, repr=False)  # wider scopes' IDF


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
    """The statistics `wide_ctes` needs, for the query's terms (one statement: Postgres stems the query;
    it also applies `settings`, recall's `set_config` calls for the vector leg), or None with no term."""
    sample = await bm25.samples.get(session, params["user"], bm25.sample)
    sql = f"SELECT {_LEXEMES} AS lexemes" + (f", {settings}" if settings else "")
    found = await session.scalar(text(sql), params | {"text": query})
    lexemes = [x for x in found or () if x not in sample.speakers and len(x) > 1][:32]
    if not lexemes:
        return None
    n = sample.n or bm25.sample
    df = {x: sample.df.get(x, 0) for x in lexemes}
    rare = [x for x in lexemes if df[x] <= bm25.max_df * n] or lexemes
    return {
        "rare": tsquery_literal(rare),
        "lexemes": lexemes,
        "df_lexemes": lexemes,
        "df_counts": [float(c) for c in df.values()],
        "corpus_n": float(n),
        "avgdl": sample.avgdl,
        "bm25_pool": bm25.pool,
        "k1": float(bm25.k1),
        "b": float(bm25.b),
    }
