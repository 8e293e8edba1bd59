"""Any OpenAI-compatible server over aiohttp (proxy/backends/upstream.py): llama.cpp (`llama-server`,
`llama_cpp.server`), vLLM, LM Studio, OpenAI itself. Always streams upstream, so one code path serves
both client modes."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson

from memory.types import Message
from proxy.backends.base import (
    BackendRequest,
    Delta,
    Embeddings,
    TokenUsage,
    Tool,
    ToolCallDelta,
    mapped_mid_reply_errors,
    mapped_transport_errors,
    status_error,
)
from proxy.errors import BackendServerError
from proxy.settings import BackendSettings

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
                        deltas, done = self._parse_lines(lines.feed(data))
                        finished = finished or done
                        for delta in deltas:
                            finished = finished or delta.finish_reason is not None
                            yield delta
                    deltas, done = self._parse_lines(lines.flush())
                    finished = finished or done or any(d.finish_reason is not None for d in deltas)
                    for delta in deltas:
                        yield delta
                if not finished:  # e.g. llama_cpp.server on a prompt beyond n_ctx: 200, then nothing
                    raise BackendServerError(f"backend '{self.name}' ended the reply without finishing it")

    def _parse_lines(self, lines: list[bytes]) -> tuple[list[Delta], bool]:
        """The deltas of one read's lines, each but the last marked `more`; and whether `[DONE]` came."""
        deltas, done = [], False
        for line in lines:
            done = done or line.startswith(b"data: [DONE]")
            delta = self._parse_line(line)
            if delta is not None:
                deltas.append(delta)
        return [dataclasses.replace(d, more=True) for d in deltas[:-1]] + deltas[-1:], done

    def _parse_line(self, line: bytes) -> Delta | None:
        if not line.startswith(b"data:"):
            return None
        data = line[5:].strip()
        if not data or data == b"[DONE]":
            return None
        chunk = orjson.loads(data)
        if "error" in chunk:
            raise BackendServerError(f"backend '{self.name}' failed mid-reply: {_message_of(chunk['error'])}")
        usage = chunk.get("usage")
        choices = chunk.get("choices") or [{}]
        if len(choices) > 1:  # n > 1: some servers batch the choices of one step into one chunk
            raise BackendServerError(f"backend '{self.name}' sent several choices in one chunk")
        choice = choices[0]
        delta = choice.get("delta") or {}
        return Delta(
            text=delta.get("content") or "",
            reasoning=delta.get("reasoning_content") or delta.get("reasoning") or "",
            finish_reason=choice.get("finish_reason"),
            usage=TokenUsage(usage["prompt_tokens"], usage["completion_tokens"]) if usage else None,
            tool_calls=tuple(_tool_call_delta(c) for c in delta.get("tool_calls") or ()),
            choice=int(choice.get("index") or 0),
            logprobs=choice.get("logprobs") or None,
        )

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


class SSELines:
    """Server-sent-event lines out of the bytes of each read: a line ends at CRLF, LF or CR (the SSE
    spec's three), and a line cut by the read boundary waits for the rest. Bytes, not text: orjson
    parses bytes, and no UTF-8 sequence contains a line-end byte."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> list[bytes]:
        """The lines completed by `data`, without their line ends."""
        parts = (self._rest + data).splitlines(keepends=True)
        # the last part is unfinished unless it ends in LF (a CR may be the first half of a CRLF)
        self._rest = parts.pop() if parts and not parts[-1].endswith(b"\n") else b""
        return [part.rstrip(b"\r\n") for part in parts]

    def flush(self) -> list[bytes]:
        """What is left when the body ends: its last line, if it had no line end."""
        rest, self._rest = self._rest, b""
        return [rest.rstrip(b"\r\n")] if rest else []


def wire_message(m: Message) -> dict[str, Any]:
    """A message as OpenAI sends it: content parts as the client sent them, tool calls and ids."""
    content: Any = [orjson.loads(p.raw) for p in m.parts] if m.parts else m.content
    if m.role == "assistant" and m.tool_calls and not m.content:
        content = None  # OpenAI's own shape for a message that only calls tools
    message: dict[str, Any] = {"role": m.role, "content": content}
    if m.name:
        message["name"] = m.name
    if m.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    if m.tool_call_id is not None:
        message["tool_call_id"] = m.tool_call_id
    return message


def tool_fields(request: BackendRequest) -> dict[str, Any]:
    """`tools`, `tool_choice` and `parallel_tool_calls` in OpenAI's shape, only those the client set."""
    fields: dict[str, Any] = {}
    if request.tools:
        fields["tools"] = [_tool(t) for t in request.tools]
    if request.forced_tool is not None:
        fields["tool_choice"] = {"type": "function", "function": {"name": request.forced_tool}}
    elif request.tool_choice is not None:
        fields["tool_choice"] = request.tool_choice
    if request.parallel_tool_calls is not None:
        fields["parallel_tool_calls"] = request.parallel_tool_calls
    return fields


def _tool(tool: Tool) -> dict[str, Any]:
    spec = {
        "name": tool.name,
        "description": tool.description,
        "parameters": tool.parameters,
        "strict": tool.strict,
    }
    return {"type": "function", "function": {k: v for k, v in spec.items() if v is not None}}


def _tool_call_delta(fragment: dict[str, Any]) -> ToolCallDelta:
    function = fragment.get("function") or {}
    return ToolCallDelta(
        index=int(fragment.get("index") or 0),
        id=fragment.get("id") or None,
        name=function.get("name") or None,
        arguments=function.get("arguments") or "",
    )


def error_text(body: bytes, reason: str | None) -> str:
    """What an upstream error response says: its OpenAI `error` message, else its text, else its
    reason phrase."""
    text = body.decode(errors="replace")
    try:
        error = orjson.loads(body)
        return _message_of(error.get("error", text) if isinstance(error, dict) else text[:500])
    except orjson.JSONDecodeError:
        return text[:500] or reason or ""


def _message_of(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)
