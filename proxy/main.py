"""The app factory: `create_app(settings, services=None)`; `lifespan` builds the services once."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from memory.budget import TokenCounter
from proxy.backends.registry import Registry, build_backends
from proxy.errors import install_error_handlers
from proxy.pipeline import ChatPipeline, RetryPolicy
from proxy.routes import api_router
from proxy.settings import Settings, get_settings

log = logging.getLogger("anima")


@dataclass(slots=True)
class Services:
    """What the app runs on; tests pass their own, production lets `lifespan` build them."""

    registry: Registry
    tokens: TokenCounter


async def build_services(settings: Settings) -> Services:
    registry = Registry(build_backends(settings.backends), settings.models)
    tokens = await anyio.to_thread.run_sync(TokenCounter)
    for backend in registry.backends.values():  # load embedded weights now, not on the first request
        warm = getattr(backend, "warm_up", None)
        if warm is not None:
            await warm()
    return Services(registry=registry, tokens=tokens)


class CollapseSlashes:
    """Serve `//chat/completions` and `/v1//models` like their single-slash forms (SillyTavern)."""

    _runs = re.compile(r"/{2,}")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "//" in scope["path"]:
            scope = dict(scope, path=self._runs.sub("/", scope["path"]))
        await self.app(scope, receive, send)


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = services is None
        built = services or await build_services(settings)
        app.state.settings = settings
        app.state.pipeline = ChatPipeline(
            built.registry,
            built.tokens,
            retry=RetryPolicy(retries=settings.retries, backoff_s=settings.retry_backoff_s),
        )
        log.info("Anima ready: %d backend(s), %d routed model(s)", len(built.registry.backends), len(settings.models))
        try:
            yield
        finally:
            if owned:
                for backend in built.registry.backends.values():
                    await backend.aclose()

    app = FastAPI(title="Anima", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(api_router())
    app.add_middleware(CollapseSlashes)
    return app


def app_factory() -> FastAPI:
    """uvicorn entry point (`proxy.main:app_factory`, factory=True): settings from env and anima.toml."""
    return create_app(get_settings())
