"""The app factory: `create_app(settings, services=None)`; `lifespan` builds the services once."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emotion.service import EmotionConfig, EmotionService
from memory.budget import Shares, TokenCounter
from memory.db import (
    DatabaseError,
    EmbeddedPostgres,
    check_pgvector,
    check_schema,
    make_engine,
    make_sessionmaker,
    upgrade_schema,
)
from memory.journal import TurnJournal
from memory.models import EMBEDDING_DIM
from memory.personas import PersonaRecords
from memory.recall import Fusion
from memory.service import MemoryConfig, MemoryService
from memory.users import Users
from personas.client_card import CardIndex
from personas.store import PersonaStore
from proxy.backends.registry import Registry, build_backends
from proxy.errors import RequestTooLarge, error_body, error_response, install_error_handlers
from proxy.limits import RateLimiter
from proxy.logs import RequestLog, quiet_startup
from proxy.metrics import Sampler
from proxy.pipeline import BudgetPolicy, ChatPipeline, RetryPolicy
from proxy.routes import api_router, ui
from proxy.settings import Settings, get_settings

log = logging.getLogger("anima")


@dataclass(slots=True)
class Services:
    """What the app runs on; tests pass their own, production lets `lifespan` build them."""

    registry: Registry
    tokens: TokenCounter
    memory: MemoryService | None = None
    emotion: EmotionService | None = None
    users: Users | None = None
    personas: PersonaStore | None = None
    cards: CardIndex | None = None
    engine: AsyncEngine | None = None
    embedded: EmbeddedPostgres | None = None


async def build_services(settings: Settings) -> Services:
    registry = Registry(build_backends(settings.backends), settings.models)
    tokens = await anyio.to_thread.run_sync(TokenCounter)
    for backend in registry.backends.values():  # load embedded weights now, not on the first request
        warm = getattr(backend, "warm_up", None)
        if warm is not None:
            await warm()
    services = Services(registry=registry, tokens=tokens)
    services.emotion = await open_emotion(settings)
    if settings.memory.enabled:
        await open_memory(settings, services)
    await open_personas(settings, services)
    return services


async def open_personas(settings: Settings, services: Services) -> None:
    """The personas folder (created on first start), versions in Postgres when memory is on."""
    folder = settings.personas_folder()
    await anyio.to_thread.run_sync(lambda: folder.mkdir(parents=True, exist_ok=True))
    memory = services.memory
    records = PersonaRecords(memory.sessions) if memory is not None else None
    services.personas = PersonaStore(folder, examples=settings.personas.examples, records=records)
    report = await services.personas.reload()
    log.info("personas: %s loaded from %s", ", ".join(report.loaded) or "none", folder)
    if memory is not None and records is not None and settings.personas.cards:
        services.cards = CardIndex(records, memory.embedder, services.tokens)


async def open_emotion(settings: Settings) -> EmotionService:
    """The emotion step; with emotion off it still scores importance, just without a detector."""
    e = settings.emotion
    detector = None
    if e.enabled:
        from emotion.detector import MiniLMEmotionDetector

        cache = settings.data_dir / "models"
        detector = await anyio.to_thread.run_sync(
            lambda: MiniLMEmotionDetector.load(cache, min_confidence=e.min_confidence)
        )
    return EmotionService(detector, emotion_config(settings))


def emotion_config(settings: Settings) -> EmotionConfig:
    e = settings.emotion
    return EmotionConfig(
        disabled_personas=frozenset(name.casefold() for name in e.disabled_personas),
        mood_decay=e.mood_decay,
        recall_boost=e.recall_boost,
        rrf_k=settings.memory.rrf_k,
        deadline_s=e.deadline_ms / 1000,
    )


async def open_memory(settings: Settings, services: Services) -> None:
    """Connect (or start the embedded Postgres and migrate it), load the embedder, build memory."""
    from memory.embedder import chunk_text, load_embedder

    if settings.database_url is None:
        services.embedded = EmbeddedPostgres(settings.data_dir)
        url = await anyio.to_thread.run_sync(services.embedded.start)
    else:
        url = settings.database_url.get_secret_value()
    services.engine = make_engine(url)
    await check_pgvector(services.engine)
    if services.embedded is not None:
        await anyio.to_thread.run_sync(upgrade_schema, url)  # the two-command experience
    else:
        await check_schema(services.engine)  # production runs `anima db upgrade` first
    embedder = await anyio.to_thread.run_sync(load_embedder, settings.data_dir / "models")
    if embedder.dim != EMBEDDING_DIM:
        raise DatabaseError(
            f"the embedder makes {embedder.dim}-d vectors; the schema stores {EMBEDDING_DIM}-d"
        )
    sessions = make_sessionmaker(services.engine)
    services.memory = MemoryService(
        sessions,
        services.tokens,
        embedder,
        memory_config(settings),
        chunker=chunk_text,
        annotate=services.emotion.annotate if services.emotion else None,
        journal=await anyio.to_thread.run_sync(
            lambda: TurnJournal.open(
                settings.data_dir / "journal", max_entries=settings.memory.journal_max_turns
            )
        ),
    )
    services.users = Users(sessions)


def memory_config(settings: Settings) -> MemoryConfig:
    m = settings.memory
    return MemoryConfig(
        window_turns=m.window_turns,
        window_conversations=m.window_conversations,
        recall_k=m.recall_k,
        scope=m.recall_scope,
        fusion=Fusion(
            vector_weight=m.vector_weight,
            text_weight=m.text_weight,
            rrf_k=m.rrf_k,
            min_similarity=m.min_similarity,
        ),
        deadline_s=m.deadline_ms / 1000,
        summary_min_messages=m.summary_min_messages,
        embed_batch=m.embed_batch,
    )


def start_workers(
    memory: MemoryService | None, pipeline: ChatPipeline, settings: Settings
) -> list[asyncio.Task[None]]:
    """The embedding and summary workers of this process (each worker process runs its own)."""
    if memory is None:
        return []
    loop = asyncio.get_running_loop()
    tasks = []
    if memory.embeddings is not None:
        tasks.append(loop.create_task(memory.embeddings.run()))

    async def summarize(model: str, prompt: str) -> str:
        return await pipeline.complete_text(settings.memory.summary_model or model, prompt)

    tasks.append(loop.create_task(memory.summaries.run(summarize)))
    tasks.append(loop.create_task(memory.run_journal()))
    return tasks


async def stop_workers(tasks: list[asyncio.Task[None]], memory: MemoryService | None) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if memory is not None:
        await memory.settle()  # turns answered before shutdown are still stored


async def close_services(services: Services) -> None:
    for backend in services.registry.backends.values():
        await backend.aclose()
    if services.engine is not None:
        await services.engine.dispose()
    if services.embedded is not None:
        await anyio.to_thread.run_sync(services.embedded.stop)


class CollapseSlashes:
    """Serve `//chat/completions` and `/v1//models` like their single-slash forms (SillyTavern); a path
    with a NUL character is a 400 before routing (Postgres could not look it up)."""

    _runs = re.compile(r"/{2,}")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "\x00" in scope["path"]:  # %00: no id or name may hold one
            body = error_body("The request path contains a NUL character.", "invalid_request_error")
            await error_response(400, body)(scope, receive, send)
            return
        if scope["type"] == "http" and "//" in scope["path"]:
            scope["path"] = self._runs.sub("/", scope["path"])  # in place: RequestLog reads the route
        await self.app(scope, receive, send)


class BodyLimit:
    """413 for a request body over `max_bytes`: by its Content-Length at once, else while it streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise RequestTooLarge(self._message(), param=None)
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return f"The request body is larger than this server accepts ({self.max_bytes} bytes)."

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, RequestTooLarge(self._message()).body())
        await response(scope, receive, send)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def check_exposure(settings: Settings, services: Services) -> None:
    """Open mode (no keys) serves anyone who can connect: only on loopback, unless explicitly forced."""
    if is_loopback(settings.host) or settings.allow_open:
        return
    if services.users is not None and not await services.users.open_mode():
        return
    raise RuntimeError(
        f"refusing to serve on {settings.host} without API keys: anyone who can reach it would read and write"
        " every conversation. Create a key (`anima keys create NAME`), bind to 127.0.0.1, or set"
        " ANIMA_ALLOW_OPEN=true to accept the risk."
    )


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = services is None
        built = services or await build_services(settings)
        m = settings.memory
        pipeline = ChatPipeline(
            built.registry,
            built.tokens,
            retry=RetryPolicy(retries=settings.retries, backoff_s=settings.retry_backoff_s),
            memory=built.memory,
            emotion=built.emotion,
            budget=BudgetPolicy(
                shares=Shares(m.share_persona, m.share_recall, m.share_history, m.share_reply),
                default_window=m.default_context_window,
            ),
            personas=built.personas,
            cards=built.cards,
            default_persona=settings.personas.default,
            log_content=settings.log_content,
        )
        app.state.settings, app.state.pipeline, app.state.users = settings, pipeline, built.users
        if owned:
            try:
                await check_exposure(settings, built)
            except RuntimeError:
                await close_services(built)
                raise
        app.state.services, app.state.personas = built, built.personas
        app.state.limiter = RateLimiter(
            settings.limits.requests_per_minute, settings.limits.tokens_per_minute
        )
        tasks = start_workers(built.memory, pipeline, settings)
        app.state.sampler = Sampler(pipeline)
        tasks.append(asyncio.get_running_loop().create_task(app.state.sampler.run()))
        if built.personas is not None and settings.personas.reload_s > 0:
            tasks.append(
                asyncio.get_running_loop().create_task(built.personas.watch(settings.personas.reload_s))
            )
        log.info(
            "Anima ready: %d backend(s), memory %s, emotion %s",
            len(built.registry.backends),
            "on" if built.memory else "off",
            "on" if built.emotion and built.emotion.detector else "off",
        )
        try:
            yield
        finally:
            await stop_workers(tasks, built.memory)
            if owned:
                await close_services(built)

    # Swagger UI and ReDoc from the assets fastapi-offline ships: /docs works without a CDN.
    app = FastAPIOffline(title="Anima", version="0.1.0", lifespan=lifespan, static_url="/static/docs")
    install_error_handlers(app)
    app.include_router(api_router())
    app.mount("/ui/static", ui.assets(), name="ui")
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
    app.add_middleware(BodyLimit, max_bytes=settings.limits.max_body_bytes)
    app.add_middleware(CollapseSlashes)
    app.add_middleware(RequestLog)
    return app


def app_factory() -> FastAPI:
    """uvicorn entry point (`proxy.main:app_factory`, factory=True): settings from env and anima.toml."""
    quiet_startup()
    return create_app(get_settings())
