"""The nested groups of Anima's settings (`[backends.*]`, `[[models]]`, `ANIMA_MEMORY__*`, ...): each
group's fields, defaults, bounds and help text. Apart from proxy/settings.py, which loads them (sources,
the TOML file, checks across groups) into the one `Settings` object; nothing reads these on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr

BackendKind = Literal["ollama", "gemini", "openai", "embedded"]

DEFAULT_BASE_URLS: dict[str, str] = {
    "ollama": "http://127.0.0.1:11434",
    "gemini": "https://generativelanguage.googleapis.com",
    "openai": "http://127.0.0.1:8080/v1",
}


class BackendSettings(BaseModel):
    """One model server. `kind` picks the adapter; the table key is the backend's name."""

    kind: BackendKind
    base_url: str | None = Field(default=None, description="server URL (kind's usual local default)")
    api_key: SecretStr | None = Field(default=None, description="key sent upstream (gemini, openai)")
    timeout_s: float = Field(default=120.0, gt=0, description="max seconds between bytes from upstream")
    connect_timeout_s: float = Field(default=5.0, gt=0, description="max seconds to connect")
    models: list[str] = Field(default_factory=list, description="models to list when it cannot list them")
    model_path: Path | None = Field(default=None, description="embedded: GGUF file (default: SmolLM2)")
    n_ctx: int = Field(default=4096, ge=256, description="embedded: context window in tokens")
    n_threads: int | None = Field(default=None, ge=1, description="embedded: CPU threads")
    sampler_extras: bool = Field(
        default=True, description="openai: send top_k/min_p/repetition_penalty (off for OpenAI itself)"
    )
    stream_usage: bool = Field(
        default=True,
        description="openai: ask for token usage in the stream (stream_options); off if a server rejects it",
    )
    schema_style: Literal["json_schema", "json_object"] = Field(
        default="json_schema",
        description="openai: how a JSON schema is sent (json_object: llama-cpp-python server style)",
    )

    def url(self) -> str:
        return (self.base_url or DEFAULT_BASE_URLS.get(self.kind, "")).rstrip("/")


class RouteSettings(BaseModel):
    """A public model name and where it goes (`ollama/llama3.1` → backend `ollama`, model `llama3.1`)."""

    name: str = Field(min_length=1)
    backend: str
    model: str
    context_window: int | None = Field(default=None, ge=256)
    fallbacks: list[str] = Field(default_factory=list)
    persona: str | None = Field(
        default=None, description="persona used on this route unless a request names one"
    )


