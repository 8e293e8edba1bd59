"""Ollama through the official `ollama.AsyncClient`: `/api/chat` streamed as NDJSON, OpenAI sampling
parameters mapped to Ollama options, the context window read from `/api/show`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

import httpx
import ollama

from proxy.backends.base import BackendRequest, Delta, TokenUsage, mapped_httpx_errors, status_error
from proxy.errors import BackendServerError, BackendUnavailable
from proxy.settings import BackendSettings

_FINISH = {"stop": "stop", "length": "length"}


class OllamaBackend:
    def __init__(self, name: str, client: ollama.AsyncClient) -> None:
        self.name = name
        self._client = client
        self._context: dict[str, int | None] = {}

    @classmethod
    def from_settings(cls, name: str, config: BackendSettings) -> OllamaBackend:
        timeout = httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s)
        return cls(name, ollama.AsyncClient(host=config.url(), timeout=timeout))

    @contextlib.contextmanager
    def _mapped(self) -> Iterator[None]:
        """The ollama client's own errors (and the httpx ones it lets through) as BackendErrors."""
        with mapped_httpx_errors(self.name):
            try:
                yield
            except ollama.ResponseError as exc:
                if exc.status_code == -1:  # an error object inside the stream, after it started
                    raise BackendServerError(f"backend '{self.name}' failed mid-reply: {exc.error}") from exc
                raise status_error(self.name, exc.status_code, str(exc.error)) from exc
            except ConnectionError as exc:  # the client turns httpx.ConnectError into this
                raise BackendUnavailable(f"backend '{self.name}' is unreachable: {exc}") from exc

    async def stream(self, request: BackendRequest) -> AsyncIterator[Delta]:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        with self._mapped():
            parts = await self._client.chat(
                model=request.model,
                messages=messages,
                stream=True,
                options=options(request) or None,
                format=response_format(request),
            )
            finished = False
            async for part in parts:
                message = part.message
                delta = Delta(text=message.content or "", reasoning=message.thinking or "")
                if part.done:
                    finished = True
                    usage = TokenUsage(part.prompt_eval_count or 0, part.eval_count or 0)
                    delta = Delta(
                        delta.text, delta.reasoning, _FINISH.get(part.done_reason or "", "stop"), usage
                    )
                yield delta
            if not finished:
                raise BackendServerError(f"backend '{self.name}' ended the reply without finishing it")

    async def models(self) -> list[str]:
        with self._mapped():
            listing = await self._client.list()
        return [m.model for m in listing.models if m.model]

    async def context_window(self, model: str) -> int | None:
        """`num_ctx` from the model's parameters if set (what Ollama really uses), else its trained length."""
        if model not in self._context:
            with self._mapped():
                shown = await self._client.show(model)
            self._context[model] = _num_ctx(shown.parameters) or _trained_length(shown.modelinfo or {})
        return self._context[model]

    async def aclose(self) -> None:
        await self._client.close()  # type: ignore[no-untyped-call]


def options(request: BackendRequest) -> dict[str, Any]:
    mapped = {
        "temperature": request.temperature,
        "top_p": request.top_p,
        "top_k": request.top_k,
        "min_p": request.min_p,
        "seed": request.seed,
        "num_predict": request.max_tokens,
        "presence_penalty": request.presence_penalty,
        "frequency_penalty": request.frequency_penalty,
        "repeat_penalty": request.repetition_penalty,
        "stop": list(request.stop) or None,
    }
    return {k: v for k, v in mapped.items() if v is not None}


def response_format(request: BackendRequest) -> Literal["json"] | dict[str, Any] | None:
    if request.json_schema is not None:
        schema = request.json_schema.get("schema")
        return schema if isinstance(schema, dict) else "json"
    return "json" if request.response_format == "json" else None


def _num_ctx(parameters: str | None) -> int | None:
    for line in (parameters or "").splitlines():
        key, _, value = line.strip().partition(" ")
        if key == "num_ctx" and value.strip().isdigit():
            return int(value.strip())
    return None


def _trained_length(info: Any) -> int | None:
    for key, value in dict(info).items():
        if key.endswith(".context_length") and isinstance(value, int):
            return value
    return None
