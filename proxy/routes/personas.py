"""The personas API: list, read, create/replace, adjust one trait, delete, reload, learn from messages."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse

from memory.archive import ConversationNotFound
from memory.personas import VersionConflict
from personas.learn import ProfileError, learn_profile, profile_persona, sample
from personas.models import PersonaError, TraitChange, validate_persona
from personas.store import PersonaNotFound, PersonasReadOnly, PersonaStore
from proxy.anima_protocol import PersonaLearn
from proxy.deps import AdminDep, CallerDep, PipelineDep, SettingsDep
from proxy.errors import (
    BackendError,
    Conflict,
    InvalidRequest,
    MemoryDisabled,
    NotFound,
    PersonaInvalid,
    PersonaReadOnly,
    PersonasDisabled,
)
from proxy.errors import PersonaNotFound as PersonaMissing
from proxy.pipeline import ChatPipeline

router = APIRouter()
log = logging.getLogger("anima.routes.personas")


async def _store(request: Request) -> PersonaStore:
    store: PersonaStore | None = request.app.state.personas
    if store is None:
        raise PersonasDisabled("Personas are not set up on this server.")
    return store


async def _user(user: CallerDep) -> int | None:
    """The key's user; None without a database (the folder's personas are everyone's)."""
    return user.id if user is not None else None


StoreDep = Annotated[PersonaStore, Depends(_store)]
UserDep = Annotated[int | None, Depends(_user)]


@contextlib.contextmanager
def persona_errors() -> Iterator[None]:
    """Persona errors as OpenAI-style errors."""
    try:
        yield
    except PersonaNotFound as exc:
        raise PersonaMissing(str(exc), param="name") from exc
    except PersonaError as exc:
        raise PersonaInvalid(exc.message, param=exc.field) from exc
    except PersonasReadOnly as exc:
        raise PersonaReadOnly(str(exc), param="name") from exc
    except VersionConflict as exc:
        raise Conflict(str(exc), param="version") from exc


@router.get("/personas")
async def list_personas(store: StoreDep, user: UserDep) -> dict[str, Any]:
    personas = await store.listing(user)
    return {"object": "list", "data": [p.public() for p in personas], "errors": store.errors}


@router.get("/personas/{name}")
async def get_persona(name: str, store: StoreDep, user: UserDep) -> dict[str, Any]:
    with persona_errors():
        return (await store.require(user, name)).public()


@router.get("/personas/{name}/versions")
async def persona_versions(name: str, store: StoreDep, user: UserDep) -> dict[str, Any]:
    with persona_errors():
        versions = await store.versions(user, name)
    return {"object": "list", "data": [v.public() for v in versions]}


@router.put(
    "/personas/{name}",
    responses={200: {"description": "replaced"}, 201: {"description": "created (the user's own copy)"}},
)
async def put_persona(
    name: str,
    store: StoreDep,
    user: UserDep,
    body: Annotated[dict[str, Any], Body(description="a persona; `name` defaults to the path's")],
) -> JSONResponse:
    """Create or replace the user's own persona; an unchanged body adds no version."""
    expected = body.pop("version", None)
    if "name" in body and body["name"] != name:
        raise InvalidRequest(f"name: '{body['name']}' does not match the path's '{name}'", param="name")
    with persona_errors():
        persona = validate_persona({**body, "name": name})
        existed = await store.get(user, name)
        saved = await store.put(user, persona, expected_version=_version(expected))
    created = existed is None or existed.shared
    return JSONResponse(saved.public(), status_code=201 if created else 200)


def _version(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest("version: expected the integer version you read", param="version")
    return value


@router.patch("/personas/{name}")
async def patch_persona(name: str, change: TraitChange, store: StoreDep, user: UserDep) -> dict[str, Any]:
    """Raise, lower or set one trait: a new version (a shared persona becomes the user's own copy)."""
    with persona_errors():
        return (await store.patch(user, name, change)).public()


@router.delete("/personas/{name}")
async def delete_persona(name: str, store: StoreDep, user: UserDep) -> dict[str, Any]:
    with persona_errors():
        await store.delete(user, name)
    return {"id": name, "object": "persona", "deleted": True}


@router.post("/personas/reload")
async def reload_personas(store: StoreDep, _: AdminDep) -> dict[str, Any]:
    return (await store.reload()).public()


@router.post("/personas/{name}/learn", status_code=201)
async def learn_persona(
    name: str,
    body: PersonaLearn,
    request: Request,
    store: StoreDep,
    user: UserDep,
    pipeline: PipelineDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    """Profile someone's messages with the LLM and store the result as a new version of `name`."""
    if pipeline.memory is None:
        raise MemoryDisabled("Learning a persona stores it: memory must be on (ANIMA_MEMORY__ENABLED).")
    texts = body.messages or await _conversation_texts(pipeline, user, body)
    if not texts:
        raise InvalidRequest("there are no messages to learn from", param="messages")
    model = body.model or settings.personas.learn_model or settings.models[0].name
    chosen = sample(texts, pipeline.tokens, settings.personas.learn_max_tokens)

    async def complete(prompt: str, schema: dict[str, Any]) -> str:
        return await pipeline.complete_text(model, prompt, max_tokens=700, json_schema=schema)

    title = body.display_name or name
    try:
        profile = await learn_profile(complete, title, chosen, tries=settings.personas.learn_tries)
    except ProfileError as exc:
        raise BackendError(f"the model did not produce a valid profile: {exc}", param="model") from exc
    note = f"learned from {len(chosen)} of {len(texts)} messages by {model}"
    with persona_errors():
        base = await store.get(user, name)
        persona = profile_persona(name, profile, base.persona if base else None)
        if body.display_name:
            persona = persona.model_copy(update={"display_name": body.display_name})
        saved = await store.put(user, persona, source="learned", note=note)
    return saved.public() | {"profile": profile.model_dump(), "messages_used": len(chosen)}


async def _conversation_texts(pipeline: ChatPipeline, user: int | None, body: PersonaLearn) -> list[str]:
    assert body.conversation_id is not None and user is not None and pipeline.memory is not None
    try:
        stored = await pipeline.memory.archive.branch(user, body.conversation_id, limit=100_000)
    except ConversationNotFound as exc:
        raise NotFound(str(exc), param="conversation_id") from exc
    return [m.content for m in stored if m.role == body.role]
