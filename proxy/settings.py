"""All of Anima's settings in one typed object: env (`ANIMA_*`, nested with `__`), `.env`, `anima.toml`.

Precedence, highest first: constructor arguments, environment, `.env`, the TOML file named by
`ANIMA_CONFIG` (default `./anima.toml`). The TOML file is where the backend/model routing table lives.
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

BackendKind = Literal["ollama", "gemini", "openai", "embedded"]

DEFAULT_BASE_URLS: dict[str, str] = {
    "ollama": "http://127.0.0.1:11434",
    "gemini": "https://generativelanguage.googleapis.com",
    "openai": "http://127.0.0.1:8080/v1",
}


class ConfigError(ValueError):
    """A configuration mistake the operator must fix: said in one line naming the file or setting."""


def toml_source(settings_cls: type[BaseSettings]) -> TomlConfigSettingsSource:
    """The TOML file: `./anima.toml` if present; a file named by ANIMA_CONFIG (or `--config`) must exist
    (falling back to defaults, such as the embedded model, would hide the mistake)."""
    named = os.environ.get("ANIMA_CONFIG")
    path = Path(named or "anima.toml")
    if named and not path.exists():  # (/dev/null is fine: no file, on purpose)
        raise ConfigError(f"the config file {path} (ANIMA_CONFIG / --config) does not exist")
    try:
        return TomlConfigSettingsSource(settings_cls, toml_file=path)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the config file {path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"the config file {path} cannot be read: {exc.strerror or exc}") from exc


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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ANIMA_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        nested_model_default_partial_update=True,
    )

    host: str = Field(default="127.0.0.1", description="interface to bind")
    port: int = Field(default=8000, ge=0, le=65535, description="port to bind")
    workers: int = Field(default=1, ge=1, description="uvicorn worker processes")
    worker_healthcheck_s: int = Field(
        default=120, ge=1, description="seconds a worker may take to answer a health check (slow starts)"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="log level")
    config: Path = Field(default=Path("anima.toml"), description="TOML file with [backends.*] and [[models]]")
    backends: dict[str, BackendSettings] = Field(default_factory=dict, description="model servers by name")
    models: list[RouteSettings] = Field(default_factory=list, description="routing table")
    retries: int = Field(default=2, ge=0, le=10, description="retries per backend before the first byte")
    retry_backoff_s: float = Field(default=0.25, ge=0, description="first retry delay; doubles each time")
    sse_ping_s: float = Field(default=15.0, ge=0, description="SSE keep-alive comment interval; 0 disables")
    health_timeout_s: float = Field(default=2.0, gt=0, description="per-backend probe timeout in /health")
    database_url: SecretStr | None = Field(
        default=None, description="postgresql+psycopg://... (unset: embedded Postgres in data_dir)"
    )
    data_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir("anima")),
        description="embedded Postgres data and model caches",
    )
    memory: MemorySettings = Field(default_factory=MemorySettings, description="ANIMA_MEMORY__*")
    emotion: EmotionSettings = Field(default_factory=EmotionSettings, description="ANIMA_EMOTION__*")
    personas: PersonaSettings = Field(default_factory=PersonaSettings, description="ANIMA_PERSONAS__*")
    limits: LimitSettings = Field(default_factory=LimitSettings, description="ANIMA_LIMITS__*")
    allow_open: bool = Field(
        default=False, description="serve without API keys on a non-loopback interface (keys are safer)"
    )
    cors_origins: list[str] = Field(default_factory=list, description="browser origins allowed (CORS); none")
    log_content: bool = Field(default=False, description="let debug logs include message text")
    passthrough: str | None = Field(
        default=None,
        description="OpenAI-compatible backend that gets /v1/* routes Anima does not serve (unset: 404)",
    )
    embedding_model: str = Field(
        default="anima/all-minilm-l6-v2", description="name of the built-in MiniLM in /v1/embeddings"
    )
    log_json: bool = Field(default=False, description="log JSON lines (one object per line) instead of text")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = toml_source(settings_cls)
        return init_settings, env_settings, dotenv_settings, toml, file_secret_settings

    @model_validator(mode="after")
    def _embedded_default(self) -> Settings:
        """With no backend configured, serve the embedded SmolLM2 so a fresh install answers."""
        if not self.backends:
            self.backends = {"local": BackendSettings(kind="embedded")}
            if not self.models:
                self.models = [RouteSettings(name="local/smollm2", backend="local", model="smollm2")]
        return self

    def personas_folder(self) -> Path:
        return self.personas.folder or self.data_dir / "personas"

    @model_validator(mode="after")
    def _routes_name_known_backends(self) -> Settings:
        passthrough = self.backends.get(self.passthrough or "")
        if self.passthrough is not None and (passthrough is None or passthrough.kind != "openai"):
            raise ValueError(f"passthrough '{self.passthrough}' is not a configured backend of kind openai")
        names = {route.name for route in self.models}
        for route in self.models:
            if route.backend not in self.backends:
                raise ValueError(f"model '{route.name}' routes to unknown backend '{route.backend}'")
            for fallback in route.fallbacks:
                if fallback not in names and fallback.split("/", 1)[0] not in self.backends:
                    raise ValueError(f"model '{route.name}' falls back to unknown model '{fallback}'")
        return self


@lru_cache
def get_settings() -> Settings:
    """The process's settings; only the uvicorn entry point and the CLI use this."""
    return Settings()
