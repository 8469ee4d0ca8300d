"""Train the SSDLite shapes detector from scratch on synthetic scenes (examples.ssdlite_shapes.data).

1. Draw the train split (default 6,000 scenes) and the val split (300 scenes, another seed, same background
   styles) in memory; held-out and calibration images are never seen here.
2. Train torchvision's SSDLite with its own loss (hard-negative-mined cross-entropy + smooth L1) by AdamW, seeded
   minibatches, random horizontal flips; after every epoch score mAP@0.5 on val through the exported wrapper
   (model.DecodedSSD) and edgepack's own NMS and COCO mAP, keep the best epoch, cut the learning rate by 3 after an
   epoch without improvement, stop after ``--patience`` such epochs or when the wall-clock budget is spent.
3. Save the best weights as a float16 state dict (model.WEIGHTS) and report val mAP with them.

    python -m examples.ssdlite_shapes.train                      # the committed weights: 1 thread, 30 min budget

Seeded (every generator), 1 thread, deterministic algorithms; the wall-clock budget can stop a slower or busier
machine at another step, so the same weights come back only when the same number of steps runs.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import torch

from examples.ssdlite_shapes import data
from examples.ssdlite_shapes.model import WEIGHTS, DecodedSSD, create_ssd


def seed_everything(seed: int, threads: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def batch(images: np.ndarray, boxes: list, classes: list, idx, gen: torch.Generator):
    """torchvision's SSD training input: images in 0-1 (its transform normalises) and targets, with seeded
    horizontal flips."""
    xs, ts = [], []
    for i in idx.tolist():
        x = torch.from_numpy(images[i]).permute(2, 0, 1).float() / 255
        b = torch.as_tensor(boxes[i], dtype=torch.float32)
        if torch.rand((), generator=gen) < 0.5:
            x = x.flip(-1)
            b = torch.stack([data.SIZE - b[:, 2], b[:, 1], data.SIZE - b[:, 0], b[:, 3]], 1)
        xs.append(x)
        ts.append({"boxes": b, "labels": torch.as_tensor(classes[i], dtype=torch.int64) + 1})
    return xs, ts


@torch.inference_mode()
def val_map(ssd, images: np.ndarray, boxes: list, classes: list) -> dict:
    """{"map50", "map"} (points) of the exported wrapper on ``images``, through edgepack's NMS and COCO mAP."""
    from edgepack.tasks import postprocess
    from edgepack.tasks.detect import coco_map

    ssd.eval()
    net = DecodedSSD(ssd).eval()
    outs_b, outs_s = [], []
    for start in range(0, len(images), 50):
        x = torch.from_numpy(images[start:start + 50]).permute(0, 3, 1, 2).float() / 255
        b, s = net((x - 0.5) / 0.5)
        outs_b.append(b.numpy())
        outs_s.append(s.numpy())
    found = postprocess.detections([np.concatenate(outs_b), np.concatenate(outs_s)])
    truth = [{"boxes": b.astype(np.float32), "classes": c} for b, c in zip(boxes, classes, strict=True)]
    return coco_map(truth, found, len(data.CLASSES))


def train(a, train_set, val_set) -> tuple[dict, dict]:
    """The training loop; returns (best state dict, history summary)."""
    ssd = create_ssd()
    opt = torch.optim.AdamW(ssd.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    gen = torch.Generator().manual_seed(a.seed)
    images, boxes, classes = train_set
    best = {"map50": -1.0, "epoch": 0, "state": None}
    start, step, stale = time.perf_counter(), 0, 0
    for epoch in range(1, a.max_epochs + 1):
        ssd.train()
        perm = torch.randperm(len(images), generator=gen)
        total, seen = 0.0, 0
        for i in range(0, len(perm) - a.batch_size + 1, a.batch_size):
            warm = min(1.0, (step + 1) / a.warmup_steps)
            for g in opt.param_groups:
                g["lr"] = a.lr * warm * (1 / 3) ** a.lr_cuts
            xs, ts = batch(images, boxes, classes, perm[i:i + a.batch_size], gen)
            losses = ssd(xs, ts)
            loss = losses["bbox_regression"] + losses["classification"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, seen, step = total + loss.item() * len(xs), seen + len(xs), step + 1
            if time.perf_counter() - start > a.budget_s:
                break
        m = val_map(ssd, *val_set)
        improved = m["map50"] > best["map50"]
        if improved:
            best = {"map50": m["map50"], "map": m["map"], "epoch": epoch,
                    "state": {k: v.detach().clone() for k, v in ssd.state_dict().items()}}
            stale = 0
        else:
            stale += 1
            a.lr_cuts += 1
        elapsed = time.perf_counter() - start
        print(f"  epoch {epoch:3d}  train loss {total / max(seen, 1):.4f}  val mAP@0.5 {m['map50']:.2f}  "
              f"mAP@0.5:0.95 {m['map']:.2f}  lr {opt.param_groups[0]['lr']:.2e}  {elapsed:.0f} s"
              f"{'  *' if improved else ''}", flush=True)
        if stale >= a.patience:
            print(f"  early stop: no val mAP@0.5 improvement for {a.patience} epochs; best epoch {best['epoch']}")
            break
        if elapsed > a.budget_s:
            print(f"  wall-clock budget ({a.budget_s:.0f} s) spent; best epoch {best['epoch']}")
            break
    return best, {"epochs": epoch, "steps": step, "train_s": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m examples.ssdlite_shapes.train", description=__doc__.split("\n")[0])
    p.add_argument("--train-count", type=int, default=6000)
    p.add_argument("--val-count", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--max-epochs", type=int, default=100)
    p.add_argument("--patience", type=int, default=3, help="epochs without a better val mAP@0.5 before stopping")
    p.add_argument("--budget-s", type=float, default=1800, help="wall-clock budget of the training loop, seconds")
    p.add_argument("--out", type=Path, default=WEIGHTS)
    a = p.parse_args(argv)
    a.lr_cuts = 0

    t0 = time.perf_counter()
    seed_everything(a.seed, a.threads)
    train_set = data.arrays("train", a.train_count, a.seed)
    val_set = data.arrays("val", a.val_count, a.seed)
    print(f"data: {a.train_count} train + {a.val_count} val scenes ({sum(len(b) for b in train_set[1])} and "
          f"{sum(len(b) for b in val_set[1])} shapes) in {time.perf_counter() - t0:.0f} s", flush=True)
    best, hist = train(a, train_set, val_set)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in best["state"].items()}, a.out)

    from examples.ssdlite_shapes.model import load_weights
    ssd = create_ssd()
    load_weights(ssd, a.out)
    m = val_map(ssd, *val_set)
    print(f"best epoch {best['epoch']} of {hist['epochs']} ({hist['steps']} steps); val mAP@0.5 {best['map50']:.2f} "
          f"(float16 weights: {m['map50']:.2f}, mAP@0.5:0.95 {m['map']:.2f})")
    print(f"time: training {hist['train_s']:.0f} s, total {time.perf_counter() - t0:.0f} s")
    print(f"saved {a.out} ({a.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
