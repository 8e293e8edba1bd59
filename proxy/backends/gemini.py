"""Google Gemini through the official `google-genai` SDK (REST `streamGenerateContent?alt=sse`).

System messages become `system_instruction`; user/assistant turns become user/model contents,
merged when consecutive because Gemini wants the roles to alternate. Gemini has no `min_p` or
`repetition_penalty`, so those are dropped rather than refused (clients send them by default).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any, cast

import httpx
import orjson
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from proxy.backends.base import (
    BackendCannot,
    BackendRequest,
    Delta,
    Embeddings,
    TokenUsage,
    ToolCallDelta,
    mapped_httpx_errors,
    status_error,
)
from proxy.backends.gemini_contents import UnsupportedPart, to_contents, tool_config
from proxy.errors import (
    BackendError,
    BackendRateLimited,
    BackendRejected,
    BackendServerError,
    BackendTimeout,
    ContentBlocked,
)
from proxy.setting_groups import BackendSettings

_FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
}


class GeminiBackend:
    def __init__(
        self,
        name: str,
        client: genai.Client,
        *,
        models: list[str] | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        """`http_client`: the httpx client `client` sends through, when this backend owns it (aclose)."""
        self.name = name
        self._client = client
        self._models = list(models or [])
        self._http_client = http_client
        self._context: dict[str, int | None] = {}

    @classmethod
    def from_settings(cls, name: str, config: BackendSettings) -> GeminiBackend:
        """Builds the SDK client offline: an explicit key and `vertexai=False`, so no ADC lookup ever.

        The SDK is handed our own httpx client because, with `httpx2` installed, it would otherwise
        send through httpx2, whose errors `mapped_httpx_errors` cannot see. Its per-request timeout
        (HttpOptions.timeout, ms) overrides the httpx client's, so there is one timeout, not two.
        """
        key = config.api_key.get_secret_value().strip() if config.api_key else ""
        if not key:
            raise ValueError(f"backend '{name}' (gemini) needs an api_key: set backends.{name}.api_key")
        http_client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50)
        )
        options = types.HttpOptions(
            base_url=config.url(),
            timeout=round(config.timeout_s * 1000),
            httpx_async_client=http_client,
        )
        client = genai.Client(api_key=key, vertexai=False, http_options=options)
        return cls(name, client, models=config.models, http_client=http_client)

    def _contents(self, request: BackendRequest) -> tuple[list[types.Content], str | None]:
        """The request as Gemini contents; what Gemini cannot take is a 400 before anything is sent."""
        if request.n is not None and request.n > 1:
            raise BackendCannot(self.name, request.model, "give more than one choice (n > 1)", param="n")
        try:
            return to_contents(request.messages)
        except UnsupportedPart as exc:
            what = f"take '{exc}' parts or images by URL: send images as data: URLs"
            raise BackendCannot(self.name, request.model, what, param="messages") from exc

    async def stream(self, request: BackendRequest) -> AsyncIterator[Delta]:
        contents, system = self._contents(request)
        finish: str | None = None
        usage: TokenUsage | None = None
        calls = 0
        with self._mapped_errors():
            opened = await self._client.aio.models.generate_content_stream(
                model=request.model, contents=contents, config=generation_config(request, system)
            )
            chunks = cast(AsyncGenerator[types.GenerateContentResponse, None], opened)
            async with contextlib.aclosing(chunks):  # closing it releases the upstream response
                received = False
                try:
                    async for chunk in chunks:
                        received = True
                        self._raise_if_blocked(chunk)
                        usage = _usage(chunk) or usage
                        text, reasoning, reason, found = _read(chunk)
                        finish = reason or finish
                        fragments = _call_deltas(found, calls)
                        calls += len(fragments)
                        logprobs = _logprobs(chunk)
                        if text or reasoning or fragments or logprobs:
                            yield Delta(
                                text=text, reasoning=reasoning, tool_calls=fragments, logprobs=logprobs
                            )
                except httpx.TimeoutException as exc:  # its message is empty: name what happened
                    if not received:
                        raise
                    raise BackendTimeout(
                        f"backend '{self.name}' stopped sending mid-reply ({type(exc).__name__})"
                    ) from exc
                except httpx.HTTPError as exc:
                    if not received:
                        raise
                    raise BackendServerError(
                        f"backend '{self.name}' broke off the reply: {exc or type(exc).__name__}"
                    ) from exc
        if finish is None:
            raise BackendServerError(f"backend '{self.name}' ended the reply without finishing it")
        yield Delta(finish_reason="tool_calls" if calls and finish == "stop" else finish, usage=usage)

    async def embed(
        self, model: str, inputs: list[str] | list[list[int]], dimensions: int | None
    ) -> Embeddings:
        """`batchEmbedContents` through the SDK: one vector per input, in order."""
        texts = [t for t in inputs if isinstance(t, str)]
        if len(texts) != len(inputs):
            raise BackendCannot(self.name, model, "embed token arrays, only text", param="input")
        config = types.EmbedContentConfig(output_dimensionality=dimensions)
        with self._mapped_errors():
            answer = await self._client.aio.models.embed_content(
                model=model, contents=cast(types.ContentListUnion, texts), config=config
            )
        return Embeddings([list(e.values or []) for e in answer.embeddings or []])

    def _raise_if_blocked(self, chunk: types.GenerateContentResponse) -> None:
        """A blocked prompt arrives as a 200 with `promptFeedback.blockReason` and no candidates."""
        feedback = chunk.prompt_feedback
        if chunk.candidates or feedback is None or feedback.block_reason is None:
            return
        reason = feedback.block_reason.value
        detail = f": {feedback.block_reason_message}" if feedback.block_reason_message else ""
        raise ContentBlocked(f"Gemini (backend '{self.name}') blocked the prompt, reason {reason}{detail}.")

    @contextlib.contextmanager
    def _mapped_errors(self) -> Iterator[None]:
        """SDK and transport errors → the BackendError tree; nothing from google.genai leaks out."""
        with mapped_httpx_errors(self.name):
            try:
                yield
            except genai_errors.APIError as exc:
                raise self._api_error(exc) from exc
            except genai_errors.UnknownApiResponseError as exc:
                raise BackendServerError(f"backend '{self.name}' sent an unreadable reply: {exc}") from exc

    def _api_error(self, exc: genai_errors.APIError) -> BackendError:
        code = exc.code if isinstance(exc.code, int) and exc.code >= 400 else 502
        detail = f"{exc.status}: {exc.message}" if exc.status else str(exc.message or exc)
        if code == 429 or exc.status == "RESOURCE_EXHAUSTED":
            return BackendRateLimited(f"backend '{self.name}' is out of Gemini quota (429 {detail})")
        if "API_KEY_INVALID" in _error_reasons(exc.details):
            # Google answers a wrong key with 400 INVALID_ARGUMENT; it is an authentication failure.
            return BackendRejected(
                f"backend '{self.name}' has an API key Gemini rejects: {detail}", status=401
            )
        return status_error(self.name, code, detail)

    async def models(self) -> list[str]:
        """The configured list if any, else what the key can use for text generation."""
        if self._models:
            return list(self._models)
        names: list[str] = []
        with self._mapped_errors():
            async for model in await self._client.aio.models.list():
                actions = model.supported_actions
                if model.name and (actions is None or "generateContent" in actions):
                    name = model.name.removeprefix("models/")
                    names.append(name)
                    self._context.setdefault(name, model.input_token_limit)
        return names

    async def context_window(self, model: str) -> int | None:
        if model not in self._context:
            with self._mapped_errors():
                info = await self._client.aio.models.get(model=model)
            self._context[model] = info.input_token_limit
        return self._context[model]

    async def aclose(self) -> None:
        await self._client.aio.aclose()  # closes only a client the SDK created itself
        if self._http_client is not None:
            await self._http_client.aclose()


def generation_config(request: BackendRequest, system: str | None) -> types.GenerateContentConfig:
    """Only what the client set. OpenAI wraps a schema in {"name", "schema"}; Gemini gets the schema."""
    schema = request.json_schema.get("schema") if request.json_schema else None
    wants_json = request.response_format == "json" or request.json_schema is not None
    tools, tool_choice = tool_config(request)  # declarations, never callables: no automatic calling
    return types.GenerateContentConfig(
        system_instruction=system,
        tools=cast("list[types.Tool | Any] | None", tools),
        tool_config=tool_choice,
        temperature=request.temperature,
        top_p=request.top_p,
        top_k=request.top_k,
        max_output_tokens=request.max_tokens,
        stop_sequences=list(request.stop) or None,
        seed=request.seed,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        response_mime_type="application/json" if wants_json else None,
        response_json_schema=schema,
        response_logprobs=request.logprobs or None,
        logprobs=request.top_logprobs if request.logprobs and request.top_logprobs else None,
    )


def _read(chunk: types.GenerateContentResponse) -> tuple[str, str, str | None, list[types.FunctionCall]]:
    """(text, reasoning, finish reason, function calls) of the first candidate; `thought` parts are
    reasoning."""
    if not chunk.candidates:
        return "", "", None, []
    candidate = chunk.candidates[0]
    parts = candidate.content.parts if candidate.content and candidate.content.parts else []
    text = "".join(p.text for p in parts if p.text and not p.thought)
    reasoning = "".join(p.text for p in parts if p.text and p.thought)
    calls = [p.function_call for p in parts if p.function_call is not None]
    reason = candidate.finish_reason
    return text, reasoning, _FINISH_REASONS.get(reason.value, "stop") if reason is not None else None, calls


def _logprobs(chunk: types.GenerateContentResponse) -> dict[str, Any] | None:
    """Gemini's `logprobsResult` (chosen token and top candidates per step) in OpenAI's shape."""
    result = chunk.candidates[0].logprobs_result if chunk.candidates else None
    if result is None or not result.chosen_candidates:
        return None
    tops = result.top_candidates or []

    def entry(c: types.LogprobsResultCandidate) -> dict[str, Any]:
        token = c.token or ""
        return {"token": token, "logprob": c.log_probability or 0.0, "bytes": list(token.encode())}

    content = [
        entry(chosen)
        | {"top_logprobs": [entry(t) for t in (tops[i].candidates or [] if i < len(tops) else [])]}
        for i, chosen in enumerate(result.chosen_candidates)
    ]
    return {"content": content, "refusal": None}


def _call_deltas(calls: list[types.FunctionCall], start: int) -> tuple[ToolCallDelta, ...]:
    """Gemini sends each call whole; the Developer API often without an id, so one is made up."""
    return tuple(
        ToolCallDelta(
            index=start + i,
            id=call.id or f"call_{uuid.uuid4().hex[:24]}",
            name=call.name or "",
            arguments=orjson.dumps(call.args or {}).decode(),
        )
        for i, call in enumerate(calls)
    )


def _usage(chunk: types.GenerateContentResponse) -> TokenUsage | None:
    """Gemini's running totals; thinking tokens count as completion, as OpenAI counts reasoning."""
    meta = chunk.usage_metadata
    if meta is None or meta.prompt_token_count is None:
        return None
    completion = (meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0)
    return TokenUsage(meta.prompt_token_count, completion)


def _error_reasons(details: Any) -> set[str]:
    """The `ErrorInfo.reason`s of a Google error body (`{"error": {"details": [...]}}`)."""
    error = details.get("error", details) if isinstance(details, dict) else {}
    entries = error.get("details") if isinstance(error, dict) else None
    return {str(d["reason"]) for d in entries or [] if isinstance(d, dict) and "reason" in d}
