"""Decision rules and threshold searches for the shipped emotion model, judged on the held-out slice of
GoEmotions train (the slice scripts/train_emotion.py holds out: seed 13, 10%) and reported on dev.

    .venv/bin/python bench/emotion_rules.py --data ../shared/data/goemotions

Held-out figures are cross-fitted (thresholds tuned on one half, scored on the other, both ways), the
only ones a choice may look at; dev is printed beside them for the record. The last line tunes the
thresholds on dev itself: an upper bound on what calibration alone could reach, not a result.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from emotion.detector import MiniLMEmotionDetector
from emotion.labels import LABELS
from emotion.metrics import decide, f1, load_goemotions, macro_f1

Rule = Callable[[np.ndarray, np.ndarray], np.ndarray]
NEUTRAL = LABELS.index("neutral")


def neutral_exclusive(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Neutral only when no emotion clears its threshold."""
    pred = decide(scores, thresholds)
    pred[pred[:, :NEUTRAL].sum(1) > 0, NEUTRAL] = 0.0
    return pred


def at_most_two(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """The paper's rule, keeping the two classes furthest over their thresholds."""
    pred = decide(scores, thresholds)
    top = np.argsort(-scores / thresholds, axis=1)[:, :2]
    keep = np.zeros_like(pred)
    np.put_along_axis(keep, top, 1.0, axis=1)
    return np.asarray(pred * keep)


def tune(scores: np.ndarray, gold: np.ndarray, rule: Rule, joint: bool) -> np.ndarray:
    """Coordinate ascent over the per-class thresholds: each class's own F1, or macro-F1 (`joint`)."""
    thresholds = np.full(len(LABELS), 0.5, dtype=np.float32)
    for _ in range(2):
        for c in range(len(LABELS)):
            best, best_t = -1.0, thresholds[c]
            for t in np.arange(0.05, 0.95, 0.01):
                thresholds[c] = t
                pred = rule(scores, thresholds)
                score = macro_f1(gold, pred) if joint else f1(gold[:, c], pred[:, c])
                if score > best:
                    best, best_t = score, t
            thresholds[c] = best_t
    return thresholds


def crossfit(scores: np.ndarray, gold: np.ndarray, rule: Rule, joint: bool) -> float:
    half = len(gold) // 2
    a, b = slice(0, half), slice(half, None)
    ab = macro_f1(gold[b], rule(scores[b], tune(scores[a], gold[a], rule, joint)))
    ba = macro_f1(gold[a], rule(scores[a], tune(scores[b], gold[b], rule, joint)))
    return (ab + ba) / 2


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("../shared/data/goemotions"))
    args = parser.parse_args()
    texts, gold = load_goemotions(args.data, "train")
    order = list(range(len(texts)))
    random.Random(13).shuffle(order)  # scripts/train_emotion.py's split
    hold = order[: len(order) // 10]
    detector = MiniLMEmotionDetector.load()
    held_scores, held_gold = detector._raw([texts[i] for i in hold]), gold[hold]
    dev_texts, dev_gold = load_goemotions(args.data, "dev")
    dev_scores = detector._raw(dev_texts)
    rules: dict[str, Rule] = {
        "paper's rule": decide,
        "neutral exclusive": neutral_exclusive,
        "at most two": at_most_two,
    }
    print(f"{'rule':<18} {'thresholds':<14} {'held-out (cross-fitted)':>24} {'dev':>7}")
    for name, rule in rules.items():
        for joint in (False, True):
            thresholds = tune(held_scores, held_gold, rule, joint)
            held = crossfit(held_scores, held_gold, rule, joint)
            dev = macro_f1(dev_gold, rule(dev_scores, thresholds))
            how = "macro-F1" if joint else "per class"
            print(f"{name:<18} {how:<14} {held:>24.4f} {dev:>7.4f}", flush=True)
    bound = macro_f1(dev_gold, decide(dev_scores, tune(dev_scores, dev_gold, decide, False)))
    print(f"upper bound: thresholds tuned on dev itself, paper's rule: {bound:.4f}")


if __name__ == "__main__":
    main()
