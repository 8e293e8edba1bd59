"""The default detector on real text: labels, confidence, negation, emoji, calibration."""

from __future__ import annotations

import numpy as np
import pytest

from emotion.detector import Calibration, MiniLMEmotionDetector
from emotion.labels import LABELS, prepare_text
from emotion.negation import negate


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("My dog died this morning and I can't stop crying.", "sadness"),
        ("I just got the job!!! Best day of my life, thank you so much!", "joy"),
        ("I'm terrified of the surgery tomorrow, what if something goes wrong?", "fear"),
        ("This is outrageous, they lied to me again and I am furious.", "anger"),
        ("The meeting is at 3pm in room 204.", "neutral"),
    ],
)
async def test_clear_messages_get_their_label(detector: MiniLMEmotionDetector, text: str, label: str) -> None:
    (emotion,) = await detector.detect([text])
    assert emotion.label == label
    assert set(emotion.scores) == set(LABELS)
    assert all(0.0 <= v <= 1.0 for v in emotion.scores.values())
    assert emotion.confidence == emotion.scores[label]
    assert emotion.felt == (label != "neutral")


async def test_negation_flips_the_label(detector: MiniLMEmotionDetector) -> None:
    happy, unhappy, unworried = await detector.detect(
        ["I am so happy with how it went.", "I am not happy at all with how it went.", "I'm not worried."]
    )
    assert happy.label == "joy"
    assert unhappy.label == "sadness"
    assert unworried.label != "fear"


async def test_emoji_carry_the_feeling(detector: MiniLMEmotionDetector) -> None:
    assert prepare_text("ok 😭😭") == "ok sad sad"
    assert prepare_text("see you :) <3") == "see you happy love"
    crying, party = await detector.detect(["😭😭😭", "we won 🎉🥳"])
    assert crying.label == "sadness"
    assert party.label == "joy"


async def test_scores_do_not_depend_on_batch_padding(detector: MiniLMEmotionDetector) -> None:
    short, long = "Ugh.", "I waited three hours at the clinic and nobody even apologised to me for it."
    alone = detector.scores([short])
    padded = detector.scores([short, long])  # padded to the long text's length in one batch
    np.testing.assert_allclose(alone[0], padded[0], atol=1e-5)


def test_below_threshold_or_min_confidence_is_uncertain_neutral() -> None:
    calibration = Calibration(thresholds=(0.5,) * 7, min_confidence=0.3)
    weak = calibration.read("hm", [0.45, 0.0, 0.0, 0.1, 0.0, 0.0, 0.2])  # anger under its threshold
    assert (weak.label, weak.uncertain, weak.felt) == ("neutral", True, False)
    strong = calibration.read("hm", [0.8, 0.0, 0.0, 0.1, 0.0, 0.0, 0.2])
    assert (strong.label, strong.uncertain, strong.felt) == ("anger", False, True)
    low = Calibration(thresholds=(0.2,) * 7, min_confidence=0.3).read("hm", [0.25, 0, 0, 0, 0, 0, 0.1])
    assert low.uncertain  # over its threshold but under min_confidence


def test_a_plain_question_is_not_surprise() -> None:
    calibration = Calibration(thresholds=(0.4,) * 7)
    scores = [0.0, 0.0, 0.0, 0.1, 0.0, 0.7, 0.3]  # curiosity: GoEmotions files it under surprise
    assert calibration.read("What is the capital of Australia?", scores).label == "neutral"
    assert calibration.read("Wait, what? He quit?!", scores).label == "surprise"
    assert calibration.read("Really? I had no idea", scores).label == "surprise"


def test_negation_rule_only_moves_the_negated_class() -> None:
    joy = {
        "anger": 0.0,
        "disgust": 0.0,
        "fear": 0.0,
        "joy": 0.9,
        "sadness": 0.1,
        "surprise": 0.0,
        "neutral": 0.1,
    }
    assert negate("I am happy", joy) == joy
    flipped = negate("I'm not really happy", joy)
    assert flipped["sadness"] == 0.9 and flipped["joy"] == 0.1
    assert negate("I don't think I was ever this happy", joy)["sadness"] == 0.1  # too far to negate
    fear = dict(joy, joy=0.0, fear=0.8, neutral=0.2)
    assert negate("I\u2019m not worried", fear)["neutral"] == 0.8
