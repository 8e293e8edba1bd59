"""Fill an embedded Postgres with N synthetic stored messages (for benchmarks), server-side and fast.

Messages are generated with generate_series in chats of `per_chat` messages chained by parent_id,
as real branches are; their embeddings are random 384-d vectors (embedding N texts with the real
model would take minutes per 100k) and they are marked embedded and read for facts, so no worker
touches them (stored history a deployment's workers went through long ago). The
HNSW index is rebuilt once after loading, which is much faster than inserting into it row by row.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from memory.db import upgrade_schema
from memory.embedded_pg import EmbeddedPostgres

TOPICS = "ARRAY['weather','work','family','travel','food','music','books','sports','health','money']"

FILL = f"""
INSERT INTO app_user (id, name) OVERRIDING SYSTEM VALUE VALUES (1, 'local') ON CONFLICT DO NOTHING;
INSERT INTO conversation (id, public_id, user_id, end_user)
    OVERRIDING SYSTEM VALUE
    SELECT c, 'bench-' || c, 1, '' FROM generate_series(1, %(chats)s::int) c;
INSERT INTO message (id, conversation_id, user_id, parent_id, depth, role, content, content_hash,
                     token_count, embedded, facts_done, importance)
    OVERRIDING SYSTEM VALUE
    SELECT (c - 1) * %(per)s::int + d + 1, c, 1,
           CASE WHEN d = 0 THEN NULL ELSE (c - 1) * %(per)s::int + d END, d,
           CASE WHEN d %% 2 = 0 THEN 'user' ELSE 'assistant' END,
           'Message ' || d || ' of chat ' || c || ' about ' || ({TOPICS})[1 + (d * 7 + c) %% 10]
               || ' and ' || ({TOPICS})[1 + (d * 3 + c * 5) %% 10] || ': ' || md5((c * 1000003 + d)::text),
           md5(random()::text), 20, true, true, random()
    FROM generate_series(1, %(chats)s::int) c, generate_series(0, %(per)s::int - 1) d;
SELECT setval(pg_get_serial_sequence('conversation', 'id'), %(chats)s::int);
SELECT setval(pg_get_serial_sequence('message', 'id'), %(chats)s::int * %(per)s::int);
DROP INDEX IF EXISTS ix_message_embedding_hnsw;
INSERT INTO message_embedding (message_id, conversation_id, user_id, chunk, embedding)
    SELECT m.id, m.conversation_id, 1, 0,
           (SELECT array_agg(random() - 0.5) FROM generate_series(1, 384) WHERE m.id > 0)::vector(384)
    FROM message m;
"""
INDEX = "CREATE INDEX ix_message_embedding_hnsw ON message_embedding USING hnsw (embedding vector_cosine_ops)"


@contextlib.contextmanager
def filled(data_dir: Path, messages: int, *, per_chat: int = 1000) -> Iterator[str]:
    """An embedded Postgres in `data_dir` holding `messages` messages of the local user; yields its URL."""
    server = EmbeddedPostgres(data_dir)
    url = server.start()
    try:
        upgrade_schema(url)
        chats = max(1, messages // per_chat)
        started = time.perf_counter()
        with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
            conn.execute("SET maintenance_work_mem = '4GB'")  # the 1M-row HNSW graph stays in memory
            for statement in filter(str.strip, FILL.split(";")):
                params = {"chats": chats, "per": per_chat} if "%(" in statement else None
                conn.execute(statement, params)
            loaded = time.perf_counter()
            conn.execute(INDEX)
            conn.execute("ANALYZE")
        print(
            f"memory: {chats * per_chat:,} messages in {chats} chats loaded in {loaded - started:.1f} s,"
            f" HNSW index built in {time.perf_counter() - loaded:.1f} s"
        )
        yield url
    finally:
        server.stop()
