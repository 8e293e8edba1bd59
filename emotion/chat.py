"""Reading chat and role-play: what GoEmotions' Reddit comments never taught the model.

The model reads plain first-person English well ("I am so scared!" is fear at 0.98) and reads these
badly, so each is turned into something it reads, or read twice:

- **Actions between asterisks** (`*sighs and looks away*`) are content, not markup: the asterisks go,
  and an expressive gesture (trembling, glaring, sobbing, grinning, gasping, gagging) is spelled out
  after the action as the feeling it shows ("I feel scared."), as emoji are spelled out as words.
- **Emoji alone** (or with a word or two: "yesss 🙌"): the emoji's feeling as a sentence, since a bare
  "angry" is not a sentence the model learned to read.
- **Contrast** ("happy for her, but I feel left behind") is *not* read clause by clause: reading the
  clause after "but" on its own cost GoEmotions dev macro-F1 0.002-0.006 for one more chat line right.
- **Sarcasm**: a sarcastic interjection ("Oh great,", "Perfect.") before a complaint is read without
  it, and the complaint leads when it is negative; a strong marker ("/s", "yeah right", "thanks for
  nothing", "just what I needed", 🙄) turns a reading of joy into the negative feeling it hides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from emotion.labels import _EMOJI_WORD, _EMOTICON_RE
from emotion.language import foreign_language

NEGATIVE = ("anger", "disgust", "sadness", "fear")

_V = r"(?:s|es|ed|d|ing)?"  # verb endings
_GESTURES = {
    "scared": [
        rf"trembl{_V}",
        rf"shiver{_V}",
        rf"cower{_V}",
        rf"flinch{_V}",
        rf"whimper{_V}",
        rf"panic{_V}",
        rf"gulp{_V}",
        r"(?:back|backs|backing|backed|shrink|shrinks|shrinking|shrank) away",
        r"hid(?:e|es|ing)",
        r"voice (?:shaking|shakes|trembling|cracking)",
        r"heart (?:pounding|pounds|racing|races)",
        r"eyes dart\w*",
        r"(?:shaking|shakes) (?:with fear|in fear|all over|like a leaf)",
        r"terrified|frightened|afraid|scared",
    ],
    "angry": [
        rf"glar{_V}",
        rf"scowl{_V}",
        rf"snarl{_V}",
        rf"growl{_V}",
        rf"glower{_V}",
        rf"seeth{_V}",
        rf"fum{_V}",
        rf"clench{_V}",
        rf"slam{_V}|slamm{_V}",
        rf"kick{_V}",
        rf"punch{_V}",
        rf"stomp{_V}",
        rf"snap{_V}|snapp{_V}",
        rf"yell{_V}",
        rf"shout{_V}",
        rf"hiss{_V}",
        r"storm(?:s|ed|ing)? (?:off|out|away)",
        r"grit(?:s|ted|ting)? (?:my |his |her |their )?teeth",
        r"throw(?:s|ing)?|threw|hurl(?:s|ed|ing)?",
        r"furious|angrily|enraged",
    ],
    "sad": [
        rf"sigh{_V}",
        rf"sob{_V}|sobb{_V}",
        r"cr(?:y|ies|ied|ying)",
        rf"weep{_V}|wept",
        rf"sniffl{_V}|sniff{_V}",
        rf"sulk{_V}",
        rf"slump{_V}",
        rf"frown{_V}",
        rf"pout{_V}",
        r"tears? (?:stream|roll|fall|well)\w*",
        r"wip(?:e|es|ing|ed) (?:my |his |her |their )?(?:eyes|tears)",
        r"looks? (?:down|away) (?:at|sadly)",
        r"curl(?:s|ed|ing)? up",
        r"alone|lonely|sadly|broken",
    ],
    "happy": [
        rf"grin{_V}|grinn{_V}",
        rf"smil{_V}",
        rf"beam{_V}",
        rf"laugh{_V}",
        rf"giggl{_V}",
        rf"chuckl{_V}",
        rf"hug{_V}|hugg{_V}",
        rf"cheer{_V}",
        rf"danc{_V}",
        rf"bounc{_V}",
        rf"squeal{_V}",
        rf"twirl{_V}",
        rf"clap{_V}|clapp{_V}",
        r"spin(?:s|ning)? (?:you |me |him |her )?around",
        r"jump(?:s|ed|ing)? for joy|happily|joyfully",
    ],
    "surprised": [
        rf"gasp{_V}",
        rf"blink{_V}",
        rf"startl{_V}",
        r"eyes (?:wide|widen\w*)",
        r"jaw (?:drops|dropped|dropping)",
        r"double take",
        r"freez(?:e|es|ing)|froze",
        r"drop(?:s|ped)? (?:the|my|his|her) \w+",
        r"stunned|speechless|stares?|staring",
    ],
    "disgusted": [
        rf"gag{_V}|gagg{_V}",
        rf"retch{_V}",
        rf"grimac{_V}",
        rf"recoil{_V}",
        rf"shudder{_V}",
        r"wrinkl(?:e|es|ed|ing) (?:my |his |her |their )?nose",
        r"pinch(?:es|ed|ing)? (?:my |his |her |their )?nose",
        r"spit(?:s|ting)? (?:it )?out|spat out",
        r"disgust\w*|revolted",
    ],
}
_GESTURE_RE = {
    feeling: re.compile(rf"\b(?:{'|'.join(patterns)})\b", re.IGNORECASE)
    for feeling, patterns in _GESTURES.items()
}
_FEELING_SENTENCE = {
    "scared": "I am so scared.",
    "angry": "I am so angry.",
    "sad": "I feel so sad.",
    "happy": "I am so happy.",
    "surprised": "Wow, I am shocked!",
    "disgusted": "That is disgusting.",
}
# Emoji feelings (emotion/labels.py's words) as sentences; 👍 alone is an "okay", not joy.
_EMOJI_SENTENCE = {
    "joy": "I am so happy!",
    "love": "I love this so much!",
    "laughing": "Haha, that is hilarious!",
    "sad": "I am so sad.",
    "angry": "I am so angry!",
    "scared": "I am so scared!",
    "disgusted": "That is disgusting.",
    "surprised": "Wow, I am shocked!",
    "thinking": "Hmm.",
    "tired": "I am so tired.",
}
_OKAY = frozenset("👍👌🆗")
_ACTION = re.compile(r"(?<!\*)\*([^*\n]+)\*(?!\*)")  # *one* asterisk each side; **bold** is emphasis
_WORD = re.compile(r"[^\W\d_]+")

_INTERJECTION = re.compile(
    r"^\W*(?:(?:oh|well|wow|yeah|ah|ahh|mmm+|gee)\W+)?(?:that'?s\s+)?(?:just\s+)?"
    r"(?:great|fantastic|wonderful|lovely|perfect|brilliant|joy|sure|goody|cool(?:\W+cool)*|nice|"
    r"awesome|amazing|super|delicious|splendid|terrific)\b[\s,.!…]*",
    re.IGNORECASE,
)
_SARCASM = re.compile(
    r"(?:/s\b|\byeah,? right\b|\bthanks for nothing\b|\bjust what i (?:needed|wanted)\b|\blove that for me\b|"
    r"\bsaid no one\b|\bjust (?:great|perfect|wonderful|fantastic|lovely|brilliant)\b|\breal(?:ly)? nice\b|"
    r"\bworked (?:so|sooo*) well\b|\bnice (?:job|going|one|work),? (?:genius|einstein|sherlock)\b|"
    r"\bhow (?:wonderful|lovely|nice|fun)\b|\boh joy\b|\bcool cool cool\b|\bwhat a surprise\b|🙄)",
    re.IGNORECASE,
)


# Words of a mishap or a grievance: after a positive interjection ("Brilliant. They cancelled my
# flight."), they mark the interjection as sarcastic.
_COMPLAINT = re.compile(
    r"\b(?:again|another|late|broke|broken|break(?:s|ing)?|cancel+ed|fail(?:ed|s)?|crash(?:ed|es)?|died|"
    r"dead|lost|stuck|forgot|forgotten|ignor\w*|nobody|no one|ruin\w*|delay\w*|miss(?:ed)?|spill\w*|"
    r"stole|stolen|rain(?:ing)?|traffic|queue|drill\w*|noise|leak\w*|flat|overdue|fined|genius)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Views:
    """How one message is read: `main` for the whole, and `focus` (the complaint after a sarcastic
    interjection, read on its own) when part of it carries the feeling; `sarcastic` for a marker."""

    main: str
    focus: str | None = None
    sarcastic: bool = False
    language: str | None = None  # set when the text is not English (emotion/language.py)
    emoji: bool = False  # `main` carries an emoji feeling sentence


def _gesture(action: str) -> str | None:
    found = [(len(rx.findall(action)), feeling) for feeling, rx in _GESTURE_RE.items()]
    count, feeling = max(found, key=lambda pair: pair[0])
    return feeling if count else None


def spell_actions(text: str) -> str:
    """`*glares at him*` → `glares at him. I am so angry.`: actions read as content."""

    def spelled(match: re.Match[str]) -> str:
        action = match.group(1).strip()
        feeling = _gesture(action)
        if feeling is None:  # emphasis (*so* good) or a plain action: its words, as written
            return f" {action} "
        return f" {action.rstrip('.!?,;')}. {_FEELING_SENTENCE[feeling]} "

    return " ".join(_ACTION.sub(spelled, text).split())


def emoji_sentence(text: str) -> str | None:
    """For a line of emoji with at most three words: its dominant emoji feeling as a sentence."""
    if len(_WORD.findall(_without_emoticons(text))) > 3:
        return None
    return emoji_only_sentence(text)


def emoji_only_sentence(text: str) -> str | None:
    """The dominant emoji feeling of a text as a sentence, however many words it has."""
    counts: dict[str, int] = {}
    for ch in text:
        if ch in _OKAY:
            counts["okay"] = counts.get("okay", 0) + 1
        elif ch in _EMOJI_WORD:
            counts[_EMOJI_WORD[ch]] = counts.get(_EMOJI_WORD[ch], 0) + 1
    if not counts:
        return None
    word = max(counts, key=counts.__getitem__)
    return "Okay." if word == "okay" else _EMOJI_SENTENCE[word]


def _without_emoticons(text: str) -> str:
    for pattern, _ in _EMOTICON_RE:
        text = pattern.sub(" ", text)
    return text


def views(text: str) -> Views:
    """The texts the model reads for one message (see the module docstring). A message in another
    language is read by its emoji alone, if it has any (the model reads English only)."""
    main = spell_actions(text) if "*" in text else text
    language = foreign_language(main)
    sentence = emoji_sentence(main) if language is None else emoji_only_sentence(main)
    if language is not None:
        return Views(sentence or main, language=language, emoji=sentence is not None)
    if sentence is not None:  # emoji alone become their sentence; with words, it follows them
        main = f"{main} {sentence}" if _WORD.search(_without_emoticons(main)) else sentence
    sarcastic = bool(_SARCASM.search(text))
    interjection = _INTERJECTION.match(main)
    if interjection and interjection.end() < len(main):
        rest = main[interjection.end() :]
        if len(_WORD.findall(rest)) >= 2:
            sarcastic = sarcastic or bool(_COMPLAINT.search(rest))
            return Views(main, rest, sarcastic, emoji=sentence is not None)
    return Views(main, None, sarcastic, emoji=sentence is not None)
