"""Any OpenAI-compatible server over aiohttp (proxy/backends/upstream.py): llama.cpp (`llama-server`,
`llama_cpp.server`), vLLM, LM Studio, OpenAI itself. Always streams upstream, so one code path serves
both client modes. The wire shapes (messages, tools, SSE lines, chunks): proxy/backends/openai_wire.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson

from proxy.backends.base import (
    BackendRequest,
    Delta,
    Embeddings,
    mapped_mid_reply_errors,
    mapped_transport_errors,
    status_error,
)
from proxy.backends.openai_wire import SSELines, deltas_of, error_text, tool_fields, wire_message
from proxy.errors import BackendServerError
from proxy.setting_groups import BackendSettings

if TYPE_CHECKING:  # aiohttp is imported when such a backend is built: the passthrough routes import
    # this module at every start, also when no backend is OpenAI-compatible
    import aiohttp
    from yarl import URL

    from proxy.backends.upstream import Upstream

_JSON = {"content-type": "application/json"}


class OpenAICompatBackend:
    def __init__(
        self,
        name: str,
        upstream: Upstream,
        *,
        sampler_extras: bool = True,
        schema_style: str = "json_schema",
        stream_usage: bool = True,
    ) -> None:
        self.name = name
        self._upstream, self._errors = upstream, upstream.errors
        self._chat, self._embeddings = upstream.url("/chat/completions"), upstream.url("/embeddings")
        self._models = upstream.url("/models")
        self._sampler_extras, self._schema_style = sampler_extras, schema_style
        self._stream_usage = stream_usage
        self._context: dict[str, int | None] = {}

    @classmethod
    def from_settings(cls, name: str, config: BackendSettings) -> OpenAICompatBackend:
        from proxy.backends.upstream import Upstream

        upstream = Upstream(
            config.url(),
            api_key=config.api_key.get_secret_value() if config.api_key else None,
            timeout_s=config.timeout_s,
            connect_timeout_s=config.connect_timeout_s,
        )
        return cls(
            name,
            upstream,
            sampler_extras=config.sampler_extras,
            schema_style=config.schema_style,
            stream_usage=config.stream_usage,
        )

    def payload(self, request: BackendRequest) -> dict[str, Any]:
        """The upstream body: OpenAI fields, only those the client set."""
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [wire_message(m) for m in request.messages],
            "stream": True,
        }
        if self._stream_usage:  # else the whole prompt is counted again with tiktoken for the usage
            body["stream_options"] = {"include_usage": True}
        body |= tool_fields(request)
        optional = {
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
            "presence_penalty": request.presence_penalty,
            "frequency_penalty": request.frequency_penalty,
            "stop": list(request.stop) or None,
            "logprobs": request.logprobs,
            "top_logprobs": request.top_logprobs,
            "n": request.n,
        }
        if self._sampler_extras:
            # llama.cpp calls it repeat_penalty, vLLM repetition_penalty; each ignores the other.
            penalty = request.repetition_penalty
            optional |= {"top_k": request.top_k, "min_p": request.min_p}
            optional |= {"repeat_penalty": penalty, "repetition_penalty": penalty}
        body |= {k: v for k, v in optional.items() if v is not None}
        if request.json_schema is not None and self._schema_style == "json_object":
            body["response_format"] = {"type": "json_object", "schema": request.json_schema.get("schema")}
        elif request.json_schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": request.json_schema}
        elif request.response_format == "json":
            body["response_format"] = {"type": "json_object"}
        return body

    async def stream(self, request: BackendRequest) -> AsyncIterator[Delta]:
        body = orjson.dumps(self.payload(request))  # 20x faster than json= on a 15 kB prompt
        with mapped_transport_errors(self.name, self._errors):
            async with await self._upstream.request("POST", self._chat, body, _JSON) as resp:
                if resp.status >= 400:
                    raise status_error(self.name, resp.status, error_text(await resp.read(), resp.reason))
                finished, lines = False, SSELines()
                with mapped_mid_reply_errors(self.name, self._errors):
                    async for data in resp.content.iter_any():  # one read: its events go on together
                        deltas, done = deltas_of(self.name, lines.feed(data))
                        finished = finished or done
                        for delta in deltas:
                            finished = finished or delta.finish_reason is not None
                            yield delta
                    deltas, done = deltas_of(self.name, lines.flush())
                    finished = finished or done or any(d.finish_reason is not None for d in deltas)
                    for delta in deltas:
                        yield delta
                if not finished:  # e.g. llama_cpp.server on a prompt beyond n_ctx: 200, then nothing
                    raise BackendServerError(f"backend '{self.name}' ended the reply without finishing it")

    async def embed(
        self, model: str, inputs: list[str] | list[list[int]], dimensions: int | None
    ) -> Embeddings:
        """`POST /embeddings`, always as floats (the route encodes base64 itself, for every backend)."""
        body: dict[str, Any] = {"model": model, "input": inputs, "encoding_format": "float"}
        if dimensions is not None:
            body["dimensions"] = dimensions
        status, reason, answer = await self._fetch("POST", self._embeddings, orjson.dumps(body))
        if status >= 400:
            raise status_error(self.name, status, error_text(answer, reason))
        data = orjson.loads(answer)
        entries = sorted(data.get("data") or [], key=lambda e: int(e.get("index") or 0))
        if len(entries) != len(inputs):
            raise BackendServerError(
                f"backend '{self.name}' returned {len(entries)} embeddings for {len(inputs)}"
            )
        usage = data.get("usage") or {}
        return Embeddings([e["embedding"] for e in entries], usage.get("prompt_tokens"))

    async def _fetch(self, method: str, url: URL, body: bytes | None = None) -> tuple[int, str, bytes]:
        """Status, reason and whole body of a small request (embeddings, models)."""
        with mapped_transport_errors(self.name, self._errors):
            async with await self._upstream.request(method, url, body, _JSON if body else {}) as resp:
                return resp.status, resp.reason or "", await resp.read()

    async def forward(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        """Send a request as it came (passthrough routes); the response is streamed, the caller
        releases it."""
        with mapped_transport_errors(self.name, self._errors):
            return await self._upstream.request(method, self._upstream.url(path), body or None, headers)

    async def models(self) -> list[str]:
        status, reason, answer = await self._fetch("GET", self._models)
        if status >= 400:
            raise status_error(self.name, status, error_text(answer, reason))
        entries = orjson.loads(answer).get("data", [])
        for entry in entries:  # vLLM: max_model_len; llama-server: meta.n_ctx_train
            window = (
                entry.get("max_model_len")
                or entry.get("context_length")
                or (entry.get("meta") or {}).get("n_ctx_train")
            )
            self._context.setdefault(entry["id"], int(window) if window else None)
        return [entry["id"] for entry in entries]

    async def context_window(self, model: str) -> int | None:
        if model not in self._context:
            await self.models()
        return self._context.get(model)

    async def aclose(self) -> None:
        await self._upstream.aclose()
