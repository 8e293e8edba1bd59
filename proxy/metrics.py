"""Prometheus metrics: every metric object, the `timed()` step hook, and `GET /metrics`.

The rest of the code only calls the small functions here (`timed("recall")`, `count_tokens(...)`), so
instrumentation stays one line at each call site. With `anima serve --workers N` uvicorn runs N
processes: `launch.serve` then points PROMETHEUS_MULTIPROC_DIR at a fresh folder before the workers start,
prometheus-client writes each process's values there, and whichever worker answers a scrape sums them.

Counters kept as plain ints by memory and emotion (they may not import proxy) are copied in as
deltas by `sample()`, which runs every few seconds in each worker and on every scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, TypeVar

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics import MetricWrapperBase
from sqlalchemy import text

if TYPE_CHECKING:
    from proxy.pipeline import ChatPipeline

log = logging.getLogger("anima.metrics")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds: from a cached recall (~1 ms) to a slow local model's whole reply (minutes).
LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
STEPS = ("recognise", "recall", "emotion", "assemble", "backend_ttft")

REQUESTS = Counter("anima_requests", "HTTP requests answered", ["route", "method", "status", "backend"])
REQUEST_SECONDS = Histogram(
    "anima_request_duration_seconds",
    "Whole request, until the last byte (streams included)",
    ["route", "method"],
    buckets=LATENCY,
)
STEP_SECONDS = Histogram(
    "anima_pipeline_step_seconds", "One step of a chat turn (successful runs)", ["step"], buckets=LATENCY
)
TOKENS = Counter(
    "anima_tokens", "Tokens sent to (in) and received from (out) backends", ["direction", "backend"]
)
MEMORY_TURNS = Counter("anima_memory_turns", "Chat turns by memory status (ok, degraded, off)", ["status"])
DEGRADED = Counter("anima_memory_degraded", "Turns answered with degraded memory, by reason", ["reason"])
DEADLINE_MISSED = Counter("anima_deadline_missed", "Request-path steps that missed their deadline", ["step"])
STORE_FAILURES = Counter("anima_store_failures", "Turns that could not be stored (nor journaled)")
EMBED_FAILURES = Counter("anima_embedding_failures", "Embedding batches that failed")
JOURNAL_REFUSED = Counter("anima_journal_refused", "Turns refused by a full journal")
JOURNAL_DEPTH = Gauge(
    "anima_journal_depth", "Turns journaled on disk, waiting for Postgres", multiprocess_mode="livesum"
)
STORES_IN_FLIGHT = Gauge(
    "anima_stores_in_flight", "Turns being stored in the background", multiprocess_mode="livesum"
)
SUMMARIES_QUEUED = Gauge(
    "anima_summaries_queued", "Summary jobs waiting in this process", multiprocess_mode="livesum"
)
EMBED_BACKLOG = Gauge(
    "anima_embedding_backlog", "Stored messages not embedded yet", multiprocess_mode="livemostrecent"
)


M = TypeVar("M", bound=MetricWrapperBase)


@functools.lru_cache(maxsize=1024)
def _child(metric: M, *values: str) -> M:
    """`metric.labels(*values)`, looked up once: the same child every time, without prometheus-client's
    label checks and lock on each of a chat turn's half-dozen observations (issue 15)."""
    return metric.labels(*values)


@contextlib.contextmanager
def timed(step: str) -> Iterator[None]:
    """`with timed("recall"):` observes how long the block took; a block that raises is not observed."""
    started = time.perf_counter()
    yield
    _child(STEP_SECONDS, step).observe(time.perf_counter() - started)


def observe_request(route: str, method: str, status: int, backend: str, seconds: float) -> None:
    _child(REQUESTS, route, method, str(status), backend).inc()
    _child(REQUEST_SECONDS, route, method).observe(seconds)


def count_tokens(backend: str, prompt: int, completion: int) -> None:
    _child(TOKENS, "in", backend).inc(prompt)
    _child(TOKENS, "out", backend).inc(completion)


def memory_turn(status: str, degraded: tuple[str, ...]) -> None:
    """One chat turn's memory status and, when degraded, why (`recall_deadline` is a missed deadline)."""
    _child(MEMORY_TURNS, status).inc()
    for reason in degraded:
        _child(DEGRADED, reason).inc()
        if reason.endswith("_deadline"):
            _child(DEADLINE_MISSED, reason.removesuffix("_deadline")).inc()
    if status == "degraded" and not degraded:
        _child(DEGRADED, "memory_unavailable").inc()


class Sampler:
    """Copies the services' own counters and queue sizes into the metrics of this process."""

    def __init__(self, pipeline: ChatPipeline) -> None:
        self.pipeline = pipeline
        self._seen: dict[str, int] = {}

    def _delta(self, counter: Counter, name: str, value: int) -> None:
        if value > self._seen.get(name, 0):
            counter.inc(value - self._seen.get(name, 0))
        self._seen[name] = value

    def local(self) -> None:
        memory, emotion = self.pipeline.memory, self.pipeline.emotion
        if emotion is not None:
            self._delta(DEADLINE_MISSED.labels("emotion"), "emotion_deadline", emotion.deadline_misses)
        if memory is None:
            return
        self._delta(STORE_FAILURES, "store_failures", memory.store_failures)
        if memory.embeddings is not None:
            self._delta(EMBED_FAILURES, "embed_failures", memory.embeddings.failures)
        if memory.journal is not None:
            JOURNAL_DEPTH.set(len(memory.journal))
            self._delta(JOURNAL_REFUSED, "journal_refused", memory.journal.refused)
        STORES_IN_FLIGHT.set(memory.stores_in_flight)
        SUMMARIES_QUEUED.set(memory.summaries.queue.qsize())

    async def backlog(self, timeout_s: float = 1.0) -> None:
        """Messages waiting for the embedding worker (one count in Postgres; skipped if it is slow)."""
        memory = self.pipeline.memory
        if memory is None:
            return
        try:
            async with asyncio.timeout(timeout_s), memory.sessions() as session:
                waiting = await session.scalar(text("SELECT count(*) FROM message WHERE NOT embedded"))
            EMBED_BACKLOG.set(int(waiting or 0))
        except Exception as exc:
            log.debug("embedding backlog unknown: %s", exc)

    async def run(self, interval_s: float = 5.0) -> None:
        """Until cancelled: keep this worker's copies fresh (a scrape reaches only one worker)."""
        while True:
            self.local()
            await asyncio.sleep(interval_s)


def exposition() -> bytes:
    """The text format, summed over every worker process in multi-process mode."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    sampler: Sampler | None = getattr(request.app.state, "sampler", None)
    if sampler is not None:
        sampler.local()
        await sampler.backlog()
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
