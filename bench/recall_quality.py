"""Which ranking finds the evidence? Long two-person chats (bench/long_chats.py) through the real code.

12 chats of ~600 turns in 20 dated sessions, 10 questions each with marked evidence turns (types:
swapped-speaker, temporal, knowledge-update, multi-hop, reply). Every chat is stored with
`memory.chain.append` and embedded by the real `EmbeddingWorker` with the ONNX MiniLM (timed: the
embedding throughput in turns/s). Each question is then ranked in branch scope over its chat (the
question is asked after the chat; nothing excluded) by:
- the old ranking, replayed: "[date] Name: text" embeddings, names in the full text, ts_rank_cd, 2:1;
- each leg alone (dense on the text, old ts_rank_cd, BM25) and reciprocal-rank fusions of dense and BM25;
- the real `memory.recall` with the shipped defaults and with the speaker/neighbour rules varied;
- the real `memory.recall` in user scope (each question over all 12 chats), with BM25's sample and pool
  varied (they only matter in the wider scopes).
With `--baseline REV` (e.g. main) that revision's recall runs too, alternating question by question with
this one's defaults in both scopes (the latency ratio is the figure to trust on a shared machine).
`--no-replay` skips the replayed legs.
Prints evidence Recall@1/5/10/20 (share of a question's evidence turns in the top k, averaged) per
question type, the share of evidence that reaches the prompt when memories are quoted in rank order
into 1,000 and 2,000 tokens, and the real recall's latency.
Run: .venv/bin/python bench/recall_quality.py [--seed N] [--baseline main] [--no-replay]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.baseline import recall_at
from bench.long_chats import Chat, generate
from memory import chain, history
from memory import recall as recall_module
from memory.budget import TokenCounter
from memory.db import make_engine, make_sessionmaker, upgrade_schema
from memory.embedded_pg import EmbeddedPostgres
from memory.embedder import OnnxMiniLMEmbedder, chunk_text
from memory.lexical import BM25
from memory.recall import Fusion, RecallQuery, fuse, text_leg
from memory.types import Message
from memory.users import create_key
from memory.workers import EmbeddingWorker

KS = (1, 5, 10, 20)
BUDGETS = (1000, 2000)
OLD_TEXT = """
    WITH RECURSIVE branch AS (
        SELECT id, parent_id FROM message WHERE id = :anchor
        UNION ALL SELECT m.id, m.parent_id FROM message m JOIN branch b ON m.id = b.parent_id
    )
    SELECT m.id, ts_rank_cd(to_tsvector('english', coalesce(m.name, '') || ' ' || m.content), q) AS rank
    FROM message m JOIN branch b ON b.id = m.id, to_tsquery('english', :tsq) q
    WHERE to_tsvector('english', coalesce(m.name, '') || ' ' || m.content) @@ q
    ORDER BY rank DESC, m.id DESC LIMIT 200
