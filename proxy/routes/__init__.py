"""HTTP routes: thin, each validates, calls one method and picks a response type."""

from __future__ import annotations

from fastapi import APIRouter

from proxy.routes import chat, emotion, health, memory, models, personas

PREFIXES = ("/v1", "")  # SillyTavern appends /chat/completions to whatever base URL the user typed


def api_router() -> APIRouter:
    router = APIRouter()
    for prefix in PREFIXES:
        router.include_router(chat.router, prefix=prefix)
        router.include_router(models.router, prefix=prefix)
    router.include_router(memory.router, prefix="/v1")
    router.include_router(emotion.router, prefix="/v1")
    router.include_router(personas.router, prefix="/v1")
    router.include_router(health.router)
    return router
