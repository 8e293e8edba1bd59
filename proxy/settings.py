"""All of Anima's settings in one typed object: env (`ANIMA_*`, nested with `__`), `.env`, `anima.toml`.

Precedence, highest first: constructor arguments, environment, `.env`, the TOML file named by
`ANIMA_CONFIG` (default `./anima.toml`). The TOML file is where the backend/model routing table lives.
The nested groups (backends, routes, memory, emotion, personas, limits) are proxy/setting_groups.py.
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from proxy.setting_groups import (
    BackendSettings,
    EmotionSettings,
    LimitSettings,
    MemorySettings,
    PersonaSettings,
    RouteSettings,
)


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
