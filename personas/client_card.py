"""The client's own character card (SillyTavern sends it as the leading system messages).

Anima recognises it, stores it as the conversation's persona (a new version only when the card's
text changes) and indexes it in chunks with embeddings. When the card is larger than the persona's
share of the budget, the prompt carries the card's most relevant chunks for this turn, in card order,
instead of a truncated card: a lore detail deep in a long card still reaches the model when it matters.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from memory.budget import TokenCounter
from memory.types import Message
from personas.cards import slug
from personas.records import Records

if TYPE_CHECKING:
    from memory.embedder import Embedder

CHUNK_TOKENS = 120
MIN_CARD_CHARS = 600  # shorter system prompts without a character header are instructions, not cards
_CARD_MARKERS = re.compile(
    r"\[Example Chat\]|\[Start a new (group )?chat|<START>|'s personality:|^Scenario:|\{\{char\}\}"
    r"|^Write .{1,40}'s next reply",
    re.IGNORECASE | re.MULTILINE,
)
EXCERPT_HEADER = (
    "Character card of {title} (the parts relevant now; the rest is remembered and recalled as needed):"
)


@dataclass(frozen=True, slots=True)
class ClientCard:
    name: str  # persona id (a slug of the character's name)
    title: str
    messages: tuple[Message, ...]  # the leading system messages that make up the card
    hash: str

    @property
    def text(self) -> str:
        return "\n\n".join(m.content for m in self.messages)


@dataclass(frozen=True, slots=True)
class Chunk:
    position: int
    content: str
    token_count: int
    embedding: list[float] | None


@dataclass(frozen=True, slots=True)
class IndexedCard:
    card: ClientCard
    persona_id: int
    version: int
    chunks: tuple[Chunk, ...]
    tokens: int  # the whole card's prompt cost, counted once
    matrix: np.ndarray = field(compare=False, repr=False)  # unit-length chunk embeddings, row per chunk

    def scores(self, query: Sequence[float]) -> list[float]:
        """Cosine similarity of each chunk to the query (0 for a chunk without an embedding)."""
        q = np.asarray(query, dtype=np.float32)
        return [float(x) for x in self.matrix @ (q / (np.linalg.norm(q) or 1.0))]


def leading_system(messages: Sequence[Message]) -> tuple[Message, ...]:
    """The system messages before the first chat message (where clients put the card)."""
    out: list[Message] = []
    for message in messages:
        if message.role != "system":
            break
        out.append(message)
    return tuple(out)


def recognise_card(
    system: Sequence[Message], character: str | None, speaker: str | None = None
) -> ClientCard | None:
    """The card, if these system messages are one: the client named its character (header), or the
    text has a card's structure, or it is long enough to be more than a one-line instruction.
    `speaker`: the `name` on the chat's assistant messages (SillyTavern's "Completion object" names)."""
    text = "\n\n".join(m.content for m in system).strip()
    if not text:
        return None
    if not character and not _CARD_MARKERS.search(text) and len(text) < MIN_CARD_CHARS:
        return None
    title = character or speaker or _guess_title(text)
    digest = hashlib.md5(text.encode()).hexdigest()
    name = slug(title) if title else None
    if not name:  # no name to go by: key the card by its content, never by a placeholder shared by all
        longest = max((m.content for m in system), key=len)  # the description: world info comes and goes
        name = hashlib.md5(longest.encode()).hexdigest()[:12]
    return ClientCard(
        name=f"card-{name}"[:64], title=title or "character", messages=tuple(system), hash=digest
    )


_TITLE = re.compile(
    r"^(?:Name:\s*)?([A-Z][\w .'-]{0,40}?)'s (?:personality|description)"  # card fields
    r"|^Write ([A-Z][\w .'-]{0,40}?)'s next reply",  # SillyTavern's default main prompt
    re.MULTILINE,
)


def _guess_title(text: str) -> str | None:
    found = _TITLE.search(text)
    return next((g.strip() for g in found.groups() if g), None) if found else None


def split_card(card: ClientCard, counter: TokenCounter, max_tokens: int = CHUNK_TOKENS) -> list[Chunk]:
    """Paragraph-sized pieces of at most ~`max_tokens` each; long paragraphs split at sentences."""
    pieces: list[str] = []
    for message in card.messages:
        for paragraph in re.split(r"\n\s*\n", message.content):
            paragraph = paragraph.strip()
            if not paragraph:
                continue
            if counter.count(paragraph) <= max_tokens:
                pieces.append(paragraph)
                continue
            current = ""
            for sentence in re.split(r"(?<=[.!?])\s+|\n", paragraph):
                joined = f"{current} {sentence}".strip()
                if current and counter.count(joined) > max_tokens:
                    pieces.append(current)
                    current = sentence
                else:
                    current = joined
            if current:
                pieces.append(current)
    merged: list[str] = []  # small neighbours share a chunk, so headings stay with their text
    for piece in pieces:
        if merged and counter.count(f"{merged[-1]}\n{piece}") <= max_tokens // 2:
            merged[-1] = f"{merged[-1]}\n{piece}"
        else:
            merged.append(piece)
    return [Chunk(i, text, counter.count(text), None) for i, text in enumerate(merged)]


def embedding_matrix(chunks: Sequence[Chunk]) -> np.ndarray:
    """Unit-length rows, one per chunk (zeros without an embedding): built once per card."""
    dim = next((len(c.embedding) for c in chunks if c.embedding), 1)
    matrix = np.zeros((len(chunks), dim), dtype=np.float32)
    for i, chunk in enumerate(chunks):
        if chunk.embedding:
            matrix[i] = chunk.embedding
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1.0, norms)


def pick_chunks(chunks: Sequence[Chunk], scores: Sequence[float] | None, budget: int) -> list[Chunk]:
    """The opening chunk (who the character is) plus the chunks that score highest (similarity to
    the query), within `budget` tokens, back in card order."""
    if not chunks:
        return []
    chosen = [chunks[0]] if chunks[0].token_count <= budget else []
    spent = sum(c.token_count + 1 for c in chosen)
    order = range(1, len(chunks))
    if scores is not None:
        order = sorted(order, key=lambda i: -scores[i])  # type: ignore[assignment]
    for i in order:
        if spent + chunks[i].token_count + 1 <= budget:
            chosen.append(chunks[i])
            spent += chunks[i].token_count + 1
    return sorted(chosen, key=lambda c: c.position)


def excerpt(indexed: IndexedCard, chosen: Sequence[Chunk]) -> Message:
    body = "\n\n".join(c.content for c in chosen)
    return Message("system", f"{EXCERPT_HEADER.format(title=indexed.card.title)}\n\n{body}")


class CardStore(Records, Protocol):
    """Persona versions plus the card's chunks (memory.personas.PersonaRecords)."""

    async def chunks(self, persona_id: int, card_hash: str) -> Sequence[Any]: ...
    async def save_chunks(
        self, persona_id: int, user_id: int, card_hash: str, chunks: Sequence[Any]
    ) -> None: ...