class MemorySettings(BaseModel):
    """How Anima remembers: the RAM window, recall ranking, the token budget and the workers."""

    enabled: bool = Field(default=True, description="remember conversations (off: a plain proxy)")
    window_turns: int = Field(
        default=64, ge=1, description="messages of each conversation cached in RAM (a cache, never a limit)"
    )
    window_conversations: int = Field(default=1000, ge=1, description="conversations kept in RAM (LRU)")
    recall_k: int = Field(
        default=40,
        ge=0,
        le=200,
        description="memories recalled per turn at most (the prompt takes what fits)",
    )
    recall_scope: Literal["branch", "persona", "user"] = Field(
        default="branch", description="recall from this chat's branch, chats with this persona, or all chats"
    )
    vector_weight: float = Field(default=2.0, ge=0, description="weight of pgvector similarity in fusion")
    text_weight: float = Field(default=1.0, ge=0, description="weight of BM25 full-text rank in fusion")
    rrf_k: int = Field(default=60, ge=1, description="reciprocal-rank-fusion constant")
    min_similarity: float = Field(default=0.1, ge=-1, le=1, description="vector hits below this are dropped")
    speaker_boost: float = Field(
        default=1.0, ge=0, description="boost (in first ranks) for messages by a speaker the query names"
    )
    recall_neighbours: int = Field(
        default=0, ge=0, le=50, description="the best N hits also bring their previous and next turns"
    )
    neighbour_factor: float = Field(
        default=0.5, ge=0, le=1, description="a neighbour's score: its hit's times this"
    )
    bm25_k1: float = Field(default=1.2, ge=0, description="BM25 term-frequency saturation")
    bm25_b: float = Field(default=0.75, ge=0, le=1, description="BM25 length normalisation")
    bm25_sample: int = Field(
        default=1000, ge=100, description="persona/user scope: newest messages that IDF is measured on"
    )
    bm25_pool: int = Field(default=400, ge=10, description="persona/user scope: newest text matches scored")
    deadline_ms: int = Field(default=250, ge=1, description="recall deadline on the request path")
    default_context_window: int = Field(default=8192, ge=512, description="if config and backend are silent")
    share_persona: float = Field(default=0.20, ge=0, le=1, description="budget share: persona/system")
    share_recall: float = Field(default=0.25, ge=0, le=1, description="budget share: recalled memories")
    share_history: float = Field(default=0.35, ge=0, le=1, description="budget share: recent history")
    share_reply: float = Field(default=0.20, ge=0, le=1, description="budget share: reply reserve")
    summaries: bool = Field(default=True, description="summarise history cut from the prompt (off: never)")
    summary_model: str | None = Field(default=None, description="summariser (default: the chat's model)")
    summary_min_messages: int = Field(default=8, ge=2, description="cut messages needed before summarising")
    embed_batch: int = Field(default=64, ge=1, description="embedding worker batch size")
    share_facts: float = Field(default=0.05, ge=0, le=1, description="budget share: facts about the user")
    facts_enabled: bool = Field(default=True, description="learn facts and relationships from chats")
    facts_model: str | None = Field(
        default=None, description="model that extracts facts (unset: the chat's; 'off': no extraction)"
    )
    facts_batch_messages: int = Field(default=12, ge=2, le=200, description="messages per extraction call")
    facts_min_user_messages: int = Field(
        default=3, ge=1, description="unread user messages that start an extraction"
    )
    facts_settle_s: float = Field(default=60.0, ge=0, description="or seconds a chat has been quiet")
    facts_tries: int = Field(default=3, ge=1, le=10, description="tries to get a valid JSON answer")
    facts_max_tokens: int = Field(default=800, ge=64, description="longest extraction answer")
    journal_max_turns: int = Field(
        default=10_000, ge=1, description="turns kept on disk while Postgres is unreachable"
    )
    db_pool_size: int = Field(default=10, ge=1, description="Postgres connections kept per worker process")
    db_max_overflow: int = Field(default=20, ge=0, description="extra connections per process under load")
    db_ping_idle_s: float = Field(
        default=10.0,
        ge=0,
        description="a pooled connection unused this long is pinged before use (0: each use)",
    )
    character_header: str = Field(default="x-st-char", description="client header naming the character")
    user_header: str = Field(default="x-st-user", description="client header naming the user")


class EmotionSettings(BaseModel):
    """How Anima reads the user's feelings; emotion data never appears in logs."""

    enabled: bool = Field(default=True, description="detect, store and use emotions (off: importance only)")
    disabled_personas: list[str] = Field(
        default_factory=list, description="personas/characters whose chats get no emotion step"
    )
    min_confidence: float = Field(
        default=0.3, ge=0, le=1, description="below this a message counts as neutral/uncertain"
    )
    mood_decay: float = Field(default=0.6, ge=0, lt=1, description="weight of the past mood per turn")
    recall_boost: float = Field(
        default=1.0, ge=0, description="boost for memories felt the same way, x importance, in rank units"
    )
    deadline_ms: int = Field(default=100, ge=1, description="detection deadline on the request path")


class PersonaSettings(BaseModel):
    """Where personas come from and how requests get one."""

    folder: Path | None = Field(
        default=None, description="folder of persona YAML files (unset: DATA_DIR/personas)"
    )
    examples: bool = Field(default=True, description="also load the shipped example personas")
    default: str | None = Field(default=None, description="persona for requests that name none on any route")
    reload_s: float = Field(default=2.0, ge=0, description="seconds between folder checks; 0: only on reload")
    cards: bool = Field(default=True, description="recognise, store and index client character cards")
    model_aliases: list[str] | None = Field(
        default=None,
        description="personas listed as persona@model in /v1/models, for the routing table's models"
        " (unset: every persona but client cards; [] for none)",
    )
    learn_model: str | None = Field(
        default=None, description="model that writes profiles (unset: first route)"
    )
    learn_tries: int = Field(default=3, ge=1, le=10, description="tries to get a valid JSON profile")
    learn_max_tokens: int = Field(default=3000, ge=200, description="tokens of sample messages per profile")


class LimitSettings(BaseModel):
    """Per-key rate limits (a key's own limits, set with `anima keys create`, win) and size limits."""

    requests_per_minute: int | None = Field(default=None, ge=1, description="per key; unset: unlimited")
    tokens_per_minute: int | None = Field(default=None, ge=1, description="prompt+reply tokens per key")
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, description="larger request bodies: 413")
    max_message_chars: int = Field(default=500_000, ge=100, description="a longer message: 413")
    max_messages: int = Field(default=10_000, ge=1, description="more messages in one request: 413")
