"""HTTP routes: thin, each validates, calls one method and picks a response type."""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI

from proxy import metrics
from proxy.deps import limited
from proxy.errors import error_responses
from proxy.routes import (
    chat,
    embeddings,
    emotion,
    facts,
    health,
    memory,
    models,
    passthrough,
    personas,
    ui,
    users,
)

PREFIXES = ("/v1", "")  # SillyTavern appends /chat/completions to whatever base URL the user typed


def add_routes(app: FastAPI) -> None:
    """The chat routes straight on the app's router, then the rest. FastAPI matches a route of an
    included router again at every level of inclusion, per request: the busiest route skips that."""
    for prefix in PREFIXES:
        app.router.add_api_route(
            f"{prefix}/chat/completions",
            chat.create_chat_completion,
            methods=["POST"],
            response_model=None,
            dependencies=[Depends(limited)],
            responses=error_responses(),
            route_class_override=chat.ChatRoute,
        )
    app.include_router(api_router())


def api_router() -> APIRouter:
    """Every route but /health and /metrics needs the caller's key (once keys exist) and counts against
    its limit."""
    router = APIRouter()
    guarded, errors = [Depends(limited)], error_responses()
    for prefix in PREFIXES:
        for module in (models, embeddings, passthrough):
            router.include_router(module.router, prefix=prefix, dependencies=guarded, responses=errors)
    for module in (memory, emotion, personas, users, facts):
        router.include_router(module.router, prefix="/v1", dependencies=guarded, responses=errors)
    router.include_router(health.router)
    router.include_router(metrics.router)  # like /health: no key (numbers only, no content)
    router.include_router(ui.router)  # the page itself is public; its data needs the key
    router.include_router(passthrough.fallback, prefix="/v1", dependencies=guarded)  # last: the rest of /v1
    return router
