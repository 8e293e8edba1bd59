"""Recall latency with 10k, 100k (and, opt-in, 1M) stored messages, query embedding included.

For each size a fresh embedded Postgres is filled by `bench/memory_fill.py` (synthetic texts, random
384-d embeddings: embedding a million texts with the model would take hours here). Queries are real
sentences embedded with the real ONNX MiniLM each time, for each code: "total" is the embedding and the
recall together, timed from the start of the embedding; recall code that takes the embedding still
pending works meanwhile (the wider scopes' lexical leg), older code is handed the finished vector;
"rest" is total minus the embedding (what recall adds to it). Scopes: `branch` (one chat's 1,000-message
branch, the default) and `user` (every message of the user: the HNSW path).
With `--baseline REV` (e.g. main) that revision's recall code runs on the same data, alternating with
this one query by query, so a busy machine's load hits both alike: the ratios are the figures to trust,
and the query embedding's p50 says how loaded the machine was (about 4 ms idle here). "cpu" is the CPU
time one recall costs, this process's thread plus its Postgres backend (read from /proc): what the
recall would take on an idle machine, less the hand-offs between the two. Also printed:
how often both return the same memories in the same order, and their overlap.
With `--baseline-url URL` the baseline (this code, or --baseline's) reads another filled database,
e.g. one whose HNSW index was built with other parameters: two index builds side by side.
Targets: p95 <= 20 ms at 100k, <= 50 ms at 1M, query embedding included.
Run: .venv/bin/python bench/recall.py [--sizes 10000,100000[,1000000]] [--queries N] [--baseline main]
     [--url URL [--baseline-url URL]]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text as sql_text

from bench.baseline import recall_at
from bench.memory_fill import filled
from memory import recall as current
from memory.db import make_engine, make_sessionmaker
from memory.embedder import OnnxMiniLMEmbedder
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
HEADER = (
    f"{'size':>9} {'scope':>7} {'code':>9} {'embed p50':>10} {'rest p50':>8} {'rest p95':>8} "
    f"{'total p50':>10} {'total p95':>10} {'total p99':>10} {'cpu p50':>8}  target"
)


def on_cpu(pid: int) -> float:
    """Seconds process `pid` (a Postgres backend) has run on a CPU (ns resolution, unlike its
    utime): CPU time barely depends on the machine's load, unlike wall time."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def timed(embedder: OnnxMiniLMEmbedder, text: str, took: list[float]) -> list[float]:
    """The query's embedding; how long it took (ms) is appended to `took`."""
    t0 = time.perf_counter()
    vector = (await embedder.embed([text]))[0]
    took.append(1000 * (time.perf_counter() - t0))
    return vector


def overlaps(code: ModuleType) -> bool:
    """Whether this recall code takes the query's embedding still pending (and works meanwhile): older
    revisions need the vector itself."""
    return "Awaitable" in code.RecallQuery.__annotations__["embedding"]


