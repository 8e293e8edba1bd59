"""Start-up: serving opens the ONNX graphs from the shared model cache (never torch), starts the
embedded Postgres and the models concurrently, and `anima models build` is the install-time step."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from emotion.detector import MiniLMEmotionDetector
from emotion.detector import graph_name as emotion_graph
from memory import embedded_pg, model_cache
from memory.embedder import Embedder
from memory.embedder import graph_name as embedder_graph

ROOT = Path(__file__).resolve().parents[2]

SERVE_PATH = """
import asyncio, sys
from memory import embedded_pg
from proxy.services import build_services, close_services
from proxy.settings import Settings
from proxy.setting_groups import BackendSettings, EmotionSettings, MemorySettings, RouteSettings

settings = Settings(
    _env_file=None, data_dir=sys.argv[1], memory=MemorySettings(enabled=True), emotion=EmotionSettings(),
    backends={"up": BackendSettings(kind="openai", base_url="http://127.0.0.1:9/v1")},
    models=[RouteSettings(name="up/x", backend="up", model="x")],
)
embedded_pg.start_early(settings.data_dir)  # as `anima serve` does before uvicorn imports the app
from proxy import early
early.begin(settings)  # and the models

async def main() -> None:
    services = await build_services(settings)
    try:
        assert services.memory is not None and services.emotion and services.emotion.detector
        assert embedded_pg._early == {}, "the app adopted the early Postgres"
        assert early._begun == {}, "and the models"
        async with services.memory.sessions() as session:
            from sqlalchemy import text
            print("schema", await session.scalar(text("SELECT count(*) FROM alembic_version")))
    finally:
        await close_services(services)

asyncio.run(main())
build_only = ("torch", "transformers", "sentence_transformers")
heavy = sorted(m for m in sys.modules if m.split(".")[0] in build_only)
print("heavy", heavy[:5])
"""


def run(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", **(env or {})),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_serving_opens_cached_graphs_without_torch(
    detector: MiniLMEmotionDetector, embedder: Embedder, tmp_path: Path
) -> None:
    """A fresh data dir: Postgres and the models started early and adopted, migrated; torch,
    transformers and sentence-transformers never imported (they only build the graphs)."""
    done = run(SERVE_PATH, str(tmp_path / "data"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "schema 1" in done.stdout and "heavy []" in done.stdout, done.stdout
    assert not (tmp_path / "data" / "models").exists()  # nothing per data dir


def test_a_missing_graph_without_torch_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(model_cache.ENV, str(tmp_path))
    monkeypatch.setattr(model_cache, "torch_available", lambda: False)  # an image without torch
    with pytest.raises(model_cache.ModelCacheError, match="anima models build"):
        MiniLMEmotionDetector.load()
    assert list(tmp_path.iterdir()) == []


def test_models_build_reports_the_cached_graphs(detector: MiniLMEmotionDetector, embedder: Embedder) -> None:
    """`anima models build` (the install step) is a no-op when the cache already holds both graphs."""
    done = run("from proxy.cli import main; main(['models', 'build'])")
    assert done.returncode == 0, done.stderr[-3000:]
    for name in (embedder_graph(), emotion_graph()):
        found = model_cache.find(name)
        assert found is not None and f": {found}" in done.stdout
    assert "building" not in done.stdout


def test_cache_dirs_follow_the_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(model_cache.ENV, str(tmp_path / "cache"))
    assert model_cache.cache_dirs() == [tmp_path / "cache"]
    assert model_cache.build_dir() == tmp_path / "cache" and (tmp_path / "cache").is_dir()
    monkeypatch.delenv(model_cache.ENV)
    assert model_cache.cache_dirs()[0] == Path(sys.prefix) / "share" / "anima" / "models"


@pytest.mark.slow
def test_a_fresh_data_dir_starts_from_the_template_cluster(tmp_path: Path) -> None:
    """No initdb on a new data dir: the install-time template is copied (owned by the user Postgres
    runs as, private), then started and used like any other."""
    if model_cache.find_dir(embedded_pg.template_name()) is None:  # `make test` builds it at install
        embedded_pg.build_template(model_cache.build_dir() / embedded_pg.template_name())
    server = embedded_pg.EmbeddedPostgres(tmp_path / "data")
    assert embedded_pg.copy_template(server.pgdata)
    assert (server.pgdata / "PG_VERSION").exists() and not (server.pgdata / "postmaster.pid").exists()
    assert server.pgdata.stat().st_mode & 0o777 == 0o700
    url = server.start(migrate=True)
    try:
        assert "/anima" in url
        assert "(1 row)" in server._server.psql("SELECT 1 FROM pg_database WHERE datname = 'anima';")
    finally:
        server.stop()


SHARED_IMPORTS = """
import sys
from pathlib import Path
from memory import embedded_pg
embedded_pg.start_early(Path("/dev/null/anima"))  # the thread fails at once (no folder there): no Postgres
shared = ("memory.schema", "memory.models", "memory.fact_models", "memory.persona_models", "psycopg",
          "sqlalchemy.dialects.postgresql", "pgserver.postgres_server")
print("imported first", [m for m in shared if m not in sys.modules])
"""


def test_start_early_imports_what_its_thread_shares_with_the_app_before_starting_it() -> None:
    """The early Postgres thread (Alembic, psycopg, pgserver) and the app's imports on the main
    thread once met sqlalchemy.dialects.postgresql half-initialised (an ImportError about once in
    25 starts): every module both import is imported before the thread starts."""
    done = run(SHARED_IMPORTS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "imported first []" in done.stdout, done.stdout
