"""`GET /v1/models`: every routed model, in OpenAI list format."""

from __future__ import annotations

from fastapi import APIRouter

from proxy.deps import PipelineDep, SettingsDep
from proxy.protocol import ModelCard, ModelList

router = APIRouter()


@router.get("/models")
async def list_models(pipeline: PipelineDep, settings: SettingsDep) -> ModelList:
    names = await pipeline.registry.model_names(timeout_s=settings.health_timeout_s)
    return ModelList(data=[ModelCard(id=name, owned_by=backend) for name, backend in names])
