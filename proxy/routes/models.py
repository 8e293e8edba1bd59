"""`GET /v1/models`: every routed model, then `persona@model` aliases, in OpenAI list format."""

from __future__ import annotations

import logging

from fastapi import APIRouter

from memory.users import User
from proxy.deps import CallerDep, PipelineDep, SettingsDep
from proxy.protocol import ModelCard, ModelList

router = APIRouter()
log = logging.getLogger("anima.routes.models")


@router.get("/models")
async def list_models(user: CallerDep, pipeline: PipelineDep, settings: SettingsDep) -> ModelList:
    names = await pipeline.registry.model_names(timeout_s=settings.health_timeout_s)
    cards = [ModelCard(id=name, owned_by=backend) for name, backend in names]
    for persona in await _personas(user, pipeline):  # pickable in clients' model lists (SillyTavern)
        cards += [ModelCard(id=f"{persona}@{name}", owned_by=backend) for name, backend in names]
    return ModelList(data=cards)


async def _personas(user: User | None, pipeline: PipelineDep) -> list[str]:
    store = pipeline.personas
    if store is None:
        return []
    try:
        return [p.name for p in await store.listing(user.id if user else None)]
    except Exception as exc:  # the database is down: the folder's personas are still listed
        log.warning("persona aliases from the personas folder only: %s", exc)
        return sorted(store.shared)
