"""Recovery fine-tuning on the CPU after pruning: labels, distillation from the unpruned model, or both.

A seeded held-out split drives early stopping; the best held-out state (possibly the state before
fine-tuning) is what the model ends with, so fine-tuning never makes the held-out score worse.
Unlabelled data works with ``distill=True``: the unpruned model's soft outputs are the targets and
the held-out score is top-1 agreement with it. The library never prints; progress goes to a ProgressFn.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError, StageError
from .schema import spec
from .util import ProgressFn, no_progress

log = logging.getLogger(__name__)
EVAL_BATCH = 64
KD_WEIGHT_WITH_LABELS = 0.5   # loss = 0.5 * distillation + 0.5 * cross-entropy when both are available


@dataclass(frozen=True)
class FinetuneOptions:
    """Recovery fine-tuning settings (all optional but ``data``)."""

    data: str | None = spec("fine-tuning data: class folders of images or .npz with x (and y); "
                            "unlabelled data needs distill", None)
    epochs: int = spec("maximum passes over the training split", 3, ge=1, le=1000)
    lr: float = spec("Adam learning rate, cosine-decayed to 0 over the epochs", 5e-4, ge=1e-8, le=1.0)
    batch_size: int = spec("samples per optimizer step", 32, ge=1, le=4096)
    patience: int = spec("stop after this many epochs without a held-out improvement", 2, ge=1, le=1000)
    distill: bool = spec("learn from the unpruned model's soft outputs (works without labels)", False)
    temperature: float = spec("distillation softmax temperature", 4.0, ge=0.1, le=100.0)
    val_fraction: float = spec("held-out fraction of the data for early stopping", 0.1, ge=0.01, le=0.5)
    samples: int | None = spec("use at most this many samples (seeded subset; default all)", None, ge=2,
                               le=10_000_000)
    max_minutes: float | None = spec("wall-clock budget for fine-tuning, minutes (checked every batch)", None,
                                     ge=0.01, le=10_000)
    seed: int = spec("seed for the split and the shuffling", 0, ge=0, le=2**31 - 1)


def load_data(options: FinetuneOptions, *, input_shape: tuple[int, ...], preprocess: Any,
              progress: ProgressFn = no_progress):
    """Read ``options.data`` with edgepack.data.load (same preprocessing as calibration) -> Dataset."""
    from .data import load

    if not options.data:
        raise InputError("fine-tuning needs data", hint="pass --finetune DATA (image folder or .npz)")
    return load(options.data, input_shape=input_shape, preprocess=preprocess, count=options.samples,
                seed=options.seed, role="fine-tuning", progress=progress)


def finetune(model, data, options: FinetuneOptions, *, teacher=None,
             progress: ProgressFn = no_progress) -> dict:
    """Fine-tune ``model`` in place on ``data`` (x: N,C,H,W float32; y: N int64 or None).

    ``teacher`` (the unpruned model) is needed when ``options.distill`` is set. Returns a report:
    held-out metric before/after (accuracy or agreement, 0-1), epochs run, why it stopped, seconds.
    """
    import torch

    y = getattr(data, "y", None)
    if options.distill and teacher is None:
        raise StageError("distillation needs the unpruned model as teacher", hint="pass teacher=...")
    if y is None and not options.distill:
        raise InputError(f"fine-tuning data {options.data or ''} has no labels",
                         hint="use labelled data (class folders or npz with y), or enable distill")
    torch.manual_seed(options.seed)
    for p in model.parameters():  # the source may have frozen its backbone; recovery trains everything
        p.requires_grad_(True)
    x = torch.from_numpy(np.ascontiguousarray(data.x, dtype=np.float32))
    targets = _targets(teacher, x, y, options, progress)
    train_idx, held_idx = split_indices(len(x), options.val_fraction, options.seed)
    return _train(model, x, targets, (train_idx, held_idx), options, progress)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train / held-out index split; at least one sample on each side."""
    if n < 2:
        raise InputError(f"fine-tuning needs at least 2 samples, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    n_held = min(n - 1, max(1, int(round(n * val_fraction))))
    return np.sort(perm[n_held:]), np.sort(perm[:n_held])


def _targets(teacher, x, y, options: FinetuneOptions, progress: ProgressFn) -> dict:
    """Labels and/or the teacher's logits for every sample (computed once, not every epoch)."""
    import torch

    out: dict = {"y": None if y is None else torch.from_numpy(np.asarray(y, dtype=np.int64)), "t": None}
    if options.distill:
        teacher.eval()
        chunks = []
        with torch.no_grad():
            for i in range(0, len(x), EVAL_BATCH):
                progress("teacher outputs", i, len(x))
                chunks.append(teacher(x[i:i + EVAL_BATCH]))
        out["t"] = torch.cat(chunks)
        if out["t"].ndim != 2:
            raise InputError("distillation needs (N, classes) outputs, the model gives "
                             f"{list(out['t'].shape)}")
    return out


def _loss(logits, idx, targets: dict, options: FinetuneOptions):
    """Cross-entropy on labels, KL distillation on teacher logits (T^2-scaled), or their blend."""
    import torch.nn.functional as F

    y, t = targets["y"], targets["t"]
    terms = []
    if t is not None:
        temp = options.temperature
        kd = F.kl_div(F.log_softmax(logits / temp, 1), F.softmax(t[idx] / temp, 1), reduction="batchmean")
        terms.append(kd * temp * temp)
    if y is not None:
        terms.append(F.cross_entropy(logits, y[idx]))
    if len(terms) == 2:
        return KD_WEIGHT_WITH_LABELS * terms[0] + (1 - KD_WEIGHT_WITH_LABELS) * terms[1]
    return terms[0]


def heldout_score(model, x, targets: dict, idx: np.ndarray) -> float:
    """Top-1 accuracy on labels, or top-1 agreement with the teacher when unlabelled (0-1)."""
    import torch

    model.eval()
    ref = targets["y"] if targets["y"] is not None else targets["t"].argmax(1)
    hits = 0
    with torch.no_grad():
        for i in range(0, len(idx), EVAL_BATCH):
            part = torch.from_numpy(idx[i:i + EVAL_BATCH])
            hits += int((model(x[part]).argmax(1) == ref[part]).sum())
    return hits / max(1, len(idx))


def _train(model, x, targets: dict, split, options: FinetuneOptions, progress: ProgressFn) -> dict:
    import torch

    train_idx, held_idx = split
    steps_per_epoch = -(-len(train_idx) // options.batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=options.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=options.epochs * steps_per_epoch)
    state = {"best": heldout_score(model, x, targets, held_idx), "best_epoch": 0, "stopped": "epochs",
             "best_state": copy.deepcopy(model.state_dict()), "t0": time.perf_counter(), "epoch": 0}
    report = {"metric": "accuracy" if targets["y"] is not None else "agreement",
              "heldout_before": state["best"], "train_samples": len(train_idx),
              "heldout_samples": len(held_idx)}
    gen = np.random.default_rng(options.seed)
    for epoch in range(1, options.epochs + 1):
        state["epoch"] = epoch
        loss = _epoch(model, x, targets, gen.permutation(train_idx), (opt, sched), options, state, progress)
        score = heldout_score(model, x, targets, held_idx)
        log.info("fine-tune epoch %d: loss %.4f, held-out %s %.4f", epoch, loss, report["metric"], score)
        if score > state["best"]:
            state.update(best=score, best_epoch=epoch, best_state=copy.deepcopy(model.state_dict()))
        if state["stopped"] == "time":
            break
        if epoch - state["best_epoch"] >= options.patience:
            state["stopped"] = "early"
            break
    model.load_state_dict(state["best_state"])
    model.eval()
    report.update(heldout_after=state["best"], best_epoch=state["best_epoch"], epochs_run=state["epoch"],
                  stopped=state["stopped"], seconds=round(time.perf_counter() - state["t0"], 1))
    return report


def _epoch(model, x, targets: dict, order: np.ndarray, optim, options: FinetuneOptions, state: dict,
           progress: ProgressFn) -> float:
    """One pass over ``order``; returns the mean loss. Sets state["stopped"] = "time" past the budget."""
    import torch

    opt, sched = optim
    model.train()
    total, batches = 0.0, 0
    step = f"fine-tuning epoch {state['epoch']}/{options.epochs}"
    for i in range(0, len(order), options.batch_size):
        progress(step, i, len(order))
        idx = torch.from_numpy(order[i:i + options.batch_size])
        if len(idx) < 2 and batches:  # a 1-sample batch breaks BatchNorm statistics
            continue
        opt.zero_grad(set_to_none=True)
        loss = _loss(model(x[idx]), idx, targets, options)
        if not torch.isfinite(loss):
            raise StageError("fine-tuning diverged (loss is not finite)",
                             hint="lower the fine-tuning learning rate (lr)")
        loss.backward()
        opt.step()
        sched.step()
        total, batches = total + float(loss.detach()), batches + 1
        if options.max_minutes and time.perf_counter() - state["t0"] > 60 * options.max_minutes:
            state["stopped"] = "time"
            break
    progress(step, len(order), len(order))
    return total / max(1, batches)
