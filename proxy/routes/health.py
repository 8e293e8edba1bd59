"""Health: `/health/live` (the process serves), `/health/ready` (start-up done, memory up) and `/health`
(each backend probed, concurrently and bounded: 200 while Anima can answer, else 503).

A container's health check is `/health/live`: a backend or an external database being down is not a
reason to restart Anima (it reports it, answers from what it has, and journals turns). `/health/ready`
is for a load balancer or orchestrator deciding whether to send traffic: 200 once the models are loaded
and, with memory on, the database answers; backends are not part of it.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from emotion.service import EmotionService
from memory.service import MemoryService
from proxy.backends.base import Backend
from proxy.deps import PipelineDep, SettingsDep

router = APIRouter()


async def probe(backend: Backend, timeout_s: float) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            await backend.models()
    except Exception as exc:
        return {"status": "down", "error": str(exc) or type(exc).__name__}
    return {"status": "ok", "latency_ms": round((time.perf_counter() - started) * 1000, 1)}


async def database(memory: MemoryService | None, timeout_s: float) -> dict[str, Any]:
    if memory is None:
        return {"status": "disabled"}
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s), memory.sessions() as session:
            await session.execute(text("SELECT 1"))
    except Exception as exc:
        return {"status": "down", "error": str(exc) or type(exc).__name__}
    return {"status": "ok", "latency_ms": round((time.perf_counter() - started) * 1000, 1)}


def workers(memory: MemoryService | None) -> dict[str, Any]:
    report: dict[str, Any] = {"pid": os.getpid()}
    if memory is not None:
        report["embedding"] = {"failures": memory.embeddings.failures if memory.embeddings else None}
        report["summaries"] = {"queued": memory.summaries.queue.qsize(), "written": memory.summaries.written}
        report["stores_in_flight"] = memory.stores_in_flight
        if memory.journal is not None:
            report["journal"] = {"waiting": len(memory.journal), "refused": memory.journal.refused}
    return report


def emotion(service: EmotionService | None) -> dict[str, Any]:
    if service is None or service.detector is None:
        return {"status": "disabled"}
    return {"status": "ok", "failures": service.failures}


@router.get(
    "/health",
    responses={
        200: {"description": "ok, or degraded: Anima can answer"},
        503: {"description": "unavailable: no backend answers (same body, status `unavailable`)"},
        500: {"description": "Internal error"},
    },
)
async def health(pipeline: PipelineDep, settings: SettingsDep) -> JSONResponse:
    """`ok`; `degraded` (200) when a backend or the database is down but Anima can still answer;
    `unavailable` (503) when no backend answers."""
    backends = pipeline.registry.backends
    probes, db = await asyncio.gather(
        asyncio.gather(*(probe(b, settings.health_timeout_s) for b in backends.values())),
        database(pipeline.memory, settings.health_timeout_s),
    )
    up = sum(p["status"] == "ok" for p in probes)
    healthy = up == len(probes) and db["status"] in ("ok", "disabled")
    status = "ok" if healthy else "degraded" if up else "unavailable"
    body = {
        "status": status,
        "backends": dict(zip(backends, probes, strict=True)),
        "database": db,
        "workers": workers(pipeline.memory),
        "emotion": emotion(pipeline.emotion),
    }
    return JSONResponse(body, status_code=503 if status == "unavailable" else 200)


@router.get("/health/live")
async def live() -> JSONResponse:
    """200 whenever the process serves HTTP: nothing external is probed."""
    return JSONResponse({"status": "live", "pid": os.getpid()})


@router.get("/health/ready")
async def ready(request: Request, settings: SettingsDep) -> JSONResponse:
    """200 when start-up finished (models loaded) and, with memory on, the database answers."""
    pipeline = getattr(request.app.state, "pipeline", None)
    if pipeline is None:
        return JSONResponse({"status": "starting"}, status_code=503)
    db = await database(pipeline.memory, settings.health_timeout_s)
    up = db["status"] in ("ok", "disabled")
    body = {"status": "ready" if up else "not_ready", "database": db, "emotion": emotion(pipeline.emotion)}
    return JSONResponse(body, status_code=200 if up else 503)
