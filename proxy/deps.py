"""FastAPI dependencies: the services `lifespan` built, read from `app.state`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from proxy.pipeline import ChatPipeline
from proxy.settings import Settings


def _pipeline(request: Request) -> ChatPipeline:
    pipeline: ChatPipeline = request.app.state.pipeline
    return pipeline


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


PipelineDep = Annotated[ChatPipeline, Depends(_pipeline)]
SettingsDep = Annotated[Settings, Depends(_settings)]
