"""Anima's services, built once at start-up and closed at shut-down: the database (embedded or
configured) and its workers, the backends, the emotion reader, the recall embedder, personas and the
pipeline. Slow parts start concurrently, each timed (`build_services`); `proxy/main.py` wires them
into the app.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import anyio
from sqlalchemy.ext.asyncio import AsyncEngine

from emotion.service import EmotionConfig, EmotionService
from memory.budget import TokenCounter
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
from proxy.pipeline import ChatPipeline
from proxy.settings import Settings

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