"""


@dataclasses.dataclass
class Stored:
    chat: Chat
    ids: list[int]  # turn position -> message id
    rows: dict[int, Any]  # message id -> (name, content, created_at, token line cost)
    plain: np.ndarray  # content embeddings, one row per turn
    prefixed: np.ndarray  # "[date] Name: text" embeddings (the old index text)


Ranking = list[tuple[int, float]]


async def store(sessions: Any, counter: TokenCounter, user: int, chats: list[Chat]) -> list[list[int]]:
    out = []
    for c, chat in enumerate(chats):
        messages = [
            Message("user" if t.speaker == 0 else "assistant", t.text, chat.names[t.speaker])
            for t in chat.turns
        ]
        async with sessions.begin() as s:
            row = await history.create_conversation(s, user_id=user, public_id=f"chat{c}")
            stored = await chain.append(
                s,
                user_id=user,
                conversation_id=row.id,
                parent_id=None,
                messages=messages,
                token_counts=[counter.count(m.content) for m in messages],
                source="imported",
                created_at=[t.at for t in chat.turns],
            )
        out.append([m.id for m in stored])
    return out


def line_cost(counter: TokenCounter, name: str, content: str, at: Any) -> int:
    """Tokens of the memory as personas/prompt.quote_memory writes it (plus its newline)."""
    line = f"- {at:%Y-%m-%d}, {name} said: {json.dumps(content, ensure_ascii=False)}"
    return counter.count(line) + 1


def dense(store_: Stored, vector: np.ndarray, prefixed: bool, floor: float) -> Ranking:
    matrix = store_.prefixed if prefixed else store_.plain
    sims = matrix @ vector
    order = np.argsort(-sims)[:200]
    return [(store_.ids[i], float(sims[i])) for i in order if sims[i] >= floor]


def speaker_boosted(
    ranking: dict[int, float], store_: Stored, question: str, boost: float
) -> dict[int, float]:
    words = {w.strip("?'.,!").lower().removesuffix("'s") for w in question.split()}
    return {m: s + (boost if store_.rows[m][0].lower() in words else 0.0) for m, s in ranking.items()}


def metrics(order: Sequence[int], evidence: Sequence[int], rows: dict[int, Any]) -> list[float]:
    found = [sum(e in order[:k] for e in evidence) / len(evidence) for k in KS]
    spent = 0
    within: dict[int, set[int]] = {b: set() for b in BUDGETS}
    for m in order:
        spent += rows[m][3]
        for b in BUDGETS:
            if spent <= b:
                within[b].add(m)
    return found + [sum(e in within[b] for e in evidence) / len(evidence) for b in BUDGETS]


def report(name: str, results: dict[str, list[list[float]]], latency: list[float] | None = None) -> None:
    everything = [r for rows in results.values() for r in rows]
    cells = [statistics.fmean(r[i] for r in everything) for i in range(len(KS) + len(BUDGETS))]
    per_type = "  ".join(
        f"{kind[:6]} {statistics.fmean(r[2] for r in rows):>4.0%}" for kind, rows in sorted(results.items())
    )
    lat = f"  p50 {pct(latency, 50):.1f} p95 {pct(latency, 95):.1f} ms" if latency else ""
    print(f"{name:<34} " + " ".join(f"{c:>6.1%}" for c in cells) + f"   R@10 by type: {per_type}{lat}")


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def run(
    url: str, models: Path, seed: int, baseline: str | None, replay: bool, graph: Path | None = None
) -> None:
    engine = make_engine(url, pool_size=2)
    sessions = make_sessionmaker(engine)
    if graph is not None:  # another graph of the same model (a quantised one): its quality here
        embedder = await asyncio.to_thread(OnnxMiniLMEmbedder.from_file, graph)
    else:
        embedder = await asyncio.to_thread(OnnxMiniLMEmbedder.load, models)
    counter = TokenCounter()
    async with sessions.begin() as s:
        user, _ = await create_key(s, "quality")
    chats = generate(seed)
    ids = await store(sessions, counter, user, chats)
    total = sum(len(c.turns) for c in chats)
    worker = EmbeddingWorker(sessions, embedder, chunker=chunk_text, batch=64)
    started = time.perf_counter()
    await worker.drain()
    elapsed = time.perf_counter() - started
    print(f"{len(chats)} chats, {total} turns, {sum(len(c.questions) for c in chats)} questions")
    print(f"embedding worker: {total} turns in {elapsed:.1f} s = {total / elapsed:.0f} turns/s")
    stores = [
        await load(sessions, embedder, counter, chat, chat_ids)
        for chat, chat_ids in zip(chats, ids, strict=True)
    ]
    await evaluate(sessions, embedder, user, stores, baseline, replay)
    await engine.dispose()


async def load(sessions: Any, embedder: Any, counter: TokenCounter, chat: Chat, ids: list[int]) -> Stored:
    async with sessions() as s:
        found = (
            await s.execute(
                text(
                    "SELECT m.id, m.name, m.content, m.created_at, e.embedding::text AS v FROM message m"
                    " JOIN message_embedding e ON e.message_id = m.id AND e.chunk = 0 WHERE m.id = ANY(:ids)"
                ),
                {"ids": ids},
            )
        ).all()
    by_id = {r.id: r for r in found}
    rows = {i: (by_id[i].name, by_id[i].content, by_id[i].created_at, 0) for i in ids}
    rows = {i: (n, c, at, line_cost(counter, n, c, at)) for i, (n, c, at, _) in rows.items()}
    plain = np.array([json.loads(by_id[i].v) for i in ids], dtype=np.float32)
    old = [f"[{rows[i][2]:%Y-%m-%d}] {rows[i][0]}: {rows[i][1]}" for i in ids]
    prefixed = np.array(await embedder.embed(old), dtype=np.float32)
    return Stored(chat, ids, rows, plain, prefixed)


async def evaluate(
    sessions: Any, embedder: Any, user: int, stores: list[Stored], baseline: str | None, replay: bool
) -> None:
    questions = [(st, q) for st in stores for q in st.chat.questions]
    vectors = np.array(await embedder.embed([q.text for _, q in questions]), dtype=np.float32)
    header = (
        " ".join(f"{'R@' + str(k):>6}" for k in KS)
        + " "
        + " ".join(f"{str(b // 1000) + 'k tok':>6}" for b in BUDGETS)
    )
    if replay:
        await replayed(sessions, user, questions, vectors, header)
    await real(sessions, user, questions, vectors, header, recall_at(baseline) if baseline else None)


async def replayed(sessions: Any, user: int, questions: list[Any], vectors: np.ndarray, header: str) -> None:
    Variant = Callable[[Stored, str, np.ndarray, Ranking, Ranking], list[int]]

    def rrf(vw: float, tw: float, k: int, *, boost: float = 0.0, recency: float = 0.0) -> Variant:
        def ranked(st: Stored, q: str, vec: np.ndarray, bm25: Ranking, _old: Ranking) -> list[int]:
            scores = fuse([(vw, dense(st, vec, False, 0.0)), (tw, bm25)], k)
            if boost:
                scores = speaker_boosted(scores, st, q, boost / k)
            if recency:  # newer turns up to `recency` first ranks ahead
                position = {m: i / len(st.ids) for i, m in enumerate(st.ids)}
                scores = {m: s + recency * position[m] / k for m, s in scores.items()}
            return sorted(scores, key=lambda m: (scores[m], m), reverse=True)

        return ranked

    def old(st: Stored, q: str, vec: np.ndarray, _bm25: Ranking, ts: Ranking) -> list[int]:
        scores = fuse([(2.0, dense(st, vec, True, 0.2)), (1.0, ts)], 60)
        return sorted(scores, key=lambda m: (scores[m], m), reverse=True)

    variants: dict[str, Variant] = {
        "old: 2:1 prefixed dense + ts_rank_cd": old,
        "dense (prefixed text) alone": lambda st, q, v, b, o: [m for m, _ in dense(st, v, True, 0.0)],
        "dense (text) alone": lambda st, q, v, b, o: [m for m, _ in dense(st, v, False, 0.0)],
        "ts_rank_cd (names indexed) alone": lambda st, q, v, b, o: [m for m, _ in o],
        "BM25 alone": lambda st, q, v, b, o: [m for m, _ in b],
    }
    for vw, tw in ((2, 1), (1, 1), (1, 2), (1, 3)):
        for k in (10, 60):
            variants[f"RRF dense:BM25 {vw}:{tw} k={k}"] = rrf(vw, tw, k)
    for boost in (1.0, 2.0, 4.0):
        for vw, tw in ((2, 1), (1, 1), (1, 2)):
            variants[f"RRF {vw}:{tw} k=60 + speaker {boost}"] = rrf(vw, tw, 60, boost=boost)
    for recency in (0.25, 0.5):
        variants[f"RRF 2:1 + speaker 1 + recency {recency}"] = rrf(2, 1, 60, boost=1.0, recency=recency)
    results: dict[str, dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    for (st, q), vec in zip(questions, vectors, strict=True):
        evidence = [st.ids[i] for i in q.evidence]
        async with sessions() as s:
            query = RecallQuery(user, q.text, list(map(float, vec)), "branch", st.ids[-1], k=200)
            bm25 = await text_leg(s, query, BM25())
            tsq = " | ".join(
                sorted({w.lower() for w in __import__("re").findall(r"[^\W_]+", q.text) if len(w) > 1})
            )
            ts = [
                (r.id, r.rank)
                for r in (await s.execute(text(OLD_TEXT), {"anchor": st.ids[-1], "tsq": tsq})).all()
            ]
        for name, variant in variants.items():
            results[name][q.kind].append(metrics(variant(st, q.text, vec, bm25, ts), evidence, st.rows))
    print(f"\n{'ranking (replayed legs)':<34} {header}")
    for name in variants:
        report(name, results[name])
    by_type("the old ranking (replayed)", results["old: 2:1 prefixed dense + ts_rank_cd"])


REAL: dict[str, tuple[Fusion, int]] = {
    "recall() defaults (2:1, speaker 1)": (Fusion(), 40),
    "recall() k=30": (Fusion(), 30),
    "recall() k=20": (Fusion(), 20),
    "recall() without the speaker rule": (dataclasses.replace(Fusion(), speaker_boost=0.0), 40),
    "recall() 1:1": (dataclasses.replace(Fusion(), vector_weight=1.0), 40),
    "recall() + neighbours of best 3": (dataclasses.replace(Fusion(), neighbours=3), 40),
    "recall() + neighbours of best 5 x0.8": (
        dataclasses.replace(Fusion(), neighbours=5, neighbour_factor=0.8),
        40,
    ),
    "recall() min_similarity 0.2": (dataclasses.replace(Fusion(), min_similarity=0.2), 40),
    "recall() min_similarity 0": (dataclasses.replace(Fusion(), min_similarity=0.0), 40),
    # user scope: every question over all 12 chats (7,200 messages), where BM25's sample and pool count
    "user scope: defaults (sample 1000, pool 400)": (Fusion(), 40),
    "user scope: BM25 pool 200": (Fusion(bm25=BM25(pool=200)), 40),
    "user scope: BM25 sample 500, pool 200": (Fusion(bm25=BM25(sample=500, pool=200)), 40),
    "user scope: k=30": (Fusion(), 30),
}


def scope_of(name: str) -> str:
    return "user" if name.startswith(("user scope", "baseline user scope")) else "branch"


async def real(
    sessions: Any,
    user: int,
    questions: list[Any],
    vectors: np.ndarray,
    header: str,
    baseline: ModuleType | None,
) -> None:
    """The shipped code path; with a baseline revision, its defaults too, alternating question by question
    with this code's defaults (same data, same load: the latency ratio is the figure to trust)."""
    print(f"\n{'real memory.recall':<34} {header}")
    groups: list[list[tuple[str, ModuleType, Fusion, int]]] = [
        [(name, recall_module, fusion, k)] for name, (fusion, k) in REAL.items()
    ]
    if baseline is not None:  # its defaults alternate with this code's, in both scopes
        groups[0].append(("baseline recall() defaults", baseline, baseline.Fusion(), 40))
        wide = next(g for g in groups if g[0][0].startswith("user scope: defaults"))
        wide.append(("baseline user scope: defaults", baseline, baseline.Fusion(), 40))
    rows = {m: row for st in {id(st): st for st, _ in questions}.values() for m, row in st.rows.items()}
    results: dict[str, dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    latency: dict[str, list[float]] = defaultdict(list)
    for group in groups:
        for i, ((st, q), vec) in enumerate(zip(questions, vectors, strict=True)):
            for name, code, fusion, k in group if i % 2 == 0 else reversed(group):
                scope, anchor = scope_of(name), st.ids[-1]
                query = code.RecallQuery(user, q.text, list(map(float, vec)), scope, anchor, k=k)
                t0 = time.perf_counter()
                async with sessions() as s:
                    found = await code.recall(s, query, fusion)
                latency[name].append(1000 * (time.perf_counter() - t0))
                results[name][q.kind].append(
                    metrics([m.message_id for m in found], [st.ids[i] for i in q.evidence], rows)
                )
        for name, *_ in group:
            report(name, results[name], latency[name])
        if len(group) == 2:
            new, old = (latency[name] for name, *_ in group)
            print(
                f"latency this / baseline, same questions alternating: p50 {pct(new, 50) / pct(old, 50):.2f}"
                f" p95 {pct(new, 95) / pct(old, 95):.2f}"
            )
    by_type("recall() defaults", results[groups[0][0][0]])


def by_type(title: str, results: dict[str, list[list[float]]]) -> None:
    print(f"\nper question type, {title}:")
    for kind, rows in sorted(results.items()):
        cells = " ".join(
            f"{statistics.fmean(r[i] for r in rows):>6.1%}" for i in range(len(KS) + len(BUDGETS))
        )
        print(f"  {kind:<32} {cells}   ({len(rows)} questions)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--baseline", help="also run this git revision's recall code (e.g. main)")
    parser.add_argument("--no-replay", action="store_true", help="only the real recall code paths")
    parser.add_argument("--graph", type=Path, help="embed with this ONNX graph (e.g. an int8 one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedPostgres(Path(tmp) / "data")
        url = server.start()
        try:
            upgrade_schema(url)
            models = Path(tempfile.gettempdir()) / "anima-bench-models"
            asyncio.run(run(url, models, args.seed, args.baseline, not args.no_replay, args.graph))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
