"""Ollama through the official `ollama.AsyncClient`: `/api/chat` streamed as NDJSON, OpenAI sampling
parameters mapped to Ollama options, the context window read from `/api/show`."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Literal

import httpx
import ollama
import orjson
from ollama._types import Logprob, TokenLogprob

from memory.types import Part
from proxy.backends.base import (
    BackendCannot,
    BackendRequest,
    Delta,
    Embeddings,
    TokenUsage,
    Tool,
    ToolCallDelta,
    data_url,
    mapped_httpx_errors,
    status_error,
)
from proxy.errors import BackendServerError, BackendUnavailable
from proxy.setting_groups import BackendSettings

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

    def _refuse_unsupported(self, request: BackendRequest) -> None:
        """Ollama has no `tool_choice` and one reply per request: a clear 400, not a silent ignore."""
        if request.n is not None and request.n > 1:
            raise BackendCannot(self.name, request.model, "give more than one choice (n > 1)", param="n")
        if request.tool_choice == "required":
            raise BackendCannot(
                self.name, request.model, "be made to call a tool (tool_choice)", param="tool_choice"
            )

    async def stream(self, request: BackendRequest) -> AsyncIterator[Delta]:
        self._refuse_unsupported(request)
        messages = to_messages(self.name, request)
        tools = [_tool(t) for t in request.tools] if request.tool_choice != "none" else []
        with self._mapped():
            parts = await self._client.chat(
                model=request.model,
                messages=messages,
                tools=tools or None,
                stream=True,
                options=options(request) or None,
                format=response_format(request),
                logprobs=request.logprobs,
                top_logprobs=request.top_logprobs if request.logprobs else None,
            )
            finished, calls = False, 0
            async for part in parts:
                message = part.message
                fragments = _calls(message.tool_calls or (), calls)
                calls += len(fragments)
                finish, usage = None, None
                if part.done:
                    finished = True
                    usage = TokenUsage(part.prompt_eval_count or 0, part.eval_count or 0)
                    finish = "tool_calls" if calls else _FINISH.get(part.done_reason or "", "stop")
                yield Delta(
                    text=message.content or "",
                    reasoning=message.thinking or "",
                    finish_reason=finish,
                    usage=usage,
                    tool_calls=fragments,
                    logprobs=_logprobs(part.logprobs),
                )
            if not finished:
                raise BackendServerError(f"backend '{self.name}' ended the reply without finishing it")

    async def embed(
        self, model: str, inputs: list[str] | list[list[int]], dimensions: int | None
    ) -> Embeddings:
        """`/api/embed`: one vector per input, in order."""
        texts = [t for t in inputs if isinstance(t, str)]
        if len(texts) != len(inputs):
            raise BackendCannot(self.name, model, "embed token arrays, only text", param="input")
        with self._mapped():
            answer = await self._client.embed(model=model, input=texts, dimensions=dimensions)
        return Embeddings([list(v) for v in answer.embeddings], answer.prompt_eval_count)

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


def to_messages(backend: str, request: BackendRequest) -> list[dict[str, Any]]:
    """Ollama's messages: images as bare base64 in `images`, tool calls with arguments as objects,
    tool results named by `tool_name` (Ollama has no call ids: the name is found from the call)."""
    names = {c.id: c.name for m in request.messages for c in m.tool_calls}
    messages = []
    for m in request.messages:
        message: dict[str, Any] = {"role": m.role, "content": m.content}
        images = [_image(backend, request.model, p) for p in m.parts if p.type != "text"]
        if images:
            message["images"] = images
        if m.tool_calls:
            message["tool_calls"] = [
                {"function": {"name": c.name, "arguments": _arguments(c.arguments)}} for c in m.tool_calls
            ]
        if m.tool_call_id is not None and m.tool_call_id in names:
            message["tool_name"] = names[m.tool_call_id]
        messages.append(message)
    return messages


def _image(backend: str, model: str, part: Part) -> str:
    """A `data:` URL's base64 payload; Anima does not fetch remote URLs for a backend (SSRF)."""
    url = data_url(part)
    if url is None:
        raise BackendCannot(
            backend,
            model,
            f"take '{part.type}' parts, or images by URL: send images as data: URLs",
            param="messages",
        )
    return url[1]


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text or "{}")
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _tool(tool: Tool) -> dict[str, Any]:
    function = {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
    return {"type": "function", "function": {k: v for k, v in function.items() if v is not None}}


def _calls(calls: Sequence[ollama.Message.ToolCall], start: int) -> tuple[ToolCallDelta, ...]:
    """Ollama sends each call whole, without an id: numbered on from `start`, ids made up."""
    return tuple(
        ToolCallDelta(
            index=start + i,
            id=f"call_{uuid.uuid4().hex[:24]}",
            name=call.function.name,
            arguments=orjson.dumps(dict(call.function.arguments)).decode(),
        )
        for i, call in enumerate(calls)
    )


def _logprobs(entries: Sequence[Logprob] | None) -> dict[str, Any] | None:
    """Ollama's `logprobs` in OpenAI's shape (OpenAI also gives each token's UTF-8 bytes)."""
    if not entries:
        return None

    def token(t: TokenLogprob) -> dict[str, Any]:
        return {"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode())}

    content = [token(e) | {"top_logprobs": [token(t) for t in e.top_logprobs or ()]} for e in entries]
    return {"content": content, "refusal": None}
