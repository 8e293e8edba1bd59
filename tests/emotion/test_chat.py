"""Chat and role-play on the real detector: actions between asterisks, emoji alone, sarcasm, questions
that are not surprise, and text in other languages read as unknown instead of a confident neutral."""

from __future__ import annotations

import pytest

from emotion.chat import spell_actions, views
from emotion.detector import MiniLMEmotionDetector
from emotion.language import foreign_language


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("*slams the door and storms off*", "anger"),
        ("*shivers, hiding under the blanket*", "fear"),
        ("*sobs into the pillow*", "sadness"),
        ("*giggles and twirls in the new dress*", "joy"),
        ("*retches at the smell of the sewer*", "disgust"),
    ],
)
async def test_actions_between_asterisks_are_read(
    detector: MiniLMEmotionDetector, text: str, label: str
) -> None:
    (emotion,) = await detector.detect([text])
    assert (emotion.label, emotion.felt) == (label, True)


async def test_a_plain_action_stays_neutral(detector: MiniLMEmotionDetector) -> None:
    (emotion,) = await detector.detect(["*opens the door and sits down by the fire*"])
    assert not emotion.felt


async def test_emoji_alone_carry_their_feeling(detector: MiniLMEmotionDetector) -> None:
    angry, party, thumbs = await detector.detect(["😡😡", "🎉", "👍"])
    assert (angry.label, party.label) == ("anger", "joy")
    assert not thumbs.felt  # an acknowledgement, not joy


async def test_sarcasm_is_not_joy_and_sincere_thanks_still_are(detector: MiniLMEmotionDetector) -> None:
    sarcastic, marked, sincere = await detector.detect(
        [
            "Oh great, my car broke down again on the way to work.",
            "Yeah right, like they'd ever answer an email.",
            "Oh great, thanks so much for the help!",
        ]
    )
    assert sarcastic.felt and sarcastic.label in ("anger", "sadness", "disgust")
    assert marked.label != "joy"
    assert sincere.label == "joy"


async def test_questions_are_not_surprise(detector: MiniLMEmotionDetector) -> None:
    plain, surprised = await detector.detect(["Who are you? Tell me your name.", "Wait, you're alive?!"])
    assert not plain.felt
    assert surprised.label == "surprise"


async def test_other_languages_are_unknown_not_confident_neutral(detector: MiniLMEmotionDetector) -> None:
    spanish, japanese, with_emoji, slang = await detector.detect(
        [
            "Estoy muy enojado contigo, siempre me mientes.",
            "本当に悲しい。",
            "Ich bin so glücklich heute! 🎉",
            "omg i got the job!!!",
        ]
    )
    assert (spanish.label, spanish.uncertain, spanish.language) == ("neutral", True, "es")
    assert (japanese.uncertain, japanese.language) == (True, "ja")
    assert (with_emoji.label, with_emoji.uncertain) == ("joy", False)  # emoji read in any language
    assert slang.language is None and slang.felt


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Je suis vraiment fatiguée ce soir.", "fr"),
        ("Wo ist der Bahnhof?", "de"),
        ("Sono così felice di vederti!", "it"),
        ("Я очень зол на тебя.", "ru"),
        ("lol that's hilarious", None),
        ("ok", None),
        ("brb getting coffee", None),
        ("Oh la la, what a day", None),
    ],
)
def test_foreign_language(text: str, language: str | None) -> None:
    assert foreign_language(text) == language


def test_actions_are_spelled_out_and_emphasis_is_kept() -> None:
    assert spell_actions("*glares at him* Get out.") == "glares at him. I am so angry. Get out."
    assert spell_actions("that was *so* good") == "that was so good"
    assert views("**bold** claim").main == "**bold** claim"
