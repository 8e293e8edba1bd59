"""Start-up work begun before uvicorn imports the app, so it overlaps those seconds of imports.

`anima serve` (one process) calls `begin(settings)` right after starting the embedded Postgres
(`memory.db.start_early`): the emotion and recall graphs, the token counter and the backends (an
embedded model's weights) load in threads of their own. onnxruntime and llama.cpp do that work without
holding the GIL, so it runs on the second core while the main thread imports the app. `build_services`
then `adopt`s each result, or does the step itself when nothing was begun (tests, several workers), so
readiness means the same either way: every model loaded, the database migrated and answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.to_thread

if TYPE_CHECKING:
    from proxy.backends.base import Backend
    from proxy.setting_groups import BackendSettings
    from proxy.settings import Settings

T = TypeVar("T")

_begun: dict[str, Future[Any]] = {}


def start(key: str, work: Callable[[], Any]) -> None:
    """Run `work` in a daemon thread now; its result (or exception) waits for `adopt(key, ...)`."""
    future: Future[Any] = Future()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as exc:  # handed to the app's start-up, which reports it
            future.set_exception(exc)

    _begun[key] = future
    threading.Thread(target=run, name=f"early-{key.split(':')[0]}", daemon=True).start()


def begun(key: str) -> bool:
    return key in _begun


async def adopt(key: str, otherwise: Callable[[], T]) -> T:
    """The result of the work begun under `key` (taken: asked again, the step runs anew), else
    `otherwise()` run now in a worker thread."""
    future = _begun.pop(key, None)
    if future is None:
        return await anyio.to_thread.run_sync(otherwise)
    result: T = await asyncio.wrap_future(future)
    return result


def emotion_key(min_confidence: float) -> str:
    return f"emotion:{min_confidence}"


def backends_key(configs: dict[str, BackendSettings]) -> str:
    return "backends:" + repr(sorted((name, config.model_dump_json()) for name, config in configs.items()))


def warmed(backends: dict[str, Backend]) -> dict[str, Backend]:
    """The backends, an embedded model's weights loaded (blocking; in this thread's own event loop,
    which the weights are not bound to)."""
    for backend in backends.values():
        warm = getattr(backend, "warm_up", None)
        if warm is not None:
            asyncio.run(warm())
    return backends


def begin(settings: Settings) -> None:
    """Begin every model load `build_services` would do for these settings. The modules are imported
    here, on the calling thread, so the threads only run the loads: two threads importing one
    package's modules from different entry points can meet a partially initialised module."""
    from emotion.detector import MiniLMEmotionDetector
    from memory.budget import TokenCounter
    from memory.embedder import load_embedder
    from proxy.backends.registry import build_backends

    start("tokens", TokenCounter)
    try:
        backends = build_backends(settings.backends)  # adapters only: their modules imported here
    except Exception:  # build_services builds them again and reports it as start-up's error
        pass
    else:
        if any(hasattr(backend, "warm_up") for backend in backends.values()):
            with contextlib.suppress(ImportError):  # then warming up says what is missing
                import llama_cpp  # noqa: F401  (the embedded backend's; jinja2 and numpy with it)
        start(backends_key(settings.backends), lambda: warmed(backends))
    if settings.emotion.enabled or settings.memory.enabled:
        with contextlib.suppress(ImportError):  # load_embedder falls back to sentence-transformers
            import onnxruntime  # noqa: F401
    if settings.emotion.enabled:
        confidence = settings.emotion.min_confidence
        start(emotion_key(confidence), lambda: MiniLMEmotionDetector.load(min_confidence=confidence))
    if settings.memory.enabled:
        start("embedder", load_embedder)
