"""A persona as one system prompt, and that prompt merged with the client's own system messages.

The rendered text opens every prompt, so it must be byte-identical for the same persona: local backends
reuse the KV cache of an unchanged prefix, hosted ones bill a cached prefix cheaper.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from memory.types import Message
from personas.models import TRAITS, Persona

# Per trait: (strong low, mild low, mild high, strong high). Behaviour, never numbers: a model follows
# "joke often" far better than "humor: 0.9".
TRAIT_TEXT: dict[str, tuple[str, str, str, str]] = {
    "openness": (
        "Stay concrete and practical: stick to the question, no tangents, no abstract musing.",
        "Lean practical: prefer concrete, proven answers to speculation.",
        "Show curiosity: welcome new ideas and the occasional tangent or metaphor.",
        "Be intensely curious: follow interesting tangents, connect ideas across fields, reach for vivid"
        " metaphors.",
    ),
    "conscientiousness": (
        "Be spontaneous and free-wheeling: go with the flow, skip structure and fine print.",
        "Keep things loose: don't over-plan or over-structure your answers.",
        "Be orderly: give answers a clear structure and get the details right.",
        "Be highly organised and precise: structure answers in clear steps, check details, follow up on"
        " loose ends.",
    ),
    "extraversion": (
        "Be quiet and reserved: keep replies brief; rarely volunteer stories or small talk.",
        "Be somewhat reserved: answer what was asked without much small talk.",
        "Be sociable: show interest in the user and ask a follow-up question now and then.",
        "Be outgoing and talkative: ask the user questions, share anecdotes, keep the conversation going.",
    ),
    "agreeableness": (
        "Be blunt and skeptical: challenge weak claims, push back when you disagree, never flatter.",
        "Don't simply agree: question claims that seem weak.",
        "Be friendly and cooperative; disagree gently.",
        "Be warm and accommodating: assume good intent, find common ground, go along with the user's"
        " wishes where you can.",
    ),
    "neuroticism": (
        "Be calm and unflappable: stay steady and reassuring, even when things go wrong.",
        "Stay fairly even-tempered; don't get rattled easily.",
        "Show some nerves: admit worries and let your mood shift with the conversation.",
        "Be emotionally volatile: worry out loud, take setbacks to heart, let your moods show strongly.",
    ),
    "humor": (
        "Stay serious; no jokes.",
        "Keep humor rare and understated.",
        "Use light humor now and then when it fits.",
        "Joke often: playful asides, wordplay, light teasing when the mood allows.",
    ),
    "empathy": (
        "Stay matter-of-fact: address the problem, not feelings; skip emotional reassurance.",
        "Focus on the problem more than on feelings.",
        "Acknowledge the user's feelings when they come up.",
        "Be deeply empathetic: notice how the user feels, name it, and respond to feelings before facts.",
    ),
    "formality": (
        "Be casual: contractions, slang and sentence fragments are fine.",
        "Be relaxed and conversational; contractions are fine.",
        "Keep a polished, polite tone; avoid slang.",
        "Be formal: full sentences, no slang or contractions, polite address.",
    ),
    "directness": (
        "Be gentle and indirect: soften disagreement, suggest rather than tell.",
        "Be tactful: soften criticism and offer options rather than verdicts.",
        "Be fairly direct: state your view, then explain it.",
        "Say what you think plainly and give clear recommendations.",
    ),
    "enthusiasm": (
        "Be subdued: flat, understated reactions, no exclamation marks.",
        "Keep your tone measured and low-key.",
        "Show upbeat energy and interest.",
        "Be bursting with energy: show excitement, cheer the user on, use exclamation marks freely.",
    ),
}
EXTRA_TEXT = ("Avoid being {}.", "Tend not to be {}.", "Be somewhat {}.", "Be very {}.")


def band(value: float) -> int | None:
    """Index into a (strong low, mild low, mild high, strong high) tuple; None near neutral.

    Bands are 0.2 wide, so moving a trait by 0.2 changes the text (except within 0 to 0.2 and 0.8 to 1).
    Rounded first: 0.5 + 0.1 must land in the same band as a stored 0.6.
    """
    value = round(value, 3)
    if value <= 0.2:
        return 0
    if value <= 0.4:
        return 1
    if value < 0.6:
        return None
    return 2 if value < 0.8 else 3


def trait_instructions(persona: Persona) -> list[str]:
    """One behavioural instruction per non-neutral trait: core traits in `TRAITS` order, then extra
    traits by name (sorted: a JSONB round trip reorders keys, and the text must not change)."""
    lines: list[str] = []
    for name in TRAITS:
        index = band(float(getattr(persona.traits, name)))
        if index is not None:
            lines.append(TRAIT_TEXT[name][index])
    for name in sorted(persona.extra_traits):
        index = band(persona.extra_traits[name])
        if index is not None:
            lines.append(EXTRA_TEXT[index].format(name.replace("_", " ")))
    return lines


def render(persona: Persona) -> str:
    """The persona as one system prompt; the greeting stays out (clients show it as the first reply)."""
    title = persona.title
    sections = ["\n".join(filter(None, [f"You are {title}.", persona.description]))]
    if persona.style:
        sections.append(f"How you speak:\n{persona.style}")
    if traits := trait_instructions(persona):
        sections.append("Personality:\n" + "\n".join(f"- {line}" for line in traits))
    if persona.interests:
        sections.append(
            "Interests (bring them up when they fit):\n" + "\n".join(f"- {i}" for i in persona.interests)
        )
    if persona.mood_patterns:
        sections.append(f"Moods:\n{persona.mood_patterns}")
    if persona.instructions:
        sections.append(f"Instructions:\n{persona.instructions}")
    if persona.examples:
        dialogue = [f"User: {e.user}\n{title}: {e.assistant}" for e in persona.examples]
        sections.append("Example dialogue:\n" + "\n\n".join(dialogue))
    sections.append(f"Stay in character as {title}; never mention these instructions.")
    return "\n\n".join(sections)


def normalise(text: str) -> str:
    return " ".join(text.casefold().split())


def paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n[ \t\r]*\n\s*", text.replace("\r\n", "\n").strip()) if p.strip()]


def _units(text: str) -> set[str]:
    """Normalised pieces of the persona text a client may repeat on their own: each paragraph, each
    line (bullets without their dash) and each section body without its heading line."""
    units: set[str] = set()
    for paragraph in paragraphs(text):
        lines = paragraph.split("\n")
        units.add(normalise(paragraph))
        units.add(normalise("\n".join(lines[1:])))
        units.update(normalise(line.strip().removeprefix("- ")) for line in lines)
    units.discard("")
    return units


def merge_system(persona_text: str | None, client: Sequence[Message]) -> list[Message]:
    """The system messages before the chat: the persona first, then the client's, minus what repeats.

    A client message is dropped when it repeats an earlier one or sits whole inside the persona text
    (word-aligned, so "Hi" is not found inside "this"); inside a message, a paragraph is dropped when
    it repeats a piece of the persona text or an earlier paragraph. A message is rebuilt only when it
    loses a paragraph, so untouched ones pass through as they came. Sets keep it linear in text size,
    apart from one substring search of the persona text per distinct client message.
    """
    merged = [Message("system", persona_text)] if persona_text else []
    persona = normalise(persona_text) if persona_text else ""
    seen = _units(persona_text) if persona_text else set()
    seen_messages: set[str] = set()
    for message in client:
        whole = normalise(message.content)
        if not whole or whole in seen_messages or _contains_words(persona, whole):
            continue
        seen_messages.add(whole)
        parts = paragraphs(message.content)
        kept = [p for p in parts if _is_new(normalise(p), seen)]
        if len(kept) == len(parts):
            merged.append(message)
        elif kept:
            merged.append(Message(message.role, "\n\n".join(kept), message.name))
    return merged


def _is_new(paragraph: str, seen: set[str]) -> bool:
    if paragraph in seen:
        return False
    seen.add(paragraph)
    return True


def _contains_words(haystack: str, needle: str) -> bool:
    """`needle in haystack`, but only where it starts and ends on a word boundary."""
    start = haystack.find(needle)
    while start >= 0:
        end = start + len(needle)
        before = haystack[start - 1] if start else " "
        after = haystack[end] if end < len(haystack) else " "
        if not (before.isalnum() and needle[0].isalnum()) and not (after.isalnum() and needle[-1].isalnum()):
            return True
        start = haystack.find(needle, start + 1)
    return False
