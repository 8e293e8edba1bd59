"""What Anima knows about the caller (issue 17): facts, the profile, relationships per persona."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Path, Query
from pydantic import ConfigDict, Field

from memory.fact_models import RelationshipRow
from memory.factbook import FactBook, FactNotFound, NotCurrent, Statement, UnknownName
from memory.facts import KINDS
from personas.knowing import current_stage
from proxy.deps import PipelineDep, UserDep
from proxy.errors import Conflict, InvalidRequest, NotFound
from proxy.pipeline import ChatPipeline
from proxy.protocol import Storable

router = APIRouter()
T = TypeVar("T")
Name = Annotated[str | None, Query(min_length=1, max_length=200, pattern=r"^[^\x00]*$")]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=2**62)]
FactId = Annotated[int, Path(ge=1, le=2**62)]
Kind = Literal[KINDS]  # type: ignore[valid-type]
Subject = Literal["user", "character", "other"]


class FactIn(Storable):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    subject: Subject = "user"
    name: str | None = Field(default=None, min_length=1, max_length=100, description="the other person")
    kind: Kind = "other"
    attribute: str = Field(min_length=1, max_length=80)
    value: str = Field(min_length=1, max_length=200)
    statement: str = Field(min_length=3, max_length=300)
    persona: str | None = Field(default=None, max_length=200)
    conversation_id: str | None = Field(default=None, max_length=200)
    user: str = Field(default="", max_length=200, description="the end user (OpenAI `user` field)")


class FactEdit(Storable):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str | None = Field(default=None, min_length=1, max_length=100)
    kind: Kind | None = None
    attribute: str | None = Field(default=None, min_length=1, max_length=80)
    value: str | None = Field(default=None, min_length=1, max_length=200)
    statement: str | None = Field(default=None, min_length=3, max_length=300)


class RelationshipSet(Storable):
    model_config = ConfigDict(extra="forbid")

    stage: str | None = Field(default=None, min_length=1, max_length=64, description="null: automatic")
    score: float | None = Field(default=None, ge=-1, le=1)
    user: str = Field(default="", max_length=200)


def _book(pipeline: ChatPipeline) -> FactBook:
    assert pipeline.memory is not None  # UserDep answers 503 when memory is off
    return FactBook(pipeline.memory.sessions)


async def mapped(work: Awaitable[T]) -> T:
    try:
        return await work
    except FactNotFound as exc:
        raise NotFound(str(exc), param="fact_id") from exc
    except UnknownName as exc:
        raise NotFound(str(exc), param=exc.param) from exc
    except NotCurrent as exc:
        raise Conflict(str(exc), param="fact_id") from exc


@router.get("/users/me/facts")
async def list_facts(
    pipeline: PipelineDep,
    user: UserDep,
    persona: Name = None,
    conversation_id: Name = None,
    subject: Subject | None = None,
    q: Name = None,
    history: bool = False,
    end_user: Annotated[str | None, Query(alias="user", max_length=200, pattern=r"^[^\x00]*$")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    """Current facts (with `history=true`, superseded versions too), newest first; `q` searches text."""
    where = {
        "persona": persona,
        "conversation": conversation_id,
        "subject": subject,
        "q": q,
        "history": history,
    }
    rows = await mapped(_book(pipeline).find(user, where, limit=limit + 1, offset=offset))
    return {"object": "list", "data": rows[:limit], "has_more": len(rows) > limit}


@router.post("/users/me/facts", status_code=201)
async def create_fact(body: FactIn, pipeline: PipelineDep, user: UserDep) -> dict[str, Any]:
    """A fact the user states: a correction, which wins over what was inferred from chats."""
    if body.subject == "other" and not body.name:
        raise InvalidRequest("A fact about another person needs their `name`.", param="name")
    said = Statement(
        subject=body.subject,
        kind=body.kind,
        attribute=body.attribute,
        value=body.value,
        statement=body.statement,
        name=body.name,
        persona=body.persona,
        conversation=body.conversation_id,
        end_user=body.user,
    )
    return await mapped(_book(pipeline).state(user, said))


@router.get("/users/me/facts/{fact_id}")
async def get_fact(fact_id: FactId, pipeline: PipelineDep, user: UserDep) -> dict[str, Any]:
    return await mapped(_book(pipeline).get(user, fact_id))


@router.patch("/users/me/facts/{fact_id}")
async def edit_fact(fact_id: FactId, body: FactEdit, pipeline: PipelineDep, user: UserDep) -> dict[str, Any]:
    """A new version of the fact (a correction); the old one stays in `history=true`."""
    return await mapped(_book(pipeline).edit(user, fact_id, body.model_dump(exclude_unset=True)))


@router.delete("/users/me/facts/{fact_id}")
async def delete_fact(fact_id: FactId, pipeline: PipelineDep, user: UserDep) -> dict[str, Any]:
    """Forget a fact, with all its earlier versions."""
    gone = await mapped(_book(pipeline).delete(user, fact_id))
    return {"id": fact_id, "object": "fact.deleted", "deleted": True, "versions": gone}


@router.get("/users/me/profile")
async def profile(pipeline: PipelineDep, user: UserDep) -> dict[str, Any]:
    """Everything known, grouped: about the user, the people in their life, the characters; and the
    relationship with each persona."""
    facts = await _book(pipeline).find(user, {}, limit=1000, offset=0)
    about = [f for f in facts if f["subject"] == "user"]
    people: dict[str, list[dict[str, Any]]] = {}
    for f in facts:
        if f["subject"] == "other":
            people.setdefault(f["name"] or "", []).append(f)
    return {
        "object": "user.profile",
        "summary": " ".join(f["statement"] for f in sorted(about, key=lambda f: -f["confidence"])[:20]),
        "user": about,
        "people": [{"name": n, "facts": fs} for n, fs in sorted(people.items())],
        "characters": [f for f in facts if f["subject"] == "character"],
        "relationships": await _relationships(pipeline, user),
    }


@router.get("/users/me/relationships")
async def relationships(pipeline: PipelineDep, user: UserDep) -> dict[str, Any]:
    return {"object": "list", "data": await _relationships(pipeline, user)}


@router.put("/users/me/relationships/{persona}")
async def set_relationship(
    persona: str, body: RelationshipSet, pipeline: PipelineDep, user: UserDep
) -> dict[str, Any]:
    """Set the stage with a persona (kept until set back to null) and optionally the score."""
    resolved = await pipeline.personas.get(user, persona) if pipeline.personas else None
    if resolved is None:
        raise NotFound(f"No persona '{persona}'.", param="persona")
    ladder = [s.name.casefold() for s in resolved.persona.relationship]
    if body.stage is not None and body.stage.casefold() not in ladder:
        raise InvalidRequest(
            f"'{body.stage}' is not a stage of {persona} (stages: {', '.join(ladder) or 'none'}).",
            param="stage",
        )
    row = await mapped(
        _book(pipeline).set_relationship(
            user, persona, end_user=body.user, stage=body.stage, score=body.score
        )
    )
    return await _relationship(pipeline, user, row, persona)


async def _relationships(pipeline: ChatPipeline, user: int) -> list[dict[str, Any]]:
    rows = await _book(pipeline).relationships(user)
    return [await _relationship(pipeline, user, row, name) for row, name in rows]


async def _relationship(pipeline: ChatPipeline, user: int, row: RelationshipRow, name: str) -> dict[str, Any]:
    resolved = await pipeline.personas.get(user, name) if pipeline.personas and name else None
    stage = (
        current_stage(
            resolved.persona,
            pinned=row.stage,
            interactions=row.interactions,
            first_at=row.first_at,
            now=datetime.now(UTC),
            score=row.score,
        )
        if resolved
        else None
    )
    return {
        "object": "relationship",
        "persona": name,
        "user": row.end_user,
        "stage": stage.name if stage else None,
        "set_by_user": row.stage is not None,
        "stages": [s.name for s in resolved.persona.relationship] if resolved else [],
        "score": round(row.score, 3),
        "interactions": row.interactions,
        "first_at": row.first_at,
        "updated_at": row.updated_at,
    }
