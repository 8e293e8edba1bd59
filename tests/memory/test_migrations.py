"""Start-up migrates only a database behind head: at head (every restart) it is one SELECT, with the
head read from the migration files instead of importing Alembic."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from memory import db, embedded_pg


def alembic_head() -> str:
    head = ScriptDirectory.from_config(Config(str(db.ALEMBIC_INI))).get_current_head()
    assert head is not None
    return head


def test_script_head_is_alembics_head() -> None:
    assert db.script_head() == alembic_head()


def write(folder: Path, name: str, revision: str, down: str) -> None:
    (folder / name).write_text(f'"""{name}"""\nrevision: str = "{revision}"\ndown_revision = {down}\n')


def test_script_head_is_none_unless_exactly_one_head(tmp_path: Path) -> None:
    """Two heads (branches a merge would join) or a form the reader does not parse: Alembic decides."""
    write(tmp_path, "a.py", "0001", "None")
    write(tmp_path, "b.py", "0002", '"0001"')
    assert db.script_head(tmp_path) == "0002"
    write(tmp_path, "c.py", "0003", '"0001"')
    assert db.script_head(tmp_path) is None
    write(tmp_path, "d.py", "0004", '("0002", "0003")')  # the merge
    assert db.script_head(tmp_path) == "0004"
    write(tmp_path, "e.py", "0005", "some_name")
    assert db.script_head(tmp_path) is None


@pytest.fixture
def database(pg_url: str) -> Iterator[str]:
    """A new, empty database on the test Postgres."""
    admin = pg_url.replace("/anima?", "/postgres?")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS migrations_test")
        embedded_pg.create_database(admin, "migrations_test")
        embedded_pg.create_database(admin, "migrations_test")  # a second call finds it
    yield pg_url.replace("/anima?", "/migrations_test?")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("DROP DATABASE migrations_test WITH (FORCE)")


def column_exists(url: str, table: str, column: str) -> bool:
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_name = %s AND column_name = %s",
            (table, column),
        ).fetchone()
    return found is not None


def test_an_empty_database_is_migrated(database: str) -> None:
    assert db.schema_revision(database) is None
    assert db.migrate_schema(database) is True
    assert db.schema_revision(database) == alembic_head()


def test_an_older_database_is_still_migrated_and_one_at_head_is_left_alone(database: str) -> None:
    db.upgrade_schema(database, "0005")
    assert db.schema_revision(database) == "0005"
    assert not column_exists(database, "message", "embed_claimed_at")
    assert db.migrate_schema(database) is True
    assert db.schema_revision(database) == alembic_head()
    assert column_exists(database, "message", "embed_claimed_at")  # 0006's: the upgrade really ran
    assert db.migrate_schema(database) is False  # at head: nothing to run
    assert db.schema_revision(database) == alembic_head()
