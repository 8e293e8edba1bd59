"""ChatPipeline: the only code that knows the order of the steps of one chat turn.

`prepare()` validates what only the server can validate, resolves the route, and opens the backend
stream *and pulls its first delta*, so every failure that can be known before the first byte becomes
a real HTTP status instead of a 200 stream carrying an error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from emotion.detector import Emotion
from emotion.service import EmotionService
from memory.budget import Budget, BudgetExceeded, Shares, TokenCounter
from memory.recall import Boost
from memory.service import MemoryService, TurnRecord
from memory.types import Annotation, Message, SessionKey, Thread
from personas.client_card import CardIndex, IndexedCard, excerpt, leading_system, pick_chunks, recognise_card
from personas.prompt import Prompt, assemble_prompt, parts_for
from personas.render import merge_system
from personas.store import PersonaStore, Resolved
from proxy.backends.base import BackendRequest, Delta
from proxy.backends.registry import Registry, Route
from proxy.errors import BackendError, ContextTooLong, PersonaNotFound, ProxyError, UnsupportedParameter
from proxy.metrics import memory_turn, timed
from proxy.protocol import ChatCompletionRequest, ChatMessage, ResponseFormat

log = logging.getLogger("anima.pipeline")

_ROLES = {"developer": "system", "function": "tool"}


@dataclass(frozen=True, slots=True)
class PersonaUse:
    """Which persona version answered a turn (stored with the reply, shown in headers)."""

    name: str
    version: int
    id: int | None = None  # database row: the conversation's persona

    def public(self) -> dict[str, str | int]:
        return {"name": self.name, "version": self.version}

    @classmethod
    def of(cls, resolved: Resolved) -> PersonaUse:
        return cls(resolved.name, resolved.version, resolved.id)


@dataclass(frozen=True, slots=True)
class MemoryTurn:
    """What memory contributed to a turn, kept to store the turn once the reply is in."""

    session: SessionKey
    thread: Thread
    prompt: Prompt
    degraded: tuple[str, ...]
    newest: Annotation | None = None  # importance (and emotion) of the newest user message
    persona: PersonaUse | None = None
    incoming: tuple[Message, ...] = ()  # the request's messages (the journal re-recognises them)


@dataclass(frozen=True, slots=True)
class PreparedChat:
    """A turn whose backend stream is open and primed; `deltas` starts with the first delta."""

    id: str
    created: int
    model: str
    backend: str
    request: BackendRequest
    deltas: AsyncIterator[Delta]
    include_usage: bool
    memory: MemoryTurn | None = None
    memory_status: str = "off"  # off | ok | degraded
    persona: PersonaUse | None = None
    after: Callable[[str], None] | None = None  # called with the reply text (the token rate limit)
    unstored: tuple[SessionKey, tuple[Message, ...]] | None = None  # memory was down: journal the turn

    def headers(self) -> dict[str, str]:
        headers = {"X-Anima-Backend": self.backend, "X-Anima-Memory": self.memory_status}
        if self.memory is not None:
            headers["X-Anima-Conversation"] = self.memory.thread.public_id
        if self.persona is not None:
            headers["X-Anima-Persona"] = f"{self.persona.name};v={self.persona.version}"
        return headers


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
    ) -> None:
        self.registry = registry
        self.tokens = tokens
        self.retry = retry or RetryPolicy()
        self.memory = memory
        self.emotion = emotion
        self.budget = budget or BudgetPolicy()
        self.personas, self.cards, self.default_persona = personas, cards, default_persona
        self.log_content = log_content
        self._windows: dict[tuple[str, str], int | None] = {}

    async def prepare(
        self, body: ChatCompletionRequest, session: SessionKey | None = None, *, persona: str | None = None
    ) -> PreparedChat:
        """`persona`: the `X-Anima-Persona` header, which beats a `persona@route` model alias."""
        if body.n is not None and body.n > 1:
            raise UnsupportedParameter("n > 1 is not supported: ask for one choice per request.", param="n")
        alias, route_name = self.registry.split_alias(body.model)
        chain = self.registry.resolve(route_name)
        chosen = await self._persona(persona, alias, route_name, session.user_id if session else None)
        named = session.character if session is not None else None  # by the client (header)
        if session is not None and chosen is not None and named is None:
            # the persona is the character: "hi" to aria and "hi" to rex are two chats, not one
            session = dataclasses.replace(session, character=chosen.persona.title)
        messages = tuple(to_message(m) for m in body.messages)
        turn = (
            await self._remembered(session, messages, chain[0], body, chosen, named)
            if session is not None
            else None
        )
        status = (
            "off"
            if self.memory is None or session is None
            else "degraded"
            if not turn or turn.degraded
            else "ok"
        )
        memory_turn(status, turn.degraded if turn is not None else ())
        unstored = None
        if turn is not None:
            outgoing = turn.prompt.messages
        else:
            if session is not None and self.memory is not None:  # the database is down
                unstored = (session, messages)
                messages = with_recent(messages, self.memory.recent(session))
            outgoing = await self._felt(with_persona(messages, chosen), chosen)
        self._log_prompt(outgoing)
        route, request, deltas = await self._open(chain, outgoing, body)
        return PreparedChat(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=body.model,
            backend=route.backend.name,
            request=request,
            deltas=deltas,
            include_usage=body.include_usage,
            memory=turn,
            memory_status=status,
            persona=(turn.persona if turn is not None else PersonaUse.of(chosen) if chosen else None),
            unstored=unstored,
        )

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

    def _emotion_for(self, persona: Resolved | None, character: str | None) -> bool:
        if self.emotion is None or (persona is not None and not persona.persona.emotion):
            return False
        return self.emotion.active_for(persona.name if persona else character)

    async def _remembered(
        self,
        session: SessionKey,
        messages: tuple[Message, ...],
        route: Route,
        body: ChatCompletionRequest,
        persona: Resolved | None = None,
        character: str | None = None,
    ) -> MemoryTurn | None:
        """Recognise, recall and assemble; a memory failure degrades to a plain proxy, never an error."""
        if self.memory is None:
            return None
        query = next((m.content for m in reversed(messages) if m.role == "user"), "")
        feeling = (
            self.emotion.read(query)
            if self.emotion is not None and self._emotion_for(persona, session.character)
            else None
        )
        embedding = self.memory.embed_query(query)  # in a thread, while recognition queries Postgres
        speaker = next((m.name for m in messages if m.role == "assistant" and m.name), None)
        card = recognise_card(leading_system(messages), character, speaker) if self.cards else None
        indexing = (
            asyncio.ensure_future(self.cards.index(session.user_id, card)) if self.cards and card else None
        )
        try:
            with timed("recognise"):
                thread = await self.memory.recognise(session, messages)
        except Exception as exc:
            embedding.cancel()
            if feeling is not None:
                feeling.cancel()
            if indexing is not None:
                indexing.cancel()
            log.warning("memory unavailable, answering from the client's messages: %s", exc)
            return None
        if thread.kind == "quiet" and feeling is not None:  # not the user speaking: nothing to read
            feeling.cancel()
            feeling = None
        boost = asyncio.ensure_future(self._boost(feeling)) if feeling is not None else None
        with timed("recall"):
            recall = await self.memory.recall(
                session,
                thread,
                query,
                embedding=embedding,
                boost=boost,
                persona_id=persona.id if persona else None,
            )
        emotion = None
        if self.emotion is not None and feeling is not None:
            with timed("emotion"):
                emotion = await self.emotion.reading(feeling)
        block = self.emotion.block(emotion, thread.path, recall.memories) if self.emotion else None
        window = await self._context_window(route)
        budget = Budget.for_model(window, body.reply_limit, self.budget.shares)
        indexed = await self._indexed(indexing)
        outgoing = with_persona(await self._fit_card(messages, indexed, persona, budget, embedding), persona)
        embedding.cancel()  # unless recall or the card used it
        try:
            with timed("assemble"):
                prompt = assemble_prompt(
                    parts_for(outgoing, recall, volatile=[block] if block else ()), budget, self.tokens
                )
        except BudgetExceeded as exc:
            raise ContextTooLong(str(exc), param="messages") from exc
        if prompt.last_cut_id is not None:
            self.memory.summarise_later(session, thread, prompt.last_cut_id, prompt.cut_count, body.model)
        newest = (
            self.emotion.annotation(thread.new[-1].content, emotion)
            if self.emotion and thread.new and thread.new[-1].role == "user"
            else None
        )
        used = (
            PersonaUse.of(persona)
            if persona
            else PersonaUse(indexed.card.name, indexed.version, indexed.persona_id)
            if indexed
            else None
        )
        return MemoryTurn(
            session=session,
            thread=thread,
            prompt=prompt,
            degraded=recall.degraded,
            newest=newest,
            persona=used,
            incoming=messages,
        )

    @staticmethod
    async def _indexed(indexing: asyncio.Future[IndexedCard] | None) -> IndexedCard | None:
        """The stored, chunked card (instant once this process has seen it); failing it is not fatal."""
        if indexing is None:
            return None
        try:
            return await indexing
        except Exception as exc:
            log.warning("could not index the client's character card: %s", exc)
            return None

    async def _fit_card(
        self,
        messages: tuple[Message, ...],
        indexed: IndexedCard | None,
        persona: Resolved | None,
        budget: Budget,
        embedding: asyncio.Future[list[float] | None],
    ) -> tuple[Message, ...]:
        """A card over its share of the budget gives way to its chunks most relevant to this turn."""
        if indexed is None:
            return messages
        share = int(budget.prompt * self.budget.shares.persona)
        own = self.tokens.message(persona.text) if persona else 0
        if own + indexed.tokens <= share:
            return messages
        query = None  # without a query vector: the card's opening chunks
        if not embedding.cancelled():
            try:
                query = await embedding
            except Exception as exc:
                log.info("no query embedding for the card's chunks: %s", exc)
        room = max(share - own - self.tokens.message(excerpt(indexed, []).content), share // 4)
        chosen = pick_chunks(indexed.chunks, indexed.scores(query) if query is not None else None, room)
        return (excerpt(indexed, chosen), *messages[len(indexed.card.messages) :])

    async def _boost(self, feeling: asyncio.Future[Emotion | None]) -> Boost | None:
        assert self.emotion is not None
        return self.emotion.boost(await self.emotion.reading(feeling))

    async def _felt(self, messages: tuple[Message, ...], persona: Resolved | None) -> tuple[Message, ...]:
        """Without memory: the emotional-context block as a system message before the newest user one."""
        if self.emotion is None or not self._emotion_for(persona, None):
            return messages
        if not messages or messages[-1].role != "user":
            return messages
        emotion = await self.emotion.reading(self.emotion.read(messages[-1].content))
        block = self.emotion.block(emotion, (), ())
        return (*messages[:-1], Message("system", block), messages[-1]) if block else messages

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
        return "".join([delta.text async for delta in deltas])

    def finish(self, chat: PreparedChat, reply: str, *, complete: bool) -> None:
        """Hand the finished (or broken-off) turn to memory, which stores it in the background."""
        if chat.after is not None:
            chat.after(reply)
        if self.memory is not None and chat.unstored is not None:
            session, incoming = chat.unstored
            record = TurnRecord(
                reply=reply,
                status="complete" if complete else "partial",
                model=chat.model,
                prompt=[{"role": m.role, "content": m.content} for m in chat.request.messages],
                tokens={},
                persona=chat.persona.public() if chat.persona else None,
                persona_id=chat.persona.id if chat.persona else None,
                incoming=incoming,
            )
            self.memory.journal_later(session, record)
        if self.memory is None or chat.memory is None:
            return
        prompt = chat.memory.prompt
        self.memory.remember(
            chat.memory.session,
            chat.memory.thread,
            TurnRecord(
                reply=reply,
                status="complete" if complete else "partial",
                model=chat.model,
                prompt=[
                    {"role": m.role, "content": m.content} | ({"name": m.name} if m.name else {})
                    for m in prompt.messages
                ],
                tokens=dict(prompt.tokens) | {"cut_messages": prompt.cut_count},
                newest=chat.memory.newest,
                persona=chat.memory.persona.public() if chat.memory.persona else None,
                persona_id=chat.memory.persona.id if chat.memory.persona else None,
                incoming=chat.memory.incoming,
            ),
        )

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
        prompt = sum(self.tokens.count(m.content) + 4 for m in chat.request.messages) + 2
        return prompt, self.tokens.count(reply)


async def primed(stream: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    """Pull the first delta now (raising connect errors here), then hand back a stream that replays it."""
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        first = Delta(finish_reason="stop")
    except BaseException:
        await _aclose(stream)
        raise
    return _replay(first, stream)


async def _replay(first: Delta, rest: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    try:
        yield first
        async for delta in rest:
            yield delta
    finally:  # runs on client disconnect too: closing the backend stream cancels the upstream request
        with anyio.move_on_after(5, shield=True):  # shielded, or the disconnect's cancel scope skips it
            await _aclose(rest)


async def _aclose(stream: AsyncIterator[Delta]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


def with_recent(messages: tuple[Message, ...], recent: tuple[Message, ...]) -> tuple[Message, ...]:
    """A thin client's request (no assistant message of its own) with what this process remembers
    of the conversation before it, when the database cannot supply the history."""
    if not recent or any(m.role == "assistant" for m in messages):
        return messages
    system = leading_system(messages)
    return (*system, *recent, *messages[len(system) :])


def with_persona(messages: tuple[Message, ...], persona: Resolved | None) -> tuple[Message, ...]:
    """The rendered persona first, then the client's own leading system messages minus what repeats it."""
    if persona is None:
        return messages
    system = leading_system(messages)
    return (*_merged(persona.text, system), *messages[len(system) :])


@functools.lru_cache(maxsize=256)
def _merged(persona: str, system: tuple[Message, ...]) -> tuple[Message, ...]:
    """Clients resend the same system prompt every turn: merge it once per (persona, prompt)."""
    return tuple(merge_system(persona, system))


def to_message(message: ChatMessage) -> Message:
    return Message(role=_ROLES.get(message.role, message.role), content=message.text(), name=message.name)


def backend_request(model: str, messages: tuple[Message, ...], body: ChatCompletionRequest) -> BackendRequest:
    fmt = body.response_format
    return BackendRequest(
        model=model,
        messages=messages,
        max_tokens=body.reply_limit,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        stop=tuple(body.stop or ()),
        seed=body.seed,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty,
        response_format="json" if fmt is not None and fmt.type != "text" else "text",
        json_schema=fmt.json_schema if fmt is not None and fmt.type == "json_schema" else None,
    )
