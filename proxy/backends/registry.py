"""Model name → backend routing, with per-model fallback chains.

A name is routed by the `[[models]]` table first; otherwise `<backend>/<model>` reaches any
configured backend by its name (`ollama/qwen2.5` works without a table entry).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from proxy.backends.base import Backend
from proxy.errors import ModelNotFound
from proxy.setting_groups import BackendSettings, RouteSettings

log = logging.getLogger("anima.registry")


@dataclass(frozen=True, slots=True)
class Route:
    name: str  # what the client asked for
    backend: Backend
    model: str  # what the backend is asked for
    context_window: int | None = None


class Registry:
    def __init__(self, backends: Mapping[str, Backend], routes: list[RouteSettings]) -> None:
        self.backends = dict(backends)
        self._routes = {r.name: r for r in routes}

    def resolve(self, name: str) -> list[Route]:
        """The route for `name` followed by its fallbacks, in order. Unknown name → 404."""
        chain, seen = [self._route(name)], {name}
        for fallback in self._fallbacks(name):
            if fallback not in seen:
                seen.add(fallback)
                chain.append(self._route(fallback))
        return chain

    def split_alias(self, name: str) -> tuple[str | None, str]:
        """`aria@ollama/llama3.1` → ("aria", "ollama/llama3.1"); a name routed as it is has no persona."""
        if name in self._routes or "@" not in name:
            return None, name
        persona, _, route = name.partition("@")
        return (persona or None), route

    def default_persona(self, name: str) -> str | None:
        route = self._routes.get(name)
        return route.persona if route else None

    def _fallbacks(self, name: str) -> list[str]:
        route = self._routes.get(name)
        return list(route.fallbacks) if route else []

    def _route(self, name: str) -> Route:
        configured = self._routes.get(name)
        if configured is not None:
            return Route(name, self.backends[configured.backend], configured.model, configured.context_window)
        prefix, _, model = name.partition("/")
        if model and prefix in self.backends:
            return Route(name, self.backends[prefix], model)
        raise ModelNotFound(f"The model '{name}' does not exist or is not routed by Anima.", param="model")

    async def model_names(self, *, timeout_s: float = 2.0) -> list[tuple[str, str]]:
        """(model id, backend name) for every routed model: the table, then what each backend lists."""
        listed = [(r.name, r.backend) for r in self._routes.values()]
        seen = {name for name, _ in listed}
        results = await asyncio.gather(
            *(self._discover(name, backend, timeout_s) for name, backend in self.backends.items())
        )
        for backend_name, found in zip(self.backends, results, strict=True):
            for model in found:
                model_id = f"{backend_name}/{model}"
                if model_id not in seen:
                    seen.add(model_id)
                    listed.append((model_id, backend_name))
        return listed

    @staticmethod
    async def _discover(name: str, backend: Backend, timeout_s: float) -> list[str]:
        try:
            async with asyncio.timeout(timeout_s):
                return await backend.models()
        except Exception as exc:  # a dead backend must not break the model list
            log.warning("could not list models of backend %s: %s", name, exc)
            return []


def build_backends(configs: Mapping[str, BackendSettings]) -> dict[str, Backend]:
    """One adapter per configured backend. Imports are local: a deployment pays only for what it uses."""
    backends: dict[str, Backend] = {}
    for name, config in configs.items():
        if config.kind == "ollama":
            from proxy.backends.ollama import OllamaBackend

            backends[name] = OllamaBackend.from_settings(name, config)
        elif config.kind == "gemini":
            from proxy.backends.gemini import GeminiBackend

            backends[name] = GeminiBackend.from_settings(name, config)
        elif config.kind == "openai":
            from proxy.backends.openai_compat import OpenAICompatBackend

            backends[name] = OpenAICompatBackend.from_settings(name, config)
        else:
            from proxy.backends.llamacpp import EmbeddedLlamaBackend

            backends[name] = EmbeddedLlamaBackend.from_settings(name, config)
    return backends
