"""`GET /health`: each backend probed (concurrently, bounded), 200 while Anima can answer, else 503."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

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


@router.get("/health")
async def health(pipeline: PipelineDep, settings: SettingsDep) -> JSONResponse:
    backends = pipeline.registry.backends
    probes = await asyncio.gather(*(probe(b, settings.health_timeout_s) for b in backends.values()))
    report = dict(zip(backends, probes, strict=True))
    up = sum(p["status"] == "ok" for p in probes)
    status = "ok" if up == len(probes) else "degraded" if up else "unavailable"
    body = {
        "status": status,
        "backends": report,
        "database": {"status": "not_configured"},
        "workers": {"pid": os.getpid()},
    }
    return JSONResponse(body, status_code=503 if status == "unavailable" else 200)
