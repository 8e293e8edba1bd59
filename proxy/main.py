"""The app factory: `create_app(settings, services=None)`; `lifespan` builds the services once."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.middleware.cors import CORSMiddleware

from emotion.service import EmotionConfig, EmotionService
from memory.budget import Shares, TokenCounter
from memory.db import (
    DatabaseError,
    check_pgvector,
    check_schema,
    make_engine,
    make_sessionmaker,
)
from memory.embedded_pg import (
    EmbeddedPostgres,
    started_early,
)
from memory.embedder import Embedder
from memory.journal import InFlight, TurnJournal
from memory.lexical import BM25
from memory.models import EMBEDDING_DIM
from memory.personas import PersonaRecords
from memory.recall import Fusion
from memory.service import MemoryConfig, MemoryService
from memory.users import Users
from personas.client_card import CardIndex
from personas.store import PersonaStore
from proxy import early
from proxy.backends.base import Backend
from proxy.backends.registry import Registry, build_backends
from proxy.errors import install_error_handlers
from proxy.knowledge import Knowledge, start_facts
from proxy.limits import RateLimiter
from proxy.logs import RequestLog, quiet_startup
from proxy.metrics import Sampler
from proxy.middleware import BodyLimit, CollapseSlashes, JsonBodies
from proxy.pipeline import BudgetPolicy, ChatPipeline, RetryPolicy
from proxy.reason import ReasonPhrase
from proxy.routes import add_routes, ui
from proxy.settings import Settings, get_settings

log = logging.getLogger("anima")
T = TypeVar("T")


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
    """Everything start-up waits for, started at once: the embedded Postgres (start + migrations), the
    emotion and recall graphs (opened from the shared model cache, never exported here), the token
    counter and any embedded backend's weights. Only the assembly of memory waits for its parts."""
    memory_on = settings.memory.enabled
    database = embedder = None
    steps: dict[str, float] = {}
    started, cpu_before = time.perf_counter(), time.process_time()
    try:
        async with asyncio.TaskGroup() as group:
            tokens = group.create_task(timed(steps, "tokenizer", early.adopt("tokens", TokenCounter)))
            backends = group.create_task(timed(steps, "backends", open_backends(settings)))
            emotion = group.create_task(timed(steps, "emotion", open_emotion(settings)))
            if memory_on:
                database = group.create_task(timed(steps, "database", open_database(settings)))
                embedder = group.create_task(timed(steps, "embedder", open_embedder()))
    except ExceptionGroup as failed:
        if database is not None and database.done() and not database.cancelled() and not database.exception():
            await close_database(*database.result())
        raise failed.exceptions[0] from None  # the reason, not a group of one
    registry = Registry(backends.result(), settings.models)
    services = Services(registry=registry, tokens=tokens.result(), emotion=emotion.result())
    if database is not None and embedder is not None:
        services.embedded, services.engine = database.result()
        await open_memory(settings, services, embedder.result())
    await open_personas(settings, services)
    parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in steps.items())
    log.info(
        "services up in %.1f s (process CPU so far %.1f s, %.1f s before start-up), concurrently"
        " (or waited for, when begun before the app's imports): %s",
        time.perf_counter() - started,
        time.process_time(),
        cpu_before,
        parts,
    )
    return services


async def timed(steps: dict[str, float], name: str, step: Awaitable[T]) -> T:
    """Await one start-up step, recording how long it took (logged once, all steps together)."""
    started = time.perf_counter()
    try:
        return await step
    finally:
        steps[name] = time.perf_counter() - started


