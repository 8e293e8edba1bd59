"""OpenAI wire models (chat completions, models, errors, embeddings, legacy completions): the only
place OpenAI field names live. Anima's own API bodies are proxy/anima_protocol.py's.

Requests are lenient where real clients are sloppy (unknown fields, null content, array-of-parts
content); responses are exact, because SDKs and SillyTavern parse them strictly.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal, cast

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from memory.text import unstorable

CHECKED: dict[str, bool] = {"storable": True}  # `Storable` context: checked before parsing
Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class Storable(BaseModel):
    """A request body whose text may end up in Postgres: NUL characters, lone surrogates, NaN and
    Infinity anywhere in it are a 400 naming where, not a failed write later. Validated with the
    context `CHECKED`, the data is known storable already (`memory.text.orjson_storable`)."""

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any, info: ValidationInfo) -> Any:
        problem = unstorable(data) if info.context is not CHECKED else None
        if problem:
            raise ValueError(problem)
        return data


class ContentPart(BaseModel):
    """One element of array-of-parts content (`text`, `image_url`, ...)."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1)
    arguments: str = ""


class ToolCall(BaseModel):
    """An assistant message's call, as the client sends it back with the history."""

    model_config = ConfigDict(extra="allow")
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolSpec(BaseModel):
    """One entry of `tools`: a function the model may call."""

    model_config = ConfigDict(extra="allow")
    type: Literal["function"] = "function"
    function: FunctionSpec


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function"] = "function"
    function: dict[str, str]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        """The message as plain text: text parts joined, other parts (images) left out."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content if part.type == "text")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: StrictBool = False


def _conversation_ref(value: Any) -> Any:
    """A conversation id is a string (a number is taken as its digits); anything else is a client bug
    that would otherwise become an id like "{'a': 1}"."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("expected a string conversation id")
    return str(value)


class RequestMetadata(BaseModel):
    """`metadata`: free-form, except `conversation_id`, which names the chat to remember into."""

    model_config = ConfigDict(extra="allow")
    conversation_id: Annotated[str, BeforeValidator(_conversation_ref)] | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None


class ChatCompletionRequest(Storable):
    """`POST /v1/chat/completions`. Unknown fields are accepted and ignored (SillyTavern sends many)."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool = False  # "yes" or 1 is a client bug, not a request to stream
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    response_format: ResponseFormat | None = None
    n: int | None = Field(default=None, ge=1)
    user: str | None = None
    metadata: RequestMetadata | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # Not OpenAI, but common in local-model clients; backends that know them use them.
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0)

    @field_validator("stop")
    @classmethod
    def _stop_as_list(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        return [s for s in stops if s] or None

    @property
    def reply_limit(self) -> int | None:
        """The reply token limit, whichever of the two spellings the client used."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None

    @model_serializer(mode="wrap")
    def _optional_only_when_present(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in ("reasoning_content", "tool_calls"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
    logprobs: dict[str, Any] | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


EMBED_BATCH = 2048  # OpenAI's own limit of inputs per request


class EmbeddingRequest(Storable):
    """`POST /v1/embeddings`: text(s), or token arrays (only an OpenAI-compatible backend takes those)."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    input: str | list[str] | list[list[int]] | list[int]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _some_input(
        cls, value: str | list[str] | list[list[int]] | list[int]
    ) -> str | list[str] | list[list[int]] | list[int]:
        items = [value] if isinstance(value, str) else value
        if not items or len(items) > EMBED_BATCH:
            raise ValueError(f"give 1 to {EMBED_BATCH} inputs")
        if any(item == "" or item == [] for item in items):
            raise ValueError("an input is empty")
        return value

    def inputs(self) -> list[str] | list[list[int]]:
        """Always a list: one text, a list of texts, or a list of token arrays."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if all(isinstance(v, int) for v in value):
            return [[v for v in value if isinstance(v, int)]]  # one token array
        return cast("list[str] | list[list[int]]", value)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str: little-endian float32, base64 (encoding_format=base64)


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class CompletionRequest(Storable):
    """`POST /v1/completions` (legacy text completion): checked only as far as routing needs, then
    passed through as sent."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    prompt: str | list[str] | list[int] | list[list[int]]
    stream: bool = False
