"""`POST /v1/embeddings`: the built-in MiniLM (the model memory's recall uses) under its own name, or a
routed backend's embeddings, in OpenAI's wire format (floats or base64 little-endian float32)."""

from __future__ import annotations

import base64
from typing import cast

import anyio
import numpy as np
from fastapi import APIRouter, Request

from memory.embedder import EMBEDDING_DIM, Embedder, load_embedder
from proxy.backends.base import BackendCannot, Embeddings, Embeds
from proxy.deps import PipelineDep, SettingsDep
from proxy.errors import UnsupportedParameter
from proxy.pipeline import ChatPipeline
from proxy.protocol import Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage
from proxy.settings import Settings

router = APIRouter()


@router.post("/embeddings")
async def create_embeddings(
    body: EmbeddingRequest, request: Request, pipeline: PipelineDep, settings: SettingsDep
) -> EmbeddingList:
    inputs = body.inputs()
    if body.model == settings.embedding_model:
        result = await _builtin(request, pipeline, settings, inputs, body.dimensions)
    else:
        result = await _routed(pipeline, body.model, inputs, body.dimensions)
    tokens = result.prompt_tokens
    if tokens is None:
        tokens = sum(pipeline.tokens.count(t) if isinstance(t, str) else len(t) for t in inputs)
    data = [
        Embedding(index=i, embedding=_base64(v) if body.encoding_format == "base64" else v)
        for i, v in enumerate(result.vectors)
    ]
    return EmbeddingList(
        data=data, model=body.model, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
    )


async def _routed(
    pipeline: ChatPipeline, model: str, inputs: list[str] | list[list[int]], dimensions: int | None
) -> Embeddings:
    """The model's primary route only: a fallback model's vectors live in another space, so mixing
    them into a client's index would silently corrupt it."""
    route = pipeline.registry.resolve(model)[0]
    if not hasattr(route.backend, "embed"):
        raise BackendCannot(route.backend.name, route.model, "compute embeddings", param="model")
    return await cast(Embeds, route.backend).embed(route.model, inputs, dimensions)


async def _builtin(
    request: Request,
    pipeline: ChatPipeline,
    settings: Settings,
    inputs: list[str] | list[list[int]],
    dimensions: int | None,
) -> Embeddings:
    if dimensions is not None and dimensions != EMBEDDING_DIM:
        raise UnsupportedParameter(
            f"{settings.embedding_model} makes {EMBEDDING_DIM}-dimensional vectors only.", param="dimensions"
        )
    texts = [t for t in inputs if isinstance(t, str)]
    if len(texts) != len(inputs):
        raise UnsupportedParameter(f"{settings.embedding_model} takes text, not token arrays.", param="input")
    embedder = await _embedder(request, pipeline, settings)
    return Embeddings(await embedder.embed(texts))


async def _embedder(request: Request, pipeline: ChatPipeline, settings: Settings) -> Embedder:
    """Memory's embedder when memory is on; otherwise loaded on first use (offline, ≈1 s; two first
    requests at once may both load it, which costs time, never correctness)."""
    if pipeline.memory is not None and pipeline.memory.embedder is not None:
        return pipeline.memory.embedder
    loaded: Embedder | None = getattr(request.app.state, "embedder", None)
    if loaded is None:
        loaded = await anyio.to_thread.run_sync(load_embedder, settings.data_dir / "models")
        request.app.state.embedder = loaded
    return loaded


def _base64(vector: list[float]) -> str:
    """OpenAI's `encoding_format: base64`: the vector's little-endian float32 bytes."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