async def open_backends(settings: Settings) -> dict[str, Backend]:
    """Every configured backend, embedded weights loaded now rather than on the first request."""
    key = early.backends_key(settings.backends)
    if early.begun(key):
        return await early.adopt(key, dict)
    backends = build_backends(settings.backends)
    for backend in backends.values():
        warm = getattr(backend, "warm_up", None)
        if warm is not None:
            await warm()
    return backends


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

        detector = await early.adopt(
            early.emotion_key(e.min_confidence),
            lambda: MiniLMEmotionDetector.load(min_confidence=e.min_confidence),
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


async def open_database(settings: Settings) -> tuple[EmbeddedPostgres | None, AsyncEngine]:
    """Connect (or start the embedded Postgres and migrate it); check pgvector and the schema."""
    if settings.database_url is not None:
        engine = make_engine(settings.database_url.get_secret_value(), **pool(settings))
        await check_pgvector(engine)
        await check_schema(engine)  # production runs `anima db upgrade` first
        return None, engine
    early = started_early(settings.data_dir)  # `anima serve` began it before importing the app
    if early is not None:
        embedded, url = await asyncio.wrap_future(early)
    else:
        embedded = EmbeddedPostgres(settings.data_dir)
        url = await anyio.to_thread.run_sync(lambda: embedded.start(migrate=True))  # two commands
    engine = make_engine(url, **pool(settings))
    await check_pgvector(engine)
    return embedded, engine


def pool(settings: Settings) -> dict[str, float]:
    m = settings.memory
    return {"pool_size": m.db_pool_size, "max_overflow": m.db_max_overflow, "ping_idle_s": m.db_ping_idle_s}


async def open_embedder() -> Embedder:
    """The recall embedder from the shared model cache (a thread: opening the graph takes ~1 s)."""
    from memory.embedder import load_embedder

    embedder = await early.adopt("embedder", load_embedder)
    if embedder.dim != EMBEDDING_DIM:
        raise DatabaseError(
            f"the embedder makes {embedder.dim}-d vectors; the schema stores {EMBEDDING_DIM}-d"
        )
    return embedder


async def open_memory(settings: Settings, services: Services, embedder: Embedder) -> None:
    """Memory on the opened database and embedder, annotated by the emotion step."""
    from memory.embedder import chunk_text

    assert services.engine is not None
    sessions = make_sessionmaker(services.engine)
    journal, inflight = await anyio.to_thread.run_sync(open_journal, settings)
    services.memory = MemoryService(
        sessions,
        services.tokens,
        embedder,
        memory_config(settings),
        chunker=chunk_text,
        annotate=services.emotion.annotate if services.emotion else None,
        journal=journal,
        inflight=inflight,
    )
    services.users = Users(sessions)


def open_journal(settings: Settings) -> tuple[TurnJournal, InFlight]:
    """This process's journal (adopting dead processes' files) and its write-ahead folder, whose files
    left by a dead process become journal entries."""
    folder = settings.data_dir / "journal"
    journal = TurnJournal.open(folder, max_entries=settings.memory.journal_max_turns)
    inflight = InFlight(folder / "inflight")
    inflight.recover(journal)
    return journal, inflight


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
            speaker_boost=m.speaker_boost,
            neighbours=m.recall_neighbours,
            neighbour_factor=m.neighbour_factor,
            bm25=BM25(k1=m.bm25_k1, b=m.bm25_b, sample=m.bm25_sample, pool=m.bm25_pool),
        ),
        deadline_s=m.deadline_ms / 1000,
        summaries=m.summaries,
        summary_min_messages=m.summary_min_messages,
        embed_batch=m.embed_batch,
        drain_concurrency=max(1, m.db_pool_size // 2),  # the other half is the requests' headroom
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
        await close_database(services.embedded, services.engine)


async def close_database(embedded: EmbeddedPostgres | None, engine: AsyncEngine) -> None:
    await engine.dispose()
    if embedded is not None:
        await anyio.to_thread.run_sync(embedded.stop)


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
        m = settings.memory
        pipeline = ChatPipeline(
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
        app.state.limiter = RateLimiter(
            settings.limits.requests_per_minute, settings.limits.tokens_per_minute
        )
        tasks = start_workers(built.memory, pipeline, settings)
        facts = start_facts(pipeline, settings)  # issue 17: the fact worker
        app.state.facts = facts[0] if facts else None
        tasks += [facts[1]] if facts else []
        app.state.sampler = Sampler(pipeline)
        tasks.append(asyncio.get_running_loop().create_task(app.state.sampler.run()))
        if built.personas is not None and settings.personas.reload_s > 0:
            tasks.append(
                asyncio.get_running_loop().create_task(built.personas.watch(settings.personas.reload_s))
            )
        gc.freeze()  # what start-up built lives as long as the process: the collector skips it from now on
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

    quiet_content_loggers(settings.log_content)
    # Swagger UI and ReDoc from the assets fastapi-offline ships: /docs works without a CDN.
    app = FastAPIOffline(title="Anima", version="0.1.0", lifespan=lifespan, static_url="/static/docs")
    app.openapi = _openapi_without_422(app)  # type: ignore[method-assign]
    install_error_handlers(app)
    add_routes(app)
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
    app.add_middleware(JsonBodies)
    app.add_middleware(BodyLimit, max_bytes=settings.limits.max_body_bytes)
    app.add_middleware(CollapseSlashes)
    app.add_middleware(ReasonPhrase)
    app.add_middleware(RequestLog)
    return app


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
