"""Anima under test: a subprocess of the checkout in ANIMA_SRC, with memory on, embedded Postgres in
a temporary data dir, and one route to the logging backend. Also its memory API, as the checks read it."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from e2e.procs import Child, free_port

MODEL = "e2e/numbered"  # the model id SillyTavern sends; routed to the stub's `numbered` model
CONTEXT_WINDOW = 8192


def write_config(path: Path, backend_url: str) -> None:
    path.write_text(
        f"""[backends.stub]
kind = "openai"
base_url = "{backend_url}/v1"
models = ["numbered"]

[[models]]
name = "{MODEL}"
backend = "stub"
model = "numbered"
context_window = {CONTEXT_WINDOW}
"""
    )


@dataclass
class Anima:
    src: Path
    work: Path
    backend_url: str
    python: str = sys.executable

    def launch(self) -> Child:
        """Start Anima; the caller waits for `health_url` (so SillyTavern can start meanwhile)."""
        self.port = free_port()
        config = self.work / "anima.toml"
        write_config(config, self.backend_url)
        env = dict(os.environ)
        env.update(
            PYTHONPATH=str(self.src),
            ANIMA_CONFIG=str(config),
            ANIMA_DATA_DIR=str(self.work / "anima-data"),
            ANIMA_LOG_LEVEL="info",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
        )
        argv = [self.python, "-m", "proxy", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        return Child("anima", argv, cwd=self.src, env=env, log=self.work / "anima.log")

    @property
    def health_url(self) -> str:
        return f"{self.url}/health"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class MemoryApi:
    """Anima's memory API (open mode on loopback: no key needed)."""

    url: str

    def _get(self, path: str) -> Any:
        reply = httpx.get(f"{self.url}{path}", timeout=60)
        reply.raise_for_status()
        return reply.json()

    def conversations(self) -> list[dict[str, Any]]:
        return list(self._get("/v1/conversations?limit=1000")["data"])

    def messages(self, conversation_id: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            page = self._get(f"/v1/conversations/{conversation_id}/messages?limit=1000&offset={len(out)}")
            out += page["data"]
            if not page["has_more"]:
                return out
