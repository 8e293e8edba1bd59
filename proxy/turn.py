"""The turn step of the pipeline: emotion, memory (recognise, recall), the client's card and the budgeted
prompt — one assembly path whether memory is on, off or down.

Memory on: the stored branch supplies history the client did not send, recall and summaries. Memory off
or down: the same assembly with what this process still knows (its RAM window and journal, for a thin
client), and the turn is journaled to be stored when the database is back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from emotion.detector import Emotion
from emotion.service import EmotionService
from memory.budget import AtMost, Budget, BudgetExceeded, Shares, TokenCounter
from memory.recall import Boost
from memory.service import MemoryService
from memory.types import Annotation, Memory, Message, SessionKey, StoredMessage, Summary, Thread
from personas.client_card import CardIndex, IndexedCard, excerpt, leading_system, pick_chunks, recognise_card
from personas.prompt import Prompt, assemble_prompt, cost, fits_whole
from personas.prompt_parts import parts_for
from personas.render import merge_system
from personas.store import Resolved
from proxy.errors import ContextTooLong
from proxy.metrics import timed
from proxy.turn_records import Ahead, MemoryTurn, PersonaUse, TurnRequest

if TYPE_CHECKING:
    from proxy.knowledge import Knowledge, Known  # issue 17

log = logging.getLogger("anima.turn")


class TurnBuilder:
    def __init__(
        self,
        tokens: TokenCounter,
        shares: Shares,
        *,
        memory: MemoryService | None = None,
        emotion: EmotionService | None = None,
        cards: CardIndex | None = None,
        knowledge: Knowledge | None = None,
    ) -> None:
        self.tokens, self.shares = tokens, shares
        self.memory, self.emotion, self.cards = memory, emotion, cards
        self.knowledge = knowledge  # issue 17: what personas know about the user
        # memory off stores no token counts: a prompt that fits by an upper bound needs no tokenizing
        self._at_most = AtMost(tokens) if memory is None else None

    async def build(self, turn: TurnRequest) -> MemoryTurn:
        """The prompt for this turn and what memory made of the request."""
        if self.memory is not None and turn.session is not None:
            remembered = await self._remembered(turn, turn.session, self.memory)
            if remembered is not None:
                return remembered
        return await self._plain(turn)

    async def _plain(self, turn: TurnRequest) -> MemoryTurn:
        """Memory off or down: the client's messages (plus, for a thin client, what this process still
        remembers), the emotional context, the same budget."""
        down = self.memory is not None and turn.session is not None
        earlier: Sequence[Message] = ()
        if down and not any(m.role == "assistant" for m in turn.messages):
            assert self.memory is not None and turn.session is not None
            earlier = self.memory.recent(turn.session)
        block = await self._felt(turn)
        outgoing = with_persona(turn.messages, turn.persona)
        prompt = self._assemble(
            outgoing, turn.budget, None, earlier=earlier, volatile=[block] if block else ()
        )
        persona = PersonaUse.of(turn.persona) if turn.persona else None
        return MemoryTurn(turn.session, None, prompt, persona=persona, incoming=turn.messages, unstored=down)

    async def _felt(self, turn: TurnRequest) -> str | None:
        chat = [m for m in turn.messages if m.role in ("user", "assistant")]
        if self.emotion is None or not chat or chat[-1].role != "user":
            return None
        if not self._emotion_for(turn.persona, turn.session.character if turn.session else None):
            return None
        pending = self.emotion.read(chat[-1].content)
        try:
            emotion = await self.emotion.reading(pending)
        finally:
            pending.cancel()  # a no-op once done; stops the reading of a turn abandoned meanwhile
        return self.emotion.block(emotion, (), ())

    def _read(
        self, query: str, turn: TurnRequest, session: SessionKey, memory: MemoryService
    ) -> tuple[asyncio.Future[Emotion | None] | None, asyncio.Future[list[float] | None]]:
        """Start the newest user message's emotion reading and its recall vector: one encoder pass
        for both when the detector has the joint graph, else two."""
        if self.emotion is None or not self._emotion_for(turn.persona, session.character):
            return None, memory.embed_query(query)
        both = self.emotion.read_and_embed(query) if memory.embedder is not None else None
        return both if both is not None else (self.emotion.read(query), memory.embed_query(query))

    def _emotion_for(self, persona: Resolved | None, character: str | None) -> bool:
        if self.emotion is None or (persona is not None and not persona.persona.emotion):
            return False
        return self.emotion.active_for(persona.name if persona else character)

    async def _remembered(
        self, turn: TurnRequest, session: SessionKey, memory: MemoryService
    ) -> MemoryTurn | None:
        """Recognise, recall and assemble; a memory failure degrades to the plain path, never an error.
        What the turn starts ahead (the encoder pass, the card, the facts) ends with it: cancelled when
        the turn is abandoned (memory down, an error, the client gone) and whatever it left unused."""
        query = next((m.content for m in reversed(turn.messages) if m.role == "user"), "")
        feeling, embedding = self._read(query, turn, session, memory)  # in a thread, while recognition runs
        ahead = Ahead(feeling, embedding, self._index_card(session, turn.messages, turn.character))
        try:
            try:
                with timed("recognise"):
                    thread = await memory.recognise(
                        session, turn.messages, earlier_tokens=int(self.shares.history * turn.budget.window)
                    )
            except Exception as exc:
                log.warning("memory unavailable, answering from the client's messages: %s", exc)
                return None
            return await self._recalled(turn, session, memory, thread, query, ahead)
        finally:
            ahead.end()

    async def _recalled(
        self,
        turn: TurnRequest,
        session: SessionKey,
        memory: MemoryService,
        thread: Thread,
        query: str,
        ahead: Ahead,
    ) -> MemoryTurn:
        """The recognised turn's recall, emotion, card and facts, assembled under the budget."""
        self._alongside_recall(turn, session, thread, ahead)
        feeling, embedding = ahead.feeling, ahead.embedding
        persona_id = turn.persona.id if turn.persona else None
        with timed("recall"):
            recall = await memory.recall(
                session, thread, query, embedding=embedding, boost=ahead.boost, persona_id=persona_id
            )
        emotion = None
        if self.emotion is not None and feeling is not None:
            with timed("emotion"):
                emotion = await self.emotion.reading(feeling)
        block = self.emotion.block(emotion, thread.path, recall.memories) if self.emotion else None
        indexed = await _indexed(ahead.indexing)
        outgoing = await self._fit_card(turn.messages, indexed, turn, embedding)
        known = await self._known(ahead.knowing, turn)
        prompt = self._assemble(
            with_persona(outgoing, turn.persona),
            turn.budget,
            thread,
            memories=recall.memories,
            summaries=recall.summaries,
            volatile=[block] if block else (),
            facts=known,
        )
        if prompt.last_cut_id is not None:
            memory.summarise_later(session, thread, prompt.last_cut_id, prompt.cut_count, turn.model)
        stored_with = _newest_user(thread) == query  # its vector is stored with it once done
        ahead.keep = embedding if stored_with else None
        return MemoryTurn(
            session=session,
            thread=thread,
            prompt=prompt,
            degraded=recall.degraded,
            newest=self._annotation(thread, emotion),
            persona=self._used(turn.persona, indexed),
            incoming=turn.messages,
            query=query,
            embedding=ahead.keep,
        )

    def _alongside_recall(self, turn: TurnRequest, session: SessionKey, thread: Thread, ahead: Ahead) -> None:
        """Start what runs while recall does: the facts read, and the emotional boost (not for a quiet
        or impersonated turn, where the user is not the one speaking)."""
        if self.knowledge:
            ahead.knowing = self.knowledge.read(session, thread, turn.persona)
        if thread.kind in ("quiet", "impersonate") and ahead.feeling is not None:
            ahead.feeling.cancel()
            ahead.feeling = None
        if ahead.feeling is not None:
            ahead.boost = asyncio.ensure_future(self._boost(ahead.feeling))

    async def _known(self, knowing: asyncio.Future[Known] | None, turn: TurnRequest) -> tuple[str, ...]:
        if self.knowledge is None or knowing is None:
            return ()
        return await self.knowledge.blocks(knowing, turn.persona, turn.budget)

    def _assemble(
        self,
        messages: Sequence[Message],
        budget: Budget,
        thread: Thread | None,
        *,
        earlier: Sequence[StoredMessage | Message] | None = None,
        memories: Sequence[Memory] = (),
        summaries: Sequence[Summary] = (),
        volatile: Sequence[str] = (),
        facts: Sequence[str] = (),
    ) -> Prompt:
        parts = parts_for(
            messages, thread, earlier=earlier, memories=memories, summaries=summaries, volatile=volatile
        )
        parts = dataclasses.replace(parts, facts=facts)
        bound = self._at_most
        counter = bound if bound is not None and fits_whole(parts, budget, bound) else self.tokens
        try:
            with timed("assemble"):
                return assemble_prompt(parts, budget, counter)
        except BudgetExceeded as exc:
            raise ContextTooLong(str(exc), param="messages") from exc

    def _annotation(self, thread: Thread, emotion: Emotion | None) -> Annotation | None:
        if self.emotion and thread.new and thread.new[-1].role == "user":
            return self.emotion.annotation(thread.new[-1].content, emotion)
        return None

    @staticmethod
    def _used(persona: Resolved | None, indexed: IndexedCard | None) -> PersonaUse | None:
        if persona is not None:
            return PersonaUse.of(persona)
        return PersonaUse(indexed.card.name, indexed.version, indexed.persona_id) if indexed else None

    def _index_card(
        self, session: SessionKey, messages: tuple[Message, ...], character: str | None
    ) -> asyncio.Future[IndexedCard] | None:
        """Recognise the client's character card and start storing/indexing it (instant once seen)."""
        if self.cards is None:
            return None
        speaker = next((m.name for m in messages if m.role == "assistant" and m.name), None)
        card = recognise_card(leading_system(messages), character, speaker)
        return asyncio.ensure_future(self.cards.index(session.user_id, card)) if card else None

    async def _fit_card(
        self,
        messages: tuple[Message, ...],
        indexed: IndexedCard | None,
        turn: TurnRequest,
        embedding: asyncio.Future[list[float] | None],
    ) -> tuple[Message, ...]:
        """A card gives way to its chunks most relevant to this turn only when the client's whole request
        does not fit the model (the client's own text is otherwise sent verbatim)."""
        if indexed is None:
            return messages
        own = self.tokens.message(turn.persona.text) if turn.persona else 0
        if own + sum(cost(m, self.tokens) for m in messages) <= turn.budget.prompt:
            return messages
        share = int(turn.budget.prompt * self.shares.persona)
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


def _newest_user(thread: Thread) -> str | None:
    """The text of the user message this turn stores last, if it stores one."""
    return thread.new[-1].content if thread.new and thread.new[-1].role == "user" else None


async def _indexed(indexing: asyncio.Future[IndexedCard] | None) -> IndexedCard | None:
    """The stored, chunked card (instant once this process has seen it); failing it is not fatal."""
    if indexing is None:
        return None
    try:
        return await indexing
    except Exception as exc:
        log.warning("could not index the client's character card: %s", exc)
        return None


def with_persona(messages: Sequence[Message], persona: Resolved | None) -> tuple[Message, ...]:
    """The rendered persona first, then the client's own leading system messages minus what repeats it."""
    if persona is None:
        return tuple(messages)
    system = leading_system(messages)
    return (*_merged(persona.text, system), *messages[len(system) :])


@functools.lru_cache(maxsize=256)
def _merged(persona: str, system: tuple[Message, ...]) -> tuple[Message, ...]:
    """Clients resend the same system prompt every turn: merge it once per (persona, prompt)."""
    return tuple(merge_system(persona, system))
