"""Is a message in a language the English-only detector cannot read? Then its reading is "unknown".

The detector (MiniLM fine-tuned on English Reddit comments) reads Spanish, French, German or Japanese
as a confident neutral, which is wrong and looks sure of itself. This says when not to trust it, with
no model: letters of a non-Latin script, or, in Latin script, more function words of one of the
common European languages than of English (chat slang like "lol", "brb", "omg" has neither, so a
short English line is never called foreign). Cheap enough to run on every message.
"""

from __future__ import annotations

import re
import unicodedata

_SCRIPTS = (
    ("HIRAGANA", "ja"),
    ("KATAKANA", "ja"),
    ("CJK", "zh"),
    ("HANGUL", "ko"),
    ("CYRILLIC", "ru"),
    ("ARABIC", "ar"),
    ("HEBREW", "he"),
    ("GREEK", "el"),
    ("THAI", "th"),
    ("DEVANAGARI", "hi"),
)

# Frequent function words, leaving out ones English shares or spells alike ("a", "as", "me", "no",
# "in", "die", "son", "an", "so", "was", "will", "hat", "see", "ho", ...) and single letters
# ("s p o o k y").
_WORDS = {
    "en": "the and you i i'm it's is are was of to my your that this what with for not have just "
    "be do don't can't we they he she at on me so but if about how why who when there it",
    "es": "el la los las que de estoy estás está muy pero por para con una hay mi tu qué cómo "
    "porque también siempre nunca tengo tienes eres soy yo nada todo esto eso aquí ahora hoy",
    "fr": "je tu il elle nous vous les des est suis très mais pour avec une mon ma mes pas qui "
    "que quoi c'est j'ai ce cette dans sur moi toi ai trop ne plus sans être",
    "de": "ich du er sie wir ihr der das ist bin sehr aber nicht und mit ein eine mein dein auf "
    "für wo habe hast ist es zu den dem des auch noch schon nur morgen heute",
    "it": "il lo la gli le che di sono sei molto ma per con una mio mia tuo non hai questo "
    "questa cosa così perché anche sempre mai oggi domani",
    "pt": "os que de estou está muito mas para com uma meu minha você não tenho tem isso "
    "isto aqui agora hoje também sempre nunca",
    "nl": "de het een ik jij je hij zij wij is ben zeer maar niet en met mijn jouw op voor waar "
    "heb hebt ook nog al alleen morgen vandaag",
}
_SETS = {lang: frozenset(words.split()) for lang, words in _WORDS.items()}
_TOKEN = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


def _script(text: str) -> str | None:
    """The non-Latin script most letters are written in, if most are."""
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return None
    counts: dict[str, int] = {}
    for ch in letters:
        name = unicodedata.name(ch, "")
        lang = next((code for script, code in _SCRIPTS if name.startswith(script)), None)
        if lang is not None:
            counts[lang] = counts.get(lang, 0) + 1
    if not counts or sum(counts.values()) * 2 < len(letters):
        return None
    return "ja" if "ja" in counts else max(counts, key=counts.__getitem__)


def foreign_language(text: str) -> str | None:
    """A language code when the text is confidently not English, else None."""
    script = _script(text)
    if script is not None:
        return script
    tokens = [t.replace("\u2019", "'") for t in _TOKEN.findall(text.casefold())]
    hits = {lang: sum(t in words for t in tokens) for lang, words in _SETS.items()}
    english = hits.pop("en")
    lang = max(hits, key=hits.__getitem__)
    if hits[lang] >= 2 and hits[lang] >= 2 * english + 1:
        return lang
    return None
