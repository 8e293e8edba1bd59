"""ChatPipeline: the only code that knows the order of the steps of one chat turn.

`prepare()` validates what only the server can validate, resolves the route, and opens the backend
stream *and pulls its first delta*, so every failure that can be known before the first byte becomes
a real HTTP status instead of a 200 stream carrying an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from emotion.service import EmotionService
from memory.budget import Budget, Shares, TokenCounter
from memory.service import MemoryService
from memory.types import Message, SessionKey, ToolCall, TurnRecord
from personas.client_card import CardIndex
from personas.store import PersonaStore, Resolved
from proxy.backends.base import BackendRequest, Delta, TokenUsage
from proxy.backends.registry import Registry, Route
from proxy.errors import BackendError, PersonaNotFound, ProxyError
from proxy.metrics import memory_turn, timed
from proxy.outgoing import backend_request, to_message, tool_tokens, tools_of
from proxy.prepared import PreparedChat, primed
from proxy.protocol import ChatCompletionRequest, ChatMessage, ResponseFormat
from proxy.turn import TurnBuilder
from proxy.turn_records import MemoryTurn, TurnRequest

if TYPE_CHECKING:
    from proxy.knowledge import Knowledge  # issue 17

log = logging.getLogger("anima.pipeline")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int = 2
    backoff_s: float = 0.25


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    shares: Shares = field(default_factory=Shares)
    default_window: int = 8192


class ChatPipeline:
    def __init__(
        self,
        registry: Registry,
        tokens: TokenCounter,
        *,
        retry: RetryPolicy | None = None,
        memory: MemoryService | None = None,
        emotion: EmotionService | None = None,
        budget: BudgetPolicy | None = None,
        personas: PersonaStore | None = None,
        cards: CardIndex | None = None,
        default_persona: str | None = None,
        log_content: bool = False,
        knowledge: Knowledge | None = None,  # issue 17
    ) -> None:
        self.registry = registry
        self.tokens = tokens
        self.retry = retry or RetryPolicy()
        self.memory = memory
        self.emotion = emotion
        self.budget = budget or BudgetPolicy()
        self.personas, self.cards, self.default_persona = personas, cards, default_persona
        self.log_content = log_content
        self.knowledge = knowledge  # issue 17: what personas know about the user
        self._windows: dict[tuple[str, str], int | None] = {}
        self._foreground: Callable[[], contextlib.AbstractContextManager[None]] = (
            memory.foreground.turn if memory is not None else contextlib.nullcontext
        )
        self.turns = TurnBuilder(
            tokens, self.budget.shares, memory=memory, emotion=emotion, cards=cards, knowledge=knowledge
        )

    async def prepare(
        self, body: ChatCompletionRequest, session: SessionKey | None = None, *, persona: str | None = None
    ) -> PreparedChat:
        """`persona`: the `X-Anima-Persona` header, which beats a `persona@route` model alias."""
        alias, route_name = self.registry.split_alias(body.model)
        chain = self.registry.resolve(route_name)
        chosen = await self._persona(persona, alias, route_name, session.user_id if session else None)
        named = session.character if session is not None else None  # by the client (header)
        session = as_character(session, chosen)
        window = await self._context_window(chain[0])
        # the tool definitions go with every prompt: history gives way to them, never the backend's window
        tools = tool_tokens(tools_of(body)["tools"], self.tokens)
        budget = Budget.for_model(window, body.reply_limit, self.budget.shares, tools=tools)
        messages = tuple(to_message(m) for m in body.messages)
        with self._foreground():  # the embedding worker waits until the request is upstream (bounded)
            turn = await self._built(TurnRequest(session, messages, budget, body.model, chosen, named))
            self._log_prompt(turn.prompt.messages)
            route, request, deltas = await self._open(chain, turn.prompt.messages, body)
        turn_id = uuid.uuid4().hex
        memory_status = self._memory_status(session, turn)
        memory_turn(memory_status, turn.degraded)
        return PreparedChat(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=body.model,
            backend=route.backend.name,
            request=request,
            deltas=deltas,
            include_usage=body.include_usage,
            memory=turn,
            memory_status=memory_status,
            persona=turn.persona,
            stream=body.stream,
            turn_id=turn_id,
            wal=self._begin(turn, body.model, turn_id),
        )

    async def _built(self, request: TurnRequest) -> MemoryTurn:
        """The turn's prompt, shielded from a client that leaves meanwhile (its cancellation lands at the
        upstream request, right after): memory's reads end within their deadlines, and a statement
        cancelled half-way would cost its pooled connection (SQLAlchemy drops it, not returned)."""
        if self.memory is None:  # nothing to protect: no scope to enter (issue 15)
            return await self.turns.build(request)
        with anyio.CancelScope(shield=True):
            turn = await self.turns.build(request)
        return turn

    def _begin(self, turn: MemoryTurn, model: str, turn_id: str) -> Path | None:
        """A write-ahead file for a turn memory will store: what the client sees survives a SIGKILL."""
        if self.memory is None or turn.session is None or (turn.thread is None and not turn.unstored):
            return None
        record = TurnRecord("", "partial", model, [], {}, incoming=turn.incoming, turn_id=turn_id)
        return self.memory.begin(turn.session, record)

    def _memory_status(self, session: SessionKey | None, turn: MemoryTurn) -> str:
        if self.memory is None or session is None:
            return "off"
        return "degraded" if turn.thread is None or turn.degraded else "ok"

    def _log_prompt(self, messages: tuple[Message, ...]) -> None:
        """At debug level: the prompt's shape; its text only when ANIMA_LOG_CONTENT says so."""
        if not log.isEnabledFor(logging.DEBUG):
            return
        shape = ", ".join(f"{m.role}:{len(m.content)}" for m in messages)
        log.debug("prompt of %d messages (role:chars) %s", len(messages), shape)
        if self.log_content:
            log.debug("prompt text: %r", [(m.role, m.content) for m in messages])

    async def _persona(
        self, header: str | None, alias: str | None, route: str, user_id: int | None
    ) -> Resolved | None:
        """Precedence: the `X-Anima-Persona` header, the model alias `persona@route`, the route's
        default persona, the global default. A persona the request names must exist (404)."""
        named = [(header, "X-Anima-Persona"), (alias, "model")]
        name, param = next(((n, p) for n, p in named if n), (None, None))
        if name is None:
            name = self.registry.default_persona(route) or self.default_persona
        if name is None:
            return None
        found = await self._lookup(user_id, name)
        if found is None and param is not None:
            raise PersonaNotFound(f"The persona '{name}' does not exist.", param=param)
        if found is None:
            log.warning("the configured default persona '%s' does not exist", name)
        return found

    async def _lookup(self, user_id: int | None, name: str) -> Resolved | None:
        if self.personas is None:
            return None
        try:
            return await self.personas.get(user_id, name)
        except Exception as exc:  # the database is down: the shared (folder) personas still answer
            log.warning("persona lookup failed (%s): using the personas folder only", exc)
            return await self.personas.get(None, name)

    async def _context_window(self, route: Route) -> int:
        """The route's configured window, else what the backend reports (cached), else the default."""
        if route.context_window:
            return route.context_window
        key = (route.backend.name, route.model)
        if key not in self._windows:
            try:
                async with asyncio.timeout(2):
                    self._windows[key] = await route.backend.context_window(route.model)
            except Exception as exc:
                log.info("context window of %s unknown (%s); using the default", route.name, exc)
                self._windows[key] = None
        return self._windows[key] or self.budget.default_window

    async def complete_text(
        self, model: str, prompt: str, *, max_tokens: int = 400, json_schema: dict[str, Any] | None = None
    ) -> str:
        """One plain completion (no memory, no persona): summaries, and profiles (with a JSON schema)."""
        return (await self.complete(model, prompt, max_tokens=max_tokens, json_schema=json_schema))[0]

    async def complete(
        self, model: str, prompt: str, *, max_tokens: int = 400, json_schema: dict[str, Any] | None = None
    ) -> tuple[str, TokenUsage | None]:
        """`complete_text` with the backend's token usage (issue 17: extraction cost is measured)."""
        body = ChatCompletionRequest(
            model=model,
            messages=[ChatMessage(role="user", content=prompt)],
            max_tokens=max_tokens,
            temperature=0.3,
            response_format=ResponseFormat(type="json_schema", json_schema=json_schema)
            if json_schema
            else None,
        )
        _, _, deltas = await self._open(self.registry.resolve(model), (Message("user", prompt),), body)
        text, usage = [], None
        async for delta in deltas:
            text.append(delta.text)
            usage = delta.usage or usage
        return "".join(text), usage

    def finish(
        self, chat: PreparedChat, reply: str, *, complete: bool, tool_calls: tuple[ToolCall, ...] = ()
    ) -> None:
        """Hand the finished (or broken-off) turn to memory, which stores it in the background. A
        non-streaming request that failed stores no reply: its client saw none."""
        if chat.after is not None:
            chat.after(reply)
        turn = chat.memory
        if self.memory is None or turn is None or turn.session is None:
            return
        if not complete and not chat.stream:
            reply = ""
        record = TurnRecord(
            reply=reply,
            status="complete" if complete else "partial",
            model=chat.model,
            prompt=[
                {"role": m.role, "content": m.content} | ({"name": m.name} if m.name else {})
                for m in turn.prompt.messages
            ],
            tokens=dict(turn.prompt.tokens) | {"cut_messages": turn.prompt.cut_count},
            newest=turn.newest,
            persona=turn.persona.public() if turn.persona else None,
            persona_id=turn.persona.id if turn.persona else None,
            incoming=turn.incoming,
            reply_tool_calls=tool_calls,
            turn_id=chat.turn_id,
        )
        if turn.thread is None:
            if turn.unstored:
                self.memory.journal_later(turn.session, record, wal=chat.wal)
            return
        self.memory.remember(turn.session, turn.thread, record, wal=chat.wal, vectors=turn.vectors)

    async def _open(
        self, chain: list[Route], messages: tuple[Message, ...], body: ChatCompletionRequest
    ) -> tuple[Route, BackendRequest, AsyncIterator[Delta]]:
        """Try the route, then each fallback; retry retryable failures with backoff before the first byte."""
        last: ProxyError | None = None
        for route in chain:
            request = backend_request(route.model, messages, body)
            for attempt in range(self.retry.retries + 1):
                if attempt:
                    await asyncio.sleep(self.retry.backoff_s * 2 ** (attempt - 1))
                try:
                    with timed("backend_ttft"):
                        deltas = await primed(route.backend.stream(request))
                    return route, request, deltas
                except BackendError as exc:
                    last = exc
                    log.warning(
                        "%s try %d on %s failed: %s", route.name, attempt + 1, route.backend.name, exc
                    )
                    if not exc.retryable:
                        break
            if last is not None and not last.retryable and last.status() < 500 and last.status() != 429:
                raise last  # the request itself is bad: another backend will not like it better
        assert last is not None
        raise last

    def usage(self, chat: PreparedChat, reply: str, reported: tuple[int, int] | None) -> tuple[int, int]:
        """Token usage as the backend reported it, else counted with tiktoken."""
        if reported is not None:
            return reported
        prompt = sum(self.tokens.of(m.content, m.tool_calls) + 4 for m in chat.request.messages)
        prompt += tool_tokens(chat.request.tools, self.tokens) + 2
        return prompt, self.tokens.count(reply)


def as_character(session: SessionKey | None, persona: Resolved | None) -> SessionKey | None:
    """The persona is the conversation's character unless the client named one: "hi" to aria and "hi"
    to rex are two chats, not one."""
    if session is not None and persona is not None and session.character is None:
        return dataclasses.replace(session, character=persona.persona.title)
    return session
