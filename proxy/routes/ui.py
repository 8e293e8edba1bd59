"""The dashboard at /ui: one static page (proxy/ui/) that runs on the JSON API with the caller's key.

Nothing is rendered server-side and nothing comes from a CDN: the page asks for a key (kept in the
tab's sessionStorage and sent as `Authorization: Bearer`), or uses open mode on loopback, so it sees
exactly what that key may see through /v1 — the same auth as every other client.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

UI = Path(__file__).resolve().parent.parent / "ui"
router = APIRouter(include_in_schema=False)


@router.get("/ui")
async def dashboard() -> FileResponse:
    return FileResponse(UI / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/")
async def home() -> RedirectResponse:
    return RedirectResponse("/ui")


def assets() -> StaticFiles:
    return StaticFiles(directory=UI)
