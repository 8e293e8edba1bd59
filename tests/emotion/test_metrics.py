"""The training and evaluation arithmetic: fine labels mapped to the seven classes, cross-fitted F1."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emotion.labels import LABELS
from emotion.metrics import crossfit_f1, decide, fine_to_classes, load_fine, macro_f1, tune_thresholds


def _write_split(folder: Path) -> None:
    (folder / "emotions.txt").write_text("annoyance\ngrief\njoy\nneutral\n")
    mapping = '{"anger": ["annoyance"], "sadness": ["grief"], "joy": ["joy"]}'
    (folder / "ekman_mapping.json").write_text(mapping)
    (folder / "train.tsv").write_text("so annoying\t0\ta\nlost my dog\t1,0\tb\nok\t3\tc\n")


def test_fine_labels_keep_their_identity_and_map_to_their_class(tmp_path: Path) -> None:
    _write_split(tmp_path)
    texts, gold, groups = load_fine(tmp_path, "train")
    assert texts == ["so annoying", "lost my dog", "ok"]
    assert gold.tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1]]
    assert [LABELS[int(np.argmax(g))] for g in groups] == ["anger", "sadness", "joy", "neutral"]
    assert (groups.sum(1) == 1).all()


def test_a_class_reads_the_most_probable_fine_label_in_its_group() -> None:
    groups = np.zeros((4, len(LABELS)), dtype=np.float32)
    for index, label in enumerate(["anger", "anger", "joy", "neutral"]):
        groups[index, LABELS.index(label)] = 1.0
    fine = np.array([[0.2, 0.7, 0.1, 0.05]], dtype=np.float32)
    mapped = fine_to_classes(fine, groups)
    assert mapped[0, LABELS.index("anger")] == np.float32(0.7)
    assert mapped[0, LABELS.index("joy")] == np.float32(0.1)
    assert mapped[0, LABELS.index("neutral")] == np.float32(0.05)
    assert mapped[0, LABELS.index("fear")] == 0.0  # a class no fine label maps to


def test_crossfit_scores_thresholds_on_the_half_they_were_not_tuned_on() -> None:
    rng = np.random.default_rng(0)
    gold = (rng.random((400, len(LABELS))) < 0.2).astype(np.float32)
    informative = np.clip(gold * 0.6 + rng.random(gold.shape) * 0.5, 0, 1).astype(np.float32)
    noise = rng.random(gold.shape).astype(np.float32)
    in_sample = macro_f1(gold, decide(noise, tune_thresholds(noise, gold)))
    assert crossfit_f1(informative, gold) > 0.8
    assert crossfit_f1(noise, gold) < in_sample  # tuning on the scored data flatters pure noise
