"""The seven classes and the text normalisation shared by training and detection.

MiniLM's uncased BERT vocabulary maps nearly every emoji to [UNK], so emoji and common emoticons are
spelled out as the words they stand for before tokenising, in training (Reddit text has them) and at
run time alike. Changing prepare_text() means retraining (scripts/train_emotion.py).
"""

from __future__ import annotations

import re

LABELS = ("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral")

_EMOJI = {
    "joy": "😀😃😄😁😆😊🙂☺😌😎🥳🤩😇🎉👍👏🙌💪✨🌞",
    "love": "😍🥰😘❤♥💕💖💗💓💞💘💝🧡💛💚💙💜🤗",
    "laughing": "😂🤣😹",
    "sad": "😢😭☹🙁😞😔😟😥😿💔🥺😪",
    "angry": "😡😠🤬👿💢😤🖕",
    "scared": "😱😨😰😧😦🫣",
    "disgusted": "🤢🤮😒🙄",
    "surprised": "😮😯😲🤯😳😵",
    "thinking": "🤔",
    "tired": "😩😫🥱",
}
_EMOJI_WORD = {ch: word for word, chars in _EMOJI.items() for ch in chars}
_EMOTICONS = {
    r"(?<!\w)[:;=]-?[)\]D](?!\w)": " happy ",
    r"(?<!\w)[:;=]'?-?[(\[](?!\w)": " sad ",
    r"(?<!\w)<3(?!\w)": " love ",
    r"(?<!\w)[:;=]-?[oO0](?!\w)": " surprised ",
    r"(?<!\w)>:-?[(\[](?!\w)": " angry ",
}
_EMOTICON_RE = [(re.compile(p), w) for p, w in _EMOTICONS.items()]


def prepare_text(text: str) -> str:
    """Emoji and emoticons as words; everything else as written (the tokenizer lower-cases)."""
    if any(ch in _EMOJI_WORD for ch in text):
        text = "".join(f" {_EMOJI_WORD[ch]} " if ch in _EMOJI_WORD else ch for ch in text)
    for pattern, word in _EMOTICON_RE:
        text = pattern.sub(word, text)
    return " ".join(text.split())


_SURPRISE_CUE = re.compile(
    r"!|\?\?|\b(wow|whoa|woah|omg|oh my|really|seriously|no way|can'?t believe|cannot believe|unbelievable|"
    r"shocked|surprised|amazed|what the|since when)\b",
    re.IGNORECASE,
)


def plain_question(text: str) -> bool:
    """A message that asks something with no sign of surprise: GoEmotions files curiosity under
    surprise, but "What is the capital of Australia?" or "Who are you? Tell me your name." is not an
    emotional state the reply should answer to."""
    return "?" in text and not _SURPRISE_CUE.search(text)