async def measure(
    urls: dict[str, str], models: Path, n: int, k: int, codes: dict[str, ModuleType]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Each code's recalls against its database (`urls`, by code name: the same one, or with
    `--baseline-url` another database, e.g. one whose HNSW index was built otherwise)."""
    engines = {name: make_engine(url, pool_size=1, max_overflow=0) for name, url in urls.items()}
    makers = {name: make_sessionmaker(engine) for name, engine in engines.items()}  # one backend each
    embedder = await asyncio.to_thread(OnnxMiniLMEmbedder.load, models)
    backends = {}
    for name, maker in makers.items():
        async with maker() as s:
            backends[name] = int(await s.scalar(sql_text("SELECT pg_backend_pid()")))
    anchor = 1000  # the last message of chat 1: its branch holds 1,000 messages
    out: dict[str, dict[str, dict[str, Any]]] = {}
    fusions = {name: code.Fusion() for name, code in codes.items()}  # long-lived, as the app's
    for scope in ("branch", "user"):
        embed_ms: dict[str, list[float]] = {name: [] for name in codes}
        total_ms: dict[str, list[float]] = {name: [] for name in codes}
        cpu_ms: dict[str, list[float]] = {name: [] for name in codes}
        found: dict[str, list[list[int]]] = {name: [] for name in codes}
        for i in range(n + 5):
            text = QUERIES[i % len(QUERIES)]
            order = list(codes.items()) if i % 2 == 0 else list(reversed(codes.items()))
            for name, code in order:  # alternating who goes first
                sessions, backend = makers[name], backends[name]
                t0, cpu = time.perf_counter(), time.thread_time() + on_cpu(backend)
                took: list[float] = []
                pending = asyncio.ensure_future(timed(embedder, text, took))
                async with sessions() as s:
                    vector = pending if overlaps(code) else await pending
                    query = code.RecallQuery(
                        user_id=1, text=text, embedding=vector, scope=scope, anchor_id=anchor, k=k
                    )
                    hits = await code.recall(s, query, fusions[name])
                if i >= 5:  # warm-up
                    total_ms[name].append(1000 * (time.perf_counter() - t0))
                    embed_ms[name].append(took[0])
                    cpu_ms[name].append(1000 * (time.thread_time() + on_cpu(backend) - cpu))
                    found[name].append([m.message_id for m in hits])
        out[scope] = {}
        for name in codes:
            assert all(found[name]), f"{name}: recall found nothing"
            after = [t - e for t, e in zip(total_ms[name], embed_ms[name], strict=True)]
            out[scope][name] = {
                "embed_p50": pct(embed_ms[name], 50),
                "sql_p50": pct(after, 50),
                "sql_p95": pct(after, 95),
                "total_p50": pct(total_ms[name], 50),
                "total_p95": pct(total_ms[name], 95),
                "total_p99": pct(total_ms[name], 99),
                "cpu_p50": pct(cpu_ms[name], 50),
                "found": found[name],
            }
    for engine in engines.values():
        await engine.dispose()
    return out


def show(size: int, results: dict[str, dict[str, dict[str, Any]]]) -> bool:
    """Print the rows (and the ratios to the baseline); True if a target failed."""
    failed = False
    for scope, by_code in results.items():
        for name, r in by_code.items():
            target = TARGETS.get(size) if name == "this" else None
            verdict = ""
            if target is not None:
                ok = r["total_p95"] <= target
                failed |= not ok
                verdict = f"p95 <= {target:g} ms {'PASS' if ok else 'FAIL'}"
            print(
                f"{size:>9,} {scope:>7} {name:>9} {r['embed_p50']:>10.2f} {r['sql_p50']:>8.2f} "
                f"{r['sql_p95']:>8.2f} {r['total_p50']:>10.2f} {r['total_p95']:>10.2f} "
                f"{r['total_p99']:>10.2f} {r['cpu_p50']:>8.2f}  {verdict}"
            )
        if len(by_code) == 2:
            new, old = by_code["this"], next(v for n, v in by_code.items() if n != "this")
            pairs = list(zip(new["found"], old["found"], strict=True))
            same = sum(a == b for a, b in pairs) / len(pairs)
            shared = statistics.fmean(len(set(a) & set(b)) / max(len(b), 1) for a, b in pairs)
            print(
                f"{'':>9} {scope:>7} {'ratio':>9} {'':>10} {new['sql_p50'] / old['sql_p50']:>8.2f} "
                f"{new['sql_p95'] / old['sql_p95']:>8.2f} {new['total_p50'] / old['total_p50']:>10.2f} "
                f"{new['total_p95'] / old['total_p95']:>10.2f} {new['total_p99'] / old['total_p99']:>10.2f}"
                f" {new['cpu_p50'] / old['cpu_p50']:>8.2f}"
                f"  (this / baseline; same memories in the same order: {same:.0%}, in common {shared:.0%})"
            )
    return failed


@contextlib.contextmanager
def database(url: str | None, size: int) -> Iterator[str]:
    if url:  # an already filled database (bench/memory_fill.py), reused between runs
        yield url
        return
    with tempfile.TemporaryDirectory() as tmp, filled(Path(tmp) / "data", size) as filled_url:
        yield filled_url


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000", help="stored messages, comma-separated")
    parser.add_argument("--queries", type=int, default=200, help="measured queries per scope and size")
    parser.add_argument("--k", type=int, default=MemoryConfig().recall_k, help="memories per recall")
    parser.add_argument("--baseline", help="also run this git revision's recall code (e.g. main)")
    parser.add_argument("--url", help="a database bench/memory_fill.py filled (one size)")
    parser.add_argument(
        "--baseline-url", help="the baseline's database (another index build; without --baseline: this code)"
    )
    args = parser.parse_args()
    codes = {"this": current}
    if args.baseline or args.baseline_url:  # another revision's code, another database, or both
        name = (args.baseline or "this") + ("@other" if args.baseline_url else "")
        codes[name] = recall_at(args.baseline) if args.baseline else current
    print(HEADER)
    failed = False
    models = Path(tempfile.gettempdir()) / "anima-bench-models"  # the ONNX export, kept between runs
    for size in (int(s) for s in args.sizes.split(",")):
        with database(args.url, size) as url:
            urls = {
                code: args.baseline_url if code != "this" and args.baseline_url else url for code in codes
            }
            results = asyncio.run(measure(urls, models, args.queries, args.k, codes))
        failed |= show(size, results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
