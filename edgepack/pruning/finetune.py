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

import numpy as np

from edgepack.config import FinetuneOptions
from edgepack.errors import InputError, StageError
from edgepack.pruning.args import first
from edgepack.util import ProgressFn, no_progress

log = logging.getLogger(__name__)
EVAL_BATCH = 64
KD_WEIGHT_WITH_LABELS = 0.5   # loss = 0.5 * distillation + 0.5 * cross-entropy when both are available


def finetune(model, data, options: FinetuneOptions, *, teacher=None, input_names=None,
             progress: ProgressFn = no_progress) -> dict:
    """Fine-tune ``model`` in place on ``data`` (x: N,C,H,W float32, or for a text model a dict of (N, L) int64
    token arrays passed positionally in ``input_names`` order; y: N int64 or None).

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
    t0 = time.perf_counter()  # the time budget covers the teacher's outputs too
    torch.manual_seed(options.seed)
    for p in model.parameters():  # the source may have frozen its backbone; recovery trains everything
        p.requires_grad_(True)
    x = Inputs(data.x, input_names)
    train_idx, held_idx = split_indices(len(x), options.val_fraction, options.seed)
    hooks = []
    if options.distill and options.feature_weight:
        if x.is_text:
            log.info("feature distillation skipped: text model (logit distillation only)")
        else:
            hooks = _feature_hooks(model, teacher, *x.rows(np.arange(1)))
    try:
        targets = _targets(teacher, x, y, options, held_idx, progress)
        if hooks:
            targets["features"] = hooks[0]
        return _train(model, x, targets, (train_idx, held_idx), options, progress, t0)
    finally:
        for h in hooks[1:]:
            h.remove()


def _feature_hooks(model, teacher, x1) -> list:
    """[captured, hook handles]: forward pre-hooks keeping the input of the output layer of the student
    (captured["s"]) and of the teacher (captured["t"]); [] when there is no single output layer or
    pruning changed its input width (the feature term is then skipped)."""
    from edgepack.pruning.channels import output_layers
    from edgepack.pruning.reconstruct import in_size

    names = output_layers(model, x1)  # pruning keeps module names; the student's forward is the cheaper one
    if len(names) != 1:
        log.warning("feature distillation skipped: %d output layers", len(names))
        return []
    t_layer, s_layer = dict(teacher.named_modules())[names[0]], dict(model.named_modules()).get(names[0])
    if s_layer is None or in_size(s_layer) != in_size(t_layer):
        log.warning("feature distillation skipped: pruning changed the input width of %s", names[0])
        return []
    captured: dict = {}

    def keep(key):
        return lambda mod, inp: captured.__setitem__(key, inp[0].flatten(1))
    return [captured, s_layer.register_forward_pre_hook(keep("s")), t_layer.register_forward_pre_hook(keep("t"))]


class Inputs:
    """The fine-tuning samples as the model's positional arguments.

    Images: one tensor in its stored dtype (float16 data, half the memory of float32 for tens of thousands of
    images, stays float16 and is cast batch by batch). Several inputs (a text model's int64 token ids, or a
    forward taking several tensors): one tensor per input in its own dtype (a float image stayed an image, not
    int64), in ``input_names`` order (the forward signature's order).
    """

    def __init__(self, x, input_names=None):
        import torch

        self.is_text = isinstance(x, dict)
        if self.is_text:
            names = list(input_names or x)
            missing = [n for n in names if n not in x]
            if missing:
                raise InputError(f"fine-tuning data lacks the model inputs {missing}")
            self._parts = tuple(torch.from_numpy(np.ascontiguousarray(x[n])) for n in names)
        else:
            x = np.asarray(x)
            if x.dtype != np.float16:
                x = x.astype(np.float32, copy=False)
            self._parts = (torch.from_numpy(np.ascontiguousarray(x)),)

    def __len__(self) -> int:
        return len(self._parts[0])

    def rows(self, idx) -> tuple:
        """The arguments for ``model(*args)`` of the samples ``idx`` (images cast to float32)."""
        if self.is_text:
            return tuple(p[idx] for p in self._parts)
        return (self._parts[0][idx].float(),)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train / held-out index split; at least one sample on each side."""
    if n < 2:
        raise InputError(f"fine-tuning needs at least 2 samples, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    n_held = min(n - 1, max(1, int(round(n * val_fraction))))
    return np.sort(perm[n_held:]), np.sort(perm[:n_held])


def _targets(teacher, x, y, options: FinetuneOptions, held_idx: np.ndarray, progress: ProgressFn) -> dict:
    """Labels and/or the teacher's logits. The teacher's are computed lazily, once per sample, the
    first time a batch needs them (a time-boxed run may never reach every sample); the held-out
    split's up front, since every evaluation needs them."""
    import torch

    out: dict = {"y": None if y is None else torch.from_numpy(np.asarray(y, dtype=np.int64)), "t": None,
                 "teacher": None, "done": None}
    if options.distill:
        teacher.eval()
        probe = _forward(teacher, *x.rows(np.arange(1)))
        if probe.ndim != 2:
            raise InputError(f"distillation needs (N, classes) outputs, the model gives {list(probe.shape)}")
        out.update(t=torch.zeros(len(x), probe.shape[1]), teacher=teacher,
                   done=torch.zeros(len(x), dtype=torch.bool))
        for i in range(0, len(held_idx), EVAL_BATCH):
            progress("teacher outputs (held-out split)", i, len(held_idx))
            teacher_logits(out, x, torch.from_numpy(held_idx[i:i + EVAL_BATCH]))
    return out


def _forward(model, *args):
    import torch

    with torch.no_grad():
        return first(model(*args))


def teacher_logits(targets: dict, x, idx):
    """targets["t"][idx], computing (and caching) those the teacher has not seen yet."""
    if targets["teacher"] is None:
        return None
    todo = idx[~targets["done"][idx]]
    feats = targets.get("features")
    if len(todo):
        targets["t"][todo] = _forward(targets["teacher"], *x.rows(todo))
        targets["done"][todo] = True
        if feats is not None:
            if targets.get("tf") is None:
                targets["tf"] = feats["t"].new_zeros(len(x), feats["t"].shape[1])
            targets["tf"][todo] = feats["t"]
    if feats is not None:
        targets["batch_tf"] = targets["tf"][idx]
    return targets["t"][idx]


def _loss(logits, idx, targets: dict, options: FinetuneOptions):
    """Cross-entropy on labels, KL distillation on teacher logits (T^2-scaled), or their blend."""
    import torch.nn.functional as F

    y, t = targets["y"], targets.get("batch_t")
    terms = []
    if t is not None:
        temp = options.temperature
        kd = F.kl_div(F.log_softmax(logits / temp, 1), F.softmax(t / temp, 1), reduction="batchmean")
        terms.append(kd * temp * temp)
    if y is not None:
        terms.append(F.cross_entropy(logits, y[idx]))
    loss = terms[0]
    if len(terms) == 2:
        loss = KD_WEIGHT_WITH_LABELS * terms[0] + (1 - KD_WEIGHT_WITH_LABELS) * terms[1]
    feats = targets.get("features")
    if feats is not None and t is not None:
        tf = targets["batch_tf"]
        loss = loss + options.feature_weight * ((feats["s"] - tf) ** 2).mean() / (tf ** 2).mean().clamp_min(1e-12)
    return loss


def heldout_score(model, x, targets: dict, idx: np.ndarray) -> float:
    """Top-1 accuracy on labels, or top-1 agreement with the teacher when unlabelled (0-1)."""
    import torch

    model.eval()
    ref = targets["y"] if targets["y"] is not None else targets["t"].argmax(1)
    hits = 0
    with torch.no_grad():
        for i in range(0, len(idx), EVAL_BATCH):
            part = torch.from_numpy(idx[i:i + EVAL_BATCH])
            hits += int((first(model(*x.rows(part))).argmax(1) == ref[part]).sum())
    return hits / max(1, len(idx))


WARMUP = 0.03   # fraction of the steps (or of the time budget) with a linear learning-rate warm-up


def lr_factor(step: int, total_steps: int, elapsed: float, budget: float | None) -> float:
    """Warm-up then cosine decay on the further along of the step count and the time budget."""
    import math

    done = step / max(1, total_steps)
    if budget:
        done = max(done, elapsed / budget)
    done = min(1.0, done)
    if done < WARMUP:
        return max(0.05, done / WARMUP)
    return 0.5 * (1 + math.cos(math.pi * (done - WARMUP) / (1 - WARMUP)))


def _train(model, x, targets: dict, split, options: FinetuneOptions, progress: ProgressFn,
           t0: float | None = None) -> dict:
    import torch

    train_idx, held_idx = split
    steps_per_epoch = -(-len(train_idx) // options.batch_size)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=options.lr)
    state = {"best": heldout_score(model, x, targets, held_idx), "best_epoch": 0, "stopped": "epochs",
             "best_state": copy.deepcopy(model.state_dict()), "t0": t0 or time.perf_counter(), "epoch": 0,
             "step": 0, "total_steps": options.epochs * steps_per_epoch, "cpu0": time.process_time()}
    report = {"metric": "accuracy" if targets["y"] is not None else "agreement",
              "heldout_before": state["best"], "train_samples": len(train_idx),
              "heldout_samples": len(held_idx)}
    gen = np.random.default_rng(options.seed)
    for epoch in range(1, options.epochs + 1):
        state["epoch"] = epoch
        loss = _epoch(model, x, targets, gen.permutation(train_idx), opt, options, state, progress)
        score = heldout_score(model, x, targets, held_idx)
        log.info("fine-tune epoch %d: loss %.4f, held-out %s %.4f", epoch, loss, report["metric"], score)
        if score > state["best"]:
            state.update(best=score, best_epoch=epoch, best_state=copy.deepcopy(model.state_dict()))
        if state["stopped"] == "time":
            break
        if epoch - state["best_epoch"] >= options.patience and epoch < options.epochs:  # epochs left unrun
            state["stopped"] = "early"
            break
    model.load_state_dict(state["best_state"])
    model.eval()
    report.update(heldout_after=state["best"], best_epoch=state["best_epoch"], epochs_run=state["epoch"],
                  steps=state["step"], stopped=state["stopped"],
                  seconds=round(time.perf_counter() - state["t0"], 1),
                  cpu_seconds=round(time.process_time() - state["cpu0"], 1))
    return report


def _train_mode(model, freeze_bn: bool) -> None:
    from torch import nn

    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _epoch(model, x, targets: dict, order: np.ndarray, opt, options: FinetuneOptions, state: dict,
           progress: ProgressFn) -> float:
    """One pass over ``order``; returns the mean loss. Sets state["stopped"] = "time" past the budget."""
    import torch

    budget = 60 * options.max_minutes if options.max_minutes else None
    _train_mode(model, options.freeze_bn)
    total, batches = 0.0, 0
    step = f"fine-tuning epoch {state['epoch']}/{options.epochs}"
    for i in range(0, len(order), options.batch_size):
        progress(step, i, len(order))
        idx = torch.from_numpy(order[i:i + options.batch_size])
        if len(idx) < 2 and batches:  # a 1-sample batch breaks BatchNorm statistics
            continue
        if budget and time.perf_counter() - state["t0"] > budget:
            state["stopped"] = "time"
            break
        factor = lr_factor(state["step"], state["total_steps"], time.perf_counter() - state["t0"], budget)
        for group in opt.param_groups:
            group["lr"] = options.lr * factor
        targets["batch_t"] = teacher_logits(targets, x, idx)
        opt.zero_grad(set_to_none=True)
        loss = _loss(first(model(*x.rows(idx))), idx, targets, options)
        if not torch.isfinite(loss):
            raise StageError("fine-tuning diverged (loss is not finite)",
                             hint="lower the fine-tuning learning rate (lr)")
        loss.backward()
        opt.step()
        state["step"] += 1
        total, batches = total + float(loss.detach()), batches + 1
    progress(step, len(order), len(order))
    return total / max(1, batches)
