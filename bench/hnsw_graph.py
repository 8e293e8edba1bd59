"""The HNSW graph's choices on real MiniLM embeddings: how much of the exact nearest neighbours a scan
finds, and its backend CPU, for index builds (m, ef_construction) and scans (ef_search, LIMIT).

bench/recall.py's 100k messages carry random vectors (embedding 100k texts with the model takes too
long per run), on which an HNSW walk finds almost none of the exact neighbours: its timings hold, its
quality means nothing. Here the stored texts are GoEmotions' train split (43k real Reddit comments,
distinct ones kept; nothing is downloaded, see ../shared/data/goemotions/SOURCE.md) and the queries the
first `--queries` lines of its dev split, embedded once by the real ONNX MiniLM and cached. Each variant
scans as recall's user scope does (pgvector's iterative scan, relaxed order, under a user filter every
row passes); recall@10 / recall@LIMIT: the share of the scan's first 10 / LIMIT rows within the exact
10th / LIMIT-th distance (distances, not ids: equal vectors tie). Variants alternate query by query.
Run: .venv/bin/python bench/hnsw_graph.py [--variants 16:64:40:50,8:64:40:50] [--queries 600]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from memory.embedded_pg import EmbeddedPostgres
from memory.embedder import OnnxMiniLMEmbedder

Variant = tuple[int, int, int, int]  # m, ef_construction, ef_search, LIMIT
DEFAULT = "16:64:40:50,16:64:50:50,16:64:80:50,16:64:40:40,12:64:40:50,8:64:40:50,8:128:40:50,8:128:100:50"


def texts(data: Path, split: str) -> list[str]:
    return [line.split("\t")[0] for line in (data / f"{split}.tsv").read_text(encoding="utf-8").splitlines()]


def vectors(data: Path, queries: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct stored comments' and the queries' embeddings (cached: ~4 min on an idle machine)."""
    cache = Path(tempfile.gettempdir()) / f"anima-hnsw-graph-{queries}.npz"
    if not cache.exists():
        embedder = OnnxMiniLMEmbedder.load(Path(tempfile.gettempdir()) / "anima-bench-models")
        stored = list(dict.fromkeys(texts(data, "train")))

        async def embed(lines: list[str]) -> np.ndarray:
            out: list[list[float]] = []
            for i in range(0, len(lines), 64):
                out += await embedder.embed(lines[i : i + 64])
            return np.array(out, dtype=np.float32)

        np.savez(
            cache, stored=asyncio.run(embed(stored)), queries=asyncio.run(embed(texts(data, "dev")[:queries]))
        )
    found = np.load(cache)
    return found["stored"], found["queries"]


def literal(v: np.ndarray) -> str:
    return "[" + ",".join(map("{:.7f}".format, v.tolist())) + "]"


def build(conn: psycopg.Connection, stored: np.ndarray, m: int, efc: int) -> None:
    table = f"e_{m}_{efc}"
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, user_id int, v vector(384))")
    with conn.cursor().copy(f"COPY {table} (id, user_id, v) FROM STDIN") as copy:
        for i, v in enumerate(stored):
            copy.write_row((i, 1, literal(v)))
    started = time.perf_counter()
    conn.execute(
        f"CREATE INDEX ON {table} USING hnsw (v vector_cosine_ops) WITH (m = {m}, ef_construction = {efc})"
    )
    conn.execute(f"ANALYZE {table}")
    print(
        f"m = {m}, ef_construction = {efc}: {len(stored):,} rows indexed"
        f" in {time.perf_counter() - started:.1f} s"
    )


def on_cpu(pid: int) -> float:
    """Milliseconds process `pid` (the Postgres backend) has run on a CPU."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e6


def measure(conn: psycopg.Connection, queries: np.ndarray, variants: list[Variant]) -> None:
    pid = int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]
    conn.execute("SET hnsw.iterative_scan = relaxed_order")
    cpu: dict[Variant, list[float]] = {v: [] for v in variants}
    found: dict[Variant, list[tuple[float, float]]] = {v: [] for v in variants}
    exact_sql = "SELECT d FROM (SELECT v <=> %(q)s::vector AS d FROM {t} OFFSET 0) x ORDER BY d LIMIT 50"
    for j, query in enumerate(queries):
        q = {"q": literal(query)}
        exact = [r[0] for r in conn.execute(exact_sql.format(t=f"e_{variants[0][0]}_{variants[0][1]}"), q)]
        for v in variants if j % 2 else variants[::-1]:
            m, efc, ef, limit = v
            conn.execute(f"SET hnsw.ef_search = {ef}")
            sql = (
                f"SELECT v <=> %(q)s::vector FROM e_{m}_{efc} WHERE user_id = 1"
                f" ORDER BY v <=> %(q)s::vector LIMIT {limit}"
            )
            before = on_cpu(pid)
            got = sorted(r[0] for r in conn.execute(sql, q, prepare=True))
            cpu[v].append(on_cpu(pid) - before)
            within = [sum(d <= exact[n - 1] + 1e-6 for d in got[:n]) / n for n in (10, limit)]
            found[v].append((within[0], within[1]))
    print(
        f"{'m':>3} {'ef_constr':>9} {'ef_search':>9} {'limit':>5} {'cpu p50 ms':>10} {'recall@10':>9}"
        f" {'recall@limit':>12}"
    )
    for v in variants:
        r10, rl = (statistics.fmean(f[i] for f in found[v]) for i in (0, 1))
        print(
            f"{v[0]:>3} {v[1]:>9} {v[2]:>9} {v[3]:>5} {statistics.median(cpu[v][5:]):>10.2f}"
            f" {r10:>9.3f} {rl:>12.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("../shared/data/goemotions"))
    parser.add_argument("--queries", type=int, default=600)
    parser.add_argument(
        "--variants", default=DEFAULT, help="m:ef_construction:ef_search:limit, comma-separated"
    )
    args = parser.parse_args()
    variants: list[Variant] = [
        (int(a), int(b), int(c), int(d)) for a, b, c, d in (v.split(":") for v in args.variants.split(","))
    ]
    stored, queries = vectors(args.data, args.queries)
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedPostgres(Path(tmp) / "data")
        url = server.start().replace("postgresql+psycopg", "postgresql")
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                conn.execute("SET maintenance_work_mem = '1GB'")
                for m, efc in dict.fromkeys((v[0], v[1]) for v in variants):
                    build(conn, stored, m, efc)
                measure(conn, queries, variants)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
