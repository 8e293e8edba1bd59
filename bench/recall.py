"""Recall latency with 10k, 100k (and, opt-in, 1M) stored messages, query embedding included.

For each size a fresh embedded Postgres is filled by `bench/memory_fill.py` (synthetic texts, random
384-d embeddings: embedding a million texts with the model would take hours here). Queries are real
sentences embedded with the real ONNX MiniLM each time. Scopes: `branch` (one chat's 1,000-message
branch, the default) and `user` (every message of the user: the HNSW path).
Targets: p95 <= 20 ms at 100k, <= 50 ms at 1M, query embedding included.
Run: .venv/bin/python bench/recall.py [--sizes 10000,100000[,1000000]] [--queries N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.memory_fill import filled
from memory.db import make_engine, make_sessionmaker
from memory.embedder import OnnxMiniLMEmbedder
from memory.recall import Fusion, RecallQuery, recall
from memory.service import MemoryConfig

QUERIES = [
    "What did we say about the weather last week?",
    "Do you remember my family plans for travel?",
    "How was work going for me?",
    "Which books did I talk about?",
    "What food do I like?",
    "Tell me again about the music festival.",
    "Did I mention money problems?",
    "What sports do I follow?",
]
TARGETS = {100_000: 20.0, 1_000_000: 50.0}


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def measure(url: str, models: Path, size: int, n: int, k: int) -> dict[str, dict[str, float]]:
    engine = make_engine(url, pool_size=2)
    sessions = make_sessionmaker(engine)
    embedder = await asyncio.to_thread(OnnxMiniLMEmbedder.load, models)
    anchor = 1000  # the last message of chat 1: its branch holds 1,000 messages
    out: dict[str, dict[str, float]] = {}
    for scope in ("branch", "user"):
        embed_ms, sql_ms, total_ms = [], [], []
        for i in range(n + 5):
            text = QUERIES[i % len(QUERIES)]
            t0 = time.perf_counter()
            vector = (await embedder.embed([text]))[0]
            t1 = time.perf_counter()
            async with sessions() as s:
                query = RecallQuery(
                    user_id=1, text=text, embedding=vector, scope=scope, anchor_id=anchor, k=k
                )
                hits = await recall(s, query, Fusion())
            t2 = time.perf_counter()
            if i >= 5:  # warm-up
                embed_ms.append(1000 * (t1 - t0))
                sql_ms.append(1000 * (t2 - t1))
                total_ms.append(1000 * (t2 - t0))
        assert hits, "recall found nothing"
        out[scope] = {
            "embed_p50": pct(embed_ms, 50),
            "sql_p50": pct(sql_ms, 50),
            "sql_p95": pct(sql_ms, 95),
            "total_p50": pct(total_ms, 50),
            "total_p95": pct(total_ms, 95),
            "total_p99": pct(total_ms, 99),
        }
    await engine.dispose()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000", help="stored messages, comma-separated")
    parser.add_argument("--queries", type=int, default=200, help="measured queries per scope and size")
    parser.add_argument("--k", type=int, default=MemoryConfig().recall_k, help="memories per recall")
    args = parser.parse_args()
    failed = False
    print(
        f"{'size':>9} {'scope':>7} {'embed p50':>10} {'sql p50':>8} {'sql p95':>8} "
        f"{'total p50':>10} {'total p95':>10} {'total p99':>10}  target"
    )
    models = Path(tempfile.gettempdir()) / "anima-bench-models"  # the ONNX export, kept between runs
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp, filled(Path(tmp) / "data", size) as url:
            results = asyncio.run(measure(url, models, size, args.queries, args.k))
        for scope, r in results.items():
            target = TARGETS.get(size)
            verdict = ""
            if target is not None:
                ok = r["total_p95"] <= target
                failed |= not ok
                verdict = f"p95 <= {target:g} ms {'PASS' if ok else 'FAIL'}"
            print(
                f"{size:>9,} {scope:>7} {r['embed_p50']:>10.2f} {r['sql_p50']:>8.2f} {r['sql_p95']:>8.2f} "
                f"{r['total_p50']:>10.2f} {r['total_p95']:>10.2f} {r['total_p99']:>10.2f}  {verdict}"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
