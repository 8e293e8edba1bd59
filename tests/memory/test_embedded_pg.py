"""The embedded Postgres runs with a page cache big enough for recall's index and vectors."""

from __future__ import annotations

from pathlib import Path

import psycopg

from memory import embedded_pg


def test_the_embedded_server_runs_with_the_tuned_shared_buffers(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(
            "SELECT setting::bigint * 8 / 1024 FROM pg_settings WHERE name = 'shared_buffers'"
        ).fetchone()
    assert row is not None and row[0] == embedded_pg.shared_buffers_mb()
    assert 128 <= embedded_pg.shared_buffers_mb() <= 1024


def test_tune_replaces_its_line_and_keeps_the_others(tmp_path: Path) -> None:
    auto = tmp_path / "postgresql.auto.conf"
    auto.write_text("# ALTER SYSTEM's file\nwork_mem = '8MB'\nshared_buffers = '64MB'\n")
    embedded_pg.tune(tmp_path)
    embedded_pg.tune(tmp_path)  # idempotent
    lines = auto.read_text().splitlines()
    assert lines == [
        "# ALTER SYSTEM's file",
        "work_mem = '8MB'",
        f"shared_buffers = '{embedded_pg.shared_buffers_mb()}MB'",
    ]
