"""The memory API: conversations (import, append, read, delete), search, and the context inspector."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from memory.archive import ConversationExists, ConversationNotFound, Incoming
from proxy.anima_protocol import (
    Conversation,
    ConversationCreate,
    MemoryMessage,
    MemorySearch,
    MessagesAppend,
    SearchHit,
)
from proxy.deps import ArchiveDep, SettingsDep, UserDep
from proxy.disconnect import cancel_on_disconnect
from proxy.errors import Conflict, NotFound
from proxy.limits import check_sizes

router = APIRouter()
T = TypeVar("T")
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=2**62)]  # Postgres OFFSET is a bigint


async def mapped(work: Awaitable[T]) -> T:
    """Archive errors as OpenAI-style errors."""
    try:
        return await work
    except ConversationNotFound as exc:
        raise NotFound(str(exc), param="conversation_id") from exc
    except ConversationExists as exc:
        raise Conflict(str(exc), param="id") from exc


def incoming(messages: list[MemoryMessage]) -> list[Incoming]:
    return [Incoming(m.role, m.text(), m.name, m.created_at, m.metadata) for m in messages]


@router.post("/conversations", status_code=201, response_model=Conversation)
async def create_conversation(
    body: ConversationCreate, request: Request, archive: ArchiveDep, user: UserDep, settings: SettingsDep
) -> Conversation | Response:
    """Import: one transaction, abandoned (rolled back) if the client leaves before it commits."""
    check_sizes([m.text() for m in body.messages], settings.limits)
    created = archive.create(
        user,
        incoming(body.messages),
        public_id=body.id,
        title=body.title,
        persona=body.persona,
        end_user=body.user or "",
    )
    public_id = await cancel_on_disconnect(request, mapped(created))
    if public_id is None:
        return Response(status_code=499)  # nobody is listening any more; nothing was stored
    return Conversation.model_validate(await archive.info(user, public_id), from_attributes=True)


@router.post("/conversations/{conversation_id}/messages", status_code=201, response_model=Conversation)
async def append_messages(
    conversation_id: str,
    body: MessagesAppend,
    request: Request,
    archive: ArchiveDep,
    user: UserDep,
    settings: SettingsDep,
) -> Conversation | Response:
    check_sizes([m.text() for m in body.messages], settings.limits)
    stored = archive.append(user, conversation_id, incoming(body.messages))
    if await cancel_on_disconnect(request, mapped(stored)) is None:
        return Response(status_code=499)
    return Conversation.model_validate(await archive.info(user, conversation_id), from_attributes=True)


@router.get("/conversations")
async def list_conversations(
    archive: ArchiveDep, user: UserDep, limit: Limit = 50, offset: Offset = 0
) -> dict[str, Any]:
    infos = await archive.conversations(user, limit=limit + 1, offset=offset)
    data = [Conversation.model_validate(i, from_attributes=True) for i in infos[:limit]]
    return {"object": "list", "data": data, "has_more": len(infos) > limit}


@router.get("/conversations/{conversation_id}")
async def get_conversation(conversation_id: str, archive: ArchiveDep, user: UserDep) -> Conversation:
    return Conversation.model_validate(
        await mapped(archive.info(user, conversation_id)), from_attributes=True
    )


@router.get("/conversations/{conversation_id}/messages")
async def list_messages(
    conversation_id: str, archive: ArchiveDep, user: UserDep, limit: Limit = 100, offset: Offset = 0
) -> dict[str, Any]:
    rows = await mapped(archive.messages(user, conversation_id, limit=limit + 1, offset=offset))
    return {"object": "list", "data": rows[:limit], "has_more": len(rows) > limit}


@router.delete("/conversations/{conversation_id}")
async def delete_conversation(conversation_id: str, archive: ArchiveDep, user: UserDep) -> dict[str, Any]:
    await mapped(archive.delete(user, conversation_id))
    return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}


@router.get("/conversations/{conversation_id}/context")
async def get_context(
    conversation_id: str,
    archive: ArchiveDep,
    user: UserDep,
    turn: Annotated[int | None, Query(ge=1, le=2**62)] = None,
) -> JSONResponse:
    return JSONResponse(await mapped(archive.context(user, conversation_id, turn)))


@router.post("/memory/search")
async def search_memory(
    body: MemorySearch, archive: ArchiveDep, user: UserDep, settings: SettingsDep
) -> dict[str, Any]:
    scope = body.scope or settings.memory.recall_scope
    hits = await mapped(
        archive.search(user, body.query, public_id=body.conversation_id, scope=scope, k=body.k)
    )
    return {"object": "list", "data": [SearchHit.model_validate(h, from_attributes=True) for h in hits]}
