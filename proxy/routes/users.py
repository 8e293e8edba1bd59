"""Privacy and key management: a key's own data (`/v1/users/me`) and the admin routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import ConfigDict, Field

from memory.privacy import export_user
from memory.service import MemoryService
from memory.users import create_key, list_keys, revoke_key
from proxy.deps import AdminDep, CallerDep, PipelineDep
from proxy.errors import MemoryDisabled, NotFound
from proxy.pipeline import ChatPipeline
from proxy.protocol import Storable

router = APIRouter()


class KeyCreate(Storable):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    admin: bool = False
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)


def _memory(pipeline: ChatPipeline) -> MemoryService:
    if pipeline.memory is None:
        raise MemoryDisabled("Nothing is stored: memory is disabled on this server.")
    return pipeline.memory


def _export(pipeline: ChatPipeline, user_id: int) -> StreamingResponse:
    memory = _memory(pipeline)

    async def body() -> AsyncIterator[bytes]:
        async for piece in export_user(memory.sessions, user_id):
            yield piece

    headers = {"Content-Disposition": f'attachment; filename="anima-user-{user_id}.json"'}
    return StreamingResponse(body(), media_type="application/json", headers=headers)


async def _erase(request: Request, pipeline: ChatPipeline, user_id: int) -> dict[str, Any]:
    await _memory(pipeline).erase_user(user_id)
    request.app.state.users.forget()
    if pipeline.personas is not None:
        pipeline.personas.forget_user(user_id)
    if pipeline.cards is not None:
        pipeline.cards.forget_user(user_id)
    return {"id": user_id, "object": "user", "deleted": True}


@router.get("/users/me")
async def me(user: CallerDep) -> dict[str, Any]:
    if user is None:
        return {"id": None, "object": "user", "name": "local", "admin": True, "open_mode": True}
    limits = {"requests_per_minute": user.requests_per_minute, "tokens_per_minute": user.tokens_per_minute}
    return {
        "id": user.id,
        "object": "user",
        "name": user.name,
        "admin": user.admin,
        "open_mode": user.local,
    } | limits


@router.get("/users/me/export")
async def export_me(user: CallerDep, pipeline: PipelineDep) -> StreamingResponse:
    """Everything stored for this key, as one JSON document."""
    _memory(pipeline)
    assert user is not None
    return _export(pipeline, user.id)


@router.delete("/users/me")
async def delete_me(request: Request, user: CallerDep, pipeline: PipelineDep) -> dict[str, Any]:
    """Erase everything of this key: conversations, messages, summaries, personas, and the key itself."""
    _memory(pipeline)
    assert user is not None
    return await _erase(request, pipeline, user.id)


@router.get("/admin/keys")
async def keys(_: AdminDep, pipeline: PipelineDep) -> dict[str, Any]:
    async with _memory(pipeline).sessions() as s:
        found = await list_keys(s)
    return {"object": "list", "data": [_key(k) for k in found]}


def _key(k: Any) -> dict[str, Any]:
    fields = (
        "id",
        "name",
        "prefix",
        "admin",
        "revoked",
        "requests_per_minute",
        "tokens_per_minute",
        "created_at",
    )
    return {f: getattr(k, f) for f in fields}


@router.post("/admin/keys", status_code=201)
async def new_key(body: KeyCreate, _: AdminDep, pipeline: PipelineDep, request: Request) -> dict[str, Any]:
    """A new key, shown once (only its hash is stored). The first key ends open mode."""
    async with _memory(pipeline).sessions.begin() as s:
        user_id, key = await create_key(
            s,
            body.name,
            admin=body.admin,
            requests_per_minute=body.requests_per_minute,
            tokens_per_minute=body.tokens_per_minute,
        )
    request.app.state.users.forget()
    return {"id": user_id, "name": body.name, "admin": body.admin, "key": key}


@router.delete("/admin/keys/{key_id}")
async def revoke(key_id: int, _: AdminDep, pipeline: PipelineDep, request: Request) -> dict[str, Any]:
    """Revoke a key; its data stays until `DELETE /v1/admin/users/{id}`."""
    async with _memory(pipeline).sessions.begin() as s:
        revoked = await revoke_key(s, str(key_id))
    if not revoked:
        raise NotFound(f"No active key has id {key_id}.", param="key_id")
    request.app.state.users.forget()
    return {"id": key_id, "object": "key", "revoked": True}


@router.get("/admin/users/{user_id}/export")
async def export_user_route(user_id: int, _: AdminDep, pipeline: PipelineDep) -> StreamingResponse:
    return _export(pipeline, user_id)


@router.delete("/admin/users/{user_id}")
async def delete_user_route(
    user_id: int, _: AdminDep, request: Request, pipeline: PipelineDep
) -> dict[str, Any]:
    return await _erase(request, pipeline, user_id)
