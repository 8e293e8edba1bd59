"""The app factory: `create_app(settings, services=None)`; `lifespan` builds the services once."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.middleware.cors import CORSMiddleware

from memory.budget import Shares
from proxy.errors import install_error_handlers
from proxy.knowledge import Knowledge, start_facts
from proxy.limits import RateLimiter
from proxy.logs import RequestLog, quiet_startup
from proxy.metrics import Sampler
from proxy.middleware import BodyLimit, CollapseSlashes, JsonBodies
from proxy.pipeline import BudgetPolicy, ChatPipeline, RetryPolicy
from proxy.reason import ReasonPhrase
from proxy.routes import add_routes, ui
from proxy.services import Services, build_services, close_services, start_workers, stop_workers
from proxy.settings import Settings, get_settings

log = logging.getLogger("anima")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def open_allowed(settings: Settings) -> bool:
    """Open mode (no keys) serves anyone who can connect: only on loopback, unless explicitly forced."""
    return is_loopback(settings.host) or settings.allow_open


async def check_exposure(settings: Settings, services: Services) -> None:
    """Refuse to start where open mode is not allowed and no key exists: nobody could get in."""
    if open_allowed(settings):
        return
    if services.users is not None and await services.users.keys_exist():
        return
    raise RuntimeError(
        f"refusing to serve on {settings.host} without API keys: anyone who can reach it would read and write"
        " every conversation. Create a key (`anima keys create NAME`), bind to 127.0.0.1, or set"
        " ANIMA_ALLOW_OPEN=true to accept the risk."
    )


# Libraries that log request or reply text at debug/info level: sse_starlette logs every streamed
# chunk, SQLAlchemy's engine logs statement parameters (message text) when its logger is enabled.
CONTENT_LOGGERS = ("sse_starlette", "sqlalchemy.engine")


def quiet_content_loggers(log_content: bool) -> None:
    """Unless ANIMA_LOG_CONTENT is set, those loggers say nothing below WARNING, whatever the log level."""
    for name in CONTENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if log_content else logging.WARNING)


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = services is None
        built = services or await build_services(settings)
        tasks = await _start(app, settings, built, owned=owned)
        try:
            yield
        finally:
            await stop_workers(tasks, built.memory)
            if owned:
                await close_services(built)

    quiet_content_loggers(settings.log_content)
    # Swagger UI and ReDoc from the assets fastapi-offline ships: /docs works without a CDN.
    app = FastAPIOffline(title="Anima", version="0.1.0", lifespan=lifespan, static_url="/static/docs")
    app.openapi = _openapi_without_422(app)  # type: ignore[method-assign]
    install_error_handlers(app)
    add_routes(app)
    app.mount("/ui/static", ui.assets(), name="ui")
    _add_middleware(app, settings)
    return app


async def _start(
    app: FastAPI, settings: Settings, built: Services, *, owned: bool
) -> list[asyncio.Task[None]]:
    """Start-up once the services are built: the pipeline and what the routes read on `app.state`, the
    exposure check (services the app built itself are closed if it fails), open mode decided, the
    background tasks started (returned: the lifespan stops them at shutdown)."""
    pipeline = _pipeline(settings, built)
    app.state.settings, app.state.pipeline, app.state.users = settings, pipeline, built.users
    if owned:
        try:
            await check_exposure(settings, built)
        except RuntimeError:
            await close_services(built)
            raise
    if built.users is not None:  # open mode is decided now, once: it can end at run time, never begin
        await built.users.start(open_allowed=open_allowed(settings))
    app.state.services, app.state.personas = built, built.personas
    app.state.limiter = RateLimiter(settings.limits.requests_per_minute, settings.limits.tokens_per_minute)
    tasks = _start_background(app, settings, built, pipeline)
    gc.freeze()  # what start-up built lives as long as the process: the collector skips it from now on
    log.info(
        "Anima ready: %d backend(s), memory %s, emotion %s",
        len(built.registry.backends),
        "on" if built.memory else "off",
        "on" if built.emotion and built.emotion.detector else "off",
    )
    return tasks


def _pipeline(settings: Settings, built: Services) -> ChatPipeline:
    """The chat pipeline over the built services, its policies taken from the settings."""
    m = settings.memory
    return ChatPipeline(
        built.registry,
        built.tokens,
        retry=RetryPolicy(retries=settings.retries, backoff_s=settings.retry_backoff_s),
        memory=built.memory,
        emotion=built.emotion,
        budget=BudgetPolicy(
            shares=Shares(m.share_persona, m.share_recall, m.share_history, m.share_reply, m.share_facts),
            default_window=m.default_context_window,
        ),
        personas=built.personas,
        cards=built.cards,
        default_persona=settings.personas.default,
        log_content=settings.log_content,
        knowledge=Knowledge(built.memory.sessions, built.tokens, share=m.share_facts)
        if built.memory is not None and m.facts_enabled
        else None,  # issue 17
    )


def _start_background(
    app: FastAPI, settings: Settings, built: Services, pipeline: ChatPipeline
) -> list[asyncio.Task[None]]:
    """Memory's workers, the fact worker, the metrics sampler and the persona folder watch: the tasks
    the lifespan stops at shutdown."""
    tasks = start_workers(built.memory, pipeline, settings)
    facts = start_facts(pipeline, settings)  # issue 17: the fact worker
    app.state.facts = facts[0] if facts else None
    tasks += [facts[1]] if facts else []
    app.state.sampler = Sampler(pipeline)
    tasks.append(asyncio.get_running_loop().create_task(app.state.sampler.run()))
    if built.personas is not None and settings.personas.reload_s > 0:
        tasks.append(asyncio.get_running_loop().create_task(built.personas.watch(settings.personas.reload_s)))
    return tasks


def _add_middleware(app: FastAPI, settings: Settings) -> None:
    """The middleware stack; the last added runs first (RequestLog outermost)."""
    if settings.cors_origins:  # closed by default: no CORS headers, so browsers block other origins
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "X-Api-Key",
                "X-Anima-Conversation",
                "X-Anima-Persona",
            ],
            expose_headers=["X-Anima-Conversation", "X-Anima-Persona", "X-Anima-Memory", "X-Anima-Backend"],
        )
    app.add_middleware(JsonBodies)
    app.add_middleware(BodyLimit, max_bytes=settings.limits.max_body_bytes)
    app.add_middleware(CollapseSlashes)
    app.add_middleware(ReasonPhrase)
    app.add_middleware(RequestLog)


def _openapi_without_422(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI documents a 422 on every route; Anima answers validation errors with a 400 (as OpenAI
    does), listed with the other errors, so the 422 and its schemas leave the document."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        return schema

    return openapi


def app_factory() -> FastAPI:
    """uvicorn entry point (`proxy.main:app_factory`, factory=True): settings from env and anima.toml."""
    quiet_startup()
    return create_app(get_settings())
