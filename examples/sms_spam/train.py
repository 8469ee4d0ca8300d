"""Train the SMS spam head: transfer learning on the frozen, pretrained all-MiniLM-L6-v2 encoder.

1. Read the SMS Spam Collection (run-on CSV rows split back, ``data.read_collection``), split it (seeded,
   stratified 60/20/20 train/val/test, ``data.split_indices``) and run the frozen encoder once over every
   message (length-sorted batches, dynamic padding, max 128 tokens), keeping both the mean-pooled embedding
   (what ``model.create_model`` uses) and BERT's CLS pooler output (what a ``BertForSequenceClassification`` uses).
2. Train ``nn.Linear(384, 2)`` heads with Adam (seeded minibatches) and early stopping on the validation loss
   (patience), keeping the best epoch.
3. Report train / val / TEST accuracy (and on the TEST texts not also in TRAIN), save ``head.pt`` (mean-pooling
   head), and with ``--hf-out DIR`` also save a Hugging Face ``BertForSequenceClassification`` folder
   (config.json, model.safetensors, tokenizer files) whose classifier is the CLS-pooler head: a local
   "HF text classifier" source for edgepack.

    python -m examples.sms_spam.train                               # writes examples/sms_spam/head.pt
    python -m examples.sms_spam.train --hf-out build/sms_spam_hf    # + HF folder (~90 MB, not committed)

Deterministic on a given machine: every generator is seeded and torch uses 2 threads.
"""

from __future__ import annotations

import argparse
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import CLASSES, describe, read_collection, seen_in_train, split_indices
from .model import (
    HEAD_PATH,
    HIDDEN,
    MAX_LENGTH,
    NUM_CLASSES,
    encoder_path,
    load_encoder,
    mean_pool,
    tokenizer_json,
)


def seed_everything(seed: int, threads: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


@torch.inference_mode()
def embed_all(texts: list[str], batch_size: int = 64) -> dict[str, np.ndarray]:
    """{"mean": (N, 384), "cls": (N, 384)} float32 frozen-encoder features, in ``texts`` order."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json()))
    tok.enable_truncation(MAX_LENGTH)
    tok.no_padding()
    encoded = tok.encode_batch(texts)
    order = np.argsort([len(e.ids) for e in encoded], kind="stable")
    encoder = load_encoder()
    feats = {
        "mean": np.empty((len(texts), HIDDEN), np.float32),
        "cls": np.empty((len(texts), HIDDEN), np.float32),
    }
    t0 = time.perf_counter()
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(encoded[i].ids) for i in idx)
        ids = torch.zeros((len(idx), width), dtype=torch.int64)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(idx):
            n = len(encoded[i].ids)
            ids[row, :n] = torch.tensor(encoded[i].ids)
            mask[row, :n] = 1
        out = encoder(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
        feats["mean"][idx] = mean_pool(out.last_hidden_state, mask).numpy()
        feats["cls"][idx] = out.pooler_output.numpy()
    print(f"  embedded {len(texts)} texts in {time.perf_counter() - t0:.0f} s", flush=True)
    return feats


def train_head(x: dict[str, np.ndarray], y: dict[str, np.ndarray], args) -> tuple[nn.Linear, int]:
    """Linear head trained on x["train"] with early stopping on x["val"] loss; (best head, epoch)."""
    head = nn.Linear(HIDDEN, NUM_CLASSES)
    opt = torch.optim.Adam(head.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    xt, yt = torch.from_numpy(x["train"]), torch.from_numpy(y["train"])
    xv, yv = torch.from_numpy(x["val"]), torch.from_numpy(y["val"])
    gen = torch.Generator().manual_seed(args.seed)
    best, best_epoch, best_state = float("inf"), 0, None
    for epoch in range(1, args.max_epochs + 1):
        for batch in torch.randperm(len(xt), generator=gen).split(args.batch_size):
            opt.zero_grad()
            F.cross_entropy(head(xt[batch]), yt[batch]).backward()
            opt.step()
        with torch.no_grad():
            val_loss = float(F.cross_entropy(head(xv), yv))
        if val_loss < best - 1e-5:
            best, best_epoch = val_loss, epoch
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
        elif epoch - best_epoch >= args.patience:
            break
    head.load_state_dict(best_state)
    return head, best_epoch


@torch.no_grad()
def accuracy(head: nn.Linear, x: np.ndarray, y: np.ndarray) -> float:
    """Percent of rows whose argmax logit equals the label."""
    return 100.0 * float((head(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def save_hf_folder(head: nn.Linear, out: Path) -> None:
    """A BertForSequenceClassification : pretrained encoder + ``head`` on the CLS pooler."""
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(
        str(encoder_path()),
        num_labels=NUM_CLASSES,
        local_files_only=True,
        use_safetensors=True,
        id2label=dict(enumerate(CLASSES)),
        label2id={c: i for i, c in enumerate(CLASSES)},
    )
    model.classifier.load_state_dict(head.state_dict())
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy2(encoder_path() / name, out / name)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-epochs", type=int, default=300)
    p.add_argument("--patience", type=int, default=20)
    p.add_argument("--head-out", type=Path, default=HEAD_PATH)
    p.add_argument(
        "--hf-out", type=Path, default=None, help="also save a BertForSequenceClassification folder"
    )
    return p.parse_args()


def main() -> None:
    args = parse_args()
    seed_everything(args.seed, args.threads)
    texts, labels, repair = read_collection()
    print(describe(texts, labels, repair, args.seed))
    split = split_indices(labels, args.seed)
    unseen = ~seen_in_train(texts, split, "test")
    feats = embed_all(texts)
    y = {name: labels[idx] for name, idx in split.items()}
    for kind in ("mean", "cls"):
        x = {name: feats[kind][idx] for name, idx in split.items()}
        head, epoch = train_head(x, y, args)
        accs = {name: accuracy(head, x[name], y[name]) for name in split}
        print(
            f"{kind:>4} pooling: best epoch {epoch}; accuracy train {accs['train']:.2f} % "
            f"val {accs['val']:.2f} % TEST {accs['test']:.2f} % ({len(y['test'])} texts); TEST texts not in "
            f"TRAIN {accuracy(head, x['test'][unseen], y['test'][unseen]):.2f} % ({int(unseen.sum())} texts)"
        )
        if kind == "mean":
            torch.save(head.state_dict(), args.head_out)
            print(f"  saved {args.head_out}")
        elif args.hf_out is not None:
            save_hf_folder(head, args.hf_out)
            print(f"  saved {args.hf_out}")


if __name__ == "__main__":
    main()
