"""Importance, mood smoothing and tone guidance: the parts of emotion that need no model."""

from __future__ import annotations

import pytest

from emotion.guidance import emotional_context
from emotion.importance import importance
from emotion.mood import dominant, smooth


def test_importance_ranks_disclosure_and_feeling_above_small_talk() -> None:
    small_talk = importance("ok")
    fact = importance("My name is Ada and I'm moving to Berlin next month.")
    feeling = importance("I'm SO scared about the surgery tomorrow!!", label="fear", confidence=0.9)
    question = importance("What time is it?")
    assert 0 <= small_talk < question < fact <= 1
    assert feeling > fact > small_talk
    assert importance("") == 0.0


def test_mood_smooths_one_odd_message() -> None:
    sad = {"sadness": 0.9, "neutral": 0.1}
    happy = {"joy": 0.9, "neutral": 0.1}
    moods = smooth([sad, sad, sad, happy], decay=0.6)
    assert dominant(moods[-1])[0] == "sadness"  # one happy message does not swing it
    assert dominant(smooth([happy] * 5)[-1]) == pytest.approx(("joy", 0.9))


def test_guidance_only_for_non_neutral_confident_emotion() -> None:
    assert emotional_context("neutral", 0.95, uncertain=False) is None
    assert emotional_context("sadness", 0.4, uncertain=True) is None
    block = emotional_context(
        "sadness", 0.85, uncertain=False, mood=("fear", 0.5), similar=['2026-11-01, user said: "I miss her."']
    )
    assert block is not None
    assert block.startswith("Emotional context: the user seems strongly sad")
    assert "warmth" in block and "anxious" in block and "I miss her." in block
