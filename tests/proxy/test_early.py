"""Start-up work begun before the app's imports (`anima serve`): adopted by `build_services`, its
failures reported there as if the app had done the step itself, and redone when nothing was begun."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from memory.budget import TokenCounter
from proxy import early
from proxy.errors import BackendUnavailable
from proxy.services import build_services, close_services
from proxy.setting_groups import BackendSettings
from tests.conftest import make_settings


async def test_work_begun_early_is_adopted_once() -> None:
    threads: list[str] = []

    def work() -> int:
        threads.append(threading.current_thread().name)
        return 7

    early.start("answer", work)
    assert await early.adopt("answer", lambda: 0) == 7
    assert threads == ["early-answer"]  # ran in its own thread, begun before anyone asked
    assert await early.adopt("answer", lambda: 0) == 0  # taken: asked again, the step runs anew


async def test_a_failure_begun_early_surfaces_where_it_is_adopted() -> None:
    def broken() -> int:
        raise OSError("disk gone")

    early.start("broken", broken)
    with pytest.raises(OSError, match="disk gone"):
        await early.adopt("broken", lambda: 0)


async def test_build_services_adopts_what_serve_began(tmp_path: Path) -> None:
    """`anima serve` begins the loads; start-up waits for those very objects instead of loading twice."""
    settings = make_settings(data_dir=tmp_path)
    early.begin(settings)
    begun = dict(early._begun)
    assert set(begun) == {"tokens", early.backends_key(settings.backends)}  # memory and emotion off
    services = await build_services(settings)
    try:
        assert early._begun == {}
        assert services.tokens is begun["tokens"].result()
        assert isinstance(services.tokens, TokenCounter)
        backends = begun[early.backends_key(settings.backends)].result()
        assert services.registry.backends == backends
        assert services.registry.backends["local"]._llama is not None  # type: ignore[attr-defined]
    finally:
        await close_services(services)


async def test_an_early_load_that_fails_fails_start_up(tmp_path: Path) -> None:
    missing = tmp_path / "missing.gguf"
    settings = make_settings(
        data_dir=tmp_path, backends={"local": BackendSettings(kind="embedded", model_path=missing)}
    )
    early.begin(settings)
    with pytest.raises(BackendUnavailable, match="not found"):
        await build_services(settings)
    early._begun.clear()  # what the failed start-up left (the token counter) dies with the process


async def test_a_backend_that_cannot_be_built_is_reported_by_start_up_not_by_begin(tmp_path: Path) -> None:
    """`begin` runs before uvicorn: a bad backend must fail start-up as it always did (uvicorn's
    lifespan error), not crash `anima serve` with a traceback before it."""
    settings = make_settings(data_dir=tmp_path, backends={"g": BackendSettings(kind="gemini")})
    early.begin(settings)
    assert early.backends_key(settings.backends) not in early._begun
    with pytest.raises(ValueError, match="needs an api_key"):
        await build_services(settings)
    early._begun.clear()
