"""The emotion API: analyse texts, and a conversation's mood trajectory."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from emotion.service import EmotionService
from proxy.anima_protocol import EmotionAnalyze
from proxy.deps import ArchiveDep, UserDep
from proxy.errors import EmotionDisabled
from proxy.routes.memory import mapped

router = APIRouter()


async def _emotion(request: Request) -> EmotionService:
    emotion: EmotionService | None = request.app.state.pipeline.emotion
    if emotion is None or emotion.detector is None:
        raise EmotionDisabled("Emotion detection is disabled on this server (ANIMA_EMOTION__ENABLED=false).")
    return emotion


EmotionDep = Annotated[EmotionService, Depends(_emotion)]


@router.post("/emotions/analyze")
async def analyze(body: EmotionAnalyze, emotion: EmotionDep) -> dict[str, Any]:
    return {"object": "list", "data": await emotion.analyze(body.items())}


@router.get("/conversations/{conversation_id}/emotions")
async def trajectory(
    conversation_id: str,
    archive: ArchiveDep,
    user: UserDep,
    emotion: EmotionDep,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    """The mood trajectory of the conversation's current branch: one entry per user turn."""
    branch = await mapped(archive.branch(user, conversation_id, limit=limit))
    return {"object": "list", "conversation_id": conversation_id, "data": emotion.trajectory(branch)}
