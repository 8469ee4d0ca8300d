"""Train the Fashion-MNIST head: transfer learning on a frozen, pretrained EfficientNet-Lite0 backbone.

1. Draw a seeded subset of the 60k TRAIN images, split it into train / validation (validation is held out of
   TRAIN, never TEST), and extract the backbone's pooled 1280-d features once.
2. Train the 10-way linear head (Adam, seeded minibatches) on the cached features with early stopping on the
   validation loss (patience), keeping the best epoch.
3. Report FP32 accuracy of the full model (backbone + head) on the 10,000 TEST images and save ``head.pt``.

    python -m examples.fashion_mnist.train                # defaults as used for the committed head.pt
    python -m examples.fashion_mnist.train --cache-dir /tmp/fm-features   # reuse extracted features

Deterministic on a given machine: every generator is seeded and torch uses 2 threads.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import load_split, preprocess, sample_indices
from .model import FEATURE_DIM, HEAD_PATH, NUM_CLASSES, create_backbone, extract_features


def seed_everything(seed: int, threads: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


@torch.inference_mode()
def features_for(backbone: nn.Module, images: np.ndarray, batch_size: int, label: str) -> np.ndarray:
    """Pooled backbone features (N, 1280) float32 of raw 28x28 uint8 images, with progress."""
    out = np.empty((len(images), FEATURE_DIM), np.float32)
    t0 = time.perf_counter()
    last = t0
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(preprocess(images[start:start + batch_size]))
        out[start:start + len(x)] = extract_features(backbone, x).numpy()
        now = time.perf_counter()
        done = start + len(x)
        if now - last > 15 or done == len(images):
            rate = done / (now - t0)
            print(f"  [{label}] {done}/{len(images)} images, {rate:.0f} img/s, "
                  f"eta {(len(images) - done) / rate:.0f} s", flush=True)
            last = now
    return out


def cached_features(backbone, images, batch_size, label, cache_dir: Path | None, key: str) -> np.ndarray:
    if cache_dir is None:
        return features_for(backbone, images, batch_size, label)
    digest = hashlib.sha256(images.tobytes()).hexdigest()[:16]
    path = cache_dir / f"{label}-{key}-{digest}.npy"
    if path.is_file():
        print(f"  [{label}] features from cache {path}")
        return np.load(path)
    feats = features_for(backbone, images, batch_size, label)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, feats)
    return feats


def evaluate(head: nn.Linear, feats: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        logits = head(feats)
        return F.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


def train_head(train_f, train_y, val_f, val_y, *, seed, lr, weight_decay, batch_size, max_epochs, patience):
    """Adam on a linear layer with early stopping on validation loss; returns the best head."""
    torch.manual_seed(seed)
    head = nn.Linear(FEATURE_DIM, NUM_CLASSES)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    best = (float("inf"), -1, None)
    for epoch in range(1, max_epochs + 1):
        head.train()
        perm = torch.randperm(len(train_f), generator=gen)
        total = 0.0
        for i in range(0, len(perm), batch_size):
            b = perm[i:i + batch_size]
            loss = F.cross_entropy(head(train_f[b]), train_y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        head.eval()
        val_loss, val_acc = evaluate(head, val_f, val_y)
        improved = val_loss < best[0]
        if improved:
            best = (val_loss, epoch, {k: v.clone() for k, v in head.state_dict().items()})
        print(f"  epoch {epoch:3d}  train loss {total / len(perm):.4f}  val loss {val_loss:.4f}  "
              f"val acc {val_acc:.4f}{'  *' if improved else ''}", flush=True)
        if epoch - best[1] >= patience:
            print(f"  early stop: no val-loss improvement for {patience} epochs; best epoch {best[1]}")
            break
    head.load_state_dict(best[2])
    return head.eval(), best[1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m examples.fashion_mnist.train",
                                description=__doc__.split("\n")[0])
    p.add_argument("--train-count", type=int, default=30000, help="seeded subset of the 60k TRAIN images")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of the subset held out for early stopping")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=256, help="head-training minibatch")
    p.add_argument("--max-epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--extract-batch", type=int, default=128, help="backbone batch for feature extraction")
    p.add_argument("--cache-dir", type=Path, default=None, help="cache extracted features here (optional)")
    p.add_argument("--out", type=Path, default=HEAD_PATH)
    a = p.parse_args(argv)

    t_start = time.perf_counter()
    seed_everything(a.seed, a.threads)
    backbone = create_backbone()

    train_images, train_labels = load_split("train")
    test_images, test_labels = load_split("test")
    idx = sample_indices(len(train_images), a.train_count, a.seed)
    n_val = int(round(a.train_count * a.val_fraction))
    print(f"data: {a.train_count - n_val} train + {n_val} validation (from TRAIN, seed {a.seed}), "
          f"{len(test_images)} test", flush=True)

    print("extracting frozen-backbone features ...", flush=True)
    t0 = time.perf_counter()
    key = f"s{a.seed}n{a.train_count}"
    sub_f = cached_features(backbone, train_images[idx], a.extract_batch, "train", a.cache_dir, key)
    test_f = cached_features(backbone, test_images, a.extract_batch, "test", a.cache_dir, "all")
    t_feat = time.perf_counter() - t0
    print(f"features done in {t_feat:.0f} s", flush=True)

    sub_f = torch.from_numpy(sub_f)
    sub_y = torch.from_numpy(train_labels[idx])
    val_f, fit_f = sub_f[:n_val], sub_f[n_val:]
    val_y, fit_y = sub_y[:n_val], sub_y[n_val:]

    print("training the linear head ...", flush=True)
    t0 = time.perf_counter()
    head, best_epoch = train_head(
        fit_f, fit_y, val_f, val_y, seed=a.seed, lr=a.lr, weight_decay=a.weight_decay,
        batch_size=a.batch_size, max_epochs=a.max_epochs, patience=a.patience,
    )
    t_head = time.perf_counter() - t0

    _, train_acc = evaluate(head, fit_f, fit_y)
    _, val_acc = evaluate(head, val_f, val_y)
    _, test_acc = evaluate(head, torch.from_numpy(test_f), torch.from_numpy(test_labels))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.contiguous() for k, v in head.state_dict().items()}, a.out)

    print(f"best epoch {best_epoch}; FP32 accuracy: train {train_acc:.4f}  val {val_acc:.4f}  "
          f"TEST {test_acc:.4f} ({len(test_labels)} images)")
    print(f"time: features {t_feat:.0f} s, head {t_head:.1f} s, total {time.perf_counter() - t_start:.0f} s")
    print(f"saved {a.out} ({a.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
