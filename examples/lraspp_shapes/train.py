"""Train the LRASPP shapes segmenter from scratch on one CPU thread, with early stopping on a validation split.

1. Draw the train and val splits of examples.lraspp_shapes.data in memory (seeded; val has train's styles
   but its own stream).
2. AdamW on pixel-wise cross-entropy, seeded minibatches with random horizontal and vertical flips, the
   learning rate warmed up for half an epoch then cosine-annealed over ``--max-epochs``. After every epoch the
   val mIoU is measured (edgepack's own confusion-matrix metric); the best epoch is kept, training stops after
   ``--patience`` epochs without improvement or when the ``--budget-min`` wall-clock budget is spent.
3. Report FP32 mIoU and pixel accuracy of the best weights on val and on the held-out split (other backgrounds,
   never used for any choice here), and save them as an fp16 state dict (``lraspp_shapes.pt``).

    python -m examples.lraspp_shapes.train       # defaults as used for the committed lraspp_shapes.pt

Every generator is seeded and torch's deterministic algorithms are on; the budget stop is the one input that
depends on the machine's speed, and the log says whether it fired.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import data
from .model import MEAN, NUM_CLASSES, STD, WEIGHTS_PATH, build_lraspp


def seed_everything(seed: int, threads: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def to_input(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32, normalised as edgepack feeds the model (scale, mean, std)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


@torch.inference_mode()
def predict(net, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """(N, H, W) int64 argmax masks of ``net`` on uint8 images."""
    net.eval()
    return np.concatenate([net(to_input(images[i:i + batch_size]))["out"].argmax(1).numpy()
                           for i in range(0, len(images), batch_size)])


def scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    """mIoU, per-class IoU and pixel accuracy (points), with edgepack's own segmentation metric."""
    from edgepack.tasks.segment import class_iou, confusion, miou, pixel_accuracy

    cm = confusion(truth, pred, NUM_CLASSES)
    return {"miou": round(miou(cm), 2), "pixel_accuracy": round(pixel_accuracy(cm), 2),
            "iou": [round(float(v), 2) for v in class_iou(cm)]}


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def train(net, x_train, y_train, x_val, y_val, *, seed, lr, weight_decay, batch_size, max_epochs, patience,
          budget_s, log):
    """AdamW with early stopping on val mIoU; returns (best state dict, best epoch, history, stop reason)."""
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = len(x_train) // batch_size
    total, warmup = steps_per_epoch * max_epochs, steps_per_epoch // 2
    best = (-1.0, 0, None)
    history, step, start, reason = [], 0, time.perf_counter(), "max epochs"
    for epoch in range(1, max_epochs + 1):
        net.train()
        perm = torch.randperm(len(x_train), generator=gen)
        loss_sum = 0.0
        for i in range(steps_per_epoch):
            b = perm[i * batch_size:(i + 1) * batch_size].numpy()
            x, y = to_input(x_train[b]), torch.from_numpy(y_train[b].astype(np.int64))
            flip = torch.rand(2, generator=gen) < 0.5
            dims = [d for d, f in zip((3, 2), flip.tolist(), strict=True) if f]
            if dims:
                x, y = x.flip(dims), y.flip([d - 1 for d in dims])
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, warmup, lr)
            loss = F.cross_entropy(net(x)["out"], y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += loss.item()
            step += 1
            if i % 50 == 0:
                log(f"  epoch {epoch} step {i}/{steps_per_epoch} loss {loss.item():.4f} "
                    f"({time.perf_counter() - start:.0f} s)")
        val = scores(predict(net, x_val), y_val)
        elapsed = time.perf_counter() - start
        improved = val["miou"] > best[0]
        if improved:
            best = (val["miou"], epoch, {k: v.detach().clone() for k, v in net.state_dict().items()})
        history.append({"epoch": epoch, "train_loss": round(loss_sum / steps_per_epoch, 4), "val": val,
                        "elapsed_s": round(elapsed)})
        log(f"epoch {epoch:2d}  train loss {loss_sum / steps_per_epoch:.4f}  val mIoU {val['miou']:.2f}  "
            f"pixel acc {val['pixel_accuracy']:.2f}  IoU {val['iou']}  {elapsed:.0f} s{'  *' if improved else ''}")
        if epoch - best[1] >= patience:
            reason = f"early stop: no val mIoU improvement for {patience} epochs"
            break
        if elapsed + elapsed / epoch > budget_s:
            reason = f"wall-clock budget: another epoch would pass {budget_s / 60:.0f} min"
            break
    log(f"{reason}; best epoch {best[1]} (val mIoU {best[0]:.2f})")
    return best[2], best[1], history, reason


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m examples.lraspp_shapes.train", description=__doc__.split("\n")[0])
    p.add_argument("--train-count", type=int, default=4000)
    p.add_argument("--val-count", type=int, default=300)
    p.add_argument("--heldout-count", type=int, default=300, help="reported only; never used for a choice")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-epochs", type=int, default=10)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--budget-min", type=float, default=30.0, help="wall-clock budget for the training loop")
    p.add_argument("--out", type=Path, default=WEIGHTS_PATH)
    p.add_argument("--log-json", type=Path, default=None, help="also write the history and scores here")
    a = p.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, flush=True)

    t_start = time.perf_counter()
    seed_everything(a.seed, a.threads)
    x_train, y_train = data.arrays("train", a.train_count, a.seed)
    x_val, y_val = data.arrays("val", a.val_count, a.seed)
    x_held, y_held = data.arrays("heldout", a.heldout_count, a.seed)
    t_data = time.perf_counter() - t_start
    log(f"data: {len(x_train)} train, {len(x_val)} val, {len(x_held)} held-out images of {data.SIZE} px "
        f"({t_data:.0f} s); class pixel shares in train {np.round(np.bincount(y_train.ravel()) / y_train.size, 3)}")

    torch.manual_seed(a.seed)
    net = build_lraspp()
    state, best_epoch, history, reason = train(
        net, x_train, y_train, x_val, y_val, seed=a.seed, lr=a.lr, weight_decay=a.weight_decay,
        batch_size=a.batch_size, max_epochs=a.max_epochs, patience=a.patience, budget_s=a.budget_min * 60, log=log)
    t_train = time.perf_counter() - t_start - t_data
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})  # as shipped
    result = {"best_epoch": best_epoch, "stop": reason, "val": scores(predict(net, x_val), y_val),
              "heldout": scores(predict(net, x_held), y_held), "train_s": round(t_train),
              "total_s": round(time.perf_counter() - t_start), "args": {k: str(v) for k, v in vars(a).items()},
              "history": history}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, a.out)
    log(f"best epoch {best_epoch}; FP32 val mIoU {result['val']['miou']:.2f} (pixel acc "
        f"{result['val']['pixel_accuracy']:.2f}), held-out mIoU {result['heldout']['miou']:.2f} (pixel acc "
        f"{result['heldout']['pixel_accuracy']:.2f}, IoU per class {result['heldout']['iou']})")
    log(f"time: data {t_data:.0f} s, training {t_train:.0f} s, total {result['total_s']} s")
    log(f"saved {a.out} ({a.out.stat().st_size} bytes, fp16)")
    if a.log_json:
        a.log_json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
