"""HTTP routes: thin, each validates, calls one method and picks a response type."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from proxy import metrics
from proxy.deps import limited
from proxy.routes import chat, emotion, health, memory, models, personas, ui, users

PREFIXES = ("/v1", "")  # SillyTavern appends /chat/completions to whatever base URL the user typed


def api_router() -> APIRouter:
    """Every route but /health and /metrics needs the caller's key (once keys exist) and counts against
    its limit."""
    router = APIRouter()
    guarded = [Depends(limited)]
    for prefix in PREFIXES:
        router.include_router(chat.router, prefix=prefix, dependencies=guarded)
        router.include_router(models.router, prefix=prefix, dependencies=guarded)
    for module in (memory, emotion, personas, users):
        router.include_router(module.router, prefix="/v1", dependencies=guarded)
    router.include_router(health.router)
    router.include_router(metrics.router)  # like /health: no key (numbers only, no content)
    router.include_router(ui.router)  # the page itself is public; its data needs the key
    return router
