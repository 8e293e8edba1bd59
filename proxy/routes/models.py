"""`GET /v1/models`: every routed model, then `persona@model` aliases, in OpenAI list format.

The list stays short: aliases only for the routing table's models (not everything a backend lists)
and only for personas meant to be picked (`personas.model_aliases`), never for client-card personas.
"""

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
    routed = [(r.name, r.backend) for r in settings.models]
    for persona in await _personas(user, pipeline, settings.personas.model_aliases):
        cards += [ModelCard(id=f"{persona}@{name}", owned_by=backend) for name, backend in routed]
    return ModelList(data=cards)


async def _personas(user: User | None, pipeline: PipelineDep, chosen: list[str] | None) -> list[str]:
    """The personas offered as aliases: the configured list, else every one but client cards."""
    store = pipeline.personas
    if store is None or chosen == []:
        return []
    try:
        listed = [p.name for p in await store.listing(user.id if user else None) if p.source != "card"]
    except Exception as exc:  # the database is down: the folder's personas are still listed
        log.warning("persona aliases from the personas folder only: %s", exc)
        listed = sorted(store.shared)
    return listed if chosen is None else [name for name in listed if name in chosen]
