"""Cheap second stages over the shipped emotion model, judged on the held-out slice of GoEmotions train
(scripts/train_emotion.py's: seed 13, 10%) and reported on dev: does a lexical view or a stacked
recalibration raise macro-F1 (7 classes, multi-label, the paper's protocol) without retraining?

    .venv/bin/python bench/emotion_stack.py --data ../shared/data/goemotions [--cache /tmp/emotion-stack]

- the model's scores (`detector.scores()`, the chat rules included, as bench/emotion_eval.py reads dev)
  for the held-out slice and dev, cached in --cache;
- a TF-IDF logistic regression (word 1-2-grams + char_wb 2-5-grams over `prepare_text`, one per class)
  trained on the other 90% of train, so its held-out and dev scores are out of sample;
- mixes of the two (probabilities or logits, one weight), and stacking: a logistic regression per class
  over the model's seven logits (+ the TF-IDF logits, + lexical flags: negation, `!`, `?`, length,
  capitals, emoji groups), fitted on the held-out slice with 5-fold cross-fitting.

Held-out figures are cross-fitted (thresholds, and a stacker's fit, from other rows than those scored),
averaged over `--halvings` random halvings; dev (thresholds tuned on the whole held-out slice) is printed
beside them for the record. Needs scikit-learn (here through sentence-transformers): bench only.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix, hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from emotion.detector import MiniLMEmotionDetector, graph_name
from emotion.labels import _EMOJI, LABELS, prepare_text
from emotion.metrics import decide, load_goemotions, macro_f1, per_class_f1, tune_thresholds

NEGATION = re.compile(r"\b(not|no|never|nothing|nobody|without|\w+n't|dont|cant|wont|isnt)\b", re.I)


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-5, 1 - 1e-5)
    return np.log(p / (1 - p))  # type: ignore[no-any-return]


def lexical(texts: list[str]) -> np.ndarray:
    rows = []
    for text in texts:
        row = [bool(NEGATION.search(text)), "!" in text, "?" in text, len(text.split()) / 30]
        row.append(sum(ch.isupper() for ch in text) / max(len(text), 1))
        row += [any(ch in text for ch in chars) for chars in _EMOJI.values()]
        rows.append(row)
    return np.array(rows, np.float32)


def tfidf_scores(train: list[str], gold: np.ndarray, others: list[list[str]]) -> list[np.ndarray]:
    """One logistic regression per class over TF-IDF word and character n-grams, fitted on `train`."""
    words = TfidfVectorizer(
        ngram_range=(1, 2), min_df=2, sublinear_tf=True, token_pattern=r"(?u)\b\w[\w']*\b|[!?]"
    )
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=3, sublinear_tf=True)
    prepared = [prepare_text(t).lower() for t in train]
    x = hstack([words.fit_transform(prepared), chars.fit_transform(prepared)]).tocsr()

    def features(texts: list[str]) -> csr_matrix:
        prepared = [prepare_text(t).lower() for t in texts]
        return hstack([words.transform(prepared), chars.transform(prepared)]).tocsr()

    xs = [features(texts) for texts in others]
    out = [np.zeros((m.shape[0], len(LABELS)), np.float32) for m in xs]
    for c in range(len(LABELS)):
        model = LogisticRegression(C=1.0, solver="liblinear", max_iter=2000).fit(x, gold[:, c])
        for o, m in zip(out, xs, strict=True):
            o[:, c] = model.predict_proba(m)[:, 1]
    return out


def stacker(fit_x: np.ndarray, fit_gold: np.ndarray, x: np.ndarray) -> np.ndarray:
    out = np.zeros((len(x), len(LABELS)), np.float32)
    for c in range(len(LABELS)):
        model = LogisticRegression(C=1.0, max_iter=3000).fit(fit_x, fit_gold[:, c])
        out[:, c] = model.predict_proba(x)[:, 1]
    return out


def out_of_fold(x: np.ndarray, gold: np.ndarray, folds: int = 5) -> np.ndarray:
    order = np.random.RandomState(0).permutation(len(x))
    out = np.zeros((len(x), len(LABELS)), np.float32)
    for f in range(folds):
        rows = order[f::folds]
        rest = np.setdiff1d(order, rows)
        out[rows] = stacker(x[rest], gold[rest], x[rows])
    return out


def crossfit(scores: np.ndarray, gold: np.ndarray, halvings: int) -> float:
    """Thresholds tuned on one half and scored on the other, both ways, over random halvings."""
    figures = []
    for seed in range(halvings):
        order = np.random.RandomState(seed).permutation(len(gold))
        a, b = order[: len(order) // 2], order[len(order) // 2 :]
        for fit, score in ((a, b), (b, a)):
            thresholds = tune_thresholds(scores[fit], gold[fit])
            figures.append(macro_f1(gold[score], decide(scores[score], thresholds)))
    return float(np.mean(figures))


def model_scores(detector: MiniLMEmotionDetector, texts: list[str], path: Path) -> np.ndarray:
    if path.exists():
        return np.load(path)  # type: ignore[no-any-return]
    scores = detector.scores(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, scores)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("../shared/data/goemotions"))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/emotion-stack"))
    parser.add_argument("--halvings", type=int, default=5)
    args = parser.parse_args()
    texts, gold = load_goemotions(args.data, "train")
    order = list(range(len(texts)))
    random.Random(13).shuffle(order)  # scripts/train_emotion.py's split
    cut = len(order) // 10
    hold, rest = order[:cut], order[cut:]
    held_texts, held_gold = [texts[i] for i in hold], gold[hold]
    dev_texts, dev_gold = load_goemotions(args.data, "dev")

    detector = MiniLMEmotionDetector.load(with_joint=False)
    tag = graph_name().removesuffix(".onnx")
    held_m = model_scores(detector, held_texts, args.cache / f"{tag}-held.npy")
    dev_m = model_scores(detector, dev_texts, args.cache / f"{tag}-dev.npy")
    held_t, dev_t = tfidf_scores([texts[i] for i in rest], gold[rest], [held_texts, dev_texts])

    rows: dict[str, tuple[np.ndarray, np.ndarray]] = {"shipped model, paper's rule": (held_m, dev_m)}
    rows["TF-IDF logistic regression alone"] = (held_t, dev_t)
    for w in (0.1, 0.2, 0.3, 0.5):
        rows[f"mix probabilities, TF-IDF weight {w}"] = (
            (1 - w) * held_m + w * held_t,
            (1 - w) * dev_m + w * dev_t,
        )
    for w in (0.1, 0.3, 0.5):
        held_z, dev_z = (1 - w) * logit(held_m) + w * logit(held_t), (1 - w) * logit(dev_m) + w * logit(dev_t)
        rows[f"mix logits, TF-IDF weight {w}"] = (1 / (1 + np.exp(-held_z)), 1 / (1 + np.exp(-dev_z)))
    views = {
        "model logits": (logit(held_m), logit(dev_m)),
        "model + lexical flags": (
            np.hstack([logit(held_m), lexical(held_texts)]),
            np.hstack([logit(dev_m), lexical(dev_texts)]),
        ),
        "model + TF-IDF logits": (
            np.hstack([logit(held_m), logit(held_t)]),
            np.hstack([logit(dev_m), logit(dev_t)]),
        ),
        "model + TF-IDF + lexical": (
            np.hstack([logit(held_m), logit(held_t), lexical(held_texts)]),
            np.hstack([logit(dev_m), logit(dev_t), lexical(dev_texts)]),
        ),
    }
    for name, (held_x, dev_x) in views.items():
        rows[f"stacked LR over {name}"] = (out_of_fold(held_x, held_gold), stacker(held_x, held_gold, dev_x))

    print(
        f"{'second stage':<44} {'held-out (cross-fitted)':>24} {'dev':>7}   dev per class ("
        + " ".join(LABELS)
        + ")"
    )
    for name, (held, dev) in rows.items():
        thresholds = tune_thresholds(held, held_gold)
        dev_pred = decide(dev, thresholds)
        classes = " ".join(f"{v:.3f}" for v in per_class_f1(dev_gold, dev_pred).values())
        figure = crossfit(held, held_gold, args.halvings)
        print(f"{name:<44} {figure:>24.4f} {macro_f1(dev_gold, dev_pred):>7.4f}   {classes}", flush=True)


if __name__ == "__main__":
    main()
