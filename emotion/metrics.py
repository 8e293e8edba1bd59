"""Multi-label decisions and F1, shared by the training script and bench/emotion_eval.py.

The decision rule is the one the GoEmotions paper evaluates: every class whose probability clears its
threshold; a message with none gets its single best class (by margin over threshold), so each
message has at least one label.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from emotion.labels import LABELS


def decide(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    pred = (scores >= thresholds).astype(np.float32)
    empty = pred.sum(1) == 0
    best = np.argmax(scores / thresholds, axis=1)
    pred[empty, best[empty]] = 1.0
    return pred


def f1(gold: np.ndarray, pred: np.ndarray) -> float:
    tp = float((gold * pred).sum())
    denom = float(gold.sum() + pred.sum())
    return 2 * tp / denom if denom else 0.0


def per_class_f1(gold: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return {label: f1(gold[:, c], pred[:, c]) for c, label in enumerate(LABELS)}


def macro_f1(gold: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(list(per_class_f1(gold, pred).values())))


def tune_thresholds(scores: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Per class, the threshold that maximises that class's F1 (two rounds of coordinate ascent)."""
    thresholds = np.full(len(LABELS), 0.5, dtype=np.float32)
    grid = np.arange(0.05, 0.95, 0.01)
    for _ in range(2):
        for c in range(len(LABELS)):
            best, best_t = -1.0, thresholds[c]
            for t in grid:
                thresholds[c] = t
                score = f1(gold[:, c], decide(scores, thresholds)[:, c])
                if score > best:
                    best, best_t = score, t
            thresholds[c] = best_t
    return thresholds


def load_goemotions(data: Path, split: str) -> tuple[list[str], np.ndarray]:
    """A GoEmotions split (`text<TAB>ids<TAB>comment id`) with its 27+1 labels mapped to our seven,
    multi-hot; `ekman_mapping.json` says which fine label is which Ekman class."""
    names = (data / "emotions.txt").read_text().split()
    mapping = {"neutral": "neutral"}
    for ekman, fine in json.loads((data / "ekman_mapping.json").read_text()).items():
        mapping.update({name: ekman for name in fine})
    texts, rows = [], []
    for line in (data / f"{split}.tsv").read_text(encoding="utf-8").splitlines():
        text, ids, _ = line.split("\t")
        row = np.zeros(len(LABELS), dtype=np.float32)
        for i in ids.split(","):
            row[LABELS.index(mapping[names[int(i)]])] = 1.0
        texts.append(text)
        rows.append(row)
    return texts, np.stack(rows)


def load_fine(data: Path, split: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A GoEmotions split with its 27 emotions + neutral as they are (multi-hot), and the 28-by-7 matrix
    that maps each fine label to its class (Ekman mapping; neutral to neutral)."""
    names = (data / "emotions.txt").read_text().split()
    mapping = {"neutral": "neutral"}
    for ekman, fine in json.loads((data / "ekman_mapping.json").read_text()).items():
        mapping.update({name: ekman for name in fine})
    groups = np.zeros((len(names), len(LABELS)), dtype=np.float32)
    for i, name in enumerate(names):
        groups[i, LABELS.index(mapping[name])] = 1.0
    texts, rows = [], []
    for line in (data / f"{split}.tsv").read_text(encoding="utf-8").splitlines():
        text, ids, _ = line.split("\t")
        row = np.zeros(len(names), dtype=np.float32)
        row[[int(i) for i in ids.split(",")]] = 1.0
        texts.append(text)
        rows.append(row)
    return texts, np.stack(rows), groups


def fine_to_classes(fine: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each class's probability from the fine labels: the most probable fine label in its group (0 for a
    class none maps to); the same arithmetic as the exported graph (emotion/detector.py)."""
    return (fine[:, :, None] * groups[None, :, :]).max(1)  # type: ignore[no-any-return]


def crossfit_f1(scores: np.ndarray, gold: np.ndarray) -> float:
    """Macro-F1 with thresholds tuned on one half and scored on the other (both ways, averaged):
    comparing models on the slice their thresholds came from would flatter the noisier ones."""
    half = len(gold) // 2
    a, b = slice(0, half), slice(half, None)
    f_ab = macro_f1(gold[b], decide(scores[b], tune_thresholds(scores[a], gold[a])))
    f_ba = macro_f1(gold[a], decide(scores[a], tune_thresholds(scores[b], gold[b])))
    return (f_ab + f_ba) / 2