class CardIndex:
    """Stores each card version once (persona version + embedded chunks); a RAM LRU makes repeats free."""

    def __init__(
        self, store: CardStore, embedder: Embedder | None, counter: TokenCounter, *, size: int = 256
    ) -> None:
        self.store, self.embedder, self.counter, self.size = store, embedder, counter, size
        self._known: OrderedDict[tuple[int, str], IndexedCard] = OrderedDict()
        self._pending: dict[tuple[int, str], asyncio.Future[IndexedCard]] = {}

    async def index(self, user_id: int, card: ClientCard) -> IndexedCard:
        key = (user_id, card.hash)
        known = self._known.get(key)
        if known is not None:
            self._known.move_to_end(key)
            return known
        pending = self._pending.get(key)
        if pending is None:  # concurrent requests with a new card share one indexing
            pending = self._pending[key] = asyncio.ensure_future(self._index(user_id, card))
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        indexed = await asyncio.shield(pending)
        self._known[key] = indexed
        while len(self._known) > self.size:
            self._known.popitem(last=False)
        return indexed

    def forget_user(self, user_id: int) -> None:
        for key in [k for k in self._known if k[0] == user_id]:
            del self._known[key]

    async def _index(self, user_id: int, card: ClientCard) -> IndexedCard:
        spec = {
            "name": card.name,
            "display_name": card.title[:200],
            "description": card.text[:20000],
            "emotion": True,
        }
        record = await self.store.save(
            user_id, card.name, spec, source="card", note=f"card {card.hash[:8]}", reuse=True
        )
        stored = await self.store.chunks(record.id, card.hash)
        if stored:
            chunks = tuple(Chunk(c.position, c.content, c.token_count, c.embedding) for c in stored)
        else:
            pieces = split_card(card, self.counter)
            vectors: list[list[float] | None] = (
                list(await self.embedder.embed([c.content for c in pieces]))
                if self.embedder is not None
                else [None] * len(pieces)
            )
            chunks = tuple(
                Chunk(c.position, c.content, c.token_count, v) for c, v in zip(pieces, vectors, strict=True)
            )
            await self.store.save_chunks(record.id, user_id, card.hash, chunks)
        tokens = sum(self.counter.message(m.content) for m in card.messages)
        return IndexedCard(
            card=card,
            persona_id=record.id,
            version=record.version,
            chunks=chunks,
            tokens=tokens,
            matrix=embedding_matrix(chunks),
        )
